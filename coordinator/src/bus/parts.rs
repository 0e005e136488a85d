//! Values larger than a KV bucket takes, stored in parts (pure).
//!
//! NATS refuses a message over the server's `max_payload` (1 MiB by default)
//! or the bucket's `max_message_size`; one dataset's inventory passes that
//! at about 7,900 snapshots. Such a value is cut into parts under keys of
//! their own, and its key holds a header naming them:
//!
//! ```text
//! <key>                   "ZDRPARTS1 <generation> <count> <bytes>"   written last
//! <key>.part<generation>.0   bytes 0 .. n                            written first
//! <key>.part<generation>.1   bytes n .. 2n
//! ...
//! ```
//!
//! A reader takes the header, then the parts of its generation: a crash
//! between the parts and the header leaves the old header and its old
//! parts, still whole. Parts of other generations are left over from such
//! a crash or from a value replaced since, and are deleted. A value that
//! fits is stored as itself, so buckets written before parts existed read
//! the same.

const MAGIC: &str = "ZDRPARTS1 ";
const PART: &str = ".part";
/// Room left in each message for the subject and headers.
const OVERHEAD: usize = 512;
/// Below this, cutting is pointless: the value is written whole (and the
/// write fails as before, counted).
const MIN_PART: usize = 1_024;

/// Where one value's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    Whole(Vec<u8>),
    Parts {
        generation: String,
        /// `(key, bytes)`, written before the header.
        parts: Vec<(String, Vec<u8>)>,
        header: Vec<u8>,
    },
}

/// The largest part for a bucket whose messages may be `limit` bytes.
pub fn part_size(limit: usize) -> Option<usize> {
    limit.checked_sub(OVERHEAD).filter(|&n| n >= MIN_PART)
}

/// How to store `value` under `key` when messages may be `limit` bytes.
pub fn layout(key: &str, value: Vec<u8>, limit: usize, generation: &str) -> Layout {
    let Some(size) = part_size(limit).filter(|&s| value.len() > s) else {
        return Layout::Whole(value);
    };
    let parts: Vec<(String, Vec<u8>)> = value
        .chunks(size)
        .enumerate()
        .map(|(i, c)| (part_key(key, generation, i), c.to_vec()))
        .collect();
    let header = format!("{MAGIC}{generation} {} {}", parts.len(), value.len()).into_bytes();
    Layout::Parts {
        generation: generation.to_string(),
        parts,
        header,
    }
}

pub fn part_key(key: &str, generation: &str, index: usize) -> String {
    format!("{key}{PART}{generation}.{index}")
}

/// The key a part belongs to and its generation and index, when `key`
/// names a part.
pub fn part_of(key: &str) -> Option<(&str, &str, usize)> {
    let (head, rest) = key.rsplit_once(PART)?;
    let (generation, index) = rest.split_once('.')?;
    let ok = !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_alphanumeric());
    Some((head, generation, index.parse().ok().filter(|_| ok)?))
}

/// A header's generation, part count and total length; `None` for a value
/// stored whole.
pub fn header(value: &[u8]) -> Option<Result<(String, usize, usize), String>> {
    let rest = value.strip_prefix(MAGIC.as_bytes())?;
    let parsed = std::str::from_utf8(rest).ok().and_then(|s| {
        let mut f = s.split(' ');
        let generation = f.next()?.to_string();
        let count = f.next()?.parse().ok()?;
        let bytes = f.next()?.parse().ok()?;
        f.next().is_none().then_some((generation, count, bytes))
    });
    Some(parsed.ok_or_else(|| {
        format!(
            "malformed parts header {:?}",
            String::from_utf8_lossy(value)
        )
    }))
}

/// The value a header names, from `part(generation, index)`.
pub fn assemble<'a>(
    header: &[u8],
    mut part: impl FnMut(&str, usize) -> Option<&'a [u8]>,
) -> Result<Vec<u8>, String> {
    let (generation, count, bytes) = match self::header(header) {
        None => return Ok(header.to_vec()),
        Some(h) => h?,
    };
    let mut out = Vec::with_capacity(bytes);
    for i in 0..count {
        let p = part(&generation, i)
            .ok_or_else(|| format!("part {i} of {count} (generation {generation}) is missing"))?;
        out.extend_from_slice(p);
    }
    if out.len() != bytes {
        return Err(format!(
            "the parts hold {} bytes, the header says {bytes}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_value_that_fits_is_stored_whole() {
        let v = vec![b'{'; 3_000];
        assert_eq!(
            layout("n.74", v.clone(), 3_512, "g1"),
            Layout::Whole(v.clone())
        );
        // A limit too small to cut into useful parts: whole, and its write fails.
        assert_eq!(
            layout("n.74", v.clone(), 16, "g1"),
            Layout::Whole(v.clone())
        );
        assert_eq!(assemble(&v, |_, _| None).unwrap(), v);
    }

    #[test]
    fn a_large_value_round_trips_through_its_parts() {
        let v: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let Layout::Parts {
            parts,
            header,
            generation,
        } = layout("n.74", v.clone(), 2_536, "g7")
        else {
            panic!("not cut");
        };
        assert_eq!(generation, "g7");
        // 2,024-byte parts: 5 of them, none over the limit.
        assert_eq!(parts.len(), 5);
        assert!(parts.iter().all(|(_, p)| p.len() + OVERHEAD <= 2_536));
        assert_eq!(parts[1].0, "n.74.partg7.1");
        assert_eq!(part_of(&parts[1].0), Some(("n.74", "g7", 1)));
        assert_eq!(part_of("n.74"), None);
        let stored: HashMap<(String, usize), Vec<u8>> = parts
            .iter()
            .map(|(k, p)| {
                let (_, g, i) = part_of(k).unwrap();
                ((g.to_string(), i), p.clone())
            })
            .collect();
        let got = assemble(&header, |g, i| {
            stored.get(&(g.to_string(), i)).map(Vec::as_slice)
        })
        .unwrap();
        assert_eq!(got, v);
        // A missing part, or parts of another length, is an error, never a short value.
        let err = assemble(&header, |g, i| {
            (i != 3)
                .then(|| stored.get(&(g.to_string(), i)).map(Vec::as_slice))
                .flatten()
        })
        .unwrap_err();
        assert!(err.contains("part 3 of 5"), "{err}");
        let short = [0u8; 4];
        assert!(assemble(&header, |_, _| Some(&short[..]))
            .unwrap_err()
            .contains("header says"));
        assert!(super::header(b"ZDRPARTS1 g 2").unwrap().is_err());
    }
}
