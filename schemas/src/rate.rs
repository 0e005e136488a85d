//! Transfer rates as admins write them: `50MB/s`, `1.5GB/s`, `500KiB/s`,
//! `unlimited`.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rate(pub Option<NonZeroU64>);

impl Rate {
    pub const UNLIMITED: Rate = Rate(None);

    pub fn bytes_per_sec(self) -> Option<u64> {
        self.0.map(NonZeroU64::get)
    }
}

/// SI units first: on display, the unit that gives the smallest whole number
/// wins, and SI wins a tie.
const UNITS: [(&str, u64); 10] = [
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
    ("KB", 1_000),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "unlimited" {
            return Ok(Rate::UNLIMITED);
        }
        let bad = || {
            format!(
                "{s:?} is not a rate; write a number and a unit per second (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 50MB/s, 1.5GB/s or 500KiB/s, or `unlimited`"
            )
        };
        let body = s.strip_suffix("/s").ok_or_else(bad)?;
        let split = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, unit) = body.split_at(split);
        let unit = unit.strip_prefix(' ').unwrap_or(unit);
        let (_, mult) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?;
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && frac.is_empty()) {
            return Err(bad());
        }
        let whole: u128 = whole.parse().map_err(|_| bad())?;
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        let scale = 10u128.checked_pow(frac.len() as u32).ok_or_else(bad)?;
        let mult = u128::from(*mult);
        let bytes = whole
            .checked_mul(mult)
            .and_then(|w| w.checked_add(frac_value * mult / scale))
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| format!("{s:?} is too large a rate"))?;
        NonZeroU64::new(bytes)
            .map(|n| Rate(Some(n)))
            .ok_or_else(|| {
                format!("{s:?} is less than 1 byte per second; use at least 1B/s, or `unlimited`")
            })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(bytes) = self.bytes_per_sec() else {
            return f.write_str("unlimited");
        };
        let (unit, n) = UNITS
            .iter()
            .filter(|(_, mult)| bytes % mult == 0)
            .map(|(unit, mult)| (*unit, bytes / mult))
            .min_by_key(|(_, n)| *n)
            .expect("every rate divides by 1B");
        write!(f, "{n}{unit}/s")
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(unlimited|[0-9]+(\\.[0-9]+)? ?(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)/s)$",
            "description": "Bytes per second such as 50MB/s, 1.5GB/s or 500KiB/s (kB, MB... are powers of 1000; KiB, MiB... of 1024), or `unlimited`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Option<u64> {
        s.parse::<Rate>().unwrap().bytes_per_sec()
    }

    #[test]
    fn parses_si_iec_fractions_and_unlimited() {
        assert_eq!(bytes("10MB/s"), Some(10_000_000));
        assert_eq!(bytes("1.5GB/s"), Some(1_500_000_000));
        assert_eq!(bytes("500KiB/s"), Some(512_000));
        assert_eq!(bytes("20 MB/s"), Some(20_000_000));
        assert_eq!(bytes("0.5KiB/s"), Some(512));
        assert_eq!(bytes("unlimited"), None);
    }

    #[test]
    fn refuses_garbage_with_the_input_named() {
        for s in [
            "50MBs",
            "50mb/s",
            "MB/s",
            "1.MB/s",
            ".5MB/s",
            "1..5MB/s",
            "-1MB/s",
            "50",
            "",
            "0MB/s",
            "0.1B/s",
            "99999999TB/s",
        ] {
            let err = s.parse::<Rate>().unwrap_err();
            assert!(err.contains(&format!("{s:?}")), "{s}: {err}");
        }
    }

    #[test]
    fn displays_in_the_shortest_exact_unit() {
        for (input, shown) in [
            ("50MB/s", "50MB/s"),
            ("1.5GB/s", "1500MB/s"),
            ("500KiB/s", "500KiB/s"),
            ("1KB/s", "1kB/s"),
            ("3B/s", "3B/s"),
            ("unlimited", "unlimited"),
        ] {
            let rate: Rate = input.parse().unwrap();
            assert_eq!(rate.to_string(), shown);
            assert_eq!(shown.parse::<Rate>().unwrap(), rate);
        }
    }
}
