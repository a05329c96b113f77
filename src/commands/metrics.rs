//! `status --metrics`: the status report in the Prometheus text exposition format (encoded by
//! `prometheus-client`, the Prometheus project's Rust client), for a node_exporter textfile or
//! a scrape. Names follow Prometheus conventions: base units in the name, `_info` for labels.

use anyhow::Result;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::status::StatusReport;
use crate::replication::lag::HopState;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A gauge family registered under `name`.
fn family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

fn bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn render(r: &StatusReport) -> Result<String> {
    let mut reg = Registry::default();
    let run = family(
        &mut reg,
        "migrate_run_info",
        "The current run: 1, with its id, operation and state",
    );
    run.get_or_create(&labels(&[
        ("run_id", &r.run_id),
        ("operation", &r.operation),
        ("state", &r.state),
    ]))
    .set(1);
    let steps = family(
        &mut reg,
        "migrate_step_info",
        "Each step of the run: 1, with its status",
    );
    for s in &r.steps {
        steps
            .get_or_create(&labels(&[
                ("step", &s.id),
                ("status", &crate::engine::label(&s.status)),
            ]))
            .set(1);
    }
    if let Some(ms) = r
        .steps
        .iter()
        .find(|s| s.id == "certificate")
        .and_then(|s| s.output.as_ref()?.get("write_pause_ms")?.as_i64())
    {
        family(
            &mut reg,
            "migrate_last_write_pause_milliseconds",
            "The write pause of the run's switchover, from its certificate",
        )
        .get_or_create(&Vec::new())
        .set(ms);
    }
    if let Some(lag) = &r.lag {
        let up = family(
            &mut reg,
            "migrate_hop_up",
            "1 when the hop streams, 0 when it is down",
        );
        let receive = family(
            &mut reg,
            "migrate_hop_receive_lag_bytes",
            "Upstream's WAL position minus what the node has flushed",
        );
        let replay = family(
            &mut reg,
            "migrate_hop_replay_lag_bytes",
            "Upstream's WAL position minus what the node has replayed",
        );
        for h in &lag.hops {
            let l = labels(&[("from", &h.upstream), ("to", &h.node)]);
            match &h.state {
                HopState::Streaming {
                    receive_behind_bytes,
                    replay_behind_bytes,
                    ..
                } => {
                    up.get_or_create(&l).set(1);
                    receive.get_or_create(&l).set(bytes(*receive_behind_bytes));
                    replay.get_or_create(&l).set(bytes(*replay_behind_bytes));
                }
                HopState::Down { .. } => {
                    up.get_or_create(&l).set(0);
                }
            }
        }
    }
    if let Some(ret) = &r.retention {
        let retained = family(
            &mut reg,
            "migrate_slot_retained_bytes",
            "WAL a replication slot keeps, from its restart_lsn",
        );
        let active = family(
            &mut reg,
            "migrate_slot_active",
            "1 when something streams from the slot",
        );
        let free = family(
            &mut reg,
            "migrate_node_free_wal_bytes",
            "Free space of the file system holding the node's pg_wal",
        );
        let over = family(
            &mut reg,
            "migrate_node_retention_over_limit",
            "1 when the node's slots retain more than bake.max_retained",
        );
        for n in &ret.nodes {
            let node = labels(&[("node", &n.node)]);
            if let Some(b) = n.free_wal_bytes {
                free.get_or_create(&node).set(bytes(b));
            }
            if let Some(o) = n.over_limit {
                over.get_or_create(&node).set(i64::from(o));
            }
            for s in &n.slots {
                let l = labels(&[("node", &n.node), ("slot", &s.slot)]);
                active.get_or_create(&l).set(i64::from(s.active));
                if let Some(b) = s.retained_bytes {
                    retained.get_or_create(&l).set(bytes(b));
                }
            }
        }
    }
    let primary = family(
        &mut reg,
        "migrate_node_primary",
        "1 when the node answers as a writable primary, 0 as a standby; absent when down",
    );
    for n in &r.topology {
        match n.state.as_str() {
            "primary" => primary.get_or_create(&labels(&[("node", &n.node)])).set(1),
            "standby" => primary.get_or_create(&labels(&[("node", &n.node)])).set(0),
            _ => 0,
        };
    }
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

/// Serve [`render`] of a fresh `status` report at `http://addr/metrics` (a thread beside the
/// command, on tiny_http: one small dependency for one endpoint), until the process ends. Each
/// scrape samples the nodes, as `status` does.
pub fn serve(addr: std::net::SocketAddr, spec_path: std::path::PathBuf) -> Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let answer = if request.url() == "/metrics" {
                let body = runtime.block_on(async {
                    let spec = crate::spec::load(&spec_path)?;
                    let arg = spec_path.display().to_string();
                    match super::status::gather(&spec, &arg).await? {
                        Some(r) => render(&r),
                        None => Ok("# no run yet\n".to_string()),
                    }
                });
                match body {
                    Ok(text) => tiny_http::Response::from_string(text).with_header(
                        tiny_http::Header::from_bytes(
                            "Content-Type",
                            "text/plain; version=0.0.4; charset=utf-8",
                        )
                        .expect("a valid header"),
                    ),
                    Err(e) => {
                        tiny_http::Response::from_string(crate::redact::redact(&format!("{e:#}")))
                            .with_status_code(500)
                    }
                }
            } else {
                tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
            };
            let _ = request.respond(answer);
        }
    });
    Ok(())
}
