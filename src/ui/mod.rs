//! Everything the user sees. The only module that writes to the terminal.

pub mod progress;

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// Where `-v` logs go: stderr, with remembered secrets masked and control characters escaped,
/// whatever a dependency logs (a server's error text, a request).
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = crate::redact::for_terminal(&String::from_utf8_lossy(buf));
        std::io::stderr().lock().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

pub struct Ui {
    json: bool,
}

impl Ui {
    pub fn new(json: bool) -> Ui {
        Ui { json }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    pub fn is_terminal(&self) -> bool {
        std::io::stdout().is_terminal()
    }

    /// A line of human output on stdout (suppressed in JSON mode, where stdout is data).
    pub fn line(&self, text: impl AsRef<str>) {
        if !self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", crate::redact::for_terminal(text.as_ref()));
        }
    }

    /// Generated text (a completion script, a manual page) on stdout as it is: it holds no
    /// spec text and no secret, and escaping would break it.
    pub fn raw(&self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
    }

    /// One JSON object on one line of stdout (a stream of them).
    pub fn emit_json_line<T: Serialize>(&self, value: &T) {
        let mut out = std::io::stdout().lock();
        let text = serde_json::to_string(value).unwrap_or_default();
        let _ = writeln!(out, "{}", crate::redact::redact(&text));
        let _ = out.flush();
    }

    /// A JSON document on stdout.
    pub fn emit_json<T: Serialize>(&self, value: &T) {
        let mut out = std::io::stdout().lock();
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        let _ = writeln!(out, "{}", crate::redact::redact(&text));
    }

    /// A failed command: the message and each cause, on stderr.
    pub fn error(&self, err: &anyhow::Error) {
        let mut e = std::io::stderr().lock();
        let safe = |t: String| crate::redact::for_terminal(&t);
        let _ = writeln!(e, "error: {}", safe(err.to_string()));
        for cause in err.chain().skip(1) {
            let _ = writeln!(e, "  caused by: {}", safe(cause.to_string()));
        }
    }

    /// A simple aligned table.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let fmt_row = |cells: Vec<&str>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        self.line(fmt_row(header.to_vec()));
        for row in rows {
            self.line(fmt_row(row.iter().map(String::as_str).collect()));
        }
    }
}

impl Ui {
    /// How run events are shown: JSON lines, spinners on a terminal, or timestamped lines.
    pub fn progress_mode(&self) -> progress::Mode {
        if self.json {
            progress::Mode::Json
        } else if self.is_terminal() {
            progress::Mode::Terminal
        } else {
            progress::Mode::Plain
        }
    }

    /// A warning on stderr.
    pub fn warn(&self, text: impl AsRef<str>) {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "warning: {}", crate::redact::for_terminal(text.as_ref()));
    }
}

/// One line of progress for a long command: an indicatif spinner on a terminal, timestamped
/// lines on stderr otherwise, nothing in JSON mode.
pub struct Spinner {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
}

impl Ui {
    pub fn spinner(&self) -> Spinner {
        let terminal = !self.json && std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("template"),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Spinner {
            bar,
            plain: !self.json && !terminal,
        }
    }
}

impl Spinner {
    pub fn note(&self, message: &str, elapsed: std::time::Duration) {
        if let Some(b) = &self.bar {
            let message = crate::redact::for_terminal(message);
            b.println(format!("[{:>6.1}s] {message}", elapsed.as_secs_f64()));
            b.set_message(message.to_string());
        } else if self.plain {
            let mut e = std::io::stderr().lock();
            let _ = writeln!(
                e,
                "[{:>6.1}s] {}",
                elapsed.as_secs_f64(),
                crate::redact::for_terminal(message)
            );
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
