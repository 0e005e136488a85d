//! Reading zfs(8) and zpool(8) output in `-Hp` form: tab-separated, exact
//! numbers; a line that does not fit is an error naming the line. Public for
//! the fuzz targets (`integration/fuzz/`), which feed them arbitrary output.

use std::str::FromStr;

use zdr_common::dataset::parse_snapshot_name;
use zdr_common::wire::{BookmarkInfo, PoolInfo, SnapshotInfo};
use zdr_common::DatasetName;

use crate::zfs::names::bookmark_name;
use crate::zfs::stream::plausible_estimate;
use crate::zfs::{in_createtxg_order, DatasetInfo, ZfsError};

/// Reads `zfs send -nvP`: the `size` line, or failing that the sum of the
/// `full` / `incremental` lines; other lines (a resume token's contents) are
/// skipped. `None` for overflowed figures, and from a bookmark for 0 too
/// (OpenZFS #12265).
pub fn parse_estimate(out: &str, from_bookmark: bool) -> Result<Option<u64>, ZfsError> {
    let mut size: Option<u64> = None;
    let mut sum: Option<u64> = None;
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let value = match (f[0], f.len()) {
            ("size", 2) => {
                size = Some(number(line, "size", f[1])?);
                continue;
            }
            ("full", 3) => f[2],
            ("incremental", 4) => f[3],
            _ => continue,
        };
        let n: u64 = number(line, "estimate", value)?;
        sum = Some(sum.unwrap_or(0).saturating_add(n));
    }
    let Some(n) = size.or(sum) else {
        return Err(parse_error(
            out.lines().next().unwrap_or(""),
            "no size in zfs send -nvP output",
        ));
    };
    Ok(plausible_estimate(n, from_bookmark))
}

pub(super) fn parse_error(line: &str, reason: impl Into<String>) -> ZfsError {
    ZfsError::Parse {
        line: line.to_string(),
        reason: reason.into(),
    }
}

fn fields(line: &str, n: usize) -> Result<Vec<&str>, ZfsError> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != n {
        return Err(parse_error(
            line,
            format!("expected {n} tab-separated fields, found {}", f.len()),
        ));
    }
    Ok(f)
}

fn number<T: FromStr>(line: &str, column: &str, value: &str) -> Result<T, ZfsError> {
    value.parse().map_err(|_| {
        parse_error(
            line,
            format!("{column} {value:?} is not a number of the expected range"),
        )
    })
}

pub fn parse_pools(out: &str) -> Result<Vec<PoolInfo>, ZfsError> {
    // Some zpool versions print this even with -H when no pool is imported.
    if out.trim() == "no pools available" {
        return Ok(Vec::new());
    }
    out.lines()
        .map(|line| {
            let f = fields(line, 5)?;
            let name = DatasetName::parse(f[0]).map_err(|e| parse_error(line, e.to_string()))?;
            if name.as_str().contains('/') {
                return Err(parse_error(line, "a pool name cannot contain '/'"));
            }
            Ok(PoolInfo {
                name: name.to_string(),
                size: number(line, "size", f[1])?,
                allocated: number(line, "allocated", f[2])?,
                free: number(line, "free", f[3])?,
                health: f[4].to_string(),
            })
        })
        .collect()
}

pub fn parse_datasets(out: &str) -> Result<Vec<DatasetInfo>, ZfsError> {
    out.lines()
        .map(|line| {
            // The property value is last and may itself contain tabs.
            let f: Vec<&str> = line.splitn(6, '\t').collect();
            if f.len() != 6 {
                return Err(parse_error(
                    line,
                    format!("expected 6 tab-separated fields, found {}", f.len()),
                ));
            }
            Ok(DatasetInfo {
                name: DatasetName::parse(f[0]).map_err(|e| parse_error(line, e.to_string()))?,
                guid: number(line, "guid", f[1])?,
                used: number(line, "used", f[2])?,
                available: number(line, "available", f[3])?,
                // `-` where the pool has no encryption feature.
                encrypted: !matches!(f[4], "off" | "-"),
                class_property: (f[5] != "-").then(|| f[5].to_string()),
            })
        })
        .collect()
}

pub fn parse_snapshots(dataset: &DatasetName, out: &str) -> Result<Vec<SnapshotInfo>, ZfsError> {
    out.lines()
        .map(|line| {
            let f = fields(line, 6)?;
            let (ds, name) =
                parse_snapshot_name(f[0]).map_err(|e| parse_error(line, e.to_string()))?;
            if &ds != dataset {
                return Err(parse_error(line, format!("snapshot is not of {dataset}")));
            }
            Ok(SnapshotInfo {
                name,
                guid: number(line, "guid", f[1])?,
                createtxg: number(line, "createtxg", f[2])?,
                creation: number(line, "creation", f[3])?,
                used: number(line, "used", f[4])?,
                userrefs: number(line, "userrefs", f[5])?,
            })
        })
        .collect()
}

pub fn parse_bookmarks(dataset: &DatasetName, out: &str) -> Result<Vec<BookmarkInfo>, ZfsError> {
    let mut marks = out
        .lines()
        .map(|line| {
            let f = fields(line, 4)?;
            let name = f[0]
                .strip_prefix(dataset.as_str())
                .and_then(|rest| rest.strip_prefix('#'))
                .ok_or_else(|| parse_error(line, format!("bookmark is not of {dataset}")))?;
            bookmark_name(dataset, name).map_err(|e| parse_error(line, e.to_string()))?;
            Ok(BookmarkInfo {
                name: name.to_string(),
                guid: number(line, "guid", f[1])?,
                createtxg: number(line, "createtxg", f[2])?,
                creation: number(line, "creation", f[3])?,
            })
        })
        .collect::<Result<Vec<_>, ZfsError>>()?;
    in_createtxg_order(&mut marks);
    Ok(marks)
}

/// `zfs holds -H` prints `name<TAB>tag<TAB>timestamp`. Names and timestamps
/// have no tabs, so the tag is whatever lies between the first and last tab.
pub fn parse_holds(snapshot: &str, out: &str) -> Result<Vec<String>, ZfsError> {
    out.lines()
        .map(|line| {
            let (name, rest) = line.split_once('\t').ok_or_else(|| {
                parse_error(line, "expected name, tag and timestamp separated by tabs")
            })?;
            let (tag, _timestamp) = rest.rsplit_once('\t').ok_or_else(|| {
                parse_error(line, "expected name, tag and timestamp separated by tabs")
            })?;
            if name != snapshot {
                return Err(parse_error(line, format!("hold is not on {snapshot}")));
            }
            if tag.is_empty() {
                return Err(parse_error(line, "empty hold tag"));
            }
            Ok(tag.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::ds;
    use super::*;

    #[test]
    fn parses_pools() {
        let out =
            "tank\t10737418240\t1048576\t10736369664\tONLINE\nmy pool\t100\t60\t40\tDEGRADED\n";
        let pools = parse_pools(out).unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(
            pools[1],
            PoolInfo {
                name: "my pool".into(),
                size: 100,
                allocated: 60,
                free: 40,
                health: "DEGRADED".into()
            }
        );
        assert_eq!(pools[0].size, 10737418240);
        assert!(parse_pools("").unwrap().is_empty());
        assert!(parse_pools("no pools available\n").unwrap().is_empty());
    }

    #[test]
    fn malformed_pool_lines_are_named() {
        for bad in [
            "tank\t1\t2\t3",
            "tank\t1\t2\t3\tONLINE\textra",
            "tank\t1.5G\t2\t3\tONLINE",
            "tank/x\t1\t2\t3\tONLINE",
            "tank\t-1\t2\t3\tONLINE",
        ] {
            match parse_pools(bad) {
                Err(ZfsError::Parse { line, .. }) => assert_eq!(line, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn parses_datasets_with_spaces_and_unset_property() {
        let out = "tank\t111\t1000\t9000\toff\t-\n\
                   tank/my data\t222\t500\t9000\taes-256-gcm\tgold\n\
                   tank/vol 1\t333\t0\t9000\t-\tsilver\twith tab\n";
        let got = parse_datasets(out).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].class_property, None);
        assert_eq!(
            got[1],
            DatasetInfo {
                name: ds("tank/my data"),
                guid: 222,
                used: 500,
                available: 9000,
                class_property: Some("gold".into()),
                encrypted: true,
            }
        );
        assert!(!got[0].encrypted && !got[2].encrypted);
        assert_eq!(got[2].class_property.as_deref(), Some("silver\twith tab"));
        for bad in [
            "tank\t1\t2\t3\toff",
            "tank;x\t1\t2\t3\toff\t-",
            "tank\tguid\t2\t3\toff\t-",
        ] {
            assert!(
                matches!(parse_datasets(bad), Err(ZfsError::Parse { line, .. }) if line == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_snapshots_strictly() {
        let d = ds("tank/my data");
        let out =
            "tank/my data@zdr_20240101T000000Z\t18446744073709551615\t100\t1704067200\t4096\t0\n\
                   tank/my data@manual snap\t42\t101\t1704067260\t0\t2\n";
        let got = parse_snapshots(&d, out).unwrap();
        assert_eq!(
            got[0],
            SnapshotInfo {
                name: "zdr_20240101T000000Z".into(),
                guid: u64::MAX,
                createtxg: 100,
                creation: 1704067200,
                used: 4096,
                userrefs: 0
            }
        );
        assert_eq!(got[1].name, "manual snap");
        assert_eq!(got[1].userrefs, 2);
        for bad in [
            "tank/other@s\t1\t2\t3\t4\t0",
            "tank/my data\t1\t2\t3\t4\t0",
            "tank/my data@s\t1\t2\t3\t4",
            "tank/my data@s\t1\t2\tyesterday\t4\t0",
            "tank/my data@s\t1\t2\t3\t4\t0\t",
        ] {
            assert!(
                matches!(parse_snapshots(&d, bad), Err(ZfsError::Parse { line, .. }) if line == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_bookmarks_in_createtxg_order() {
        let d = ds("tank/my data");
        let out = "tank/my data#z late\t9\t300\t1704067300\n\
                   tank/my data#b\t7\t100\t1704067200\n\
                   tank/my data#a\t7\t100\t1704067200\n";
        let got = parse_bookmarks(&d, out).unwrap();
        let names: Vec<&str> = got.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "z late"]);
        assert_eq!(
            got[2],
            BookmarkInfo {
                name: "z late".into(),
                guid: 9,
                createtxg: 300,
                creation: 1704067300
            }
        );
        assert!(parse_bookmarks(&d, "").unwrap().is_empty());
        for bad in [
            "tank/other#b\t1\t2\t3",
            "tank/my data/child#b\t1\t2\t3",
            "tank/my data@s\t1\t2\t3",
            "tank/my data#\t1\t2\t3",
            "tank/my data#b\t1\t2",
            "tank/my data#b\tx\t2\t3",
        ] {
            assert!(
                matches!(parse_bookmarks(&d, bad), Err(ZfsError::Parse { line, .. }) if line == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_holds() {
        let snap = "tank/my data@s 1";
        let out = "tank/my data@s 1\tzdr keep\tThu Jan  4 10:00 2024\ntank/my data@s 1\tother\tFri Jan  5 11:00 2024\n";
        assert_eq!(parse_holds(snap, out).unwrap(), vec!["zdr keep", "other"]);
        assert!(parse_holds(snap, "").unwrap().is_empty());
        for bad in [
            "tank/my data@s 1\tnotime",
            "tank/x@s\ttag\tThu",
            "tank/my data@s 1\t\tThu",
        ] {
            assert!(
                matches!(parse_holds(snap, bad), Err(ZfsError::Parse { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_send_estimates() {
        // zfs send -nvP, OpenZFS 2.x.
        let full = "full\ttank/src@big\t4223352\nsize\t4223352\n";
        assert_eq!(parse_estimate(full, false).unwrap(), Some(4223352));
        let incremental = "incremental\ta\ttank/src@b\t78112\nsize\t78112\n";
        assert_eq!(parse_estimate(incremental, false).unwrap(), Some(78112));
        let many =
            "incremental\tb\ttank/src@c\t1000\nincremental\tc\ttank/src@d\t2000\nsize\t3000\n";
        assert_eq!(parse_estimate(many, false).unwrap(), Some(3000));
        // Without a size line, the per-snapshot lines add up.
        let no_size = "incremental\tb\ttank/src@c\t1000\nincremental\tc\ttank/src@d\t2000\n";
        assert_eq!(parse_estimate(no_size, false).unwrap(), Some(3000));
        // A resume token's contents come first and are skipped.
        let resumed =
            "resume token contents:\nnvlist version: 0\n\tobject = 0x2\n\toffset = 0x1a0000\n\
                       \tbytes = 0x1a4e58\nfull\ttank/src@big\t2101248\nsize\t2101248\n";
        assert_eq!(parse_estimate(resumed, false).unwrap(), Some(2101248));
        // OpenZFS #12265: from a bookmark the figure is 0 or a wrapped negative.
        let zero = "incremental\tmark\ttank/src@b\t0\nsize\t0\n";
        assert_eq!(parse_estimate(zero, true).unwrap(), None);
        assert_eq!(parse_estimate(zero, false).unwrap(), Some(0));
        let wrapped =
            "incremental\tmark\ttank/src@b\t18446744073614344448\nsize\t18446744073614344448\n";
        assert_eq!(parse_estimate(wrapped, true).unwrap(), None);
        assert_eq!(parse_estimate(wrapped, false).unwrap(), None);
        let book = "incremental\tmark\ttank/src@b\t78112\nsize\t78112\n";
        assert_eq!(parse_estimate(book, true).unwrap(), Some(78112));
        for bad in [
            "",
            "nothing here\n",
            "size\tlots\n",
            "full\ttank/src@a\t-5\n",
        ] {
            assert!(
                matches!(parse_estimate(bad, false), Err(ZfsError::Parse { .. })),
                "{bad:?}"
            );
        }
    }
}
