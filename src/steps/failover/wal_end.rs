//! Where the lost primary's WAL ends, read from its own disk when its host still answers:
//! every commit it acknowledged was flushed there first, so the end of its valid WAL bounds
//! what the new primary can be missing.
//!
//! The control file gives a record to start from (the latest checkpoint; after a promotion
//! not yet checkpointed, the newest timeline's switch point from its history file), and
//! `pg_waldump` reads forward from there until the WAL stops being valid. Its last record and
//! its closing error give the end (the parsers are pure and unit-tested).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::host::Cmd;
use crate::pg::Lsn;
use crate::steps::member::Member;

/// How long reading a checkpoint interval of WAL may take.
const WALDUMP_LIMIT: Duration = Duration::from_secs(300);

const XLOG_BLCKSZ: u64 = 8192;
const SHORT_PAGE_HEADER: u64 = 24;
const LONG_PAGE_HEADER: u64 = 40;

/// What the control file and the newest history file say, in one call.
const INSPECT: &str = r#"d=$1; ctl=$2
LC_ALL=C "$ctl" -D "$d" || exit 3
h=$(ls -- "$d/pg_wal" | grep -E '^[0-9A-F]{8}\.history$' | sort | tail -n 1)
echo "history=$h"
if [ -n "$h" ]; then cat -- "$d/pg_wal/$h"; fi"#;

/// The end of the lost primary's WAL, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEnd {
    pub lsn: Lsn,
    pub timeline: u32,
    /// The control file's state ("shut down", "in production" after a crash).
    pub state: String,
}

/// Read it on `m`'s host (its server must be down: a running one still writes).
pub async fn read(m: &Member) -> Result<WalEnd> {
    let server = m.server()?;
    let data = m.node.data_dir.display().to_string();
    let out = m
        .host
        .run_ok(&Cmd::new([
            "sh".to_string(),
            "-c".into(),
            INSPECT.into(),
            "migrate-wal-end".into(),
            data.clone(),
            server.tool("pg_controldata"),
        ]))
        .await
        .context("read the control file")?;
    let (start, segment) = start_point(&out.stdout_text())?;
    let dump = m
        .host
        .run(
            &Cmd::new([
                "sh".to_string(),
                "-c".into(),
                "\"$1\" -p \"$2\" -t \"$3\" -s \"$4\" 2>&1 | tail -n 3".into(),
                "migrate-wal-end".into(),
                server.tool("pg_waldump"),
                format!("{data}/pg_wal"),
                start.timeline.to_string(),
                start.lsn.to_string(),
            ])
            .timeout(WALDUMP_LIMIT),
        )
        .await
        .context("pg_waldump")?;
    let text = dump.stdout_text();
    let end = dump_end(&text, segment).ok_or_else(|| {
        anyhow!(
            "pg_waldump found no WAL record after {}: {}",
            start.lsn,
            text.trim()
        )
    })?;
    Ok(WalEnd {
        lsn: end.max(start.lsn),
        timeline: start.timeline,
        state: start.state,
    })
}

/// Where to start reading, from INSPECT's output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Start {
    lsn: Lsn,
    timeline: u32,
    state: String,
}

/// Pure: the record to start from and the WAL segment size.
fn start_point(text: &str) -> Result<(Start, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or_else(|| anyhow!("pg_controldata printed no {name:?}"))
    };
    let state = field("Database cluster state:")?;
    let checkpoint: Lsn = field("Latest checkpoint location:")?
        .parse()
        .map_err(|e: String| anyhow!(e))?;
    let timeline: u32 = field("Latest checkpoint's TimeLineID:")?.parse()?;
    let segment: u64 = field("Bytes per WAL segment:")?.parse()?;
    let mut start = Start {
        lsn: checkpoint,
        timeline,
        state,
    };
    // A timeline newer than the checkpoint's: promoted, and not checkpointed since. Its WAL
    // begins at the switch point, the last line of its history file.
    if let Some(name) = field("history=").ok().filter(|h| !h.is_empty()) {
        let newest = u32::from_str_radix(name.trim_end_matches(".history"), 16)
            .with_context(|| format!("history file {name:?}"))?;
        if newest > timeline {
            let after = text
                .split_once(&format!("history={name}"))
                .map(|(_, a)| a)
                .unwrap_or("");
            let switch = after
                .lines()
                .filter_map(|l| l.split('\t').nth(1))
                .filter_map(|l| l.trim().parse::<Lsn>().ok())
                .next_back()
                .ok_or_else(|| anyhow!("history file {name} has no switch point"))?;
            start = Start {
                lsn: switch,
                timeline: newest,
                ..start
            };
        }
    }
    if segment == 0 || segment % XLOG_BLCKSZ != 0 {
        bail!("pg_controldata says the WAL segment size is {segment}");
    }
    Ok((start, segment))
}

/// Pure: the end of valid WAL from the last lines of `pg_waldump`: the end of its last
/// record (page headers counted), or the position its closing error names, whichever is later.
fn dump_end(text: &str, segment: u64) -> Option<Lsn> {
    let mut end = None::<Lsn>;
    for line in text.lines() {
        if let Some(rec) = record(line) {
            end = Some(record_end(rec.0, rec.1, segment));
        }
    }
    // "error in WAL record at A: invalid record length at B: wanted 24, got 0": B is where
    // the next record would have begun.
    let named = text
        .lines()
        .filter(|l| l.contains("error"))
        .flat_map(|l| l.split(" at ").skip(1))
        .filter_map(|rest| rest.split([':', ' ', ',']).next()?.parse::<Lsn>().ok())
        .max();
    match (end, named) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `lsn: 0/01526058` and `len (rec/tot): 405/ 405` of one record line.
fn record(line: &str) -> Option<(Lsn, u64)> {
    let lsn = line
        .split("lsn: ")
        .nth(1)?
        .split(',')
        .next()?
        .parse()
        .ok()?;
    let tot = line
        .split("len (rec/tot):")
        .nth(1)?
        .split(',')
        .next()?
        .split('/')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((lsn, tot))
}

/// Pure: where a record of `len` bytes starting at `start` ends, counting the page headers it
/// crosses (long at a segment's start), aligned to 8 bytes as the next record starts.
fn record_end(start: Lsn, len: u64, segment: u64) -> Lsn {
    let mut pos = start.0;
    let mut left = len;
    loop {
        let page_end = (pos / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ;
        if left <= page_end - pos {
            pos += left;
            break;
        }
        left -= page_end - pos;
        pos = page_end
            + if page_end % segment == 0 {
                LONG_PAGE_HEADER
            } else {
                SHORT_PAGE_HEADER
            };
    }
    Lsn(pos.div_ceil(8) * 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn the_end_is_the_last_record_or_the_closing_error() {
        // pg_waldump 15 after an immediate shutdown (this machine, 2026-12-02).
        let text = "rmgr: Heap        len (rec/tot):     59/    59, tx:        724, lsn: 0/01526018, prev 0/01525FC0, desc: INSERT off 96\n\
            rmgr: Transaction len (rec/tot):    405/   405, tx:        724, lsn: 0/01526058, prev 0/01526018, desc: COMMIT 2026-12-02\n\
            pg_waldump: error: error in WAL record at 0/1526058: invalid record length at 0/15261F0: wanted 24, got 0\n";
        assert_eq!(dump_end(text, SEG), Some("0/15261F0".parse().unwrap()));
        // Without the error line, the record's own end (0x1526058 + 405, aligned).
        let first_two: String = text.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(
            dump_end(&first_two, SEG),
            Some("0/15261F0".parse().unwrap())
        );
        // An error that names no position (a recycled segment): the record decides.
        let recycled = format!("{first_two}\npg_waldump: error: invalid magic number 0000 in log segment 000000010000000000000001, offset 0\n");
        assert_eq!(dump_end(&recycled, SEG), Some("0/15261F0".parse().unwrap()));
        assert_eq!(
            dump_end("pg_waldump: error: could not find file", SEG),
            None
        );
    }

    #[test]
    fn a_record_across_pages_counts_their_headers() {
        // 100 bytes starting 40 bytes before a page end: 60 more on the next page, after its
        // 24-byte header.
        let start = Lsn(3 * XLOG_BLCKSZ - 40);
        assert_eq!(record_end(start, 100, SEG), Lsn(3 * XLOG_BLCKSZ + 24 + 64));
        // Across a segment boundary the header is the long one.
        let start = Lsn(SEG - 8);
        assert_eq!(record_end(start, 24, SEG), Lsn(SEG + 40 + 16));
        // Within one page: start + len, aligned.
        assert_eq!(record_end(Lsn(0x100), 13, SEG), Lsn(0x110));
    }

    #[test]
    fn the_start_is_the_checkpoint_or_a_newer_timelines_switch_point() {
        let ctl = "Database cluster state:               in production\n\
            Latest checkpoint location:           0/1500718\n\
            Latest checkpoint's TimeLineID:       1\n\
            Bytes per WAL segment:                16777216\n";
        let (s, seg) = start_point(&format!("{ctl}history=\n")).unwrap();
        assert_eq!(
            (s.lsn, s.timeline, seg),
            ("0/1500718".parse().unwrap(), 1, SEG)
        );
        assert_eq!(s.state, "in production");
        // Promoted to timeline 2 at 0/3000148 and crashed before a checkpoint on it.
        let promoted =
            format!("{ctl}history=00000002.history\n1\t0/3000148\tno recovery target specified\n");
        let (s, _) = start_point(&promoted).unwrap();
        assert_eq!((s.lsn, s.timeline), ("0/3000148".parse().unwrap(), 2));
        // A history file of the checkpoint's own timeline changes nothing.
        let current = ctl.replace("TimeLineID:       1", "TimeLineID:       2");
        let (s, _) = start_point(&format!(
            "{current}history=00000002.history\n1\t0/3000148\tx\n"
        ))
        .unwrap();
        assert_eq!((s.lsn, s.timeline), ("0/1500718".parse().unwrap(), 2));
        assert!(start_point("Datenbank-Cluster-Status: heruntergefahren").is_err());
    }
}
