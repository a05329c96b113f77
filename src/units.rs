//! Human-friendly sizes (`16MiB`, `512kB`) and durations (`30s`, `1m30s`, `250ms`).
//!
//! Sizes follow PostgreSQL's convention: `kB`, `MB`, `GB`, `TB` are powers of 1024, exactly like
//! `KiB`, `MiB`, `GiB`, `TiB`; a bare number is bytes.

use std::time::Duration;

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size; write e.g. \"16MiB\", \"512kB\" or \"1GB\""
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "kB" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        "T" | "TB" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, kB/KiB, MB/MiB, GB/GiB or TB/TiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!("{text:?} is not a duration; write e.g. \"30s\", \"1m30s\", \"250ms\" or \"2h\"")
    };
    if t.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if split == 0 {
            return Err(bad());
        }
        let too_long = || format!("{text:?} is longer than any time limit migrate accepts");
        let n: u64 = rest[..split].parse().map_err(|_| too_long())?;
        rest = &rest[split..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        // Checked arithmetic: a huge value is an error, never a wrapped small one.
        let part = n.checked_mul(millis_per_unit).ok_or_else(too_long)?;
        total_ms = total_ms.checked_add(part).ok_or_else(too_long)?;
        if total_ms > MAX_DURATION_MS {
            return Err(too_long());
        }
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_millis(total_ms))
}

/// No time limit in a spec is longer than a year: anything above is a typo, and staying far
/// below `u64` milliseconds keeps every sum of limits (the pause budget) from overflowing.
pub const MAX_DURATION_MS: u64 = 366 * 24 * 3_600_000;

pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size("512kB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("16 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999TB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "s", "30", "30 seconds", "1.5s", "-3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn huge_durations_are_refused_not_wrapped() {
        for huge in [
            "99999999999999999999s",
            "307445734561825861m",
            "18446744073709551615ms1ms",
            "9000h",
            "366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h366h",
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("longer than any time limit"), "{huge}: {e}");
        }
        assert_eq!(
            parse_duration("8784h").unwrap(),
            Duration::from_secs(8784 * 3600)
        );
    }

    #[test]
    fn bytes_display() {
        assert_eq!(format_bytes(12), "12 B");
        assert_eq!(format_bytes(16 << 20), "16.0 MiB");
    }
}
