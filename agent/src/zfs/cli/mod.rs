//! [`Backend`] over zfs(8) and zpool(8). Every command is an argv, never a
//! shell string; every name is checked before it gets there; output is read
//! in `-Hp` form (tab-separated, exact numbers) and any line that does not fit
//! is an error naming the line. The argv are built in `argv`, the output read
//! in `parse`, a failure's stderr mapped to a [`ZfsError`] in `errors`.

mod argv;
mod errors;
pub mod parse;
mod priority;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use zdr_common::wire::{BookmarkInfo, ContentHash, PoolInfo, SnapshotInfo};
use zdr_common::{DatasetName, NameError};

use self::argv::{
    abort_receive_args, bookmark_args, content_props_args, destroy_args, destroy_dataset_args,
    hold_args, holds_args, list_bookmarks_args, list_datasets_args, list_snapshots_args,
    mount_snapshot_args, pools_args, receive_args, render_argv, resume_token_args, send_args,
    snapshot_args,
};
use self::errors::{classify, quoted, receive_error, send_error, Failure, Kind};
use self::parse::{
    parse_bookmarks, parse_datasets, parse_error, parse_estimate, parse_holds, parse_pools,
    parse_snapshots,
};
use self::priority::lowest_priority;
use super::content::{blocks_read, files_hashed, hash_tree};
use super::names::bookmark_name;
use super::stream::{copy_stream, flush_output, pump};
use super::{Backend, DatasetInfo, RecvSpec, SendBase, SendSpec, ZfsError};

/// Runs the zfs and zpool binaries found at the configured paths.
#[derive(Debug, Clone)]
pub struct CliBackend {
    zfs: PathBuf,
    zpool: PathBuf,
}

impl Default for CliBackend {
    fn default() -> Self {
        CliBackend::new(PathBuf::from("zfs"), PathBuf::from("zpool"))
    }
}

impl CliBackend {
    pub fn new(zfs: PathBuf, zpool: PathBuf) -> Self {
        CliBackend { zfs, zpool }
    }

    fn command(program: &Path, args: &[String]) -> Command {
        tracing::debug!(argv = %render_argv(program, args), "running");
        let mut cmd = Command::new(program);
        cmd.args(args)
            // Messages are matched in English and must not be translated.
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env_remove("LANGUAGE");
        cmd
    }

    /// Starts zfs(8) with piped stdio as given and stderr collected by a thread.
    fn spawn(
        &self,
        args: &[String],
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<(Child, std::thread::JoinHandle<String>), ZfsError> {
        let mut child = Self::command(&self.zfs, args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ZfsError::Spawn {
                program: self.zfs.display().to_string(),
                source,
            })?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).trim().to_string()
        });
        Ok((child, reader))
    }

    /// Waits for a spawned zfs(8); `Err(_)` when it failed.
    fn finish(
        &self,
        args: &[String],
        mut child: Child,
        reader: std::thread::JoinHandle<String>,
    ) -> Result<Result<(), Failure>, ZfsError> {
        let status = child.wait().map_err(|source| ZfsError::Spawn {
            program: self.zfs.display().to_string(),
            source,
        })?;
        let stderr = reader.join().unwrap_or_default();
        if status.success() {
            return Ok(Ok(()));
        }
        Ok(Err(Failure {
            argv: render_argv(&self.zfs, args),
            status: status.to_string(),
            stderr,
        }))
    }

    /// `Ok(Err(_))` is a command that ran and failed, to be classified by the
    /// caller, which knows what the command was about.
    fn run(&self, program: &Path, args: &[String]) -> Result<Result<String, Failure>, ZfsError> {
        let output = Self::command(program, args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ZfsError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        if output.status.success() {
            return Ok(Ok(String::from_utf8_lossy(&output.stdout).into_owned()));
        }
        Ok(Err(Failure {
            argv: render_argv(program, args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        }))
    }

    fn zfs(
        &self,
        args: &[String],
        pool: &str,
        what: impl Fn(Kind, &str) -> String,
    ) -> Result<String, ZfsError> {
        self.run(&self.zfs, args)?
            .map_err(|f| f.into_error(pool, what))
    }

    /// `mount` or `umount`; any failure is the command's.
    fn run_mount(&self, program: &str, args: &[String]) -> Result<(), ZfsError> {
        self.run(Path::new(program), args)?
            .map(drop)
            .map_err(|f| ZfsError::Command {
                argv: f.argv,
                status: f.status,
                stderr: f.stderr,
            })
    }

    /// Mounts `full` read-only at a fresh private directory, hashes its
    /// files, unmounts. A private mount rather than `.zfs/snapshot`: it
    /// works whether or not the dataset itself is mounted (a drill's scratch
    /// never is) and leaves nothing behind on the dataset.
    fn hash_mounted(&self, full: &str) -> Result<ContentHash, ZfsError> {
        let stream = |what: &str, source| ZfsError::Stream {
            what: what.to_string(),
            source,
        };
        let dir = private_dir().map_err(|e| stream("creating a private mountpoint", e))?;
        let t = std::time::Instant::now();
        let mounted = self.run_mount("mount", &mount_snapshot_args(full, &dir));
        let mount_ms = t.elapsed().as_millis() as u64;
        if let Err(e) = mounted {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        let t = std::time::Instant::now();
        let tree = hash_tree(&dir);
        let read_ms = t.elapsed().as_millis() as u64;
        let t = std::time::Instant::now();
        let unmounted = self.run_mount("umount", &[dir.display().to_string()]);
        let mount_ms = mount_ms + t.elapsed().as_millis() as u64;
        let tree = tree.map_err(|e| stream(&format!("reading {full}"), e))?;
        unmounted?;
        let _ = std::fs::remove_dir(&dir);
        Ok(files_hashed(tree, mount_ms, read_ms))
    }
}

/// A new directory only root can enter, for one mount.
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("zdr-hash-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Counts what it is given and keeps none of it.
struct Discard(u64);

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Backend for CliBackend {
    fn kind(&self) -> &'static str {
        "cli"
    }

    fn pools(&self) -> Result<Vec<PoolInfo>, ZfsError> {
        let out = self
            .run(&self.zpool, &pools_args())?
            .map_err(|f| f.into_error("", |_, _| "pool".into()))?;
        parse_pools(&out)
    }

    fn list_datasets(&self, class_property: &str) -> Result<Vec<DatasetInfo>, ZfsError> {
        let args = list_datasets_args(class_property)?;
        let out = self.zfs(&args, "", |_, _| "dataset".into())?;
        parse_datasets(&out)
    }

    fn list_snapshots(&self, dataset: &DatasetName) -> Result<Vec<SnapshotInfo>, ZfsError> {
        let out = self.zfs(&list_snapshots_args(dataset), dataset.pool(), |_, _| {
            format!("dataset {dataset}")
        })?;
        parse_snapshots(dataset, &out)
    }

    fn snapshot(
        &self,
        datasets: &[DatasetName],
        name: &str,
        recursive: bool,
    ) -> Result<(), ZfsError> {
        let Some(args) = snapshot_args(datasets, name, recursive)? else {
            return Ok(());
        };
        let pool = datasets[0].pool();
        let failure = match self.run(&self.zfs, &args)? {
            Ok(_) => return Ok(()),
            Err(f) => f,
        };
        // With -r a child's full name can pass 255 bytes although every
        // listed one fits; zfs(8) then refuses the whole set, naming the child.
        if failure.stderr.contains("name is too long") {
            if let Some(q) = quoted(&failure.stderr) {
                return Err(ZfsError::Name(NameError::TooLong {
                    name: q.to_string(),
                    len: q.len(),
                }));
            }
        }
        Err(failure.into_error(pool, |_, stderr| match quoted(stderr) {
            Some(q) => q.to_string(),
            None => format!("snapshot @{name}"),
        }))
    }

    fn destroy_snapshot(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError> {
        let args = destroy_args(dataset, name)?;
        let full = dataset.snapshot(name)?;
        let failure = match self.run(&self.zfs, &args)? {
            Ok(_) => return Ok(()),
            Err(f) => f,
        };
        // OpenZFS 2.1 reports a held snapshot as merely "busy"; 2.2+ says
        // "it's being held". Either way the holds themselves are the answer.
        if matches!(classify(&failure.stderr), Some(Kind::Busy | Kind::Held)) {
            let tags = self.holds(dataset, name)?;
            if !tags.is_empty() {
                return Err(ZfsError::Held {
                    what: full,
                    tags: tags.join(", "),
                });
            }
        }
        Err(failure.into_error(dataset.pool(), |_, _| format!("snapshot {full}")))
    }

    fn hold(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError> {
        let args = hold_args("hold", dataset, snapshot, tag)?;
        let full = dataset.snapshot(snapshot)?;
        self.zfs(&args, dataset.pool(), |kind, _| match kind {
            Kind::Exists => format!("hold {tag:?} on {full}"),
            _ => format!("snapshot {full}"),
        })
        .map(drop)
    }

    fn release(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError> {
        let args = hold_args("release", dataset, snapshot, tag)?;
        let full = dataset.snapshot(snapshot)?;
        self.zfs(&args, dataset.pool(), |_, _| {
            format!("hold {tag:?} on {full}")
        })
        .map(drop)
    }

    fn holds(&self, dataset: &DatasetName, snapshot: &str) -> Result<Vec<String>, ZfsError> {
        let args = holds_args(dataset, snapshot)?;
        let full = dataset.snapshot(snapshot)?;
        let out = self.zfs(&args, dataset.pool(), |_, _| format!("snapshot {full}"))?;
        parse_holds(&full, &out)
    }

    fn bookmark(
        &self,
        dataset: &DatasetName,
        snapshot: &str,
        bookmark: &str,
    ) -> Result<(), ZfsError> {
        let args = bookmark_args(dataset, snapshot, bookmark)?;
        let snap = dataset.snapshot(snapshot)?;
        let book = bookmark_name(dataset, bookmark)?;
        self.zfs(&args, dataset.pool(), |kind, _| match kind {
            Kind::Exists => format!("bookmark {book}"),
            _ => format!("snapshot {snap}"),
        })
        .map(drop)
    }

    fn list_bookmarks(&self, dataset: &DatasetName) -> Result<Vec<BookmarkInfo>, ZfsError> {
        let out = self.zfs(&list_bookmarks_args(dataset), dataset.pool(), |_, _| {
            format!("dataset {dataset}")
        })?;
        parse_bookmarks(dataset, &out)
    }

    fn destroy_bookmark(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError> {
        let full = bookmark_name(dataset, name)?;
        let args = vec!["destroy".into(), full.clone()];
        let failure = match self.run(&self.zfs, &args)? {
            Ok(_) => return Ok(()),
            Err(f) => f,
        };
        // "bookmark '...' does not exist.", for a missing dataset too.
        if classify(&failure.stderr).is_none() && failure.stderr.contains("does not exist") {
            return Err(ZfsError::NotFound {
                what: format!("bookmark {full}"),
            });
        }
        Err(failure.into_error(dataset.pool(), |_, _| format!("bookmark {full}")))
    }

    fn send(&self, spec: &SendSpec, out: &mut dyn Write) -> Result<u64, ZfsError> {
        let args = send_args(spec, false)?;
        let (mut child, reader) = self.spawn(&args, Stdio::null(), Stdio::piped())?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let copied = copy_stream(&mut stdout, "zfs send", out);
        let sent = match copied {
            Ok(sent) => sent,
            Err(e) => {
                let _ = child.kill();
                drop(stdout);
                let _ = self.finish(&args, child, reader);
                return Err(e);
            }
        };
        drop(stdout);
        if let Err(f) = self.finish(&args, child, reader)? {
            return Err(send_error(f, spec));
        }
        flush_output(out)?;
        Ok(sent)
    }

    fn estimate(&self, spec: &SendSpec) -> Result<Option<u64>, ZfsError> {
        let args = send_args(spec, true)?;
        let mut cmd = Self::command(&self.zfs, &args);
        lowest_priority(&mut cmd);
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ZfsError::Spawn {
                program: self.zfs.display().to_string(),
                source,
            })?;
        if !output.status.success() {
            let f = Failure {
                argv: render_argv(&self.zfs, &args),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            };
            return Err(send_error(f, spec));
        }
        // OpenZFS 2.x prints the dry run on stdout, older releases on stderr.
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let from_bookmark = matches!(
            spec,
            SendSpec::Incremental {
                from: SendBase::Bookmark(_),
                ..
            }
        );
        parse_estimate(&text, from_bookmark)
    }

    fn receive(
        &self,
        target: &DatasetName,
        spec: &RecvSpec,
        input: &mut dyn Read,
    ) -> Result<(), ZfsError> {
        let args = receive_args(target, spec);
        let (mut child, reader) = self.spawn(&args, Stdio::piped(), Stdio::null())?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // zfs receive stops reading when it refuses the stream; its stderr
        // says why.
        let read_error = pump(input, &mut stdin);
        // Closing stdin ends the stream; after a read error zfs receive
        // sees a truncated stream and keeps the partial state.
        drop(stdin);
        match self.finish(&args, child, reader)? {
            Ok(()) => Ok(()),
            Err(mut f) => {
                if let Some(e) = read_error {
                    f.stderr = format!("{} (reading the input: {e})", f.stderr);
                }
                Err(receive_error(f, target))
            }
        }
    }

    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<String>, ZfsError> {
        let args = resume_token_args(dataset);
        let out = self.zfs(&args, dataset.pool(), |_, _| format!("dataset {dataset}"))?;
        let value = out.trim_end_matches('\n');
        if value.contains('\n') {
            return Err(parse_error(value, "expected one value"));
        }
        Ok((!matches!(value, "" | "-")).then(|| value.to_string()))
    }

    fn create_parents(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let Some(parent) = dataset.parent() else {
            return Ok(());
        };
        // -p: no error for ancestors (or the parent) that exist already.
        let args = vec!["create".into(), "-p".into(), parent.to_string()];
        self.zfs(&args, dataset.pool(), |_, _| format!("dataset {parent}"))
            .map(drop)
    }

    fn abort_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let args = abort_receive_args(dataset);
        let failure = match self.run(&self.zfs, &args)? {
            Ok(_) => return Ok(()),
            Err(f) => f,
        };
        if failure
            .stderr
            .contains("does not have any resumable receive state")
        {
            return Err(ZfsError::NotFound {
                what: format!("resumable receive state on {dataset}"),
            });
        }
        Err(failure.into_error(dataset.pool(), |_, _| format!("dataset {dataset}")))
    }

    fn content_hash(&self, dataset: &DatasetName, snapshot: &str) -> Result<ContentHash, ZfsError> {
        let full = dataset.snapshot(snapshot)?;
        let out = self.zfs(&content_props_args(dataset), dataset.pool(), |_, _| {
            format!("dataset {dataset}")
        })?;
        let props: Vec<&str> = out.lines().collect();
        let [kind, keystatus] = props.as_slice() else {
            return Err(parse_error(&out, "expected type and keystatus"));
        };
        if *kind == "filesystem" && *keystatus != "unavailable" {
            return self.hash_mounted(&full);
        }
        // A zvol, or no key: a raw send reads every block, so ZFS checks
        // each one's checksum; the stream itself is not comparable.
        let spec = SendSpec::Full {
            dataset: dataset.clone(),
            snapshot: snapshot.to_string(),
            raw: *keystatus != "-",
        };
        let t = std::time::Instant::now();
        let mut sink = Discard(0);
        self.send(&spec, &mut sink)?;
        Ok(blocks_read(sink.0, t.elapsed().as_millis() as u64))
    }

    fn destroy_dataset(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.zfs(&destroy_dataset_args(dataset), dataset.pool(), |_, _| {
            format!("dataset {dataset}")
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    #[cfg(unix)]
    mod fake_zfs {
        use std::os::unix::fs::PermissionsExt;
        use std::path::PathBuf;

        use super::*;

        /// A `zfs` that logs its argv one element per line and then runs `body`.
        fn fake(dir: &Path, body: &str) -> (CliBackend, PathBuf) {
            let log = dir.join("argv.log");
            let script = dir.join("zfs");
            let text = format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> '{}'; done\n{body}\n",
                log.display()
            );
            std::fs::write(&script, text).unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            (CliBackend::new(script.clone(), script), log)
        }

        /// Retries while another test thread's fork still holds the script open for writing.
        fn retry<T>(f: impl Fn() -> Result<T, ZfsError>) -> Result<T, ZfsError> {
            for _ in 0..50 {
                match f() {
                    Err(ZfsError::Spawn { source, .. }) if source.raw_os_error() == Some(26) => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    other => return other,
                }
            }
            f()
        }

        fn logged(log: &Path) -> Vec<String> {
            std::fs::read_to_string(log)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }

        #[test]
        fn names_with_spaces_arrive_as_single_argv_elements() {
            let dir = tempfile::tempdir().unwrap();
            let (zfs, log) = fake(
                dir.path(),
                r"printf 'tank/a  b/ -r x:y.z@zdr_1\t7\t8\t9\t10\t1\n'",
            );
            let d = ds("tank/a  b/ -r x:y.z");
            let snaps = retry(|| zfs.list_snapshots(&d)).unwrap();
            assert_eq!(snaps.len(), 1);
            assert_eq!(snaps[0].guid, 7);
            assert_eq!(
                logged(&log).last().map(String::as_str),
                Some("tank/a  b/ -r x:y.z")
            );

            std::fs::remove_file(&log).unwrap();
            retry(|| zfs.hold(&d, "s 1", "zdr keep")).unwrap();
            assert_eq!(
                logged(&log),
                ["hold", "zdr keep", "tank/a  b/ -r x:y.z@s 1"]
            );
        }

        #[test]
        fn held_destroy_on_openzfs_2_1_becomes_held() {
            let dir = tempfile::tempdir().unwrap();
            let (zfs, _) = fake(
                dir.path(),
                "case \"$1\" in\n\
                 destroy) echo 'cannot destroy snapshot tank/a@s: dataset is busy' >&2; exit 1;;\n\
                 holds) printf 'tank/a@s\\tzdr\\tThu Jan  4 10:00 2024\\n';;\n\
                 esac",
            );
            match retry(|| zfs.destroy_snapshot(&ds("tank/a"), "s")) {
                Err(ZfsError::Held { what, tags }) => {
                    assert_eq!(what, "tank/a@s");
                    assert_eq!(tags, "zdr");
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn destroy_bookmark_is_one_argv_element_and_missing_is_not_found() {
            let dir = tempfile::tempdir().unwrap();
            let (zfs, log) = fake(
                dir.path(),
                "case \"$2\" in\n\
                 *#gone) echo \"bookmark '$2' does not exist.\" >&2; exit 1;;\n\
                 esac",
            );
            retry(|| zfs.destroy_bookmark(&ds("tank/a b"), "m 1")).unwrap();
            assert_eq!(logged(&log), ["destroy", "tank/a b#m 1"]);
            match retry(|| zfs.destroy_bookmark(&ds("tank/a"), "gone")) {
                Err(ZfsError::NotFound { what }) => assert_eq!(what, "bookmark tank/a#gone"),
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                zfs.destroy_bookmark(&ds("tank/a"), "x@y"),
                Err(ZfsError::Name(_))
            ));
        }

        #[test]
        fn busy_destroy_without_holds_stays_busy() {
            let dir = tempfile::tempdir().unwrap();
            let (zfs, _) = fake(
                dir.path(),
                "case \"$1\" in\n\
                 destroy) echo 'cannot destroy snapshot tank/a@s: dataset is busy' >&2; exit 1;;\n\
                 esac",
            );
            assert!(matches!(
                retry(|| zfs.destroy_snapshot(&ds("tank/a"), "s")),
                Err(ZfsError::Busy { .. })
            ));
        }

        #[test]
        fn failures_map_to_variants() {
            let dir = tempfile::tempdir().unwrap();
            let (zfs, _) = fake(
                dir.path(),
                "case \"$1\" in\n\
                 snapshot) echo \"cannot create snapshot 'tank/b@n': dataset already exists\" >&2; exit 1;;\n\
                 destroy) echo 'could not find any snapshots to destroy; check snapshot names.' >&2; exit 1;;\n\
                 bookmark) echo \"cannot create bookmark 'tank/a#b': out of space\" >&2; exit 1;;\n\
                 *) echo 'internal error: something new' >&2; exit 3;;\n\
                 esac",
            );
            match retry(|| zfs.snapshot(&[ds("tank/a"), ds("tank/b")], "n", false)) {
                Err(ZfsError::Exists { what }) => assert_eq!(what, "tank/b@n"),
                other => panic!("{other:?}"),
            }
            match retry(|| zfs.destroy_snapshot(&ds("tank/a"), "gone")) {
                Err(ZfsError::NotFound { what }) => assert_eq!(what, "snapshot tank/a@gone"),
                other => panic!("{other:?}"),
            }
            match retry(|| zfs.bookmark(&ds("tank/a"), "s", "b")) {
                Err(ZfsError::NoSpace { pool }) => assert_eq!(pool, "tank"),
                other => panic!("{other:?}"),
            }
            match retry(|| zfs.release(&ds("tank/a"), "s", "t")) {
                Err(ZfsError::Command { status, stderr, .. }) => {
                    assert!(status.contains('3'), "{status}");
                    assert_eq!(stderr, "internal error: something new");
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn child_name_too_long_in_a_recursive_snapshot_is_a_name_error() {
            let dir = tempfile::tempdir().unwrap();
            let (zfs, _) = fake(
                dir.path(),
                "echo \"cannot create snapshot 'tank/a/long child@s': name is too long\" >&2\n\
                 echo 'no snapshots were created' >&2; exit 1",
            );
            match retry(|| zfs.snapshot(&[ds("tank/a")], "s", true)) {
                Err(ZfsError::Name(NameError::TooLong { name, len })) => {
                    assert_eq!(name, "tank/a/long child@s");
                    assert_eq!(len, name.len());
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn missing_binary_is_a_spawn_error() {
            let dir = tempfile::tempdir().unwrap();
            let missing = dir.path().join("no-such-zfs");
            let zfs = CliBackend::new(missing.clone(), missing);
            assert!(matches!(zfs.pools(), Err(ZfsError::Spawn { .. })));
        }
    }
}
