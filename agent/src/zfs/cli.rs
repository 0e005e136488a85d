//! [`Backend`] over zfs(8) and zpool(8). Every command is an argv, never a
//! shell string; every name is checked before it gets there; output is read
//! in `-Hp` form (tab-separated, exact numbers) and any line that does not fit
//! is an error naming the line.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;

use zdr_common::dataset::parse_snapshot_name;
use zdr_common::wire::{BookmarkInfo, PoolInfo, SnapshotInfo};
use zdr_common::{DatasetName, NameError};

use super::names::{bookmark_name, check_tag, check_token, check_user_property, send_base_name};
use super::stream::{copy_stream, flush_output, plausible_estimate, pump};
use super::{in_createtxg_order, Backend, DatasetInfo, RecvSpec, SendBase, SendSpec, ZfsError};

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
}

fn send_error(f: Failure, spec: &SendSpec) -> ZfsError {
    let what = |stderr: &str| quoted(stderr).map_or_else(|| "snapshot".into(), str::to_string);
    if classify(&f.stderr).is_none() && f.stderr.contains("does not exist") {
        return ZfsError::NotFound {
            what: what(&f.stderr),
        };
    }
    f.into_error(send_pool(spec), |_, stderr| what(stderr))
}

fn send_pool(spec: &SendSpec) -> &str {
    match spec {
        SendSpec::Full { dataset, .. } | SendSpec::Incremental { dataset, .. } => dataset.pool(),
        SendSpec::Resume { .. } => "",
    }
}

/// `zfs send`, or with `dry_run` its `-nvP` estimate.
fn send_args(spec: &SendSpec, dry_run: bool) -> Result<Vec<String>, ZfsError> {
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

fn receive_args(target: &DatasetName, spec: &RecvSpec) -> Vec<String> {
    let mut args = strings(&["receive", "-s", "-u"]);
    if spec.force {
        args.push("-F".into());
    }
    args.push(target.to_string());
    args
}

fn resume_token_args(dataset: &DatasetName) -> Vec<String> {
    let mut args = strings(&["get", "-Hp", "-o", "value", "receive_resume_token"]);
    args.push(dataset.to_string());
    args
}

fn abort_receive_args(dataset: &DatasetName) -> Vec<String> {
    vec!["receive".into(), "-A".into(), dataset.to_string()]
}

/// zfs receive's refusals, before the generic classification.
fn receive_error(f: Failure, target: &DatasetName) -> ZfsError {
    const INCOMPLETE: [&str; 3] = [
        "incomplete stream",
        "Partially received snapshot is saved",
        "checksum mismatch",
    ];
    const DIVERGED: [&str; 6] = [
        "does not match incremental source",
        "has been modified",
        "destination has snapshots",
        "must specify -F",
        "destination already exists",
        "local origin for clone",
    ];
    // libzfs wraps some of these messages over lines.
    let s = &f.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    if INCOMPLETE.iter().any(|p| s.contains(p)) {
        return ZfsError::Incomplete {
            target: target.to_string(),
            detail: f.stderr,
        };
    }
    if DIVERGED.iter().any(|p| s.contains(p)) {
        return ZfsError::Diverged {
            target: target.to_string(),
            detail: f.stderr,
        };
    }
    if s.contains("partially-complete state") {
        return ZfsError::Busy {
            what: format!("dataset {target}"),
            detail: f.stderr,
        };
    }
    if s.contains("does not exist") {
        return ZfsError::NotFound {
            what: quoted(s).map_or_else(|| format!("dataset {target}"), str::to_string),
        };
    }
    f.into_error(target.pool(), |_, _| format!("dataset {target}"))
}

/// Reads `zfs send -nvP`: the `size` line, or failing that the sum of the
/// `full` / `incremental` lines; other lines (a resume token's contents) are
/// skipped. `None` for overflowed figures, and from a bookmark for 0 too
/// (OpenZFS #12265).
pub(crate) fn parse_estimate(out: &str, from_bookmark: bool) -> Result<Option<u64>, ZfsError> {
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

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn pools_args() -> Vec<String> {
    strings(&["list", "-Hp", "-o", "name,size,allocated,free,health"])
}

fn list_datasets_args(class_property: &str) -> Result<Vec<String>, ZfsError> {
    check_user_property(class_property)?;
    let mut args = strings(&["list", "-Hp", "-t", "filesystem,volume", "-o"]);
    args.push(format!(
        "name,guid,used,available,encryption,{class_property}"
    ));
    Ok(args)
}

fn list_snapshots_args(dataset: &DatasetName) -> Vec<String> {
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

fn list_bookmarks_args(dataset: &DatasetName) -> Vec<String> {
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
fn snapshot_args(
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

fn destroy_args(dataset: &DatasetName, name: &str) -> Result<Vec<String>, ZfsError> {
    Ok(vec!["destroy".into(), dataset.snapshot(name)?])
}

fn hold_args(
    verb: &str,
    dataset: &DatasetName,
    snapshot: &str,
    tag: &str,
) -> Result<Vec<String>, ZfsError> {
    check_tag(tag)?;
    Ok(vec![verb.into(), tag.into(), dataset.snapshot(snapshot)?])
}

fn holds_args(dataset: &DatasetName, snapshot: &str) -> Result<Vec<String>, ZfsError> {
    Ok(vec![
        "holds".into(),
        "-H".into(),
        dataset.snapshot(snapshot)?,
    ])
}

fn bookmark_args(
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

/// A command that ran and exited non-zero.
#[derive(Debug)]
struct Failure {
    argv: String,
    status: String,
    stderr: String,
}

/// The failures callers act on, recognised from OpenZFS's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotFound,
    Exists,
    Busy,
    Held,
    NoSpace,
}

fn classify(stderr: &str) -> Option<Kind> {
    const PATTERNS: [(&str, Kind); 12] = [
        ("it's being held", Kind::Held),
        ("no such tag on this dataset", Kind::NotFound),
        ("could not find any snapshots to destroy", Kind::NotFound),
        ("dataset does not exist", Kind::NotFound),
        ("no such pool or dataset", Kind::NotFound),
        ("tag already exists", Kind::Exists),
        ("dataset already exists", Kind::Exists),
        ("bookmark exists", Kind::Exists),
        ("pool or dataset is busy", Kind::Busy),
        ("dataset is busy", Kind::Busy),
        ("snapshot is cloned", Kind::Busy),
        ("out of space", Kind::NoSpace),
    ];
    PATTERNS
        .iter()
        .find(|(pattern, _)| stderr.contains(pattern))
        .map(|(_, kind)| *kind)
}

impl Failure {
    /// `what` names the object from the kind of failure and the stderr.
    fn into_error(self, pool: &str, what: impl Fn(Kind, &str) -> String) -> ZfsError {
        let Some(kind) = classify(&self.stderr) else {
            return ZfsError::Command {
                argv: self.argv,
                status: self.status,
                stderr: self.stderr,
            };
        };
        let what = what(kind, &self.stderr);
        match kind {
            Kind::NotFound => ZfsError::NotFound { what },
            Kind::Exists => ZfsError::Exists { what },
            Kind::Busy | Kind::Held => ZfsError::Busy {
                what,
                detail: self.stderr,
            },
            Kind::NoSpace => ZfsError::NoSpace {
                pool: pool.to_string(),
            },
        }
    }
}

/// The first '...'-quoted name in a message such as
/// `cannot create snapshot 'tank/a@x': dataset already exists`.
fn quoted(stderr: &str) -> Option<&str> {
    let (_, rest) = stderr.split_once('\'')?;
    let (inner, _) = rest.split_once('\'')?;
    Some(inner)
}

/// For messages only: the argv as a shell would need it typed.
fn render_argv(program: &Path, args: &[String]) -> String {
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

fn parse_error(line: &str, reason: impl Into<String>) -> ZfsError {
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

fn parse_pools(out: &str) -> Result<Vec<PoolInfo>, ZfsError> {
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

fn parse_datasets(out: &str) -> Result<Vec<DatasetInfo>, ZfsError> {
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

fn parse_snapshots(dataset: &DatasetName, out: &str) -> Result<Vec<SnapshotInfo>, ZfsError> {
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

fn parse_bookmarks(dataset: &DatasetName, out: &str) -> Result<Vec<BookmarkInfo>, ZfsError> {
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
fn parse_holds(snapshot: &str, out: &str) -> Result<Vec<String>, ZfsError> {
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

/// The size estimate runs beside the stream and only feeds the progress
/// report. Its kernel work (an `-I` range opens every snapshot in it) runs
/// in its process, so at nice 19 it yields the CPU to the stream.
fn lowest_priority(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setpriority(2) is async-signal-safe and only changes the child.
    unsafe {
        cmd.pre_exec(|| {
            // Raising one's own niceness needs no privilege; should it fail,
            // the estimate runs at the normal priority all the same.
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    #[test]
    fn the_estimate_runs_at_the_lowest_priority() {
        let nice = |lower: bool| {
            let mut cmd = Command::new("cat");
            cmd.arg("/proc/self/stat");
            if lower {
                lowest_priority(&mut cmd);
            }
            let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
            // Field 19 of stat(5); the fields after the ")" of the name start at 3.
            let after = out.rsplit_once(") ").unwrap().1;
            after
                .split(' ')
                .nth(19 - 3)
                .unwrap()
                .parse::<i32>()
                .unwrap()
        };
        let ours = nice(false);
        assert_eq!(nice(true), 19, "ours is {ours}");
        assert!(
            ours < 19,
            "the test itself runs at nice {ours}, too high to tell"
        );
    }

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
            receive_args(&d, &RecvSpec { force: true }),
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
    fn classifies_receive_refusals() {
        let t = ds("tank/dst");
        let f = |stderr: &str| Failure {
            argv: "zfs receive".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        let cases: [(&str, &str); 7] = [
            ("cannot receive incremental stream: most recent snapshot of tank/dst does not\nmatch incremental source", "Diverged"),
            ("cannot receive new filesystem stream: destination 'tank/dst' exists\nmust specify -F to overwrite it", "Diverged"),
            ("cannot receive new filesystem stream: destination has snapshots (eg. tank/dst@a)\nmust destroy them to overwrite it", "Diverged"),
            ("cannot receive incremental stream: checksum mismatch or incomplete stream.\nPartially received snapshot is saved.", "Incomplete"),
            ("cannot receive incremental stream: destination 'tank/nope' does not exist", "NotFound"),
            ("cannot receive: destination tank/dst contains partially-complete state from \"zfs receive -s\".", "Busy"),
            ("cannot receive: permission denied", "Command"),
        ];
        for (stderr, want) in cases {
            let got = receive_error(f(stderr), &t);
            let name = format!("{got:?}");
            assert!(name.starts_with(want), "{stderr}: {got:?}");
        }
    }

    #[test]
    fn classifies_openzfs_messages() {
        let cases = [
            ("cannot open 'tank/x': dataset does not exist", Some(Kind::NotFound)),
            ("could not find any snapshots to destroy; check snapshot names.", Some(Kind::NotFound)),
            ("cannot hold snapshot 'tank/a@s': no such pool or dataset", Some(Kind::NotFound)),
            ("cannot release hold from snapshot 'tank/a@s': no such tag on this dataset", Some(Kind::NotFound)),
            ("cannot create snapshot 'tank/a@s': dataset already exists", Some(Kind::Exists)),
            ("cannot hold snapshot 'tank/a@s': tag already exists on this dataset", Some(Kind::Exists)),
            ("cannot create bookmark 'tank/a#b': bookmark exists", Some(Kind::Exists)),
            ("cannot destroy snapshot tank/a@s: dataset is busy", Some(Kind::Busy)),
            ("cannot destroy 'tank/a': pool or dataset is busy", Some(Kind::Busy)),
            (
                "cannot destroy snapshot tank/a@s: it's being held. Run 'zfs holds -r tank/a@s' to see holders.",
                Some(Kind::Held),
            ),
            ("cannot create snapshot 'tank/a@s': out of space", Some(Kind::NoSpace)),
            ("cannot open 'tank/a': permission denied", None),
        ];
        for (stderr, kind) in cases {
            assert_eq!(classify(stderr), kind, "{stderr}");
        }
    }

    #[test]
    fn unknown_failures_keep_a_readable_argv() {
        let f = Failure {
            argv: render_argv(
                Path::new("/sbin/zfs"),
                &strings(&["destroy", "tank/my data@s", "it's"]),
            ),
            status: "exit status: 2".into(),
            stderr: "cannot open 'tank/my data@s': permission denied".into(),
        };
        match f.into_error("tank", |_, _| unreachable!()) {
            ZfsError::Command {
                argv,
                status,
                stderr,
            } => {
                assert_eq!(argv, r"/sbin/zfs destroy 'tank/my data@s' 'it'\''s'");
                assert_eq!(status, "exit status: 2");
                assert!(stderr.contains("permission denied"));
            }
            other => panic!("{other:?}"),
        }
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
