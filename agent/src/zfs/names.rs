//! Checks for the names that `DatasetName` does not cover: hold tags, user
//! property names, bookmarks, send bases and resume tokens. Every backend
//! runs them, so the simulator refuses exactly what the real ones refuse.

use zdr_common::dataset::{check_component, MAX_NAME_LEN};
use zdr_common::{DatasetName, NameError};

use super::{SendBase, ZfsError};

/// OpenZFS ZAP_MAXNAMELEN.
const MAX_PROPERTY_LEN: usize = 256;

/// A hold tag travels as its own argv element, so a leading '-' would be read
/// as an option; the character set is the one ZFS names use.
pub(crate) fn check_tag(tag: &str) -> Result<(), ZfsError> {
    let refuse = |reason: &str| ZfsError::Invalid {
        what: "hold tag",
        value: tag.to_string(),
        reason: reason.to_string(),
    };
    if tag.starts_with('-') {
        return Err(refuse("must not start with '-'"));
    }
    if tag.len() > MAX_NAME_LEN {
        return Err(refuse(&format!("longer than {MAX_NAME_LEN} bytes")));
    }
    check_component(tag, tag, 0).map_err(|e| refuse(&e.to_string()))
}

/// ZFS user property names: lowercase letters, digits, `: - _ .`, at least
/// one ':', not starting with '-'.
pub(crate) fn check_user_property(name: &str) -> Result<(), ZfsError> {
    let refuse = |reason: &str| ZfsError::Invalid {
        what: "user property",
        value: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > MAX_PROPERTY_LEN {
        return Err(refuse(&format!(
            "must be 1 to {MAX_PROPERTY_LEN} bytes long"
        )));
    }
    if name.starts_with('-') {
        return Err(refuse("must not start with '-'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | ':' | '-' | '_' | '.'))
    {
        return Err(refuse(&format!(
            "contains {c:?}; allowed are lowercase letters, digits and : - _ ."
        )));
    }
    if !name.contains(':') {
        return Err(refuse("a user property needs a ':', as in zdr:class"));
    }
    Ok(())
}

/// `dataset#bookmark`, checking the bookmark part and the total length.
pub(crate) fn bookmark_name(dataset: &DatasetName, bookmark: &str) -> Result<String, NameError> {
    let full = format!("{dataset}#{bookmark}");
    check_component(&full, bookmark, dataset.as_str().len() + 1)?;
    if full.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: full.len(),
            name: full,
        });
    }
    Ok(full)
}

/// Resume tokens are ZFS-made: hex digits and dashes.
pub(crate) fn check_token(token: &str) -> Result<(), ZfsError> {
    let ok = !token.is_empty()
        && token.len() <= 64 << 10
        && !token.starts_with('-')
        && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ZfsError::Invalid {
            what: "resume token",
            value: token.chars().take(80).collect(),
            reason: "expected letters, digits and '-', not starting with '-'".into(),
        })
    }
}

/// The full name of an incremental source; a bookmark base cannot be `-I`.
pub(crate) fn send_base_name(
    dataset: &DatasetName,
    from: &SendBase,
    intermediates: bool,
) -> Result<String, ZfsError> {
    match from {
        SendBase::Snapshot(s) => Ok(dataset.snapshot(s)?),
        SendBase::Bookmark(b) if intermediates => Err(ZfsError::Invalid {
            what: "send -I source",
            value: bookmark_name(dataset, b)?,
            reason: "-I needs a snapshot; send from a bookmark with -i".into(),
        }),
        SendBase::Bookmark(b) => Ok(bookmark_name(dataset, b)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert!(check_tag("zdr keep:a.b-c_d").is_ok());
        for bad in ["", "-r", "a\tb", "a;b", "a/b", "a@b"] {
            assert!(check_tag(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_tag(&"t".repeat(256)).is_err());
    }

    #[test]
    fn user_properties() {
        assert!(check_user_property("zdr:class").is_ok());
        assert!(check_user_property("com.example:a-b_c.d").is_ok());
        for bad in [
            "",
            "class",
            "-zdr:class",
            "Zdr:class",
            "zdr:cl ass",
            "zdr:a,b",
            "zdr:a\tb",
        ] {
            assert!(check_user_property(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_user_property(&format!("a:{}", "b".repeat(255))).is_err());
    }

    #[test]
    fn bookmarks() {
        let ds = DatasetName::parse("tank/a b").unwrap();
        assert_eq!(bookmark_name(&ds, "zdr_1").unwrap(), "tank/a b#zdr_1");
        for bad in ["", "a#b", "a@b", "x;y", ".."] {
            assert!(bookmark_name(&ds, bad).is_err(), "{bad:?} accepted");
        }
        assert!(bookmark_name(&ds, &"b".repeat(250)).is_err());
    }
}
