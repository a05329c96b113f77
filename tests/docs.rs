//! The generated completion script and manual page, loaded by the real bash and man.

use std::process::Command;

use crate::support::{migrate, text};

#[test]
fn the_bash_completion_script_loads_and_completes_subcommands() {
    let out = migrate(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("migrate.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Load it, then ask bash to complete `migrate fa`.
    let probe = format!(
        "source {}; complete -p migrate; COMP_WORDS=(migrate fa); COMP_CWORD=1; _migrate migrate fa migrate; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("-F _migrate migrate"), "{said}");
    assert!(said.lines().any(|l| l == "failover"), "{said}");
}

#[test]
fn the_manual_page_renders_with_man() {
    let out = migrate(&["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("migrate.1");
    std::fs::write(&page, &out.stdout).unwrap();
    let out = Command::new("man")
        .args(["-l", page.to_str().unwrap()])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    for want in ["NAME", "SYNOPSIS", "failover", "resync", "rehearse"] {
        assert!(page.contains(want), "{want} missing from:\n{page}");
    }
}
