//! The spec file exactly as written (serde, unknown keys refused). Only [`super::load`] reads
//! these; everything else uses the validated [`super::Spec`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub name: String,
    pub state_dir: Option<PathBuf>,
    pub replication: RawReplication,
    pub nodes: BTreeMap<String, RawNode>,
    #[serde(default)]
    pub cutover: RawCutover,
    #[serde(default)]
    pub bake: RawBake,
    #[serde(default)]
    pub clone: RawClone,
    #[serde(default)]
    pub failover: super::plugin::RawFailover,
    #[serde(default, rename = "hook")]
    pub hooks: Vec<super::plugin::RawHook>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    pub user: String,
    /// A table `{ env = "VAR" }` or `{ passfile = "PATH" }`; a string is refused by validation
    /// with a clear message (hence a loose type here).
    pub password: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub role: String,
    pub upstream: Option<String>,
    pub conninfo: String,
    pub password: Option<toml::Value>,
    pub data_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// `"none"`: this node may stream from its upstream without a verified TLS connection.
    pub replication_tls: Option<String>,
    /// `"pg_ctl"` or a table: see `spec/service.rs`.
    pub service: Option<toml::Value>,
    /// A table: see `spec/ha.rs`.
    pub ha: Option<toml::Value>,
    #[serde(default)]
    pub host: RawHost,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawHost {
    Local {
        run_as: Option<String>,
    },
    Ssh {
        host: String,
        port: Option<u16>,
        user: Option<String>,
        identity_file: Option<PathBuf>,
        /// An OpenSSH known_hosts file for this host; host keys are then checked strictly.
        known_hosts: Option<PathBuf>,
        #[serde(default)]
        options: Vec<String>,
        /// Options that make ssh run a local command (ProxyCommand, …) are refused unless set.
        #[serde(default)]
        allow_command_options: bool,
    },
    Docker {
        container: String,
        user: Option<String>,
        docker: Option<PathBuf>,
    },
}

impl Default for RawHost {
    fn default() -> Self {
        RawHost::Local { run_as: None }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCutover {
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    pub lag_threshold: Option<String>,
    pub lag_stable_for: Option<String>,
    pub catchup_timeout: Option<String>,
    pub proof_timeout: Option<String>,
    pub promote_timeout: Option<String>,
    pub hold_timeout: Option<String>,
    pub hold: Option<String>,
    pub retire: Option<String>,
    pub resync: Option<String>,
}

/// `[clone]`: how pg_basebackup copies a standby over the link.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClone {
    pub max_rate: Option<String>,
    pub compress: Option<String>,
    pub method: Option<String>,
    pub stanza: Option<String>,
    pub config: Option<std::path::PathBuf>,
}

/// `[bake]`: the days between the cutover and `complete`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBake {
    pub unbounded_slots: Option<String>,
    pub max_retained: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawRoute {
    pub kind: String,
    #[serde(flatten)]
    pub settings: toml::Table,
}
