//! The argv of every zfs(8) and zpool(8) call, built from checked names: a
//! name is always one argv element, never split or read as an option.

use std::path::Path;

use zdr_common::DatasetName;

use crate::zfs::names::{
    bookmark_name, check_tag, check_token, check_user_property, send_base_name,
};
use crate::zfs::{RecvSpec, SendSpec, ZfsError};

/// `zfs send`, or with `dry_run` its `-nvP` estimate.
pub(super) fn send_args(spec: &SendSpec, dry_run: bool) -> Result<Vec<String>, ZfsError> {
    let mut args = strings(&["send"]);
    if dry_run {
        args.extend(strings(&["-n", "-v", "-P"]));
    }
    match spec {
        SendSpec::Full {
            dataset,
            snapshot,
            raw,
        } => {
            if *raw {
                args.push("-w".into());
            }
            args.push(dataset.snapshot(snapshot)?);
        }
        SendSpec::Incremental {
            dataset,
            from,
            to,
            intermediates,
            raw,
        } => {
            if *raw {
                args.push("-w".into());
            }
            args.push(if *intermediates { "-I" } else { "-i" }.into());
            args.push(send_base_name(dataset, from, *intermediates)?);
            args.push(dataset.snapshot(to)?);
        }
        SendSpec::Resume { token } => {
            check_token(token)?;
            args.push("-t".into());
            args.push(token.clone());
        }
    }
    Ok(args)
}

pub(super) fn receive_args(target: &DatasetName, spec: &RecvSpec) -> Vec<String> {
    let mut args = strings(&["receive", "-s", "-u"]);
    if spec.force {
        args.push("-F".into());
    }
    if spec.noauto {
        args.extend(strings(&["-o", "canmount=noauto"]));
    }
    args.push(target.to_string());
    args
}

/// What decides how a snapshot's content can be read.
pub(super) fn content_props_args(dataset: &DatasetName) -> Vec<String> {
    let mut args = strings(&["get", "-Hp", "-o", "value", "type,keystatus"]);
    args.push(dataset.to_string());
    args
}

/// `mount -t zfs -o ro dataset@snap dir`: a snapshot mounted read-only at
/// a private place, whatever the dataset's own mountpoint and canmount.
pub(super) fn mount_snapshot_args(full: &str, dir: &Path) -> Vec<String> {
    let mut args = strings(&["-t", "zfs", "-o", "ro"]);
    args.push(full.to_string());
    args.push(dir.display().to_string());
    args
}

pub(super) fn destroy_dataset_args(dataset: &DatasetName) -> Vec<String> {
    vec!["destroy".into(), "-r".into(), dataset.to_string()]
}

pub(super) fn resume_token_args(dataset: &DatasetName) -> Vec<String> {
    let mut args = strings(&["get", "-Hp", "-o", "value", "receive_resume_token"]);
    args.push(dataset.to_string());
    args
}

pub(super) fn abort_receive_args(dataset: &DatasetName) -> Vec<String> {
    vec!["receive".into(), "-A".into(), dataset.to_string()]
}

pub(super) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

pub(super) fn pools_args() -> Vec<String> {
    strings(&["list", "-Hp", "-o", "name,size,allocated,free,health"])
}

pub(super) fn list_datasets_args(class_property: &str) -> Result<Vec<String>, ZfsError> {
    check_user_property(class_property)?;
    let mut args = strings(&["list", "-Hp", "-t", "filesystem,volume", "-o"]);
    args.push(format!(
        "name,guid,used,available,encryption,{class_property}"
    ));
    Ok(args)
}

pub(super) fn list_snapshots_args(dataset: &DatasetName) -> Vec<String> {
    let mut args = strings(&[
        "list",
        "-Hp",
        "-t",
        "snapshot",
        "-o",
        "name,guid,createtxg,creation,used,userrefs",
        "-s",
        "createtxg",
        "-d",
        "1",
    ]);
    args.push(dataset.to_string());
    args
}

pub(super) fn list_bookmarks_args(dataset: &DatasetName) -> Vec<String> {
    let mut args = strings(&[
        "list",
        "-Hp",
        "-t",
        "bookmark",
        "-d",
        "1",
        "-o",
        "name,guid,createtxg,creation",
    ]);
    args.push(dataset.to_string());
    args
}

/// `None` when there is nothing to snapshot. One call for all datasets keeps
/// the snapshot atomic, and ZFS does that only within a single pool.
pub(super) fn snapshot_args(
    datasets: &[DatasetName],
    name: &str,
    recursive: bool,
) -> Result<Option<Vec<String>>, ZfsError> {
    let Some(first) = datasets.first() else {
        return Ok(None);
    };
    if let Some(other) = datasets.iter().find(|d| d.pool() != first.pool()) {
        return Err(ZfsError::Invalid {
            what: "snapshot set",
            value: format!("{first}, {other}"),
            reason: "an atomic snapshot cannot span pools".into(),
        });
    }
    let mut args = strings(&["snapshot"]);
    if recursive {
        args.push("-r".into());
    }
    let mut names = datasets
        .iter()
        .map(|d| d.snapshot(name))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    names.dedup();
    args.extend(names);
    Ok(Some(args))
}

pub(super) fn destroy_args(dataset: &DatasetName, name: &str) -> Result<Vec<String>, ZfsError> {
    Ok(vec!["destroy".into(), dataset.snapshot(name)?])
}

pub(super) fn hold_args(
    verb: &str,
    dataset: &DatasetName,
    snapshot: &str,
    tag: &str,
) -> Result<Vec<String>, ZfsError> {
    check_tag(tag)?;
    Ok(vec![verb.into(), tag.into(), dataset.snapshot(snapshot)?])
}

pub(super) fn holds_args(dataset: &DatasetName, snapshot: &str) -> Result<Vec<String>, ZfsError> {
    Ok(vec![
        "holds".into(),
        "-H".into(),
        dataset.snapshot(snapshot)?,
    ])
}

pub(super) fn bookmark_args(
    dataset: &DatasetName,
    snapshot: &str,
    bookmark: &str,
) -> Result<Vec<String>, ZfsError> {
    Ok(vec![
        "bookmark".into(),
        dataset.snapshot(snapshot)?,
        bookmark_name(dataset, bookmark)?,
    ])
}

/// For messages only: the argv as a shell would need it typed.
pub(super) fn render_argv(program: &Path, args: &[String]) -> String {
    std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_#-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ds;
    use super::*;
    use crate::zfs::SendBase;

    #[test]
    fn builds_argv_with_names_as_single_elements() {
        let d = ds("tank/my data");
        assert_eq!(
            pools_args(),
            ["list", "-Hp", "-o", "name,size,allocated,free,health"]
        );
        assert_eq!(
            list_datasets_args("zdr:class").unwrap(),
            [
                "list",
                "-Hp",
                "-t",
                "filesystem,volume",
                "-o",
                "name,guid,used,available,encryption,zdr:class"
            ]
        );
        assert!(matches!(
            list_datasets_args("zdr:a,b"),
            Err(ZfsError::Invalid { .. })
        ));
        assert_eq!(
            list_snapshots_args(&d),
            [
                "list",
                "-Hp",
                "-t",
                "snapshot",
                "-o",
                "name,guid,createtxg,creation,used,userrefs",
                "-s",
                "createtxg",
                "-d",
                "1",
                "tank/my data"
            ]
        );
        assert_eq!(
            snapshot_args(&[ds("tank/b"), d.clone(), ds("tank/b")], "zdr_1", true)
                .unwrap()
                .unwrap(),
            ["snapshot", "-r", "tank/b@zdr_1", "tank/my data@zdr_1"]
        );
        assert_eq!(
            snapshot_args(std::slice::from_ref(&d), "x", false)
                .unwrap()
                .unwrap(),
            ["snapshot", "tank/my data@x"]
        );
        assert_eq!(snapshot_args(&[], "x", false).unwrap(), None);
        assert!(matches!(
            snapshot_args(&[d.clone(), ds("other/a")], "x", false),
            Err(ZfsError::Invalid { .. })
        ));
        assert!(matches!(
            snapshot_args(std::slice::from_ref(&d), "a;b", false),
            Err(ZfsError::Name(_))
        ));
        assert_eq!(
            destroy_args(&d, "s 1").unwrap(),
            ["destroy", "tank/my data@s 1"]
        );
        assert!(destroy_args(&d, "a@b").is_err());
        assert_eq!(
            hold_args("hold", &d, "s", "zdr keep").unwrap(),
            ["hold", "zdr keep", "tank/my data@s"]
        );
        assert_eq!(
            hold_args("release", &d, "s", "t").unwrap(),
            ["release", "t", "tank/my data@s"]
        );
        assert!(matches!(
            hold_args("hold", &d, "s", "-r"),
            Err(ZfsError::Invalid { .. })
        ));
        assert_eq!(
            holds_args(&d, "s").unwrap(),
            ["holds", "-H", "tank/my data@s"]
        );
        assert_eq!(
            bookmark_args(&d, "s", "b").unwrap(),
            ["bookmark", "tank/my data@s", "tank/my data#b"]
        );
        assert!(bookmark_args(&d, "s", "b#c").is_err());
        assert_eq!(
            list_bookmarks_args(&d),
            [
                "list",
                "-Hp",
                "-t",
                "bookmark",
                "-d",
                "1",
                "-o",
                "name,guid,createtxg,creation",
                "tank/my data"
            ]
        );
    }

    #[test]
    fn builds_send_and_receive_argv() {
        let d = ds("tank/my data");
        let full = SendSpec::Full {
            dataset: d.clone(),
            snapshot: "s 1".into(),
            raw: true,
        };
        assert_eq!(
            send_args(&full, false).unwrap(),
            ["send", "-w", "tank/my data@s 1"]
        );
        assert_eq!(
            send_args(&full, true).unwrap(),
            ["send", "-n", "-v", "-P", "-w", "tank/my data@s 1"]
        );
        let incr = |from: SendBase, all: bool| SendSpec::Incremental {
            dataset: d.clone(),
            from,
            to: "b".into(),
            intermediates: all,
            raw: false,
        };
        assert_eq!(
            send_args(&incr(SendBase::Snapshot("a".into()), true), false).unwrap(),
            ["send", "-I", "tank/my data@a", "tank/my data@b"]
        );
        assert_eq!(
            send_args(&incr(SendBase::Bookmark("m k".into()), false), false).unwrap(),
            ["send", "-i", "tank/my data#m k", "tank/my data@b"]
        );
        assert!(matches!(
            send_args(&incr(SendBase::Bookmark("m".into()), true), false),
            Err(ZfsError::Invalid { .. })
        ));
        assert!(matches!(
            send_args(&incr(SendBase::Snapshot("a;b".into()), false), false),
            Err(ZfsError::Name(_))
        ));
        let token = "1-e604ea4bf-e0-789c63a2";
        assert_eq!(
            send_args(
                &SendSpec::Resume {
                    token: token.into()
                },
                false
            )
            .unwrap(),
            ["send", "-t", token]
        );
        for bad in ["", "-v", "1-abc;rm", "1 2"] {
            assert!(
                matches!(
                    send_args(&SendSpec::Resume { token: bad.into() }, false),
                    Err(ZfsError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            receive_args(&d, &RecvSpec::default()),
            ["receive", "-s", "-u", "tank/my data"]
        );
        assert_eq!(
            receive_args(
                &d,
                &RecvSpec {
                    force: true,
                    ..RecvSpec::default()
                }
            ),
            ["receive", "-s", "-u", "-F", "tank/my data"]
        );
        assert_eq!(
            resume_token_args(&d),
            [
                "get",
                "-Hp",
                "-o",
                "value",
                "receive_resume_token",
                "tank/my data"
            ]
        );
        assert_eq!(abort_receive_args(&d), ["receive", "-A", "tank/my data"]);
    }

    #[test]
    fn builds_the_drill_argv() {
        let d = ds("tank/zdr-drill/my d");
        let scratch = RecvSpec {
            noauto: true,
            ..RecvSpec::default()
        };
        assert_eq!(
            receive_args(&d, &scratch),
            [
                "receive",
                "-s",
                "-u",
                "-o",
                "canmount=noauto",
                "tank/zdr-drill/my d"
            ]
        );
        assert_eq!(
            content_props_args(&d),
            [
                "get",
                "-Hp",
                "-o",
                "value",
                "type,keystatus",
                "tank/zdr-drill/my d"
            ]
        );
        assert_eq!(
            mount_snapshot_args("tank/a b@s", Path::new("/run/x y")),
            ["-t", "zfs", "-o", "ro", "tank/a b@s", "/run/x y"]
        );
        assert_eq!(
            destroy_dataset_args(&d),
            ["destroy", "-r", "tank/zdr-drill/my d"]
        );
    }
}
