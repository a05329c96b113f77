//! `rehearse --report FILE.html`: one self-contained page to look at. Per switchover, the
//! acknowledged commits per 10 ms with the write pause visible as a gap, the steps as bars on
//! the same time axis (from the run's journal), per-client pause percentiles and the
//! certificate's figures. The charts are SVG drawn by plotters; the page has no script and
//! loads nothing.
//!
//! The numbers behind each chart are also in the page as JSON (`<script
//! type="application/json" id="timeline-…">`), so a test can check the drawing against them.

use chrono::{DateTime, Utc};
use plotters::prelude::*;
use serde::Serialize;

use super::report::{Report, Switch};
use crate::steps::switchover::CertificateDoc;

/// Width of one bar of the commit histogram.
pub const BIN_MS: f64 = 10.0;
/// How much of the time before and after the pause the chart shows.
const MARGIN_MS: f64 = 1000.0;

/// One step of a switchover, as its journal timed it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepBar {
    pub id: String,
    pub from_ms: f64,
    pub to_ms: f64,
}

/// One switchover on a time axis in ms, 0 at the start of the longest gap between
/// acknowledged commits.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Timeline {
    pub name: String,
    /// The axis: `[start_ms, start_ms + bins.len() × BIN_MS)`.
    pub start_ms: f64,
    /// Acknowledged commits (all clients) per `BIN_MS`.
    pub bins: Vec<u32>,
    /// The longest gap: [0, pause_ms].
    pub pause_ms: f64,
    pub steps: Vec<StepBar>,
    #[serde(skip)]
    pub switch: Switch,
    #[serde(skip)]
    pub certificate: Option<CertificateDoc>,
}

/// Pure: the longest gap between consecutive acknowledgments that overlaps `[from, to]`:
/// its start and end.
pub fn longest_gap_at(
    acks: &[DateTime<Utc>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let mut times = acks.to_vec();
    times.sort();
    times
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .max_by_key(|w| w[1] - w[0])
        .map(|w| (w[0], w[1]))
}

/// Pure: the timeline of a switchover from every acknowledgment's time and its steps'
/// (start, end) times; None when no acknowledgment fell around it.
pub fn timeline(
    name: &str,
    acks: &[DateTime<Utc>],
    window: (DateTime<Utc>, DateTime<Utc>),
    steps: &[(String, DateTime<Utc>, DateTime<Utc>)],
) -> Option<Timeline> {
    let (gap_from, gap_to) = longest_gap_at(acks, window.0, window.1)?;
    let ms = |t: DateTime<Utc>| (t - gap_from).num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let pause_ms = ms(gap_to);
    let start_ms = -MARGIN_MS;
    let n = ((pause_ms + 2.0 * MARGIN_MS) / BIN_MS).ceil() as usize;
    let mut bins = vec![0u32; n];
    for t in acks {
        let at = ms(*t) - start_ms;
        if at >= 0.0 {
            if let Some(b) = bins.get_mut((at / BIN_MS) as usize) {
                *b += 1;
            }
        }
    }
    let end_ms = start_ms + n as f64 * BIN_MS;
    let steps = steps
        .iter()
        .map(|(id, a, b)| StepBar {
            id: id.clone(),
            from_ms: ms(*a),
            to_ms: ms(*b),
        })
        .filter(|s| s.to_ms >= start_ms && s.from_ms <= end_ms)
        .collect();
    Some(Timeline {
        name: name.to_string(),
        start_ms,
        bins,
        pause_ms,
        steps,
        ..Timeline::default()
    })
}

/// Pure: the run of empty bins the chart draws around `at_ms` (on the chart's axis, which
/// starts at `start_ms`), in ms: what the chart shows as the gap there. Not the longest
/// empty run anywhere: a stall within the margin (a busy neighbour on a two-core host) can
/// be longer than a short pause, and would be drawn as a second gap.
pub fn empty_run_at_ms(bins: &[u32], start_ms: f64, at_ms: f64) -> f64 {
    let i = ((at_ms - start_ms) / BIN_MS).floor();
    if i < 0.0 || i as usize >= bins.len() || bins[i as usize] != 0 {
        return 0.0;
    }
    let i = i as usize;
    let before = bins[..i].iter().rev().take_while(|b| **b == 0).count();
    let after = bins[i..].iter().take_while(|b| **b == 0).count();
    (before + after) as f64 * BIN_MS
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart of one switchover: commits per 10 ms above, the steps below, one time axis.
fn chart(t: &Timeline) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(250);
        let end_ms = t.start_ms + t.bins.len() as f64 * BIN_MS;
        let peak = t.bins.iter().copied().max().unwrap_or(1).max(1);
        let mut c = ChartBuilder::on(&top)
            .caption(
                format!("{}: acknowledged commits per 10 ms", t.name),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(150)
            .build_cartesian_2d(t.start_ms..end_ms, 0u32..peak + peak / 5 + 1)?;
        c.configure_mesh()
            .x_desc("ms from the start of the write pause")
            .y_desc("commits")
            .disable_x_mesh()
            .draw()?;
        // The gap first, under the bars.
        c.draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0), (t.pause_ms, peak + peak / 5 + 1)],
            RGBColor(255, 205, 205).filled(),
        )))?
        .label(format!("write pause {:.0} ms", t.pause_ms))
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 5), (x + 14, y + 5)],
                RGBColor(255, 205, 205).filled(),
            )
        });
        c.draw_series(
            t.bins
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| {
                    let x = t.start_ms + i as f64 * BIN_MS;
                    Rectangle::new([(x, 0), (x + BIN_MS, *n)], RGBColor(40, 110, 190).filled())
                }),
        )?;
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;

        // One row per step, named on the left with its duration; the first step on top.
        let rows = t.steps.len().max(1) as i32;
        let names: Vec<String> = t
            .steps
            .iter()
            .map(|s| format!("{} {:.0} ms", s.id, s.to_ms - s.from_ms))
            .collect();
        let mut s = ChartBuilder::on(&bottom)
            .margin(8)
            .x_label_area_size(20)
            .y_label_area_size(150)
            .build_cartesian_2d(t.start_ms..end_ms, (0..rows).into_segmented())?;
        s.configure_mesh()
            .disable_y_mesh()
            .y_labels(rows as usize)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(r) => names
                    .get((rows - 1 - *r) as usize)
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_style(("sans-serif", 11))
            .x_labels(10)
            .draw()?;
        s.draw_series(t.steps.iter().enumerate().map(|(i, step)| {
            let row = rows - 1 - i as i32;
            let from = step.from_ms.max(t.start_ms);
            let to = step.to_ms.min(end_ms).max(from + 1.0);
            Rectangle::new(
                [
                    (from, SegmentValue::Exact(row)),
                    (to, SegmentValue::Exact(row + 1)),
                ],
                Palette99::pick(i).mix(0.85).filled(),
            )
        }))?;
        root.present()?;
    }
    Ok(svg)
}

fn row(cells: &[String]) -> String {
    let tds: String = cells
        .iter()
        .map(|c| format!("<td>{}</td>", esc(c)))
        .collect();
    format!("<tr>{tds}</tr>\n")
}

fn certificate_table(c: &CertificateDoc) -> String {
    let mut t = String::from("<table class=\"cert\">\n");
    for (k, v) in [
        ("switch", format!("{} → {}", c.from, c.to)),
        ("run", c.run_id.clone()),
        (
            "shutdown checkpoint (old primary)",
            c.shutdown_checkpoint_lsn.to_string(),
        ),
        ("received by the new primary", c.received_lsn.to_string()),
        ("replayed by the new primary", c.replayed_lsn.to_string()),
        (
            "timeline",
            format!("{} → {}", c.old_timeline, c.new_timeline),
        ),
        (
            "held → released",
            format!(
                "{} → {} ({} ms)",
                c.fenced_at.format("%H:%M:%S%.3f"),
                c.released_at.format("%H:%M:%S%.3f"),
                c.write_pause_ms
            ),
        ),
        (
            "rollback path",
            if c.rollback_path {
                "the old primary streams from the new one".to_string()
            } else {
                c.rollback_problem.clone().unwrap_or_else(|| "none".into())
            },
        ),
    ] {
        t.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            esc(k),
            esc(&v)
        ));
    }
    t.push_str("</table>\n");
    t
}

/// The whole page.
pub fn render(report: &Report, timelines: &[Timeline]) -> anyhow::Result<String> {
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>migrate rehearsal</h1>\n<p>{} — {} clients through PgBouncer, <code>app</code> grown to ~{} MB; {} acknowledged commits in all; {}.</p>\n",
        esc(&report.dir),
        report.clients,
        report.scale_mb,
        report.acked_total,
        if report.zero_loss() {
            "every acknowledged commit is on every node"
        } else {
            "<strong>COMMITS MISSING</strong>"
        }
    ));
    body.push_str(
        "<table class=\"summary\">\n<tr><th></th><th>cutover</th><th>rollback</th></tr>\n",
    );
    let both = |label: &str, f: &dyn Fn(&Switch) -> String| {
        row(&[label.to_string(), f(&report.cutover), f(&report.rollback)])
    };
    body.push_str(&both("write pause (longest gap, all clients)", &|s| {
        format!("{:.0} ms", s.write_pause_ms)
    }));
    body.push_str(&both("per-client pause p50 / p99 / max", &|s| {
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            s.client_pause_p50_ms, s.client_pause_p99_ms, s.client_pause_max_ms
        )
    }));
    body.push_str(&both(
        "pause in the certificate (held → released)",
        &|s| {
            s.certificate_pause_ms
                .map(|v| format!("{v} ms"))
                .unwrap_or_else(|| "-".into())
        },
    ));
    body.push_str(&both("client errors", &|s| s.errors.to_string()));
    body.push_str(&both("acknowledged commits during it", &|s| {
        s.acked.to_string()
    }));
    body.push_str(&both("missing commits (all nodes)", &|s| {
        s.missing.values().sum::<usize>().to_string()
    }));
    body.push_str(&both("command duration", &|s| {
        format!("{} ms", s.duration_ms)
    }));
    body.push_str("</table>\n");
    for t in timelines {
        body.push_str(&format!(
            "<section id=\"{name}\">\n<h2>{name}</h2>\n<p class=\"pause\" data-pause-ms=\"{p:.1}\">write pause: <strong>{p:.0} ms</strong> (the shaded gap below); per-client p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms</p>\n",
            t.switch.client_pause_p50_ms,
            t.switch.client_pause_p99_ms,
            t.switch.client_pause_max_ms,
            name = esc(&t.name),
            p = t.pause_ms,
        ));
        body.push_str(&chart(t)?);
        body.push('\n');
        if let Some(c) = &t.certificate {
            body.push_str(&certificate_table(c));
        }
        // Inert data (never executed): the numbers the chart was drawn from. `<` is escaped
        // so nothing in it can close the element.
        let data = serde_json::to_string(t)?.replace('<', "\\u003c");
        body.push_str(&format!(
            "<script type=\"application/json\" id=\"timeline-{}\">{data}</script>\n</section>\n",
            esc(&t.name)
        ));
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>migrate rehearsal</title>\n<style>\nbody {{ font-family: sans-serif; margin: 2em; color: #222; }}\ntable {{ border-collapse: collapse; margin: 1em 0; }}\ntd, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}\nsvg {{ display: block; }}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::milliseconds(ms)
    }

    #[test]
    fn the_chart_data_shows_the_longest_gap_as_empty_bins() {
        // A commit every 2 ms, none between 1000 and 1350 ms, nor (a stall outside the
        // switchover's window, longer than its pause) between 1600 and 2000.
        let acks: Vec<DateTime<Utc>> = (0..2300)
            .step_by(2)
            .filter(|ms| !(1000..1350).contains(ms) && !(1600..2000).contains(ms))
            .map(at)
            .collect();
        let steps = vec![("hold".to_string(), at(1001), at(1020))];
        let t = timeline("cutover", &acks, (at(900), at(1500)), &steps).unwrap();
        assert_eq!(t.pause_ms, 352.0);
        // The gap in bins at the pause is the pause, to within a bin on each side.
        let shown = empty_run_at_ms(&t.bins, t.start_ms, t.pause_ms / 2.0);
        assert!((t.pause_ms - shown).abs() <= 2.0 * BIN_MS, "{shown}");
        // The stall is drawn as its own gap, not joined to the pause's.
        let stall = empty_run_at_ms(&t.bins, t.start_ms, 800.0);
        assert!((stall - 400.0).abs() <= 2.0 * BIN_MS, "{stall}");
        assert_eq!(empty_run_at_ms(&t.bins, t.start_ms, 400.0), 0.0);
        assert_eq!(
            t.bins.iter().map(|b| *b as usize).sum::<usize>(),
            acks.len()
        );
        assert_eq!(t.steps[0].from_ms, 3.0);
        assert_eq!(t.steps[0].to_ms, 22.0);
    }

    #[test]
    fn no_acknowledgment_no_timeline() {
        assert!(timeline("cutover", &[], (at(0), at(10)), &[]).is_none());
    }

    #[test]
    fn the_page_is_self_contained_and_carries_its_numbers() {
        let acks: Vec<DateTime<Utc>> = (0..3000)
            .step_by(3)
            .filter(|ms| !(1200..1500).contains(ms))
            .map(at)
            .collect();
        let t = timeline("cutover", &acks, (at(1100), at(1600)), &[]).unwrap();
        let report = Report {
            dir: "/tmp/<lab>".into(),
            clients: 8,
            scale_mb: 5,
            replicate_ms: 1,
            replicate_phases_ms: Default::default(),
            plan_ms: 1,
            cutover: Switch::default(),
            rollback: Switch::default(),
            acked_total: acks.len(),
            missing_at_end: Default::default(),
            fault: None,
            timelines: Vec::new(),
        };
        let page = render(&report, &[t]).unwrap();
        assert!(page.contains("<svg"));
        assert!(page.contains("/tmp/&lt;lab&gt;"), "escaped");
        assert!(
            !page.contains("src=") && !page.contains("href="),
            "loads nothing"
        );
        assert!(page.contains("id=\"timeline-cutover\""));
        assert!(page.contains("data-pause-ms=\"303.0\""), "{page}");
    }
}
