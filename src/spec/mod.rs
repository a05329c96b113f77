//! The migration spec: a TOML file validated once into typed values.
//!
//! Every refusal is a [`SpecError`] naming the file, the field and the fix. Passwords are only
//! accepted by reference (`{ env = "VAR" }` or `{ passfile = "PATH" }`).

mod ha;
pub mod local;
mod plugin;
mod raw;
mod route;
mod service;
pub mod values;

pub use ha::{Ha, Patroni};
pub use plugin::{Failover, Hook, HookTarget, Plugin};
pub use route::{
    DnsRoute, ExecRoute, HaProxyRoute, NatHook, NatRoute, PgBouncerRoute, PowerDnsRoute, Route,
    Target, Through,
};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use serde::Serialize;

use crate::host::HostSpec;
use crate::pg::service::Service;
use crate::pg::{Conninfo, Endpoint, SecretRef};
use crate::units::{parse_duration, parse_size};
use raw::{RawHost, RawSpec};

#[derive(Debug, thiserror::Error)]
#[error("{}: {field}: {problem}\n  fix: {fix}", values::shown(&file.display().to_string(), 4 * values::QUOTE_MAX))]
pub struct SpecError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
    pub fix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The database being moved off (the old primary).
    Primary,
    /// The future primary; its upstream is the primary.
    Target,
    /// Any other standby: cascaded from the target (local replica, DR) or an existing replica
    /// of the old primary.
    Replica,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub upstream: Option<String>,
    pub conninfo: Conninfo,
    pub password: Option<SecretRef>,
    pub data_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    /// Where the server's output goes (`pg_ctl start -l`); default `<data_dir>/migrate-server.log`,
    /// or Debian's log for a postgresql-common cluster.
    pub log_file: PathBuf,
    pub host: HostSpec,
    /// How this node's replication stream (from its upstream) must be protected.
    pub replication_tls: ReplicationTls,
    /// How its server is started and stopped.
    pub service: Service,
    /// The HA manager watching it, paused around the switchover.
    pub ha: Option<Ha>,
}

/// `replication_tls` of a node: the stream from its upstream must be verified TLS
/// (`sslmode` verify-ca or verify-full in the upstream's conninfo, which the stream inherits),
/// unless the spec says in words that this hop runs on a trusted link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationTls {
    Verify,
    None,
}

impl Node {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.name, self.conninfo.clone(), self.password.clone())
    }
}

#[derive(Debug, Clone)]
pub struct Replication {
    pub user: String,
    pub password: Option<SecretRef>,
}

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
}

#[derive(Debug, Clone)]
pub struct Cutover {
    pub window: Option<Window>,
    /// Byte lag every hop must stay under before the fence.
    pub lag_threshold: u64,
    /// How long the lag must stay under the threshold.
    pub lag_stable_for: Duration,
    pub catchup_timeout: Duration,
    /// How long the proof (target has every byte of the stopped primary) may take before the
    /// cutover is aborted and the old primary restarted.
    pub proof_timeout: Duration,
    pub promote_timeout: Duration,
    /// How long holding clients (PgBouncer `PAUSE`, which waits for open transactions) may
    /// take before the hold is given up, clients resumed and the cutover aborted.
    pub hold_timeout: Duration,
    /// What to do with the sessions that block the hold when `hold_timeout` passes.
    pub hold: HoldPolicy,
    /// What `migrate complete` does with the old primary: keep it as a standby of the new one,
    /// or stop it for good.
    pub retire: Retire,
    /// What happens to a node that cannot follow the new primary after a failover.
    pub resync: ResyncMode,
}

/// `cutover.resync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResyncMode {
    /// Re-sync it at once (pg_rewind, else a re-clone).
    Auto,
    /// Ask on a terminal; off a terminal, print the command (the default).
    Ask,
    /// Print the command only.
    Never,
}

/// Pure: `"50%"` or a size (`"20GiB"`).
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        return match p.trim().parse::<u8>() {
            Ok(n) if (1..=100).contains(&n) => Ok(Retention::Percent(n)),
            _ => Err(format!("{text:?} is not a share from 1% to 100%")),
        };
    }
    match parse_size(t)? {
        0 => Err(format!(
            "{text:?}: a limit of zero bytes would always be past"
        )),
        n => Ok(Retention::Bytes(n)),
    }
}

/// `[clone]`: how a standby's base backup crosses the link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CloneSettings {
    /// pg_basebackup `--max-rate`, in bytes per second (32 kB/s to 1 GB/s).
    pub max_rate: Option<u64>,
    /// Server-side compression (PostgreSQL 15+), decompressed by pg_basebackup.
    pub compress: Compress,
    /// Where the copy comes from.
    pub method: CloneMethod,
}

/// Where a standby's copy comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CloneMethod {
    /// A base backup streamed from the node's upstream.
    #[default]
    PgBasebackup,
    /// `pgbackrest restore --type=standby` from the operator's repository: the upstream is
    /// not read for the bulk copy; the standby then fetches the WAL since the backup with
    /// the `restore_command` pgBackRest writes, and streams from its slot.
    PgBackRest {
        stanza: String,
        /// `--config` on the cloned node's host; None: pgBackRest's default.
        config: Option<std::path::PathBuf>,
    },
}

impl CloneMethod {
    /// `pgbackrest … restore` into `data_dir`; `delta` resumes an interrupted restore (it keeps
    /// and checks what is there, copying only what is missing or differs).
    pub fn pgbackrest_restore(&self, data_dir: &Path, delta: bool) -> Option<Vec<String>> {
        let CloneMethod::PgBackRest { stanza, config } = self else {
            return None;
        };
        let mut argv = vec!["pgbackrest".to_string()];
        if let Some(c) = config {
            argv.push(format!("--config={}", c.display()));
        }
        argv.push(format!("--stanza={stanza}"));
        argv.push(format!("--pg1-path={}", data_dir.display()));
        argv.push("--type=standby".into());
        if delta {
            argv.push("--delta".into());
        }
        argv.push("restore".into());
        Some(argv)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    #[default]
    None,
    Zstd,
    Lz4,
    Gzip,
}

impl CloneSettings {
    /// The pg_basebackup arguments these settings add.
    pub fn basebackup_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(rate) = self.max_rate {
            out.push(format!("--max-rate={}k", (rate / 1024).max(32)));
        }
        match self.compress {
            Compress::None => {}
            Compress::Zstd => out.push("--compress=server-zstd".into()),
            Compress::Lz4 => out.push("--compress=server-lz4".into()),
            Compress::Gzip => out.push("--compress=server-gzip".into()),
        }
        out
    }
}

/// `[bake]`: what keeps the slots of a long bake from filling a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bake {
    /// Whether plan accepts a node that holds a migrate slot without
    /// `max_slot_wal_keep_size` (such a slot retains WAL without any bound).
    pub unbounded_slots: UnboundedSlots,
    /// When `status --check` says retention is too much.
    pub max_retained: Retention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnboundedSlots {
    /// Plan fails (the default).
    Refuse,
    /// Plan warns.
    Accept,
}

/// `bake.max_retained`: a share of the disk space left for WAL (retained + free), or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    Percent(u8),
    Bytes(u64),
}

impl Retention {
    /// Pure: whether `retained` bytes of WAL held by slots, with `free` bytes left on the WAL
    /// disk, are past this limit. A share of an unknown free space is not judged.
    pub fn exceeded(self, retained: u64, free: Option<u64>) -> Option<bool> {
        match self {
            Retention::Bytes(max) => Some(retained > max),
            Retention::Percent(p) => {
                let room = u128::from(retained) + u128::from(free?);
                Some(u128::from(retained) * 100 > room * u128::from(p))
            }
        }
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retention::Percent(p) => write!(f, "{p} % of the WAL disk"),
            Retention::Bytes(b) => write!(f, "{}", crate::units::format_bytes(*b)),
        }
    }
}

/// `cutover.hold`: what happens to sessions that keep the hold from completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldPolicy {
    /// Resume the clients and abort the cutover, naming the blocking sessions (the default).
    Abort,
    /// End the blocking sessions on the old primary, then hold again (once).
    Terminate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retire {
    Standby,
    Stop,
}

impl Cutover {
    /// The longest clients can be held: the proof and promotion time boxes plus the fence,
    /// stop and route steps (a generous minute).
    pub fn pause_budget(&self) -> Duration {
        self.hold_timeout + self.proof_timeout + self.promote_timeout + Duration::from_secs(60)
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub path: PathBuf,
    pub state_dir: PathBuf,
    pub replication: Replication,
    /// Primary first, then each node after its upstream (ties by name).
    pub nodes: Vec<Node>,
    pub cutover: Cutover,
    pub bake: Bake,
    pub clone: CloneSettings,
    pub failover: Failover,
    pub hooks: Vec<Hook>,
    pub routes: Vec<Route>,
    /// What validation allowed but an operator should hear (shown by `validate` and `plan`).
    pub warnings: Vec<String>,
}

impl Spec {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn primary(&self) -> &Node {
        &self.nodes[0]
    }
    pub fn target(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Target)
            .expect("validated: one target")
    }
    pub fn downstream_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes
            .iter()
            .filter(move |n| n.upstream.as_deref() == Some(name))
    }
}

/// Read and validate a spec file, including the files it names on this machine (secrets,
/// plugins, trust roots: see [`local`]).
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    let text = read_capped(path).map_err(|problem| SpecError {
        file: path.to_path_buf(),
        field: "(file)".into(),
        problem,
        fix: "check the path given with -f/--spec".into(),
    })?;
    let spec = parse(path, &text)?;
    local::check(&spec)?;
    local::remember_secrets(&spec);
    Ok(spec)
}

/// The most of a spec file read: far more than any real spec, and a bound for `-f /dev/zero`.
const SPEC_LIMIT: u64 = 64 << 20;

/// How long a spec that is not a regular file (a pipe, `<(…)`, a device) may take to arrive.
const SPEC_ARRIVAL: std::time::Duration = std::time::Duration::from_secs(10);

fn read_capped(path: &Path) -> Result<String, String> {
    let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    let bytes = if regular {
        read_bytes_capped(path)?
    } else {
        // Opening a FIFO nobody writes to, or reading one that stays silent, blocks for
        // ever: the read runs on a thread of its own and is given up after SPEC_ARRIVAL
        // (the thread stays blocked; the process ends without it).
        let (tx, rx) = std::sync::mpsc::channel();
        let owned = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(read_bytes_capped(&owned));
        });
        rx.recv_timeout(SPEC_ARRIVAL).map_err(|_| {
            format!(
                "the spec is not a regular file and nothing arrived from it within {}s (a named pipe without a writer?)",
                SPEC_ARRIVAL.as_secs()
            )
        })??
    };
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the spec is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn read_bytes_capped(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read the spec: {e}"))?;
    let mut bytes = Vec::new();
    f.take(SPEC_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the spec: {e}"))?;
    if bytes.len() as u64 > SPEC_LIMIT {
        return Err(format!("the spec is larger than {} MiB", SPEC_LIMIT >> 20));
    }
    Ok(bytes)
}

pub fn parse(path: &Path, text: &str) -> Result<Spec, SpecError> {
    let v = Validator {
        file: path.to_path_buf(),
        warnings: Default::default(),
    };
    let raw: RawSpec = match toml::Deserializer::parse(text) {
        Ok(de) => serde_path_to_error::deserialize(de).map_err(|e| v.serde_error(text, e))?,
        Err(e) => return Err(v.toml_error(text, &e)),
    };
    let spec = v.spec(raw)?;
    // A last look at every string, after the fields' own checks (which name the part of a
    // value that is wrong): no field can then forget one.
    if let Ok(doc) = toml::from_str::<toml::Table>(text) {
        if let Some((field, c)) = values::first_unprintable(&doc) {
            return Err(v.err(
                field,
                format!("the value contains the unprintable character {c:?}"),
                "write it without line breaks, tabs, escape or invisible formatting characters (bidirectional overrides, zero-width spaces)",
            ));
        }
    }
    Ok(spec)
}

struct Validator {
    file: PathBuf,
    /// Things that are allowed but worth saying (weak host key checking, …).
    warnings: std::cell::RefCell<Vec<String>>,
}

/// ssh options that only shape the connection; anything else is refused.
const SSH_OPTIONS: &[&str] = &[
    "AddressFamily",
    "BindAddress",
    "CertificateFile",
    "CheckHostIP",
    "Ciphers",
    "Compression",
    "ConnectionAttempts",
    "ConnectTimeout",
    "ControlMaster",
    "ControlPath",
    "ControlPersist",
    "GlobalKnownHostsFile",
    "GSSAPIAuthentication",
    "HostKeyAlgorithms",
    "HostKeyAlias",
    "HostbasedAuthentication",
    "IdentitiesOnly",
    "IdentityFile",
    "IPQoS",
    "KbdInteractiveAuthentication",
    "KexAlgorithms",
    "LogLevel",
    "MACs",
    "PasswordAuthentication",
    "PreferredAuthentications",
    "ProxyJump",
    "PubkeyAcceptedAlgorithms",
    "PubkeyAuthentication",
    "RekeyLimit",
    "ServerAliveCountMax",
    "ServerAliveInterval",
    "StrictHostKeyChecking",
    "TCPKeepAlive",
    "UpdateHostKeys",
    "UserKnownHostsFile",
    "VerifyHostKeyDNS",
];

/// ssh options that run a command (or load code) on the machine migrate runs on.
const SSH_COMMAND_OPTIONS: &[&str] = &[
    "ProxyCommand",
    "LocalCommand",
    "PermitLocalCommand",
    "KnownHostsCommand",
    "RemoteCommand",
    "PKCS11Provider",
    "SecurityKeyProvider",
    "Match",
    "Include",
];

const NODE_FIX_KNOWN_ROLES: &str = "role is one of \"primary\", \"target\", \"replica\"";

impl Validator {
    /// Every refusal goes through here: the field and the problem quote spec text, so all three
    /// are escaped (no raw control character, not even a line break, reaches a terminal) and
    /// cut to a readable length.
    fn err(
        &self,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> SpecError {
        SpecError {
            file: self.file.clone(),
            field: values::shown(&field.into(), values::QUOTE_MAX),
            problem: values::shown(&problem.into(), 4 * values::QUOTE_MAX),
            fix: values::shown(&fix.into(), 4 * values::QUOTE_MAX),
        }
    }

    /// Text that goes to a server, a config file or a command line as is.
    fn plain_text(&self, field: &str, text: &str, what: &str) -> Result<(), SpecError> {
        if let Some(c) = values::control_char(text) {
            return Err(self.err(
                field,
                format!("the {what} contains the control character {:?}", c),
                format!("write the {what} without line breaks, tabs or escape characters"),
            ));
        }
        Ok(())
    }

    /// A time limit within its bounds (see [`values::Bounds`]).
    fn bounded(
        &self,
        field: &str,
        v: Option<String>,
        default: Duration,
        bounds: values::Bounds,
    ) -> Result<Duration, SpecError> {
        let d = self.duration(field, v, default)?;
        match bounds.problem(d) {
            Some(p) => Err(self.err(field, p, bounds.fix())),
            None => Ok(d),
        }
    }

    fn warn(&self, text: String) {
        self.warnings
            .borrow_mut()
            .push(values::shown(&text, 4 * values::QUOTE_MAX));
    }

    /// One `-o Key=value` for ssh: a known option, and not one that runs a local command
    /// unless the spec says so in words.
    fn ssh_option(&self, field: &str, o: &str, allow_command: bool) -> Result<(), SpecError> {
        let f = format!("{field}.options");
        self.plain_text(&f, o, "ssh option")?;
        let Some((key, value)) = o.split_once('=') else {
            return Err(self.err(
                f,
                format!("{o:?} is not an ssh option"),
                "write options as \"Key=value\", e.g. \"StrictHostKeyChecking=yes\"",
            ));
        };
        let key = key.trim();
        if key.starts_with('-') || value.trim_start().starts_with('-') {
            return Err(self.err(
                f,
                format!("{o:?} is not an ssh option"),
                "write options as \"Key=value\"",
            ));
        }
        if SSH_COMMAND_OPTIONS
            .iter()
            .any(|k| k.eq_ignore_ascii_case(key))
        {
            if allow_command {
                return Ok(());
            }
            return Err(self.err(
                f,
                format!("{key} makes ssh run a command on this machine"),
                "remove it, or set allow_command_options = true on this host if you mean it",
            ));
        }
        if !SSH_OPTIONS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            return Err(self.err(
                f,
                format!("{key:?} is not an ssh option migrate passes on"),
                format!("use one of: {}", SSH_OPTIONS.join(", ")),
            ));
        }
        Ok(())
    }

    fn toml_error(&self, text: &str, e: &toml::de::Error) -> SpecError {
        let at = e
            .span()
            .map(|s| line_col(text, s.start))
            .unwrap_or_else(|| "(the document)".into());
        self.err(
            at,
            e.message().trim(),
            "correct the TOML syntax at that place",
        )
    }

    fn serde_error(&self, text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> SpecError {
        let path = e.path().to_string();
        let inner = e.inner();
        let msg = inner.message().trim().to_string();
        let mut field = if path == "." { String::new() } else { path };
        // For a missing key the path stops at the table that lacks it; name the key itself.
        if let Some(key) = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            field = if field.is_empty() {
                key.to_string()
            } else {
                format!("{field}.{key}")
            };
        }
        if field.is_empty() {
            field = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or_else(|| "(top level)".into());
        }
        let fix = if msg.starts_with("unknown field") {
            "remove the key or correct its spelling (see the README's spec reference)"
        } else if msg.starts_with("missing field") {
            "add the missing key (see the README's spec reference)"
        } else if msg.starts_with("unknown variant") {
            "use one of the listed values"
        } else {
            "see the README's spec reference for this key"
        };
        self.err(field, msg, fix)
    }

    fn secret(
        &self,
        field: &str,
        value: Option<toml::Value>,
    ) -> Result<Option<SecretRef>, SpecError> {
        self.secret_ref(
            field,
            value,
            ("passfile", SecretRef::Passfile),
            "reference the secret instead: { env = \"PGPASSWORD_OLD\" } or { passfile = \"/path/.pgpass\" }",
        )
    }

    /// `{ env = "VAR" }` or `{ <file_key> = "PATH" }` (relative to the spec); never inline.
    fn secret_ref(
        &self,
        field: &str,
        value: Option<toml::Value>,
        (file_key, from_path): (&str, fn(PathBuf) -> SecretRef),
        fix: &str,
    ) -> Result<Option<SecretRef>, SpecError> {
        let Some(value) = value else { return Ok(None) };
        let toml::Value::Table(t) = value else {
            return Err(self.err(field, "inline secrets are not allowed in a spec", fix));
        };
        let keys: Vec<&str> = t.keys().map(String::as_str).collect();
        match (keys.as_slice(), t.get("env"), t.get(file_key)) {
            (["env"], Some(toml::Value::String(var)), _) if values::env_name(var) => {
                Ok(Some(SecretRef::Env(var.clone())))
            }
            ([k], _, Some(toml::Value::String(p)))
                if *k == file_key && !p.is_empty() && values::control_char(p).is_none() =>
            {
                Ok(Some(from_path(self.relative_to_spec(Path::new(p)))))
            }
            _ => Err(self.err(
                field,
                format!("expected exactly one of env = \"VAR\" (a variable name: letters, digits, '_') or {file_key} = \"PATH\""),
                fix,
            )),
        }
    }

    /// `state_dir` must be a folder of its own: never `/`, the spec's folder or a parent of
    /// it, because migrate makes it 0700 and keeps journals and plans there. (Ownership and
    /// contents are checked when it is opened, see `engine::journal::ensure_state_dir`.)
    fn state_dir(&self, d: &Path) -> Result<PathBuf, SpecError> {
        self.plain_text("state_dir", &d.to_string_lossy(), "path")?;
        let dir = values::normal_path(&self.relative_to_spec(d));
        let spec_dir = values::normal_path(
            &std::path::absolute(self.relative_to_spec(Path::new("."))).unwrap_or_default(),
        );
        let abs = values::normal_path(&std::path::absolute(&dir).unwrap_or(dir.clone()));
        let home = std::env::var_os("HOME").map(|h| values::normal_path(Path::new(&h)));
        let shared = [
            "/", "/tmp", "/var/tmp", "/etc", "/var", "/usr", "/home", "/root", "/dev/shm", "/run",
        ];
        if shared.iter().any(|s| abs == Path::new(s))
            || spec_dir.starts_with(&abs)
            || home.as_deref() == Some(abs.as_path())
        {
            return Err(self.err(
                "state_dir",
                format!("{} is not a folder of its own (it holds the spec, a home or the system's files)", abs.display()),
                "give a dedicated folder, e.g. state_dir = \".migrate/<name>\" or \"/var/lib/migrate/<name>\"; migrate makes it mode 0700",
            ));
        }
        Ok(abs)
    }

    fn relative_to_spec(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn conninfo(&self, field: &str, text: &str) -> Result<Conninfo, SpecError> {
        let c = Conninfo::parse(text).map_err(|e| {
            self.err(field, e.to_string(), "write a libpq conninfo such as \"host=db1 port=5432 user=postgres dbname=postgres\" (port 1-65535)")
        })?;
        for secret in ["password", "sslpassword"] {
            if c.get(secret).is_some() {
                return Err(self.err(
                    field,
                    format!("the conninfo contains {secret}; secrets are not allowed inline"),
                    match secret {
                        "password" => "remove it from the conninfo and set the node's password = { env = \"VAR\" } or { passfile = \"PATH\" }",
                        _ => "remove sslpassword: use an unencrypted client key file of mode 0600 (sslkey = \"PATH\")",
                    },
                ));
            }
        }
        if c.get("service").is_some() {
            return Err(self.err(
                format!("{field}.service"),
                "a pg_service.conf service hides the host and port migrate must know",
                "write host, port and the other settings in the conninfo itself",
            ));
        }
        if c.get("host").is_some_and(|h| h.contains(',')) {
            return Err(self.err(
                field,
                "several hosts in one conninfo",
                "a node is one server: give one host",
            ));
        }
        for (key, value) in c.params() {
            self.plain_text(&format!("{field}.{key}"), value, "value")?;
            if let Some((allowed, fix)) = conninfo_choices(key) {
                if !allowed.contains(&value) {
                    return Err(self.err(
                        format!("{field}.{key}"),
                        format!("{value:?} is not a {key} libpq knows"),
                        fix,
                    ));
                }
            }
        }
        if let Some(a) = c.get("hostaddr") {
            if a.parse::<std::net::IpAddr>().is_err() {
                return Err(self.err(
                    format!("{field}.hostaddr"),
                    format!("{a:?} is not an IP address"),
                    "give hostaddr as a numeric address, or use host for a name",
                ));
            }
        }
        for key in ["user", "dbname"] {
            if let Some(v) = c.get(key) {
                if !values::plain_identifier(v) {
                    return Err(self.err(
                        format!("{field}.{key}"),
                        format!("{:?} is not a plain name", values::shown(v, values::QUOTE_MAX)),
                        format!("{key} must be letters, digits, '_', '-' or '.', starting with a letter or '_' (it is used in SQL, passfiles and pooler commands)"),
                    ));
                }
            }
        }
        Ok(c)
    }

    fn host(&self, field: &str, raw: RawHost) -> Result<HostSpec, SpecError> {
        Ok(match raw {
            RawHost::Local { run_as } => {
                if let Some(user) = &run_as {
                    if nix::unistd::User::from_name(user).ok().flatten().is_none() {
                        return Err(self.err(
                            format!("{field}.run_as"),
                            format!("no OS user {user:?} on this machine"),
                            "name an existing user (usually \"postgres\") or leave run_as out",
                        ));
                    }
                }
                HostSpec::Local { run_as }
            }
            RawHost::Ssh {
                host,
                port,
                user,
                identity_file,
                known_hosts,
                options,
                allow_command_options,
            } => {
                self.plain_text(&format!("{field}.host"), &host, "host")?;
                if host.trim().is_empty()
                    || host.starts_with('-')
                    || host.contains(char::is_whitespace)
                {
                    return Err(self.err(
                        format!("{field}.host"),
                        format!("{host:?} is not a host name"),
                        "give the ssh host name or address",
                    ));
                }
                if port == Some(0) {
                    return Err(self.err(
                        format!("{field}.port"),
                        "port 0 is not a port",
                        "give the sshd port (1-65535), or leave port out for 22",
                    ));
                }
                if let Some(u) = &user {
                    if !values::plain_identifier(u) {
                        return Err(self.err(
                            format!("{field}.user"),
                            format!("{u:?} is not a user name"),
                            "give the login name: letters, digits, '_', '-' or '.'",
                        ));
                    }
                }
                let mut options = options;
                for o in &options {
                    self.ssh_option(field, o, allow_command_options)?;
                }
                if let Some(k) = &known_hosts {
                    let k = self.relative_to_spec(k);
                    options.push(format!("UserKnownHostsFile={}", k.display()));
                    options.push("StrictHostKeyChecking=yes".into());
                }
                // ssh takes the first value given, so the first one here is what applies.
                let checking = options.iter().find_map(|o| {
                    o.split_once('=')
                        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("StrictHostKeyChecking"))
                        .map(|(_, v)| v.trim().to_ascii_lowercase())
                });
                let weak = checking
                    .as_deref()
                    .is_some_and(|v| ["no", "off", "false"].contains(&v));
                let strict = checking
                    .as_deref()
                    .is_some_and(|v| ["yes", "accept-new"].contains(&v));
                if weak || !strict {
                    self.warn(format!(
                        "{field}: host keys of {host} are {}checked strictly; set known_hosts = \"PATH\" (or StrictHostKeyChecking=yes) so a spoofed host cannot receive the database's secrets",
                        if weak { "NOT " } else { "not necessarily " }
                    ));
                }
                HostSpec::Ssh {
                    host,
                    port,
                    user,
                    identity_file: identity_file.map(|p| self.relative_to_spec(&p)),
                    options,
                }
            }
            RawHost::Docker {
                container,
                user,
                docker,
            } => {
                if let Some(d) = docker.as_ref().filter(|d| !d.is_absolute()) {
                    return Err(self.err(
                        format!("{field}.docker"),
                        format!("{} is not an absolute path", d.display()),
                        "give the docker client's absolute path, or leave docker out to use docker from PATH",
                    ));
                }
                if let Some(u) = user.as_ref().filter(|u| !values::plain_identifier(u)) {
                    return Err(self.err(
                        format!("{field}.user"),
                        format!("{u:?} is not a user name"),
                        "give the container user's name: letters, digits, '_', '-' or '.'",
                    ));
                }
                if container.trim().is_empty()
                    || container.starts_with('-')
                    || !container
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    return Err(self.err(
                        format!("{field}.container"),
                        format!("{container:?} is not a container name"),
                        "give the container's name or id (letters, digits, '_', '.', '-')",
                    ));
                }
                HostSpec::Docker {
                    container,
                    user,
                    docker,
                }
            }
        })
    }

    fn duration(
        &self,
        field: &str,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, SpecError> {
        match v {
            None => Ok(default),
            Some(t) => parse_duration(&t)
                .map_err(|e| self.err(field, e, "write a duration such as \"30s\" or \"2m\"")),
        }
    }

    fn timestamp(&self, field: &str, v: &str) -> Result<DateTime<FixedOffset>, SpecError> {
        DateTime::parse_from_rfc3339(v).map_err(|e| {
            self.err(
                field,
                format!("{v:?} is not an RFC 3339 time ({e})"),
                "write it with its offset, e.g. \"2026-11-28T01:00:00+01:00\" or \"2026-11-28T00:00:00Z\"",
            )
        })
    }

    fn clone_settings(&self, raw: raw::RawClone) -> Result<CloneSettings, SpecError> {
        let max_rate = match raw.max_rate.as_deref() {
            None => None,
            Some(t) => {
                let rate = parse_size(t.trim_end_matches("/s")).map_err(|e| {
                    self.err(
                        "clone.max_rate",
                        e,
                        "write a rate such as \"20MB\" (per second)",
                    )
                })?;
                if !(32 * 1024..=1024 * 1024 * 1024).contains(&rate) {
                    return Err(self.err(
                        "clone.max_rate",
                        format!("{t:?} is outside what pg_basebackup accepts"),
                        "give 32kB to 1GB per second",
                    ));
                }
                Some(rate)
            }
        };
        let compress = match raw.compress.as_deref() {
            None | Some("none") => Compress::None,
            Some("zstd") => Compress::Zstd,
            Some("lz4") => Compress::Lz4,
            Some("gzip") => Compress::Gzip,
            Some(other) => return Err(self.err(
                "clone.compress",
                format!("{other:?} is not a method"),
                "use \"none\", \"zstd\", \"lz4\" or \"gzip\" (compressed by the server, PostgreSQL 15+)",
            )),
        };
        let method = match raw.method.as_deref() {
            None | Some("pg_basebackup") => {
                for (field, given) in [
                    ("clone.stanza", raw.stanza.is_some()),
                    ("clone.config", raw.config.is_some()),
                ] {
                    if given {
                        return Err(self.err(
                            field,
                            "only pgBackRest reads it".to_string(),
                            "add method = \"pgbackrest\", or remove it",
                        ));
                    }
                }
                CloneMethod::PgBasebackup
            }
            Some("pgbackrest") => {
                for (field, given) in [
                    ("clone.max_rate", max_rate.is_some()),
                    ("clone.compress", compress != Compress::None),
                ] {
                    if given {
                        return Err(self.err(
                            field,
                            "applies to pg_basebackup, not to a pgBackRest restore".to_string(),
                            "remove it; pgBackRest's own settings (process-max, compress-type) go in its configuration",
                        ));
                    }
                }
                let Some(stanza) = raw.stanza else {
                    return Err(self.err(
                        "clone.stanza",
                        "missing: a pgBackRest restore needs the repository's stanza".to_string(),
                        "add stanza = \"<the stanza your backups of the old primary are in>\"",
                    ));
                };
                if stanza.is_empty()
                    || !stanza
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    return Err(self.err(
                        "clone.stanza",
                        format!("{stanza:?} is not a stanza name"),
                        "use letters, digits, '_', '-' and '.' only",
                    ));
                }
                if let Some(c) = raw
                    .config
                    .as_ref()
                    .filter(|c| !c.is_absolute() || c.to_str().is_none_or(|t| t.contains('\n')))
                {
                    return Err(self.err(
                        "clone.config",
                        format!("{} is not an absolute path", c.display()),
                        "give the pgBackRest configuration's absolute path on the cloned node's host",
                    ));
                }
                CloneMethod::PgBackRest {
                    stanza,
                    config: raw.config,
                }
            }
            Some(other) => {
                return Err(self.err(
                    "clone.method",
                    format!("{other:?} is not a clone method"),
                    "use \"pg_basebackup\" (the default) or \"pgbackrest\"",
                ))
            }
        };
        Ok(CloneSettings {
            max_rate,
            compress,
            method,
        })
    }

    fn bake(&self, raw: raw::RawBake) -> Result<Bake, SpecError> {
        let unbounded_slots = match raw.unbounded_slots.as_deref() {
            None | Some("refuse") => UnboundedSlots::Refuse,
            Some("accept") => UnboundedSlots::Accept,
            Some(other) => return Err(self.err(
                "bake.unbounded_slots",
                format!("{other:?} is not a choice"),
                "use \"refuse\" (plan fails while a slot could retain WAL without bound; set max_slot_wal_keep_size) or \"accept\"",
            )),
        };
        let max_retained = match raw.max_retained.as_deref() {
            None => Retention::Percent(50),
            Some(t) => parse_retention(t).map_err(|e| {
                self.err(
                    "bake.max_retained",
                    e,
                    "write a share of the WAL disk such as \"50%\" (1-100) or a size such as \"20GiB\"",
                )
            })?,
        };
        Ok(Bake {
            unbounded_slots,
            max_retained,
        })
    }

    fn cutover(&self, raw: raw::RawCutover) -> Result<Cutover, SpecError> {
        let window = match (&raw.window_start, &raw.window_end) {
            (None, None) => None,
            (Some(s), Some(e)) => {
                let start = self.timestamp("cutover.window_start", s)?;
                let end = self.timestamp("cutover.window_end", e)?;
                if end <= start {
                    return Err(self.err(
                        "cutover.window_end",
                        format!("the window ends ({e}) before it starts ({s})"),
                        "make window_end later than window_start",
                    ));
                }
                Some(Window { start, end })
            }
            (Some(_), None) => {
                return Err(self.err(
                    "cutover.window_end",
                    "window_start is set but window_end is not",
                    "set both or neither",
                ))
            }
            (None, Some(_)) => {
                return Err(self.err(
                    "cutover.window_start",
                    "window_end is set but window_start is not",
                    "set both or neither",
                ))
            }
        };
        let lag_threshold = match raw.lag_threshold {
            None => 16 << 20,
            Some(t) => parse_size(&t).map_err(|e| {
                self.err("cutover.lag_threshold", e, "write a size such as \"16MiB\"")
            })?,
        };
        let retire = match raw.retire.as_deref() {
            None | Some("standby") => Retire::Standby,
            Some("stop") => Retire::Stop,
            Some(other) => return Err(self.err(
                "cutover.retire",
                format!("{other:?} is not a retirement"),
                "use \"standby\" (keep the old primary streaming) or \"stop\" (stop it for good)",
            )),
        };
        let resync = match raw.resync.as_deref() {
            None | Some("ask") => ResyncMode::Ask,
            Some("auto") => ResyncMode::Auto,
            Some("never") => ResyncMode::Never,
            Some(other) => return Err(self.err(
                "cutover.resync",
                format!("{other:?} is not a choice"),
                "use \"auto\" (re-sync a node that cannot follow at once), \"ask\" (ask on a terminal) or \"never\" (print the command)",
            )),
        };
        let hold = match raw.hold.as_deref() {
            None | Some("abort") => HoldPolicy::Abort,
            Some("terminate") => HoldPolicy::Terminate,
            Some(other) => return Err(self.err(
                "cutover.hold",
                format!("{other:?} is not a hold policy"),
                "use \"abort\" (resume clients and abort when the hold times out) or \"terminate\" (end the sessions that block it)",
            )),
        };
        use values::{Bounds, DAY, HOUR, MINUTE, SECOND};
        Ok(Cutover {
            retire,
            resync,
            hold,
            window,
            lag_threshold,
            hold_timeout: self.bounded(
                "cutover.hold_timeout",
                raw.hold_timeout,
                10 * SECOND,
                Bounds::new(Duration::from_millis(100), 10 * MINUTE),
            )?,
            lag_stable_for: self.bounded(
                "cutover.lag_stable_for",
                raw.lag_stable_for,
                5 * SECOND,
                Bounds::new(Duration::ZERO, HOUR),
            )?,
            catchup_timeout: self.bounded(
                "cutover.catchup_timeout",
                raw.catchup_timeout,
                10 * MINUTE,
                Bounds::new(SECOND, 7 * DAY),
            )?,
            proof_timeout: self.bounded(
                "cutover.proof_timeout",
                raw.proof_timeout,
                30 * SECOND,
                Bounds::new(SECOND, HOUR),
            )?,
            // A zero here would only fail after the point of no return.
            promote_timeout: self.bounded(
                "cutover.promote_timeout",
                raw.promote_timeout,
                MINUTE,
                Bounds::new(SECOND, HOUR),
            )?,
        })
    }

    fn spec(&self, raw: RawSpec) -> Result<Spec, SpecError> {
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.err(
                "name",
                format!("{:?} is not a usable run name", raw.name),
                "use letters, digits, '-' and '_' only",
            ));
        }
        if raw.name.len() > 63 {
            return Err(self.err(
                "name",
                format!("the run name is {} characters long", raw.name.len()),
                "use at most 63 characters",
            ));
        }
        if !values::plain_identifier(&raw.replication.user) {
            return Err(self.err(
                "replication.user",
                format!("{:?} is not a usable role name", raw.replication.user),
                "name a role with the REPLICATION attribute: letters, digits, '_', '-' or '.', starting with a letter (it goes into primary_conninfo, pg_hba.conf advice and passfiles)",
            ));
        }
        let replication = Replication {
            user: raw.replication.user,
            password: self.secret("replication.password", raw.replication.password)?,
        };
        let known: Vec<String> = raw.nodes.keys().cloned().collect();
        let mut nodes = BTreeMap::new();
        for (name, rn) in raw.nodes {
            let f = format!("nodes.{name}");
            if name.is_empty()
                || name.len() > 40
                || !name.starts_with(|c: char| c.is_ascii_lowercase())
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(self.err(&f, format!("node name {name:?} is not usable (it names replication slots)"), "use lower-case letters, digits and '_', starting with a letter, at most 40 characters"));
            }
            let role = match rn.role.as_str() {
                "primary" => Role::Primary,
                "target" => Role::Target,
                "replica" => Role::Replica,
                other => {
                    return Err(self.err(
                        format!("{f}.role"),
                        format!("unknown role {other:?}"),
                        NODE_FIX_KNOWN_ROLES,
                    ))
                }
            };
            if let Some(up) = &rn.upstream {
                if !known.contains(up) {
                    return Err(self.err(
                        format!("{f}.upstream"),
                        format!("{up:?} is not a node; known nodes: {}", known.join(", ")),
                        "name one of the known nodes",
                    ));
                }
                if up == &name {
                    return Err(self.err(
                        format!("{f}.upstream"),
                        "a node cannot be its own upstream",
                        "name the node it replicates from",
                    ));
                }
            }
            for (key, p) in [
                ("data_dir", Some(&rn.data_dir)),
                ("log_file", rn.log_file.as_ref()),
                ("bin_dir", rn.bin_dir.as_ref()),
            ] {
                if let Some(p) = p {
                    self.plain_text(&format!("{f}.{key}"), &p.to_string_lossy(), "path")?;
                }
            }
            if values::normal_path(&rn.data_dir) == Path::new("/") {
                return Err(self.err(
                    format!("{f}.data_dir"),
                    "the data directory is the root directory",
                    "give the data directory's own path, e.g. /var/lib/postgresql/15/main",
                ));
            }
            if !rn.data_dir.is_absolute() {
                return Err(self.err(
                    format!("{f}.data_dir"),
                    format!("{} is not an absolute path", rn.data_dir.display()),
                    "give the data directory's absolute path on that node's host",
                ));
            }
            if rn.log_file.as_ref().is_some_and(|b| !b.is_absolute()) {
                return Err(self.err(
                    format!("{f}.log_file"),
                    "not an absolute path",
                    "give the absolute path of the server log on that host",
                ));
            }
            if rn.bin_dir.as_ref().is_some_and(|b| !b.is_absolute()) {
                return Err(self.err(
                    format!("{f}.bin_dir"),
                    "not an absolute path",
                    "give the absolute path of the PostgreSQL bin directory on that host",
                ));
            }
            let service = self.service(&format!("{f}.service"), rn.service)?;
            let ha = self.ha(&format!("{f}.ha"), rn.ha)?;
            let node = Node {
                conninfo: self.conninfo(&format!("{f}.conninfo"), &rn.conninfo)?,
                password: self.secret(&format!("{f}.password"), rn.password)?,
                host: self.host(&format!("{f}.host"), rn.host)?,
                name: name.clone(),
                role,
                upstream: rn.upstream,
                log_file: rn.log_file.clone().unwrap_or_else(|| {
                    service
                        .default_log()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| rn.data_dir.join("migrate-server.log"))
                }),
                service,
                ha,
                data_dir: rn.data_dir,
                bin_dir: rn.bin_dir,
                replication_tls: match rn.replication_tls.as_deref() {
                    None | Some("verify") => ReplicationTls::Verify,
                    Some("none") => ReplicationTls::None,
                    Some(other) => return Err(self.err(
                        format!("{f}.replication_tls"),
                        format!("{other:?} is not a TLS policy"),
                        "leave it out (the stream must be verified: sslmode=verify-ca or verify-full in the upstream's conninfo) or write \"none\" for a trusted link",
                    )),
                },
            };
            nodes.insert(name, node);
        }
        self.topology(&nodes)?;
        let ordered = order_nodes(nodes);
        let state_dir = match raw.state_dir {
            Some(d) => self.state_dir(&d)?,
            None => self.relative_to_spec(Path::new(".migrate")).join(&raw.name),
        };
        let cutover = self.cutover(raw.cutover)?;
        let bake = self.bake(raw.bake)?;
        let clone = self.clone_settings(raw.clone)?;
        let failover = self.failover(raw.failover)?;
        let hooks = self.hooks(raw.hooks)?;
        let routes: Vec<Route> = raw
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.route(i, r, &ordered, cutover.pause_budget()))
            .collect::<Result<_, _>>()?;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, r) in routes.iter().enumerate() {
            if let Some(key) = r.changes() {
                if let Some(first) = seen.insert(key.clone(), i) {
                    return Err(self.err(
                        format!("route[{i}]"),
                        format!("route[{first}] already changes {key}"),
                        "keep one route per record, rule or pooler entry",
                    ));
                }
            }
        }
        Ok(Spec {
            name: raw.name,
            path: self.file.clone(),
            state_dir,
            replication,
            nodes: ordered,
            cutover,
            bake,
            clone,
            failover,
            hooks,
            routes,
            warnings: self.warnings.take(),
        })
    }

    fn topology(&self, nodes: &BTreeMap<String, Node>) -> Result<(), SpecError> {
        let with_role = |r: Role| {
            nodes
                .values()
                .filter(|n| n.role == r)
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
        };
        let primaries = with_role(Role::Primary);
        match primaries.as_slice() {
            [_] => {}
            [] => {
                return Err(self.err(
                    "nodes",
                    "no node has role = \"primary\"",
                    "mark the database being moved off as role = \"primary\"",
                ))
            }
            many => {
                return Err(self.err(
                    format!("nodes.{}.role", many[1]),
                    format!("two primaries: {}", many.join(", ")),
                    "exactly one node is the primary (the one being moved off)",
                ))
            }
        }
        for n in nodes.values() {
            let f = format!("nodes.{}.upstream", n.name);
            match (n.role, &n.upstream) {
                (Role::Primary, Some(_)) => {
                    return Err(self.err(
                        f,
                        "the primary has no upstream",
                        "remove upstream from the primary",
                    ))
                }
                (Role::Target | Role::Replica, None) => {
                    return Err(self.err(
                        f,
                        "missing: every node but the primary replicates from an upstream",
                        "set upstream to the node it replicates from",
                    ))
                }
                _ => {}
            }
        }
        let targets = with_role(Role::Target);
        match targets.as_slice() {
            [t] => {
                let up = nodes[*t].upstream.as_deref().unwrap_or_default();
                if up != primaries[0] {
                    return Err(self.err(
                        format!("nodes.{t}.upstream"),
                        format!(
                            "the target replicates from {up:?}, not from the primary {:?}",
                            primaries[0]
                        ),
                        format!("set upstream = \"{}\" on the target", primaries[0]),
                    ));
                }
            }
            [] => {
                return Err(self.err(
                    "nodes",
                    "no node has role = \"target\"",
                    "mark the future primary as role = \"target\" with upstream = the primary",
                ))
            }
            many => {
                return Err(self.err(
                    format!("nodes.{}.role", many[1]),
                    format!("two targets: {}", many.join(", ")),
                    "exactly one node is the target (the future primary)",
                ))
            }
        }
        // Each node is walked up once: a walk stops at a node an earlier walk showed to end at
        // the primary (linear in the nodes, however deep a hostile chain).
        let mut reaches_primary = BTreeSet::new();
        for start in nodes.keys() {
            let mut seen = vec![start.as_str()];
            let mut on_walk = BTreeSet::from([start.as_str()]);
            let mut cur = start.as_str();
            while let Some(up) = nodes[cur].upstream.as_deref() {
                if reaches_primary.contains(up) {
                    break;
                }
                seen.push(up);
                if !on_walk.insert(up) {
                    return Err(self.err(
                        format!("nodes.{cur}.upstream"),
                        format!("replication cycle: {}", cycle_shown(&seen)),
                        "every chain of upstreams must end at the primary",
                    ));
                }
                cur = up;
            }
            reaches_primary.extend(seen);
        }
        let mut ports = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        for n in nodes.values() {
            // Compared in normal form: `::1` and `[0::1]`, `/srv/a/../b` and `/srv/b` agree.
            let key = (values::normal_host(n.conninfo.host()), n.conninfo.port());
            if let Some(other) = ports.insert(key.clone(), n.name.clone()) {
                return Err(self.err(
                    format!("nodes.{}.conninfo", n.name),
                    format!(
                        "{} and {} both use {}:{}",
                        other,
                        n.name,
                        n.conninfo.host(),
                        key.1
                    ),
                    "give each node its own host:port",
                ));
            }
            if !dirs.insert((values::machine(&n.host), values::normal_path(&n.data_dir))) {
                return Err(self.err(
                    format!("nodes.{}.data_dir", n.name),
                    format!(
                        "{} is used by another node on the same host",
                        n.data_dir.display()
                    ),
                    "give each node its own data directory",
                ));
            }
        }
        Ok(())
    }
}

/// The values libpq accepts for an enumerated keyword, and the fix to show when one is wrong.
fn conninfo_choices(key: &str) -> Option<(&'static [&'static str], &'static str)> {
    Some(match key {
        "sslmode" => (
            &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
            "sslmode is one of disable, allow, prefer, require, verify-ca, verify-full (verify-full across datacenters)",
        ),
        "gssencmode" => (&["disable", "prefer", "require"], "gssencmode is disable, prefer or require"),
        "channel_binding" => (&["disable", "prefer", "require"], "channel_binding is disable, prefer or require"),
        "target_session_attrs" => (
            &["any", "read-write", "read-only", "primary", "standby", "prefer-standby"],
            "target_session_attrs is any, read-write, read-only, primary, standby or prefer-standby",
        ),
        "load_balance_hosts" => (&["disable", "random"], "load_balance_hosts is disable or random"),
        "sslcompression" | "keepalives" | "sslsni" => (&["0", "1"], "write 0 or 1"),
        _ => return None,
    })
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

/// Primary first, then breadth-first down the tree, siblings by name.
fn order_nodes(mut nodes: BTreeMap<String, Node>) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    let primary = nodes
        .values()
        .find(|n| n.role == Role::Primary)
        .map(|n| n.name.clone())
        .expect("validated");
    out.push(nodes.remove(&primary).expect("present"));
    // Children by parent, siblings by name (the map is ordered): one pass, not one per parent.
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in nodes.values() {
        if let Some(up) = &n.upstream {
            children.entry(up.clone()).or_default().push(n.name.clone());
        }
    }
    let mut i = 0;
    while i < out.len() {
        for c in children.remove(&out[i].name).unwrap_or_default() {
            out.push(nodes.remove(&c).expect("present"));
        }
        i += 1;
    }
    out
}

/// A cycle's walk for a message: the nodes up to the repeat, at most a screenful of them.
fn cycle_shown(walk: &[&str]) -> String {
    const SHOWN: usize = 12;
    if walk.len() <= SHOWN {
        return walk.join(" -> ");
    }
    format!(
        "{} -> … ({} more) -> {}",
        walk[..SHOWN - 2].join(" -> "),
        walk.len() - SHOWN,
        walk[walk.len() - 2..].join(" -> ")
    )
}

#[cfg(test)]
mod mutations;
#[cfg(test)]
mod tests;
