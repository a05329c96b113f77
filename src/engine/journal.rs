//! The journal: append-only JSON Lines, one record per event, each fsynced before the side
//! effect it announces.
//!
//! A line is `{"seq":N,"ts":"…","event":{…},"crc":"xxxxxxxx"}` where `crc` is the CRC-32 of the
//! line's text without its `,"crc":"…"` suffix (closing brace kept). The reader tolerates a torn
//! last line (a crash mid-write), reports it, and ignores it; a bad line anywhere else is
//! corruption and is refused with its line number.

use std::fs::File;
use std::io::{Seek, Write};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::Kind;
pub use super::model::Outcome;

pub const FORMAT_VERSION: u32 = 1;
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// One planned step as recorded in the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub id: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Header {
        format: u32,
        run_id: String,
        /// Which plan this run executes (`cutover`, …); `resume` rebuilds it from this name.
        operation: String,
        spec_hash: String,
        tool_version: String,
        steps: Vec<PlannedStep>,
        /// The first `keep` steps are not undone by an automatic abort (the chain a cutover
        /// builds); an operator's `rollback` undoes them too. Absent in format-1 journals
        /// written before it existed, which means 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        keep: usize,
    },
    /// A process began (or resumed) work on the run.
    RunStarted {
        pid: u32,
        command: String,
    },
    StepStarted {
        step: String,
        /// Where it runs and what it does (the plan's description; no secrets).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        host: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        action: String,
    },
    StepSucceeded {
        step: String,
        output: Value,
        /// Measured by the runner around `apply`; `None` when a probe found the step done.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        elapsed_ms: Option<u64>,
    },
    StepFailed {
        step: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        elapsed_ms: Option<u64>,
    },
    /// Recorded just before the first side effect that cannot be undone.
    PointOfNoReturn {
        step: String,
    },
    CompensationStarted {
        step: String,
    },
    CompensationFinished {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        elapsed_ms: Option<u64>,
    },
    CompensationFailed {
        step: String,
        error: String,
    },
    RunFinished {
        outcome: Outcome,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Event {
    /// The step this event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Event::StepStarted { step, .. }
            | Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::PointOfNoReturn { step }
            | Event::CompensationStarted { step }
            | Event::CompensationFinished { step, .. }
            | Event::CompensationFailed { step, .. } => Some(step),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Event::Header { .. } => "header",
            Event::RunStarted { .. } => "run_started",
            Event::StepStarted { .. } => "step_started",
            Event::StepSucceeded { .. } => "step_succeeded",
            Event::StepFailed { .. } => "step_failed",
            Event::PointOfNoReturn { .. } => "point_of_no_return",
            Event::CompensationStarted { .. } => "compensation_started",
            Event::CompensationFinished { .. } => "compensation_finished",
            Event::CompensationFailed { .. } => "compensation_failed",
            Event::RunFinished { .. } => "run_finished",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    pub event: Event,
}

const CRC_PREFIX: &str = ",\"crc\":\"";

pub fn encode(record: &Record) -> Result<String> {
    let body = serde_json::to_string(record)?;
    let crc = crc32fast::hash(body.as_bytes());
    let open = &body[..body.len() - 1];
    Ok(format!("{open}{CRC_PREFIX}{crc:08x}\"}}"))
}

#[derive(Debug)]
pub enum LineError {
    /// Not a complete, well-formed line: the expected result of a crash mid-append.
    Torn,
    Checksum,
    Json(String),
}

pub fn decode(line: &str) -> Result<Record, LineError> {
    // `…,"crc":"xxxxxxxx"}` is exactly 19 characters after the body's last field.
    let Some(idx) = line.rfind(CRC_PREFIX) else {
        return Err(LineError::Torn);
    };
    let tail = &line[idx + CRC_PREFIX.len()..];
    if tail.len() != 10 || !tail.ends_with("\"}") {
        return Err(LineError::Torn);
    }
    let crc = u32::from_str_radix(&tail[..8], 16).map_err(|_| LineError::Torn)?;
    let body = format!("{}}}", &line[..idx]);
    if crc32fast::hash(body.as_bytes()) != crc {
        return Err(LineError::Checksum);
    }
    serde_json::from_str(&body).map_err(|e| LineError::Json(e.to_string()))
}

/// What [`read`] found.
#[derive(Debug)]
pub struct Contents {
    pub records: Vec<Record>,
    /// A torn last line was found and ignored (1-based line number).
    pub torn_tail: Option<usize>,
    /// Bytes of the file that hold complete records (where the next append belongs).
    pub valid_len: usize,
    /// The last record is complete but its newline was never written.
    pub missing_newline: bool,
}

pub fn read(path: &Path) -> Result<Contents> {
    let bytes =
        super::state_dir::read(path).with_context(|| format!("read journal {}", path.display()))?;
    parse(&bytes, path)
}

pub fn parse(bytes: &[u8], path: &Path) -> Result<Contents> {
    let mut records = Vec::new();
    let mut torn_tail = None;
    let mut valid_len = 0;
    let mut missing_newline = false;
    let mut offset = 0;
    let mut number = 0;
    while offset < bytes.len() {
        number += 1;
        let (line, terminated, next) = match bytes[offset..].iter().position(|b| *b == b'\n') {
            Some(i) => (&bytes[offset..offset + i], true, offset + i + 1),
            None => (&bytes[offset..], false, bytes.len()),
        };
        let decoded = std::str::from_utf8(line)
            .map_err(|_| LineError::Torn)
            .and_then(decode);
        match decoded {
            Ok(r) => {
                if r.seq != records.len() as u64 {
                    bail!(
                        "journal {} is corrupt at line {number}: sequence number {} where {} was expected",
                        path.display(),
                        r.seq,
                        records.len()
                    );
                }
                records.push(r);
                valid_len = next;
                missing_newline = !terminated;
            }
            // Only the last line can have been torn by a crash mid-append: without its newline,
            // or with one but a bad checksum (the file grew before all its bytes reached the
            // disk). A bad line with records after it is corruption.
            Err(_) if !terminated || next >= bytes.len() => torn_tail = Some(number),
            Err(e) => bail!(
                "journal {} is corrupt at line {number}: {}; it is the run's only record, so it is not repaired automatically (keep a copy, then fix or remove that line by hand)",
                path.display(),
                match e {
                    LineError::Torn => "the line is incomplete".to_string(),
                    LineError::Checksum => "the checksum does not match".to_string(),
                    LineError::Json(m) => format!("the record does not parse ({m})"),
                }
            ),
        }
        offset = next;
    }
    Ok(Contents {
        records,
        torn_tail,
        valid_len,
        missing_newline,
    })
}

/// The open journal of a run. Appends are written and fsynced before returning.
pub struct Journal {
    path: PathBuf,
    file: File,
    next_seq: u64,
}

impl Journal {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create a new journal holding only the header: the file and its directory are fsynced.
    pub fn create(dir: &Path, header: Event) -> Result<Journal> {
        ensure_state_dir(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let file = super::state_dir::options()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("create journal {}", path.display()))?;
        let mut j = Journal {
            path,
            file,
            next_seq: 0,
        };
        j.append(header)?;
        File::open(dir)?
            .sync_all()
            .with_context(|| format!("fsync {}", dir.display()))?;
        Ok(j)
    }

    /// Open an existing journal for appending: a torn tail (if any) is cut off, a missing
    /// final newline restored.
    pub fn open(dir: &Path) -> Result<(Journal, Contents)> {
        let path = dir.join(JOURNAL_FILE);
        let contents = read(&path)?;
        let mut file = super::state_dir::options()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open journal {}", path.display()))?;
        if contents.torn_tail.is_some() {
            file.set_len(contents.valid_len as u64)?;
        }
        file.seek(std::io::SeekFrom::End(0))?;
        if contents.missing_newline {
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
        let next_seq = contents.records.len() as u64;
        Ok((
            Journal {
                path,
                file,
                next_seq,
            },
            contents,
        ))
    }

    pub fn append(&mut self, event: Event) -> Result<Record> {
        let record = Record {
            seq: self.next_seq,
            ts: Utc::now(),
            event,
        };
        // No secret reaches the disk, whoever wrote the text (a plugin's answer, an error).
        let mut line = encode(&record)?;
        if crate::redact::redact(&line) != line {
            line = encode(&redacted(&record)?)?;
        }
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("append to {}", self.path.display()))?;
        self.file
            .sync_data()
            .with_context(|| format!("fsync {}", self.path.display()))?;
        self.next_seq += 1;
        Ok(record)
    }
}

/// The record with every remembered secret masked in its text (re-encoded, so the checksum
/// covers what is written).
fn redacted(record: &Record) -> Result<Record> {
    let json = serde_json::to_string(record)?;
    Ok(serde_json::from_str(&crate::redact::redact(&json))?)
}

/// The state directory: created 0700, or checked (see [`super::state_dir`]).
pub fn ensure_state_dir(dir: &Path) -> Result<()> {
    super::state_dir::ensure(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::PermissionsExt;

    fn rec(seq: u64, event: Event) -> Record {
        Record {
            seq,
            ts: Utc::now(),
            event,
        }
    }

    fn lines(records: &[Record]) -> String {
        records.iter().map(|r| encode(r).unwrap() + "\n").collect()
    }

    fn sample() -> Vec<Record> {
        vec![
            rec(
                0,
                Event::RunStarted {
                    pid: 1,
                    command: "x".into(),
                },
            ),
            rec(
                1,
                Event::StepStarted {
                    step: "a".into(),
                    host: String::new(),
                    action: String::new(),
                },
            ),
            rec(
                2,
                Event::StepSucceeded {
                    step: "a".into(),
                    output: serde_json::json!({"lsn": "0/3000060"}),
                    elapsed_ms: Some(12),
                },
            ),
        ]
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let c = parse(lines(&r).as_bytes(), Path::new("j")).unwrap();
        assert_eq!(c.records, r);
        assert_eq!(c.torn_tail, None);
    }

    #[test]
    fn torn_last_line_is_reported_and_ignored() {
        let r = sample();
        let full = lines(&r);
        for cut in [
            1,
            10,
            full.trim_end().len() - encode(&r[2]).unwrap().len() + 20,
            full.len() - 2,
        ] {
            let c = parse(&full.as_bytes()[..cut.min(full.len() - 1)], Path::new("j")).unwrap();
            assert!(c.torn_tail.is_some(), "cut at {cut}");
            assert!(c.records.len() < 3);
        }
    }

    #[test]
    fn corrupt_middle_line_is_refused_with_its_number() {
        let r = sample();
        let text = lines(&r).replacen("\"a\"", "\"b\"", 1);
        let err = parse(text.as_bytes(), Path::new("j"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("checksum"), "{err}");
        let text = lines(&r).replacen('\n', "garbage\n", 1);
        let err = parse(text.as_bytes(), Path::new("j"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn a_newline_terminated_last_line_with_a_bad_checksum_is_a_tear() {
        // The file's length reached the disk before all of the append's bytes did: only the
        // last record can be in that state, so it is the append that was in flight.
        let r = sample();
        let text = lines(&r).replace("0/3000060", "0/3000061");
        let c = parse(text.as_bytes(), Path::new("j")).unwrap();
        assert_eq!(c.torn_tail, Some(3));
        assert_eq!(c.records, r[..2]);
        // The same damage with a record after it is corruption.
        let mut more = text.clone();
        more.push_str(
            &(encode(&rec(
                3,
                Event::RunFinished {
                    outcome: Outcome::Completed,
                },
            ))
            .unwrap()
                + "\n"),
        );
        let err = parse(more.as_bytes(), Path::new("j"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn sequence_gaps_are_corruption() {
        let mut r = sample();
        r.remove(1);
        let err = parse(lines(&r).as_bytes(), Path::new("j"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sequence number 2"), "{err}");
    }

    #[test]
    fn a_remembered_secret_never_reaches_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let header = Event::Header {
            format: FORMAT_VERSION,
            run_id: "r".into(),
            operation: "test".into(),
            spec_hash: "h".into(),
            tool_version: "0".into(),
            steps: vec![],
            keep: 0,
        };
        crate::redact::remember("Journal-Secret-\"7\"");
        let mut j = Journal::create(&state, header).unwrap();
        j.append(Event::StepFailed {
            step: "point".into(),
            error: "the plugin said: token Journal-Secret-\"7\" refused".into(),
            elapsed_ms: None,
        })
        .unwrap();
        drop(j);
        let bytes = std::fs::read_to_string(state.join(JOURNAL_FILE)).unwrap();
        assert!(!bytes.contains("Journal-Secret"), "{bytes}");
        assert!(bytes.contains(crate::redact::MASK), "{bytes}");
        // Still a valid journal: the checksum covers what was written.
        let (_, contents) = Journal::open(&state).unwrap();
        assert_eq!(contents.records.len(), 2);
        assert!(contents.torn_tail.is_none());
    }

    #[test]
    fn appends_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let header = Event::Header {
            format: FORMAT_VERSION,
            run_id: "r".into(),
            operation: "test".into(),
            spec_hash: "h".into(),
            tool_version: "0".into(),
            steps: vec![],
            keep: 0,
        };
        let mut j = Journal::create(&state, header).unwrap();
        j.append(Event::StepStarted {
            step: "a".into(),
            host: String::new(),
            action: String::new(),
        })
        .unwrap();
        drop(j);
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(state.join(JOURNAL_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // Simulate a crash mid-append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(state.join(JOURNAL_FILE))
            .unwrap();
        f.write_all(b"{\"seq\":2,\"ts\":\"20").unwrap();
        let (mut j, c) = Journal::open(&state).unwrap();
        assert_eq!(c.torn_tail, Some(3));
        assert_eq!(c.records.len(), 2);
        j.append(Event::StepSucceeded {
            step: "a".into(),
            output: Value::Null,
            elapsed_ms: None,
        })
        .unwrap();
        let c = read(&state.join(JOURNAL_FILE)).unwrap();
        assert_eq!(c.records.len(), 3);
        assert_eq!(c.torn_tail, None);
        // A complete record whose newline was lost: kept, and the next append starts a new line.
        let path = state.join(JOURNAL_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let (mut j, c) = Journal::open(&state).unwrap();
        assert!(c.missing_newline && c.torn_tail.is_none() && c.records.len() == 3);
        j.append(Event::RunFinished {
            outcome: Outcome::Completed,
        })
        .unwrap();
        let c = read(&path).unwrap();
        assert_eq!(c.records.len(), 4);
    }
}
