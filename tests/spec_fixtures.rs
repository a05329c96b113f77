//! Every spec in fixtures/bad is refused with exit code 2 and a message naming the field;
//! secrets written into a bad spec never appear in any output.

use std::path::{Path, PathBuf};

use crate::support::{migrate, text};

fn fixtures(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn header(file: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string))
}

#[test]
fn every_bad_spec_is_refused_naming_the_field() {
    let bad = fixtures("bad");
    assert!(
        bad.len() >= 25,
        "expected the full set of bad specs, found {}",
        bad.len()
    );
    for file in bad {
        let expect = header(&file, "expect")
            .unwrap_or_else(|| panic!("{} lacks '# expect: FIELD'", file.display()));
        for json in [false, true] {
            let path = file.to_str().unwrap();
            let out = if json {
                migrate(&["validate", "--json", "-f", path])
            } else {
                migrate(&["validate", "-f", path])
            };
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(
                out.status.code(),
                Some(2),
                "{}: exit code; stderr: {stderr}",
                file.display()
            );
            assert!(
                stderr.contains(&expect),
                "{}: message should name {expect:?}; got: {stderr}",
                file.display()
            );
            assert!(
                stderr.contains(path),
                "{}: message should name the file; got: {stderr}",
                file.display()
            );
            assert!(
                stderr.contains("fix:"),
                "{}: message should give the fix; got: {stderr}",
                file.display()
            );
            if let Some(secret) = header(&file, "secret") {
                assert!(
                    !stdout.contains(&secret) && !stderr.contains(&secret),
                    "{}: the secret was printed",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn good_specs_validate() {
    for file in fixtures("good") {
        let out = migrate(&["validate", "-f", file.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        let out = migrate(&["validate", "--json", "-f", file.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(v["valid"], true);
        assert_eq!(v["nodes"][0]["role"], "primary");
    }
}

#[test]
fn no_spec_given_is_bad_input() {
    let out = migrate(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("-f/--spec"),
        "{}",
        text(&out.stderr)
    );
    let out = migrate(&["validate", "-f", "/nonexistent/spec.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/spec.toml"));
}
