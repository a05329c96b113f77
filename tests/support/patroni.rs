//! A Patroni member's REST API as documented (the parts `patronictl pause`/`resume` and
//! `edit-config` use): `GET /patroni` (its status; `"pause": true` once the member has seen
//! the cluster paused, which like Patroni's HA loop takes a moment), `PATCH /config` (merge
//! into the dynamic configuration, `null` removes a key; basic authentication when
//! configured, 401 otherwise). Patroni itself needs a DCS (etcd, Consul, ZooKeeper) this
//! machine does not run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Default)]
struct State {
    config: serde_json::Map<String, Value>,
    /// When the last pause change becomes visible to this member (its next HA loop).
    seen_at: Option<Instant>,
    shown_paused: bool,
    patches: Vec<Value>,
}

impl State {
    /// The member's HA loop has run: it shows the cluster's pause setting from now on.
    fn refresh(&mut self) {
        if self.seen_at.is_some_and(|t| Instant::now() >= t) {
            self.shown_paused = self.config.get("pause") == Some(&json!(true));
            self.seen_at = None;
        }
    }
}

pub struct FakePatroni {
    pub port: u16,
    state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Patroni's loop sees a changed pause on its next cycle.
const LOOP: Duration = Duration::from_millis(1500);

impl FakePatroni {
    pub fn start(scope: &str, name: &str, role: &str, auth: Option<(&str, &str)>) -> FakePatroni {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let state = Arc::new(Mutex::new(State::default()));
        let expected = auth.map(|(u, p)| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let (srv, st) = (server.clone(), state.clone());
        let (scope, name, role) = (scope.to_string(), name.to_string(), role.to_string());
        let thread = std::thread::spawn(move || {
            for mut req in srv.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let mut s = st.lock().unwrap();
                s.refresh();
                let authorized = expected.as_ref().is_none_or(|want| {
                    req.headers()
                        .iter()
                        .any(|h| h.field.equiv("Authorization") && h.value.as_str() == want)
                });
                let (code, answer) = match (req.method().as_str(), req.url()) {
                    ("GET", "/patroni") => {
                        let mut v = json!({
                            "state": "running", "role": role, "server_version": 150000,
                            "timeline": 1,
                            "patroni": {"version": "3.0.2", "scope": scope, "name": name}
                        });
                        if s.shown_paused {
                            v["pause"] = json!(true);
                        }
                        (200, v)
                    }
                    ("PATCH", "/config") if !authorized => (401, json!("no valid authorization")),
                    ("PATCH", "/config") => match serde_json::from_str::<Value>(&body) {
                        Ok(Value::Object(patch)) => {
                            s.patches.push(Value::Object(patch.clone()));
                            for (k, v) in patch {
                                if v.is_null() {
                                    s.config.remove(&k);
                                } else {
                                    s.config.insert(k, v);
                                }
                            }
                            s.seen_at = Some(Instant::now() + LOOP);
                            (200, Value::Object(s.config.clone()))
                        }
                        _ => (400, json!("not a JSON object")),
                    },
                    _ => (404, json!("not found")),
                };
                drop(s);
                let resp = tiny_http::Response::from_string(answer.to_string())
                    .with_status_code(code)
                    .with_header(
                        "Content-Type: application/json"
                            .parse::<tiny_http::Header>()
                            .unwrap(),
                    );
                let _ = req.respond(resp);
            }
        });
        FakePatroni {
            port,
            state,
            server,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every PATCH /config body taken, in order.
    pub fn patches(&self) -> Vec<Value> {
        self.state.lock().unwrap().patches.clone()
    }

    /// Whether the member reports the pause now.
    pub fn shows_paused(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        s.refresh();
        s.shown_paused
    }
}

impl Drop for FakePatroni {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
