//! [`Backend`] over libzfs_core (`lzc_*`), the stable ioctl-level API of
//! OpenZFS, for the calls that change a pool: snapshot (atomic over a set of
//! datasets), destroy, holds and bookmarks, and for streams: full and `-i`
//! sends (`lzc_send`, through a pipe), their estimates (`lzc_send_space`) and
//! plain resumable receives (`lzc_receive_resumable`). libzfs itself is not
//! used: its ABI changes between releases. So what only libzfs knows goes
//! through zfs(8), via a backend over it given at construction (the CLI
//! backend; the agent's `main` wires them, so no backend imports another):
//! listing (libzfs_core has no
//! list call; this also finds the children of a recursive snapshot), `-I`
//! package streams (sent and received), resume tokens (decoding one, reading
//! it, `receive -A`), and `receive -F` (libzfs destroys the snapshots after
//! the base; lzc_receive's `force` only rolls back).
//!
//! Every name is checked (the same checks as the CLI backend) before any
//! libzfs_core call; all unsafe code is in the `ffi` submodule.
#![deny(unsafe_code)]

mod ffi;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::{Read, Write};

use zdr_common::wire::{BookmarkInfo, PoolInfo, SnapshotInfo};
use zdr_common::DatasetName;

use self::ffi::{NvList, Outcome, Pair};
use super::names::{bookmark_name, check_tag, send_base_name};
use super::stream::{copy_stream, fill, flush_output, plausible_estimate, pump};
use super::{in_createtxg_order, Backend, DatasetInfo, RecvSpec, SendSpec, ZfsError};

/// The user property read while listing the children of a recursive
/// snapshot; its value is not used.
const LIST_PROPERTY: &str = "zdr:class";

/// How many object names a failed call's description shows.
const SHOWN_NAMES: usize = 4;

/// libzfs_core for changes; `cli`, a backend over zfs(8) and zpool(8), for
/// listing and what only libzfs knows.
pub struct LzcBackend {
    cli: Box<dyn Backend>,
}

impl LzcBackend {
    /// Opens /dev/zfs lazily, on the first call that needs it.
    pub fn new(cli: Box<dyn Backend>) -> Self {
        LzcBackend { cli }
    }

    /// Opens /dev/zfs now, so that a node without a usable ZFS fails at
    /// startup instead of at its first snapshot.
    pub fn open(cli: Box<dyn Backend>) -> Result<Self, ZfsError> {
        init()?;
        Ok(Self::new(cli))
    }

    /// The snapshot names a (possibly recursive) snapshot of `datasets`
    /// covers, sorted and without duplicates.
    fn snapshot_names(
        &self,
        datasets: &[DatasetName],
        name: &str,
        recursive: bool,
    ) -> Result<BTreeSet<String>, ZfsError> {
        let mut names = datasets
            .iter()
            .map(|d| d.snapshot(name))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if recursive {
            // zfs(8) does the same: list the descendants, then snapshot the
            // whole set in one lzc_snapshot. A missing root lists nothing
            // and is reported by lzc_snapshot as ENOENT.
            for info in self.cli.list_datasets(LIST_PROPERTY)? {
                if datasets.iter().any(|d| d.contains(&info.name)) {
                    names.insert(info.name.snapshot(name)?);
                }
            }
        }
        Ok(names)
    }

    /// Whether the target already has the stream's snapshot (same GUID).
    fn has_snapshot(&self, target: &DatasetName, begin: &Begin) -> bool {
        self.cli.list_snapshots(target).is_ok_and(|snaps| {
            snaps
                .iter()
                .any(|s| s.name == begin.snapshot && s.guid == begin.toguid)
        })
    }

    /// For a destroy refused with EBUSY: Held when the snapshot has holds,
    /// Busy otherwise (a `zfs send` in progress, for one).
    fn busy_or_held(&self, dataset: &DatasetName, snapshot: &str, full: &str) -> ZfsError {
        match self.holds(dataset, snapshot) {
            Ok(tags) if !tags.is_empty() => ZfsError::Held {
                what: full.to_string(),
                tags: tags.join(", "),
            },
            _ => ZfsError::Busy {
                what: format!("snapshot {full}"),
                detail: "lzc_destroy_snaps returned EBUSY".into(),
            },
        }
    }
}

impl Backend for LzcBackend {
    fn kind(&self) -> &'static str {
        "lzc"
    }

    fn pools(&self) -> Result<Vec<PoolInfo>, ZfsError> {
        self.cli.pools()
    }

    fn list_datasets(&self, class_property: &str) -> Result<Vec<DatasetInfo>, ZfsError> {
        self.cli.list_datasets(class_property)
    }

    fn list_snapshots(&self, dataset: &DatasetName) -> Result<Vec<SnapshotInfo>, ZfsError> {
        self.cli.list_snapshots(dataset)
    }

    fn snapshot(
        &self,
        datasets: &[DatasetName],
        name: &str,
        recursive: bool,
    ) -> Result<(), ZfsError> {
        let Some(first) = datasets.first() else {
            return Ok(());
        };
        if let Some(other) = datasets.iter().find(|d| d.pool() != first.pool()) {
            return Err(ZfsError::Invalid {
                what: "snapshot set",
                value: format!("{first}, {other}"),
                reason: "an atomic snapshot cannot span pools".into(),
            });
        }
        // Checks every given name before listing children or touching /dev/zfs.
        let names = self.snapshot_names(datasets, name, recursive)?;
        let list = boolean_set(&names)?;
        init()?;
        Failure::check("lzc_snapshot", &names, ffi::snapshot(&list)).map_err(|f| {
            let what = match &f.object {
                Some(object) => object.clone(),
                None => format!("snapshot @{name}"),
            };
            f.into_error(first.pool(), what)
        })
    }

    fn destroy_snapshot(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError> {
        let full = dataset.snapshot(name)?;
        let c_full = c_name(&full)?;
        init()?;
        // lzc_destroy_snaps succeeds on a snapshot that does not exist ("already
        // destroyed"); zfs(8) checks first, and so do we.
        if !ffi::exists(&c_full) {
            return Err(ZfsError::NotFound {
                what: format!("snapshot {full}"),
            });
        }
        let names = BTreeSet::from([full.clone()]);
        let list = boolean_set(&names)?;
        match Failure::check("lzc_destroy_snaps", &names, ffi::destroy_snaps(&list)) {
            Ok(()) => Ok(()),
            Err(f) if f.errno == libc::EBUSY => Err(self.busy_or_held(dataset, name, &full)),
            // The kernel's answer for a snapshot with clones.
            Err(f) if f.errno == libc::EEXIST => Err(ZfsError::Busy {
                what: format!("snapshot {full}"),
                detail: "snapshot is cloned (lzc_destroy_snaps returned EEXIST)".into(),
            }),
            Err(f) => Err(f.into_error(dataset.pool(), format!("snapshot {full}"))),
        }
    }

    fn hold(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError> {
        check_tag(tag)?;
        let full = dataset.snapshot(snapshot)?;
        let mut list = NvList::new();
        list.add_string(&c_name(&full)?, &c_name(tag)?);
        init()?;
        // A snapshot that does not exist is only an errlist entry, rc 0.
        Failure::check("lzc_hold", [&full], ffi::hold(&list)).map_err(|f| {
            let what = if f.errno == libc::EEXIST {
                format!("hold {tag:?} on {full}")
            } else {
                format!("snapshot {full}")
            };
            f.into_error(dataset.pool(), what)
        })
    }

    fn release(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError> {
        check_tag(tag)?;
        let full = dataset.snapshot(snapshot)?;
        let c_full = c_name(&full)?;
        let mut tags = NvList::new();
        tags.add_boolean(&c_name(tag)?);
        let mut list = NvList::new();
        list.add_nvlist(&c_full, &tags);
        init()?;
        Failure::check("lzc_release", [&full], ffi::release(&list)).map_err(|mut f| {
            if f.errno != libc::ENOENT && f.errno != libc::ESRCH {
                return f.into_error(dataset.pool(), format!("snapshot {full}"));
            }
            // ESRCH, or ENOENT on "snap#tag", is a missing tag; ENOENT on the
            // snapshot is a missing snapshot. Ask rather than parse.
            f.errno = libc::ENOENT;
            let what = if ffi::exists(&c_full) {
                format!("hold {tag:?} on {full}")
            } else {
                format!("snapshot {full}")
            };
            f.into_error(dataset.pool(), what)
        })
    }

    fn holds(&self, dataset: &DatasetName, snapshot: &str) -> Result<Vec<String>, ZfsError> {
        let full = dataset.snapshot(snapshot)?;
        let c_full = c_name(&full)?;
        init()?;
        let list = ffi::get_holds(&c_full).map_err(|errno| {
            Failure {
                call: describe("lzc_get_holds", [&full]),
                errno,
                object: None,
            }
            .into_error(dataset.pool(), format!("snapshot {full}"))
        })?;
        let mut tags: Vec<String> = list.iter().map(|p| p.name()).collect();
        tags.sort();
        Ok(tags)
    }

    fn bookmark(
        &self,
        dataset: &DatasetName,
        snapshot: &str,
        bookmark: &str,
    ) -> Result<(), ZfsError> {
        let snap = dataset.snapshot(snapshot)?;
        let book = bookmark_name(dataset, bookmark)?;
        let mut list = NvList::new();
        list.add_string(&c_name(&book)?, &c_name(&snap)?);
        init()?;
        Failure::check("lzc_bookmark", [&book, &snap], ffi::bookmark(&list)).map_err(|f| {
            let what = if f.errno == libc::EEXIST {
                format!("bookmark {book}")
            } else {
                format!("snapshot {snap}")
            };
            f.into_error(dataset.pool(), what)
        })
    }

    fn list_bookmarks(&self, dataset: &DatasetName) -> Result<Vec<BookmarkInfo>, ZfsError> {
        let c_fs = c_name(dataset.as_str())?;
        let mut props = NvList::new();
        for p in BOOKMARK_PROPERTIES {
            props.add_boolean(&c_name(p)?);
        }
        init()?;
        let list = ffi::get_bookmarks(&c_fs, &props).map_err(|errno| {
            Failure {
                call: describe("lzc_get_bookmarks", [dataset.as_str()]),
                errno,
                object: None,
            }
            .into_error(dataset.pool(), format!("dataset {dataset}"))
        })?;
        let mut marks = list
            .iter()
            .map(|p| bookmark_info(dataset, &p))
            .collect::<Result<Vec<_>, _>>()?;
        in_createtxg_order(&mut marks);
        Ok(marks)
    }

    fn destroy_bookmark(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError> {
        let full = bookmark_name(dataset, name)?;
        // lzc_destroy_bookmarks skips a bookmark that does not exist; zfs(8)
        // checks first, and so do we.
        if !self.list_bookmarks(dataset)?.iter().any(|b| b.name == name) {
            return Err(ZfsError::NotFound {
                what: format!("bookmark {full}"),
            });
        }
        let names = BTreeSet::from([full.clone()]);
        let list = boolean_set(&names)?;
        Failure::check(
            "lzc_destroy_bookmarks",
            &names,
            ffi::destroy_bookmarks(&list),
        )
        .map_err(|f| f.into_error(dataset.pool(), format!("bookmark {full}")))
    }

    /// Full and `-i` streams (from a snapshot or a bookmark) through
    /// `lzc_send`. `-I` (a package stream of every snapshot in between,
    /// built by libzfs) and resume tokens (decoded by libzfs) go through
    /// zfs(8).
    fn send(&self, spec: &SendSpec, out: &mut dyn std::io::Write) -> Result<u64, ZfsError> {
        let Some(one) = OneStream::of(spec)? else {
            return self.cli.send(spec, out);
        };
        init()?;
        let (mut reader, writer) = std::io::pipe().map_err(|source| ZfsError::Stream {
            what: "creating a pipe".into(),
            source,
        })?;
        let (c_snap, c_from, raw) = (one.c_snap.clone(), one.c_from.clone(), one.raw);
        let sender = std::thread::Builder::new()
            .name("lzc-send".into())
            .spawn(move || ffi::send(&c_snap, c_from.as_deref(), writer.into(), raw))
            .map_err(|source| ZfsError::Spawn {
                program: "lzc_send thread".into(),
                source,
            })?;
        let copied = copy_stream(&mut reader, "lzc_send", out);
        // Closing the read end makes a sender still writing fail with EPIPE.
        drop(reader);
        let rc = sender.join().unwrap_or(libc::EIO);
        let sent = copied?;
        if rc != 0 {
            return Err(one.failure("lzc_send", rc));
        }
        flush_output(out)?;
        Ok(sent)
    }

    /// `lzc_send_space` for what [`send`](Self::send) sends itself.
    fn estimate(&self, spec: &SendSpec) -> Result<Option<u64>, ZfsError> {
        let Some(one) = OneStream::of(spec)? else {
            return self.cli.estimate(spec);
        };
        init()?;
        let space = ffi::send_space(&one.c_snap, one.c_from.as_deref(), one.raw)
            .map_err(|errno| one.failure("lzc_send_space", errno))?;
        let from_bookmark = one.from.as_deref().is_some_and(|f| f.contains('#'));
        Ok(plausible_estimate(space, from_bookmark))
    }

    /// One plain stream through `lzc_receive_resumable`. `-F` and the
    /// scratch's `-o canmount=noauto` go through
    /// zfs(8): libzfs destroys the target's snapshots after the base first,
    /// which lzc_receive's `force` does not. So do package streams (`-I`),
    /// clone streams and streams of the other byte order, which libzfs
    /// unpacks.
    fn receive(
        &self,
        target: &DatasetName,
        spec: &RecvSpec,
        input: &mut dyn std::io::Read,
    ) -> Result<(), ZfsError> {
        if spec.force || spec.noauto {
            return self.cli.receive(target, spec, input);
        }
        let mut header = [0u8; BEGIN_RECORD];
        let (got, err) = fill(input, &mut header);
        if let Some(source) = err {
            return Err(ZfsError::Stream {
                what: "reading the input".into(),
                source,
            });
        }
        let Some(begin) = Begin::parse(&header[..got]) else {
            let mut whole = (&header[..got]).chain(input);
            return self.cli.receive(target, spec, &mut whole);
        };
        let full = target.snapshot(&begin.snapshot)?;
        let c_full = c_name(&full)?;
        init()?;
        let (reader, mut writer) = std::io::pipe().map_err(|source| ZfsError::Stream {
            what: "creating a pipe".into(),
            source,
        })?;
        let raw = begin.raw;
        let receiver = std::thread::Builder::new()
            .name("lzc-receive".into())
            .spawn(move || ffi::receive(&c_full, raw, reader.into()))
            .map_err(|source| ZfsError::Spawn {
                program: "lzc_receive thread".into(),
                source,
            })?;
        // The receiver stops reading when it refuses the stream: writes
        // then fail with EPIPE, and its errno says why.
        let read_error = match writer.write_all(&header) {
            Ok(()) => pump(input, &mut writer),
            Err(_) => None,
        };
        // The end of the stream; after a read error the receiver sees a
        // truncated stream and keeps the partial state.
        drop(writer);
        let rc = receiver.join().unwrap_or(libc::EIO);
        if rc == 0 {
            return Ok(());
        }
        let call = describe("lzc_receive_resumable", [&full]);
        let mut detail = format!("{call} returned {}: {}", errno_status(rc), strerror(rc));
        if let Some(e) = read_error {
            detail.push_str(&format!(" (reading the input: {e})"));
        }
        let diverged = |detail: String| ZfsError::Diverged {
            target: target.to_string(),
            detail,
        };
        Err(match rc {
            ffi::ERR_STREAM_TRUNCATED | libc::EBADE => ZfsError::Incomplete {
                target: target.to_string(),
                detail: format!("{detail}; partially received state is saved"),
            },
            libc::ENODEV => diverged(format!(
                "most recent snapshot of {target} does not match incremental source ({detail})"
            )),
            // Without force, nothing may have changed since the base: no
            // data, and no later snapshot that holds changes.
            libc::ETXTBSY => diverged(format!(
                "destination {target} has been modified since the stream's base snapshot ({detail})"
            )),
            // zfs(8) skips an incremental whose snapshot the target already has.
            libc::EEXIST if begin.incremental && self.has_snapshot(target, &begin) => return Ok(()),
            libc::EEXIST if begin.incremental => {
                diverged(format!("destination {full} exists ({detail})"))
            }
            libc::EEXIST => diverged(format!(
                "destination {target} exists; must specify -F to overwrite it ({detail})"
            )),
            libc::ENOENT => ZfsError::NotFound {
                what: format!("dataset {target}"),
            },
            libc::EBUSY => ZfsError::Busy {
                what: format!("dataset {target}"),
                detail: format!(
                    "{detail}: a receive is in progress or left partially-complete state"
                ),
            },
            errno => Failure {
                call,
                errno,
                object: None,
            }
            .into_error(target.pool(), format!("dataset {target}")),
        })
    }

    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<String>, ZfsError> {
        self.cli.resume_token(dataset)
    }

    fn create_parents(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        // lzc_create makes one dataset; `zfs create -p` walks the ancestors.
        self.cli.create_parents(dataset)
    }

    fn abort_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.cli.abort_receive(dataset)
    }

    /// libzfs_core reads no files: the same walk as zfs(8)'s backend.
    fn content_hash(
        &self,
        dataset: &DatasetName,
        snapshot: &str,
    ) -> Result<zdr_common::wire::ContentHash, ZfsError> {
        self.cli.content_hash(dataset, snapshot)
    }

    /// libzfs_core has no recursive dataset destroy.
    fn destroy_dataset(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.cli.destroy_dataset(dataset)
    }
}

/// What [`Backend::list_bookmarks`] asks `lzc_get_bookmarks` for.
const BOOKMARK_PROPERTIES: [&str; 3] = ["guid", "createtxg", "creation"];

/// One entry of `lzc_get_bookmarks`: `name -> { property -> { "value" -> uint64 } }`.
fn bookmark_info(dataset: &DatasetName, entry: &Pair<'_>) -> Result<BookmarkInfo, ZfsError> {
    let name = entry.name();
    let bad = |reason: String| ZfsError::Parse {
        line: format!("lzc_get_bookmarks({dataset}) entry {name:?}"),
        reason,
    };
    bookmark_name(dataset, &name).map_err(|e| bad(e.to_string()))?;
    let props = entry
        .nvlist()
        .ok_or_else(|| bad("not an nvlist of properties".into()))?;
    let value = |key: &str| -> Result<u64, ZfsError> {
        props
            .iter()
            .find(|p| p.name() == key)
            .and_then(|p| p.nvlist())
            .and_then(|v| v.iter().find(|p| p.name() == "value")?.uint64())
            .ok_or_else(|| bad(format!("no uint64 {key}")))
    };
    let creation = value("creation")?;
    Ok(BookmarkInfo {
        guid: value("guid")?,
        createtxg: value("createtxg")?,
        creation: i64::try_from(creation)
            .map_err(|_| bad(format!("creation {creation} out of range")))?,
        name,
    })
}

/// A full or `-i` send: one stream that `lzc_send` makes by itself.
struct OneStream {
    snap: String,
    from: Option<String>,
    c_snap: CString,
    c_from: Option<CString>,
    raw: bool,
    pool: String,
}

impl OneStream {
    /// `None` for `-I` and resume tokens, which only libzfs (zfs(8)) makes.
    fn of(spec: &SendSpec) -> Result<Option<Self>, ZfsError> {
        let (dataset, snap, from, raw) = match spec {
            SendSpec::Full {
                dataset,
                snapshot,
                raw,
            } => (dataset, dataset.snapshot(snapshot)?, None, *raw),
            SendSpec::Incremental {
                dataset,
                from,
                to,
                intermediates: false,
                raw,
            } => (
                dataset,
                dataset.snapshot(to)?,
                Some(send_base_name(dataset, from, false)?),
                *raw,
            ),
            SendSpec::Incremental { .. } | SendSpec::Resume { .. } => return Ok(None),
        };
        Ok(Some(OneStream {
            c_snap: c_name(&snap)?,
            c_from: from.as_deref().map(c_name).transpose()?,
            snap,
            from,
            raw,
            pool: dataset.pool().to_string(),
        }))
    }

    /// ENOENT names whichever end of the stream is missing; a missing
    /// bookmark is ESRCH (dsl_bookmark_lookup), a NotFound all the same.
    fn failure(&self, call: &str, errno: i32) -> ZfsError {
        let errno = if errno == libc::ESRCH && self.from.is_some() {
            libc::ENOENT
        } else {
            errno
        };
        let names: Vec<&str> = std::iter::once(self.snap.as_str())
            .chain(self.from.as_deref())
            .collect();
        let f = Failure {
            call: describe(call, names),
            errno,
            object: None,
        };
        let what = match &self.from {
            Some(from) if errno == libc::ENOENT && ffi::exists(&self.c_snap) => {
                let kind = if from.contains('#') {
                    "bookmark"
                } else {
                    "snapshot"
                };
                format!("{kind} {from}")
            }
            _ => format!("snapshot {}", self.snap),
        };
        f.into_error(&self.pool, what)
    }
}

/// `sizeof (dmu_replay_record_t)`: a stream's first record, DRR_BEGIN.
const BEGIN_RECORD: usize = 312;
const DMU_BACKUP_MAGIC: u64 = 0x2_f5ba_cbac;
const DMU_SUBSTREAM: u64 = 1;
const DMU_BACKUP_FEATURE_RAW: u64 = 1 << 24;
const DRR_FLAG_CLONE: u32 = 1;

/// What the DRR_BEGIN record of a plain stream says.
#[derive(Debug, PartialEq, Eq)]
struct Begin {
    /// The part of `drr_toname` after `@`.
    snapshot: String,
    raw: bool,
    incremental: bool,
    toguid: u64,
}

impl Begin {
    /// `None` unless this is the begin record of one plain, non-clone stream
    /// in this host's byte order: anything else is left to zfs(8).
    fn parse(record: &[u8]) -> Option<Begin> {
        if record.len() != BEGIN_RECORD {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(record[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(record[o..o + 8].try_into().unwrap());
        // drr_type DRR_BEGIN (0), then drr_begin after drr_payloadlen.
        if u32_at(0) != 0 || u64_at(8) != DMU_BACKUP_MAGIC {
            return None;
        }
        let versioninfo = u64_at(16);
        if versioninfo & 3 != DMU_SUBSTREAM || u32_at(36) & DRR_FLAG_CLONE != 0 {
            return None;
        }
        let features = (versioninfo >> 2) & ((1 << 30) - 1);
        let toname = &record[56..BEGIN_RECORD];
        let toname = std::str::from_utf8(&toname[..toname.iter().position(|&b| b == 0)?]).ok()?;
        let (_, snapshot) = toname.split_once('@')?;
        Some(Begin {
            snapshot: snapshot.to_string(),
            raw: features & DMU_BACKUP_FEATURE_RAW != 0,
            incremental: u64_at(48) != 0,
            toguid: u64_at(40),
        })
    }
}

/// Opens /dev/zfs, naming it when that fails.
fn init() -> Result<(), ZfsError> {
    ffi::init().map_err(|errno| ZfsError::Command {
        argv: "libzfs_core_init()".into(),
        status: errno_status(errno),
        stderr: format!(
            "cannot open /dev/zfs: {}; is the zfs kernel module loaded?",
            strerror(errno)
        ),
    })
}

fn c_name(name: &str) -> Result<CString, ZfsError> {
    ffi::c_name(name).ok_or_else(|| ZfsError::Invalid {
        what: "name",
        value: name.to_string(),
        reason: "contains a NUL byte".into(),
    })
}

fn boolean_set(names: &BTreeSet<String>) -> Result<NvList, ZfsError> {
    let mut list = NvList::new();
    for name in names {
        list.add_boolean(&c_name(name)?);
    }
    Ok(list)
}

/// A libzfs_core call that failed: the errno that decides the error and,
/// from the errlist, the object it was about.
#[derive(Debug)]
struct Failure {
    /// The call as `lzc_xxx(name, ...)`, for messages.
    call: String,
    errno: i32,
    object: Option<String>,
}

impl Failure {
    /// A call succeeded when it returned 0 with an empty errlist: hold and
    /// release return 0 for snapshots that do not exist and list them only
    /// in the errlist.
    fn check(
        call: &str,
        names: impl IntoIterator<Item = impl AsRef<str>>,
        outcome: Outcome,
    ) -> Result<(), Failure> {
        let Outcome { rc, errlist } = outcome;
        if rc == 0 && errlist.is_empty() {
            return Ok(());
        }
        // The entry that explains rc, else the first one.
        let entry = errlist
            .iter()
            .find(|(_, e)| rc != 0 && *e == rc)
            .or_else(|| errlist.first());
        let errno = match (rc, entry) {
            (0, Some((_, e))) if *e != 0 => *e,
            // An errlist entry without an int32 errno: unexpected, so
            // nothing an admin can act on; EIO keeps it a Command error.
            (0, _) => libc::EIO,
            (rc, _) => rc,
        };
        Err(Failure {
            call: describe(call, names),
            errno,
            object: entry.map(|(name, _)| name.clone()),
        })
    }

    /// `what` names the object for NotFound, Exists and Busy.
    fn into_error(self, pool: &str, what: String) -> ZfsError {
        match self.errno {
            libc::ENOENT => ZfsError::NotFound { what },
            libc::EEXIST => ZfsError::Exists { what },
            libc::EBUSY => ZfsError::Busy {
                what,
                detail: format!("{} returned EBUSY", self.call_name()),
            },
            libc::ENOSPC => ZfsError::NoSpace {
                pool: pool.to_string(),
            },
            errno => ZfsError::Command {
                status: errno_status(errno),
                stderr: match &self.object {
                    Some(object) => format!("{object}: {}", strerror(errno)),
                    None => strerror(errno),
                },
                argv: self.call,
            },
        }
    }

    fn call_name(&self) -> &str {
        self.call.split('(').next().unwrap_or(&self.call)
    }
}

/// `lzc_snapshot(tank/a@s, tank/b@s, ... 10 more)`.
fn describe(call: &str, names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_string()).collect();
    let mut shown = names
        .iter()
        .take(SHOWN_NAMES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN_NAMES {
        shown.push_str(&format!(", ... {} more", names.len() - SHOWN_NAMES));
    }
    format!("{call}({shown})")
}

/// Linux errno names, for the errors that are not mapped to a variant.
const ERRNO_NAMES: &[(i32, &str)] = &[
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::ESRCH, "ESRCH"),
    (libc::EINTR, "EINTR"),
    (libc::EIO, "EIO"),
    (libc::ENXIO, "ENXIO"),
    (libc::E2BIG, "E2BIG"),
    (libc::EBADF, "EBADF"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::EACCES, "EACCES"),
    (libc::EFAULT, "EFAULT"),
    (libc::ETXTBSY, "ETXTBSY"),
    (libc::EBUSY, "EBUSY"),
    (libc::EEXIST, "EEXIST"),
    (libc::EXDEV, "EXDEV"),
    (libc::ENODEV, "ENODEV"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::EINVAL, "EINVAL"),
    (libc::ENFILE, "ENFILE"),
    (libc::EMFILE, "EMFILE"),
    (libc::ENOTTY, "ENOTTY"),
    (libc::EFBIG, "EFBIG"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::EROFS, "EROFS"),
    (libc::EMLINK, "EMLINK"),
    (libc::EPIPE, "EPIPE"),
    (libc::EDOM, "EDOM"),
    (libc::ERANGE, "ERANGE"),
    (libc::ENAMETOOLONG, "ENAMETOOLONG"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::ENOTEMPTY, "ENOTEMPTY"),
    (libc::EBADE, "EBADE (ZFS ECKSUM)"),
    (libc::EBADR, "EBADR (ZFS EFRAGS)"),
    (libc::ENOTSUP, "ENOTSUP"),
    (libc::EDQUOT, "EDQUOT"),
    (libc::ECANCELED, "ECANCELED"),
];

/// `errno 22 (EINVAL)`.
fn errno_status(errno: i32) -> String {
    let name = ERRNO_NAMES
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|(_, name)| *name)
        // OpenZFS's own codes (zfs_errno_t) start at 1024.
        .unwrap_or(if errno >= 1024 { "ZFS_ERR_*" } else { "?" });
    format!("errno {errno} ({name})")
}

/// The C library's message for `errno`, without Rust's " (os error N)".
fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::zfs::cli::CliBackend;
    use crate::zfs::SendBase;

    fn over_cli(zfs: PathBuf, zpool: PathBuf) -> Box<dyn Backend> {
        Box::new(CliBackend::new(zfs, zpool))
    }

    fn outcome(rc: i32, errlist: &[(&str, i32)]) -> Outcome {
        Outcome {
            rc,
            errlist: errlist.iter().map(|(n, e)| (n.to_string(), *e)).collect(),
        }
    }

    fn check(o: Outcome) -> Result<(), Failure> {
        Failure::check("lzc_x", ["tank/a@s"], o)
    }

    #[test]
    fn success_needs_rc_0_and_an_empty_errlist() {
        assert!(check(outcome(0, &[])).is_ok());
        // lzc_hold on a missing snapshot: rc 0, ENOENT in the errlist.
        let f = check(outcome(0, &[("tank/a@s", libc::ENOENT)])).unwrap_err();
        assert_eq!(f.errno, libc::ENOENT);
        assert_eq!(f.object.as_deref(), Some("tank/a@s"));
        // The entry that explains rc wins over the first.
        let f = check(outcome(
            libc::EEXIST,
            &[("tank/a@s", libc::ENOENT), ("tank/b@s", libc::EEXIST)],
        ))
        .unwrap_err();
        assert_eq!(f.errno, libc::EEXIST);
        assert_eq!(f.object.as_deref(), Some("tank/b@s"));
        // rc without an errlist.
        let f = check(outcome(libc::ENOSPC, &[])).unwrap_err();
        assert_eq!((f.errno, f.object), (libc::ENOSPC, None));
        // An entry with no int32 errno is still a failure.
        assert_eq!(check(outcome(0, &[("x", 0)])).unwrap_err().errno, libc::EIO);
    }

    #[test]
    fn errnos_map_to_variants() {
        let err = |errno, object: Option<&str>| {
            Failure {
                call: "lzc_snapshot(tank/a@s)".into(),
                errno,
                object: object.map(str::to_string),
            }
            .into_error("tank", "tank/a@s".into())
        };
        assert!(
            matches!(err(libc::ENOENT, None), ZfsError::NotFound { what } if what == "tank/a@s")
        );
        assert!(matches!(err(libc::EEXIST, None), ZfsError::Exists { what } if what == "tank/a@s"));
        assert!(
            matches!(err(libc::EBUSY, None), ZfsError::Busy { detail, .. } if detail == "lzc_snapshot returned EBUSY")
        );
        assert!(matches!(err(libc::ENOSPC, None), ZfsError::NoSpace { pool } if pool == "tank"));
        match err(libc::EINVAL, Some("tank/a@s")) {
            ZfsError::Command {
                argv,
                status,
                stderr,
            } => {
                assert_eq!(argv, "lzc_snapshot(tank/a@s)");
                assert_eq!(status, "errno 22 (EINVAL)");
                assert_eq!(stderr, "tank/a@s: Invalid argument");
            }
            other => panic!("{other:?}"),
        }
        match err(1031, None) {
            ZfsError::Command { status, .. } => assert_eq!(status, "errno 1031 (ZFS_ERR_*)"),
            other => panic!("{other:?}"),
        }
    }

    /// `{ name -> { property -> { "value" -> n } } }` as lzc_get_bookmarks returns it.
    fn bookmark_entry(name: &str, props: &[(&str, u64)]) -> NvList {
        let mut inner = NvList::new();
        for (key, n) in props {
            let mut value = NvList::new();
            value.add_uint64(&c_name("value").unwrap(), *n);
            inner.add_nvlist(&c_name(key).unwrap(), &value);
        }
        let mut list = NvList::new();
        list.add_nvlist(&c_name(name).unwrap(), &inner);
        list
    }

    #[test]
    fn bookmark_entries_need_every_property() {
        let d = ds("tank/a");
        let all = [("guid", 7), ("createtxg", 100), ("creation", 1704067200)];
        let list = bookmark_entry("m 1", &all);
        let entry = list.iter().next().unwrap();
        assert_eq!(
            bookmark_info(&d, &entry).unwrap(),
            BookmarkInfo {
                name: "m 1".into(),
                guid: 7,
                createtxg: 100,
                creation: 1704067200
            }
        );
        for bad in [
            bookmark_entry("m", &all[..2]),
            bookmark_entry(
                "m",
                &[("guid", 7), ("createtxg", 1), ("creation", u64::MAX)],
            ),
            bookmark_entry("a;b", &all),
        ] {
            let entry = bad.iter().next().unwrap();
            assert!(
                matches!(bookmark_info(&d, &entry), Err(ZfsError::Parse { .. })),
                "{}",
                entry.name()
            );
        }
    }

    #[test]
    fn descriptions_stay_short() {
        assert_eq!(describe("lzc_hold", ["a@s"]), "lzc_hold(a@s)");
        let many: Vec<String> = (0..10).map(|i| format!("p/d{i}@s")).collect();
        assert_eq!(
            describe("lzc_snapshot", &many),
            "lzc_snapshot(p/d0@s, p/d1@s, p/d2@s, p/d3@s, ... 6 more)"
        );
        assert_eq!(strerror(libc::ENOENT), "No such file or directory");
        assert_eq!(errno_status(libc::EPERM), "errno 1 (EPERM)");
    }

    fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    /// Neither zfs(8) nor /dev/zfs is reachable through this one: any
    /// answer other than Name/Invalid means the call got past the checks.
    fn blind() -> LzcBackend {
        let missing = PathBuf::from("/nonexistent/zdr-lzc-test/zfs");
        LzcBackend::new(over_cli(missing.clone(), missing))
    }

    #[test]
    fn bad_names_are_refused_before_any_call() {
        let b = blind();
        let d = ds("tank/my data");
        for bad in ["a;b", "a@b", "", "a/b", "données", "a\0b"] {
            assert!(
                matches!(
                    b.snapshot(std::slice::from_ref(&d), bad, false),
                    Err(ZfsError::Name(_))
                ),
                "{bad:?}"
            );
            assert!(
                matches!(
                    b.snapshot(std::slice::from_ref(&d), bad, true),
                    Err(ZfsError::Name(_))
                ),
                "{bad:?}"
            );
            assert!(
                matches!(b.destroy_snapshot(&d, bad), Err(ZfsError::Name(_))),
                "{bad:?}"
            );
            assert!(
                matches!(b.hold(&d, bad, "zdr"), Err(ZfsError::Name(_))),
                "{bad:?}"
            );
            assert!(
                matches!(b.release(&d, bad, "zdr"), Err(ZfsError::Name(_))),
                "{bad:?}"
            );
            assert!(
                matches!(b.holds(&d, bad), Err(ZfsError::Name(_))),
                "{bad:?}"
            );
            assert!(
                matches!(b.bookmark(&d, bad, "bm"), Err(ZfsError::Name(_))),
                "{bad:?}"
            );
            assert!(
                matches!(b.bookmark(&d, "s", bad), Err(ZfsError::Name(_))),
                "{bad:?}"
            );
        }
        for tag in ["-r", "a;b", "", "a\0b"] {
            assert!(
                matches!(b.hold(&d, "s", tag), Err(ZfsError::Invalid { .. })),
                "{tag:?}"
            );
            assert!(
                matches!(b.release(&d, "s", tag), Err(ZfsError::Invalid { .. })),
                "{tag:?}"
            );
        }
        assert!(matches!(
            b.snapshot(&[d.clone(), ds("other/x")], "s", false),
            Err(ZfsError::Invalid { .. })
        ));
        assert!(b.snapshot(&[], "s", true).is_ok());
        assert_eq!(b.kind(), "lzc");
    }

    /// A file-backed pool, destroyed on drop.
    struct Pool {
        name: String,
        _dir: tempfile::TempDir,
    }

    fn sbin(name: &str) -> PathBuf {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(name))
    }

    fn run(program: &str, args: &[&str]) {
        let out = std::process::Command::new(sbin(program))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    impl Pool {
        fn new() -> Self {
            let dir = tempfile::tempdir_in("/tmp").unwrap();
            let vdev = dir.path().join("vdev.img");
            std::fs::File::create(&vdev)
                .and_then(|f| f.set_len(128 << 20))
                .unwrap();
            let mnt = dir.path().join("mnt");
            let name = format!("zl{}", std::process::id());
            run(
                "zpool",
                &[
                    "create",
                    "-f",
                    "-m",
                    mnt.to_str().unwrap(),
                    &name,
                    vdev.to_str().unwrap(),
                ],
            );
            Pool { name, _dir: dir }
        }
    }

    impl Drop for Pool {
        fn drop(&mut self) {
            run("zpool", &["destroy", "-f", &self.name]);
        }
    }

    /// Real OpenZFS only, for what the conformance suite does not reach. In
    /// the zfs-vm guest: `<lib test binary> --ignored --exact
    /// zfs::lzc::tests::real_zfs_clones_and_errlists`.
    #[test]
    #[ignore = "needs /dev/zfs: run inside integration/zfs-vm"]
    fn real_zfs_clones_and_errlists() {
        let pool = Pool::new();
        let b = LzcBackend::open(over_cli(sbin("zfs"), sbin("zpool"))).unwrap();
        let a = ds(&format!("{}/a", pool.name));
        let c = format!("{}/clone", pool.name);
        run("zfs", &["create", a.as_str()]);

        // A missing dataset in a set is named by its snapshot.
        let missing = ds(&format!("{}/missing", pool.name));
        match b.snapshot(&[a.clone(), missing.clone()], "s", false) {
            Err(ZfsError::NotFound { what }) => assert_eq!(what, format!("{missing}@s")),
            other => panic!("{other:?}"),
        }
        b.snapshot(std::slice::from_ref(&a), "s", false).unwrap();

        // A snapshot with a clone cannot go: Busy, not Exists.
        run("zfs", &["clone", &format!("{a}@s"), &c]);
        match b.destroy_snapshot(&a, "s") {
            Err(ZfsError::Busy { what, detail }) => {
                assert_eq!(what, format!("snapshot {a}@s"));
                assert!(detail.contains("cloned"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        run("zfs", &["destroy", &c]);

        // Holds: sorted, missing tag vs missing snapshot.
        b.hold(&a, "s", "zeta").unwrap();
        b.hold(&a, "s", "alpha beta").unwrap();
        assert_eq!(b.holds(&a, "s").unwrap(), ["alpha beta", "zeta"]);
        match b.release(&a, "s", "nope") {
            Err(ZfsError::NotFound { what }) => assert_eq!(what, format!("hold \"nope\" on {a}@s")),
            other => panic!("{other:?}"),
        }
        match b.release(&a, "gone", "zeta") {
            Err(ZfsError::NotFound { what }) => assert_eq!(what, format!("snapshot {a}@gone")),
            other => panic!("{other:?}"),
        }
        match b.hold(&a, "gone", "zeta") {
            Err(ZfsError::NotFound { what }) => assert_eq!(what, format!("snapshot {a}@gone")),
            other => panic!("{other:?}"),
        }
        match b.destroy_snapshot(&a, "s") {
            Err(ZfsError::Held { tags, .. }) => assert_eq!(tags, "alpha beta, zeta"),
            other => panic!("{other:?}"),
        }
        b.release(&a, "s", "zeta").unwrap();
        b.release(&a, "s", "alpha beta").unwrap();
        assert!(b.holds(&a, "s").unwrap().is_empty());

        // Bookmark names clash; the snapshot can go, and then it is gone.
        b.bookmark(&a, "s", "bm").unwrap();
        match b.bookmark(&a, "s", "bm") {
            Err(ZfsError::Exists { what }) => assert_eq!(what, format!("bookmark {a}#bm")),
            other => panic!("{other:?}"),
        }
        b.destroy_snapshot(&a, "s").unwrap();
        assert!(matches!(
            b.destroy_snapshot(&a, "s"),
            Err(ZfsError::NotFound { .. })
        ));
        assert!(b.list_snapshots(&a).unwrap().is_empty());
    }

    /// A DRR_BEGIN record as lzc_send writes it.
    fn begin_record(toname: &str, fromguid: u64, features: u64, hdrtype: u64) -> Vec<u8> {
        let mut r = vec![0u8; BEGIN_RECORD];
        r[8..16].copy_from_slice(&DMU_BACKUP_MAGIC.to_ne_bytes());
        r[16..24].copy_from_slice(&((features << 2) | hdrtype).to_ne_bytes());
        r[40..48].copy_from_slice(&77u64.to_ne_bytes());
        r[48..56].copy_from_slice(&fromguid.to_ne_bytes());
        r[56..56 + toname.len()].copy_from_slice(toname.as_bytes());
        r
    }

    #[test]
    fn begin_records_of_plain_streams_only() {
        let b = Begin::parse(&begin_record("tank/src@s 1", 5, 0, DMU_SUBSTREAM)).unwrap();
        assert_eq!(
            b,
            Begin {
                snapshot: "s 1".into(),
                raw: false,
                incremental: true,
                toguid: 77
            }
        );
        let raw = Begin::parse(&begin_record("p/e@a", 0, DMU_BACKUP_FEATURE_RAW, 1)).unwrap();
        assert!(raw.raw && !raw.incremental);
        // Package streams (-I, -R), clones, other byte orders, short input,
        // names without a snapshot: left to zfs(8).
        assert!(Begin::parse(&begin_record("p/a@b", 5, 0, 2)).is_none());
        let mut clone = begin_record("p/a@b", 5, 0, 1);
        clone[36] = 1;
        assert!(Begin::parse(&clone).is_none());
        let mut swapped = begin_record("p/a@b", 5, 0, 1);
        swapped[8..16].copy_from_slice(&DMU_BACKUP_MAGIC.swap_bytes().to_ne_bytes());
        assert!(Begin::parse(&swapped).is_none());
        assert!(Begin::parse(&begin_record("p/a@b", 5, 0, 1)[..100]).is_none());
        assert!(Begin::parse(&begin_record("p/a", 5, 0, 1)).is_none());
        assert!(Begin::parse(&[0u8; BEGIN_RECORD]).is_none());
    }

    #[test]
    fn streams_check_names_before_any_call() {
        let b = blind();
        let d = ds("tank/a");
        let bad_full = SendSpec::Full {
            dataset: d.clone(),
            snapshot: "a;b".into(),
            raw: false,
        };
        assert!(matches!(
            b.send(&bad_full, &mut std::io::sink()),
            Err(ZfsError::Name(_))
        ));
        assert!(matches!(b.estimate(&bad_full), Err(ZfsError::Name(_))));
        let bad_from = SendSpec::Incremental {
            dataset: d.clone(),
            from: SendBase::Bookmark("x#y".into()),
            to: "b".into(),
            intermediates: false,
            raw: true,
        };
        assert!(matches!(
            b.send(&bad_from, &mut std::io::sink()),
            Err(ZfsError::Name(_))
        ));
        // A stream whose snapshot name is hostile is refused before /dev/zfs.
        let hostile = begin_record("evil/x@a;b", 0, 0, DMU_SUBSTREAM);
        assert!(matches!(
            b.receive(&d, &RecvSpec::default(), &mut &hostile[..]),
            Err(ZfsError::Name(_))
        ));
    }

    #[test]
    fn without_dev_zfs_calls_fail_naming_it() {
        if std::path::Path::new("/dev/zfs").exists() {
            return;
        }
        let b = blind();
        match b.hold(&ds("tank/a"), "s", "zdr") {
            Err(ZfsError::Command { argv, stderr, .. }) => {
                assert_eq!(argv, "libzfs_core_init()");
                assert!(stderr.contains("/dev/zfs"), "{stderr}");
            }
            other => panic!("{other:?}"),
        }
        assert!(LzcBackend::open(over_cli("zfs".into(), "zpool".into())).is_err());
        let spec = SendSpec::Full {
            dataset: ds("tank/a"),
            snapshot: "s".into(),
            raw: false,
        };
        assert!(matches!(
            b.send(&spec, &mut std::io::sink()),
            Err(ZfsError::Command { .. })
        ));
        let stream = begin_record("tank/a@s", 0, 0, DMU_SUBSTREAM);
        assert!(matches!(
            b.receive(&ds("tank/b"), &RecvSpec::default(), &mut &stream[..]),
            Err(ZfsError::Command { .. })
        ));
        // What is not a plain stream goes to zfs(8), unreachable here.
        assert!(matches!(
            b.receive(&ds("tank/b"), &RecvSpec::default(), &mut &b"junk"[..]),
            Err(ZfsError::Spawn { .. })
        ));
        // Recursive snapshots list children through zfs(8) first.
        assert!(matches!(
            b.snapshot(&[ds("tank/a")], "s", true),
            Err(ZfsError::Spawn { .. })
        ));
    }
}
