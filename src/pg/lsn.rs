//! Log sequence numbers, compared as numbers (never as strings: `0/2000000` < `0/10000000`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `other` up to `self` (0 when `other` is ahead).
    pub fn bytes_after(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl FromStr for Lsn {
    type Err = String;
    /// `hi/lo` in hex; zero-padded halves (`0/0B5B0730`, as pg_waldump prints) are accepted.
    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("{s:?} is not an LSN (expected e.g. 0/3000060)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_not_string_order() {
        let a: Lsn = "0/2000000".parse().unwrap();
        let b: Lsn = "0/10000000".parse().unwrap();
        assert!(a < b);
        assert!("0/2000000" > "0/10000000", "the string order is the trap");
        assert_eq!(b.bytes_after(a), 0x0E00_0000);
        assert_eq!(a.bytes_after(b), 0);
    }

    #[test]
    fn parse_display_round_trip_and_padding() {
        let l: Lsn = "0/0B5B0730".parse().unwrap();
        assert_eq!(l.to_string(), "0/B5B0730");
        let hi: Lsn = "1A/FF".parse().unwrap();
        assert_eq!(hi.0, (0x1A << 32) | 0xFF);
        assert_eq!(hi.to_string().parse::<Lsn>().unwrap(), hi);
        assert!("nope".parse::<Lsn>().is_err());
        assert!("0/XYZ".parse::<Lsn>().is_err());
        assert_eq!(serde_json::to_string(&hi).unwrap(), "\"1A/FF\"");
    }
}
