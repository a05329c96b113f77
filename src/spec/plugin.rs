//! What route plugins and the fence plugin share: a program with its arguments, a time limit,
//! the variables of migrate's environment it gets, and a table handed to it as JSON.

use std::time::Duration;

use serde::Deserialize;

use super::{values, SpecError, Validator};

/// `[failover]`: the emergency promotion when the primary is lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failover {
    /// Run to fence a lost primary whose host does not answer (power the VM off through the
    /// hypervisor's API, cut its switch port); without one, `failover` needs `--no-fence`.
    pub fence: Option<Plugin>,
}

/// An external program speaking one JSON request on stdin, one JSON answer on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    pub command: Vec<String>,
    pub timeout: Duration,
    /// The variables of migrate's environment the plugin gets (its secrets); it gets no other
    /// but PATH, HOME, the locale and the like.
    pub env: Vec<String>,
    pub config: serde_json::Value,
}

/// `[[hook]]`: told of every run event (one JSON object), or, with `gate`, asked before the
/// cutover holds clients (a change-management go / no-go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub target: HookTarget,
    pub timeout: Duration,
    pub env: Vec<String>,
    pub gate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookTarget {
    /// An executable: the event on stdin; exit 0 (and, for a gate, `{"ok": true}`) is yes.
    Command(Vec<String>),
    /// An HTTP(S) URL: the event POSTed as JSON; a 2xx answer (and, for a gate,
    /// `{"ok": true}`) is yes.
    Url(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub command: Option<Vec<String>>,
    pub url: Option<String>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub gate: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    pub fence: Option<RawPlugin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub command: Vec<String>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub config: Option<toml::Table>,
}

impl Validator {
    pub(super) fn failover(&self, raw: RawFailover) -> Result<Failover, SpecError> {
        let fence = match raw.fence {
            None => None,
            Some(p) => Some(Plugin {
                command: self.plugin_command("failover.fence", p.command)?,
                timeout: self.bounded(
                    "failover.fence.timeout",
                    p.timeout,
                    Duration::from_secs(60),
                    values::Bounds::new(values::SECOND, values::HOUR),
                )?,
                env: self.plugin_env("failover.fence", p.env)?,
                config: self.plugin_config("failover.fence", p.config)?,
            }),
        };
        Ok(Failover { fence })
    }

    pub(super) fn hooks(&self, raw: Vec<RawHook>) -> Result<Vec<Hook>, SpecError> {
        raw.into_iter()
            .enumerate()
            .map(|(i, h)| {
                let f = format!("hook[{i}]");
                let target = match (h.command, h.url) {
                    (Some(c), None) => HookTarget::Command(self.plugin_command(&f, c)?),
                    (None, Some(u)) => {
                        self.plain_text(&format!("{f}.url"), &u, "URL")?;
                        let ok = reqwest::Url::parse(&u).is_ok_and(|p| {
                            matches!(p.scheme(), "http" | "https") && p.host().is_some()
                        });
                        if !ok {
                            return Err(self.err(
                                format!("{f}.url"),
                                format!("{u:?} is not an http(s) URL"),
                                "write e.g. url = \"https://hooks.example.net/migrate\"",
                            ));
                        }
                        HookTarget::Url(u)
                    }
                    _ => {
                        return Err(self.err(
                            f,
                            "a hook needs exactly one of command and url",
                            "give command = [\"/path/to/program\"] or url = \"https://…\"",
                        ))
                    }
                };
                Ok(Hook {
                    target,
                    timeout: self.bounded(
                        &format!("{f}.timeout"),
                        h.timeout,
                        Duration::from_secs(10),
                        values::Bounds::new(values::SECOND, 10 * values::MINUTE),
                    )?,
                    env: self.plugin_env(&f, h.env)?,
                    gate: h.gate,
                })
            })
            .collect()
    }

    /// A plugin's argv: not empty, no control characters, a relative path to a program taken
    /// from the spec's folder.
    pub(super) fn plugin_command(
        &self,
        f: &str,
        mut command: Vec<String>,
    ) -> Result<Vec<String>, SpecError> {
        if command.is_empty() {
            return Err(self.err(
                format!("{f}.command"),
                "empty command",
                "give the plugin's argv, e.g. [\"/usr/local/bin/srx-nat\", \"--site\", \"dc2\"]",
            ));
        }
        if command[0].contains('/') {
            command[0] = self
                .relative_to_spec(std::path::Path::new(&command[0]))
                .display()
                .to_string();
        }
        for (j, arg) in command.iter().enumerate() {
            self.plain_text(&format!("{f}.command[{j}]"), arg, "argument")?;
        }
        if command[0].trim().is_empty() {
            return Err(self.err(
                format!("{f}.command[0]"),
                "the program is empty",
                "give the plugin's path or its name on PATH as the first element",
            ));
        }
        Ok(command)
    }

    /// The names of the variables a plugin gets.
    pub(super) fn plugin_env(&self, f: &str, env: Vec<String>) -> Result<Vec<String>, SpecError> {
        for (j, var) in env.iter().enumerate() {
            if !values::env_name(var) {
                return Err(self.err(
                    format!("{f}.env[{j}]"),
                    format!("{var:?} is not an environment variable name"),
                    "list variable names, e.g. env = [\"SRX_API_TOKEN\"]",
                ));
            }
        }
        Ok(env)
    }

    /// The table handed to a plugin, as JSON (an empty object when absent).
    pub(super) fn plugin_config(
        &self,
        f: &str,
        config: Option<toml::Table>,
    ) -> Result<serde_json::Value, SpecError> {
        match config {
            None => Ok(serde_json::Value::Object(Default::default())),
            Some(t) => serde_json::to_value(t).map_err(|e| {
                self.err(
                    format!("{f}.config"),
                    e.to_string(),
                    "use plain TOML values",
                )
            }),
        }
    }
}
