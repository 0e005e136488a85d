//! ZFS dataset and snapshot names, checked against OpenZFS's own rules before
//! they go near an argv. Spaces are legal in ZFS names and are handled (commands
//! are argv, never shell strings); anything ZFS itself would refuse is refused
//! here first, with a message that names the input.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// OpenZFS ZFS_MAX_DATASET_NAME_LEN is 256 including the NUL.
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("dataset name is empty")]
    Empty,
    #[error("name {name:?} is {len} bytes long; ZFS allows at most {MAX_NAME_LEN}")]
    TooLong { name: String, len: usize },
    #[error("name {name:?} contains {ch:?} at byte {at}; ZFS names allow only ASCII letters, digits, space and - _ . :")]
    BadChar { name: String, ch: char, at: usize },
    #[error("name {name:?} has an empty component (a leading, trailing or doubled '/')")]
    EmptyComponent { name: String },
    #[error("name {name:?} has a component '.' or '..', which ZFS refuses")]
    DotComponent { name: String },
    #[error("name {name:?} must start with a letter (its pool name)")]
    PoolStart { name: String },
    #[error("snapshot name {name:?} must be <dataset>@<snapshot> with one '@' and a non-empty snapshot part")]
    BadSnapshot { name: String },
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | ' ')
}

/// Checks one component (dataset path part, snapshot or bookmark name).
pub fn check_component(name: &str, part: &str, offset: usize) -> Result<(), NameError> {
    if part.is_empty() {
        return Err(NameError::EmptyComponent { name: name.into() });
    }
    if part == "." || part == ".." {
        return Err(NameError::DotComponent { name: name.into() });
    }
    if let Some((i, ch)) = part.char_indices().find(|(_, c)| !valid_char(*c)) {
        return Err(NameError::BadChar {
            name: name.into(),
            ch,
            at: offset + i,
        });
    }
    Ok(())
}

/// A validated filesystem or volume name such as `tank/home/alice`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                name: name.into(),
                len: name.len(),
            });
        }
        let mut offset = 0;
        for part in name.split('/') {
            check_component(name, part, offset)?;
            offset += part.len() + 1;
        }
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::PoolStart { name: name.into() });
        }
        Ok(DatasetName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// `self@snap`, checking the snapshot part and the total length.
    pub fn snapshot(&self, snap: &str) -> Result<String, NameError> {
        let full = format!("{}@{}", self.0, snap);
        check_component(&full, snap, self.0.len() + 1)?;
        if full.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                len: full.len(),
                name: full,
            });
        }
        Ok(full)
    }

    /// The dataset above this one; `None` for a pool's root.
    pub fn parent(&self) -> Option<DatasetName> {
        let (p, _) = self.0.rsplit_once('/')?;
        Some(DatasetName(p.to_string()))
    }

    /// Whether `other` is this dataset or lies below it.
    pub fn contains(&self, other: &DatasetName) -> bool {
        other.0 == self.0
            || (other.0.starts_with(&self.0) && other.0.as_bytes().get(self.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DatasetName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DatasetName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Splits `pool/fs@snap` into a checked dataset and snapshot part.
pub fn parse_snapshot_name(full: &str) -> Result<(DatasetName, String), NameError> {
    let (ds, snap) = full
        .split_once('@')
        .ok_or_else(|| NameError::BadSnapshot { name: full.into() })?;
    if snap.contains('@') || snap.is_empty() {
        return Err(NameError::BadSnapshot { name: full.into() });
    }
    let ds = DatasetName::parse(ds)?;
    ds.snapshot(snap)?;
    Ok((ds, snap.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_zfs_legal_names_including_spaces() {
        for ok in ["tank", "tank/home", "tank/my data/x:y.z-1_2", "t"] {
            assert!(DatasetName::parse(ok).is_ok(), "{ok} refused");
        }
    }

    #[test]
    fn refuses_hostile_names_with_a_message_naming_them() {
        let cases = [
            ("tank/$(rm -rf /)", '$'),
            ("tank/a;b", ';'),
            ("tank/a`b`", '`'),
            ("tank/données", 'é'),
            ("tank/a|b", '|'),
            ("tank/a\nb", '\n'),
            ("tank/a\tb", '\t'),
            ("tank/a'b", '\''),
            ("tank/a>b", '>'),
        ];
        for (name, ch) in cases {
            let err = DatasetName::parse(name).unwrap_err();
            match &err {
                NameError::BadChar {
                    ch: got, name: n, ..
                } => {
                    assert_eq!(*got, ch);
                    assert_eq!(n, name);
                }
                other => panic!("{name:?}: unexpected {other:?}"),
            }
            assert!(err.to_string().contains(&format!("{name:?}")));
        }
    }

    #[test]
    fn refuses_structural_errors() {
        assert_eq!(DatasetName::parse(""), Err(NameError::Empty));
        assert!(matches!(
            DatasetName::parse("tank//a"),
            Err(NameError::EmptyComponent { .. })
        ));
        assert!(matches!(
            DatasetName::parse("tank/../etc"),
            Err(NameError::DotComponent { .. })
        ));
        assert!(matches!(
            DatasetName::parse("1tank"),
            Err(NameError::PoolStart { .. })
        ));
        assert!(matches!(
            DatasetName::parse("-o"),
            Err(NameError::PoolStart { .. })
        ));
        let long = format!("tank/{}", "a".repeat(300));
        assert!(matches!(
            DatasetName::parse(&long),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn snapshot_names() {
        let (ds, snap) = parse_snapshot_name("tank/a b@zdr_1").unwrap();
        assert_eq!(ds.as_str(), "tank/a b");
        assert_eq!(snap, "zdr_1");
        assert!(parse_snapshot_name("tank@a@b").is_err());
        assert!(parse_snapshot_name("tank@").is_err());
        assert!(parse_snapshot_name("tank").is_err());
        assert!(ds.snapshot("x;y").is_err());
    }

    #[test]
    fn containment_respects_component_boundaries() {
        let a = DatasetName::parse("tank/a").unwrap();
        assert!(a.contains(&DatasetName::parse("tank/a/b").unwrap()));
        assert!(a.contains(&a));
        assert!(!a.contains(&DatasetName::parse("tank/ab").unwrap()));
    }
}
