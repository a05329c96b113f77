//! A node's `ha`: the HA manager that watches its server and must be paused while migrate
//! switches it over (else it restarts the fenced primary or fails over behind the tool's back).
//!
//! ```toml
//! ha = { kind = "repmgr", config = "/etc/repmgr.conf" }
//! ha = { kind = "patroni", url = "http://10.0.0.1:8008", cluster = "main" }
//! ha = { kind = "patroni", url = "https://…:8008", cluster = "main", username = "admin",
//!        password = { env = "PATRONI_API_PASSWORD" }, ca_file = "/etc/patroni/ca.pem" }
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{SpecError, Validator};
use crate::pg::SecretRef;

/// How a node's HA manager is reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Ha {
    /// repmgr with repmgrd: the `repmgr` program (the node's `bin_dir`, else `PATH`) run as
    /// the server's user on the node's host, with this configuration file.
    Repmgr { config: PathBuf },
    /// Patroni, through its REST API (the one `patronictl` uses).
    Patroni(Patroni),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Patroni {
    /// The member's REST API base URL.
    pub url: String,
    /// The Patroni cluster's name (`scope`): members of one cluster are paused once.
    pub cluster: String,
    pub username: Option<String>,
    #[serde(skip)]
    pub password: Option<SecretRef>,
    pub ca_file: Option<PathBuf>,
}

impl Ha {
    pub fn kind(&self) -> &'static str {
        match self {
            Ha::Repmgr { .. } => "repmgr",
            Ha::Patroni(_) => "patroni",
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawHa {
    Repmgr {
        config: PathBuf,
    },
    Patroni {
        url: String,
        cluster: String,
        username: Option<String>,
        password: Option<toml::Value>,
        ca_file: Option<PathBuf>,
        #[serde(default)]
        insecure_http: bool,
    },
}

const KEYS: &str = "kind = \"repmgr\" with config, or kind = \"patroni\" with url, cluster (and username, password, ca_file, insecure_http)";

impl Validator {
    pub(super) fn ha(
        &self,
        field: &str,
        raw: Option<toml::Value>,
    ) -> Result<Option<Ha>, SpecError> {
        let Some(raw) = raw else { return Ok(None) };
        let toml::Value::Table(table) = raw else {
            return Err(self.err(
                field,
                format!("{raw} is not an HA manager"),
                format!("write ha = {{ {KEYS} }}"),
            ));
        };
        let raw: RawHa = self.settings(field, "an HA manager", table, KEYS)?;
        Ok(Some(match raw {
            RawHa::Repmgr { config } => {
                let f = format!("{field}.config");
                self.plain_text(&f, &config.to_string_lossy(), "path")?;
                self.absolute(
                    &f,
                    &config,
                    "repmgr.conf on that node's host, e.g. /etc/repmgr.conf",
                )?;
                Ha::Repmgr { config }
            }
            RawHa::Patroni {
                url,
                cluster,
                username,
                password,
                ca_file,
                insecure_http,
            } => {
                self.api_url(
                    &format!("{field}.url"),
                    &url,
                    insecure_http,
                    ("password", "password"),
                )?;
                if !super::service::cluster_name_ok(&cluster) {
                    return Err(self.err(
                        format!("{field}.cluster"),
                        format!("\"{}\" is not a usable cluster name", super::values::shown(&cluster, super::values::QUOTE_MAX)),
                        "write the cluster's scope from patroni.yml (letters, digits, '_', '-', '.'), e.g. cluster = \"main\"",
                    ));
                }
                if let Some(u) = &username {
                    self.plain_text(&format!("{field}.username"), u, "user name")?;
                }
                let password = self.secret_ref(
                    &format!("{field}.password"),
                    password,
                    ("file", SecretRef::File),
                    "reference the REST API password: { env = \"VAR\" } or { file = \"PATH\" }",
                )?;
                if password.is_some() != username.is_some() {
                    return Err(self.err(
                        format!("{field}.username"),
                        "the REST API's basic authentication needs both username and password",
                        "give both (restapi.authentication in patroni.yml), or neither",
                    ));
                }
                if let Some(ca) = &ca_file {
                    self.absolute(&format!("{field}.ca_file"), ca, "the CA certificate (PEM)")?;
                }
                Ha::Patroni(Patroni {
                    url: url.trim_end_matches('/').to_string(),
                    cluster,
                    username,
                    password,
                    ca_file,
                })
            }
        }))
    }
}
