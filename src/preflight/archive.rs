//! WAL archiving across the cutover: the new primary should archive where the old one did (a
//! backup repository that stops receiving WAL at the cutover breaks point-in-time recovery
//! silently), and two servers must not archive into one place on different timelines.

use super::Check;

/// One server's archiving, as `pg_settings` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archiving {
    /// `off`, `on` or `always`.
    pub mode: String,
    /// `archive_command`, or `archive_library` (PostgreSQL 15+) when set.
    pub command: String,
}

impl Archiving {
    fn archives(&self) -> bool {
        self.mode == "on" || self.mode == "always"
    }
}

/// Pure: the `archive` check. `target` is `None` when the target is not running yet (its clone
/// copies the primary's settings where they live in the data directory).
pub fn verdict(primary: &str, p: &Archiving, target: &str, t: Option<&Archiving>) -> Check {
    let id = "archive";
    let Some(t) = t else {
        return if p.archives() {
            Check::warn(
                id,
                format!("{primary} archives WAL ({}); {target} is not running yet, so its archiving cannot be read", p.command),
                format!("run plan again once {target} streams, and make sure its archive_command reaches the repository from the new datacenter"),
            )
        } else {
            Check::pass(id, format!("{primary} does not archive WAL"))
        };
    };
    if p.archives() && !t.archives() {
        return Check::warn(
            id,
            format!("{primary} archives WAL (archive_mode = {}), {target} will not (archive_mode = {}): after the cutover the repository receives no WAL", p.mode, t.mode),
            format!("set archive_mode = on and an archive_command on {target} that reaches the repository from the new datacenter (a restart)"),
        );
    }
    if t.archives() && t.command.trim().is_empty() {
        return Check::warn(
            id,
            format!("{target} has archive_mode = {} but no archive_command: WAL piles up in pg_wal after the cutover", t.mode),
            format!("set archive_command (or archive_library) on {target}, or archive_mode = off"),
        );
    }
    let same_place = p.archives() && t.archives() && p.command.trim() == t.command.trim();
    if same_place && (p.mode == "always" || t.mode == "always") {
        return Check::warn(
            id,
            format!("{primary} and {target} archive with the same command ({}) and one of them archives as a standby (archive_mode = always): two timelines go into one place", p.command),
            "give each its own archive location, or archive_mode = on (a standby with \"on\" does not archive)",
        );
    }
    if !p.archives() {
        return Check::pass(id, format!("{primary} does not archive WAL"));
    }
    Check::pass(
        id,
        format!(
            "{target} archives after the cutover (archive_mode = {}, {})",
            t.mode, t.command
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    fn a(mode: &str, command: &str) -> Archiving {
        Archiving {
            mode: mode.into(),
            command: command.into(),
        }
    }

    #[test]
    fn the_new_primary_must_archive_where_the_old_one_did() {
        let on = a("on", "pgbackrest --stanza=main archive-push %p");
        assert_eq!(verdict("old", &on, "new", Some(&on)).status, Status::Pass);
        let v = verdict("old", &on, "new", Some(&a("off", "")));
        assert_eq!(v.status, Status::Warn);
        assert!(v.message.contains("receives no WAL"), "{}", v.message);
        let none = a("off", "");
        assert_eq!(
            verdict("old", &none, "new", Some(&none)).status,
            Status::Pass
        );
        assert_eq!(verdict("old", &none, "new", None).status, Status::Pass);
        assert_eq!(verdict("old", &on, "new", None).status, Status::Warn);
    }

    #[test]
    fn two_timelines_into_one_place_and_an_empty_command_are_warned() {
        let cmd = "cp %p /archive/%f";
        let v = verdict("old", &a("always", cmd), "new", Some(&a("on", cmd)));
        assert_eq!(v.status, Status::Warn);
        assert!(v.message.contains("two timelines"), "{}", v.message);
        let v = verdict("old", &a("on", cmd), "new", Some(&a("on", "")));
        assert_eq!(v.status, Status::Warn);
        assert!(v.message.contains("no archive_command"), "{}", v.message);
    }
}
