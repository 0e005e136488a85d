//! Times of day (`HH:MM`, UTC) and daily windows (`22:00-06:00`).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const MINUTES_PER_DAY: u16 = 24 * 60;

/// Minutes after midnight UTC, from `00:00` to `24:00` (the end of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    pub fn minutes(self) -> u16 {
        self.0
    }
}

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a time of day; write HH:MM in UTC, from 00:00 to 24:00");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let two_digits = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
        if !two_digits(h) || !two_digits(m) {
            return Err(bad());
        }
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if m > 59 || h * 60 + m > MINUTES_PER_DAY {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// A daily span from `from` up to `to`; it wraps past midnight when `to` is
/// earlier than `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub from: TimeOfDay,
    pub to: TimeOfDay,
}

impl Window {
    /// Checks what a window needs beyond two valid times.
    pub fn problem(&self) -> Option<String> {
        if self.from.0 == MINUTES_PER_DAY {
            Some("a window cannot start at 24:00; start it at 00:00".into())
        } else if self.from == self.to {
            Some(format!(
                "window {self} is empty (it starts where it ends); use 00:00-24:00 for all day"
            ))
        } else {
            None
        }
    }

    /// The window as at most two half-open minute ranges within one day.
    fn ranges(&self) -> Vec<(u16, u16)> {
        let (from, to) = (self.from.0, self.to.0);
        if from < to {
            vec![(from, to)]
        } else {
            vec![(from, MINUTES_PER_DAY), (0, to)]
        }
    }

    /// Whether the window covers `minute` minutes after midnight.
    pub fn contains(&self, minute: u16) -> bool {
        self.ranges()
            .iter()
            .any(|&(from, to)| from <= minute && minute < to)
    }

    pub fn overlaps(&self, other: &Window) -> bool {
        self.ranges()
            .iter()
            .any(|a| other.ranges().iter().any(|b| a.0 < b.1 && b.0 < a.1))
    }
}

impl FromStr for Window {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (from, to) = s.split_once('-').ok_or_else(|| {
            format!("{s:?} is not a window; write HH:MM-HH:MM in UTC, such as 22:00-06:00")
        })?;
        let window = Window {
            from: from.trim().parse()?,
            to: to.trim().parse()?,
        };
        match window.problem() {
            Some(problem) => Err(problem),
            None => Ok(window),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.from, self.to)
    }
}

macro_rules! string_serde {
    ($ty:ty, $name:literal, $pattern:literal, $description:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $description
                })
            }
        }
    };
}

string_serde!(
    TimeOfDay,
    "TimeOfDay",
    "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$",
    "HH:MM in UTC."
);
string_serde!(
    Window,
    "Window",
    "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00) ?- ?(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$",
    "HH:MM-HH:MM in UTC; wraps past midnight when the end is earlier than the start."
);

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Window {
        s.parse().unwrap()
    }

    #[test]
    fn times_parse_and_print() {
        assert_eq!("08:00".parse::<TimeOfDay>().unwrap().minutes(), 480);
        assert_eq!("24:00".parse::<TimeOfDay>().unwrap().to_string(), "24:00");
        for bad in ["8:00", "24:01", "12:60", "12", "ab:cd", "-1:00", "12:00:00"] {
            assert!(bad.parse::<TimeOfDay>().is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_wrap_and_overlap() {
        assert!(w("08:00-18:00").overlaps(&w("17:00-19:00")));
        assert!(!w("08:00-18:00").overlaps(&w("18:00-20:00")));
        assert!(w("22:00-06:00").overlaps(&w("05:00-07:00")));
        assert!(w("22:00-06:00").overlaps(&w("23:00-23:30")));
        assert!(!w("22:00-06:00").overlaps(&w("06:00-22:00")));
        assert_eq!(w("18:00-24:00").to_string(), "18:00-24:00");
        assert!("10:00-10:00"
            .parse::<Window>()
            .unwrap_err()
            .contains("empty"));
        assert!(w("00:00-24:00").overlaps(&w("12:00-12:01")));
        assert!(w("22:00-06:00").contains(23 * 60) && w("22:00-06:00").contains(0));
        assert!(!w("22:00-06:00").contains(6 * 60) && w("08:00-18:00").contains(8 * 60));
        assert!(w("18:00-24:00").contains(MINUTES_PER_DAY - 1) && !w("18:00-24:00").contains(0));
        assert!("24:00-06:00"
            .parse::<Window>()
            .unwrap_err()
            .contains("00:00"));
    }
}
