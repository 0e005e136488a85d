//! Human durations as admins write them in policy files: `30s`, `15m`, `1h`,
//! `1d`, `1w`, and compound forms such as `1h30m`.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    secs: u64,
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration { secs }
    }
    pub const fn secs(self) -> u64 {
        self.secs
    }
    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.secs)
    }
}

const UNITS: [(char, u64); 5] = [
    ('w', 604_800),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a duration; write a number and a unit (s, m, h, d, w), such as 30s, 15m, 1h, 1d or 1h30m")
        };
        if s.is_empty() {
            return Err(bad());
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let (_, mult) = UNITS.iter().find(|(u, _)| *u == c).ok_or_else(bad)?;
            let n: u64 = digits.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(*mult)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("{s:?} is too long a duration"))?;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(bad());
        }
        Ok(Duration { secs: total })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secs == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.secs;
        for (unit, mult) in UNITS {
            if rest >= mult {
                write!(f, "{}{}", rest / mult, unit)?;
                rest %= mult;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+[smhdw])+$",
            "description": "A duration such as 30s, 15m, 1h, 1d, 1w or 1h30m."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, secs) in [
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("1d", 86400),
            ("1w", 604800),
            ("1h30m", 5400),
        ] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.secs(), secs);
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn refuses_garbage() {
        for s in ["", "15", "m", "1x", "1.5h", "-1h", "99999999999999999999w"] {
            let err = s.parse::<Duration>().unwrap_err();
            assert!(err.contains(&format!("{s:?}")), "{err}");
        }
    }
}
