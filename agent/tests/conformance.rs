//! ZFS conformance suite: one set of cases written against `&dyn Backend`,
//! run against the simulator by default and against real OpenZFS (the `cli`
//! backend) with `ZDR_CONFORMANCE=cli`, where every test gets its own
//! file-backed pool (`ZDR_CONFORMANCE=lzc`, built with `--features lzc`, does
//! the same through the libzfs_core backend). `integration/zfs-vm/conformance.sh` runs the `cli` lane
//! inside the zfs-vm guest. When the two lanes disagree, the simulator is
//! wrong: fix `agent/src/zfs/sim.rs` to match real ZFS.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use zdr_agent::zfs::cli::CliBackend;
use zdr_agent::zfs::sim::SimBackend;
use zdr_agent::zfs::{resume_token, Backend, RecvSpec, SendBase, SendSpec, ZfsError};
use zdr_common::wire::SnapshotInfo;
use zdr_common::{DatasetName, NameError};

// ------------------------------------------------------------- fixtures ---

/// What a case needs besides the backend: a pool of its own and ways to
/// shape it that the `Backend` trait does not offer.
trait Fixture {
    fn backend(&self) -> &dyn Backend;
    fn pool(&self) -> &str;
    fn create_dataset(&self, name: &DatasetName);
    fn set_property(&self, dataset: &DatasetName, key: &str, value: &str);
    /// Writes `bytes` of incompressible data into the dataset (no-op for sim,
    /// which has no data path).
    fn write_data(&self, dataset: &DatasetName, bytes: usize);
    /// Mounts a received (`-u`) filesystem so that `write_data` reaches it.
    fn mount(&self, dataset: &DatasetName);
    /// Creates an encrypted filesystem with its key loaded; `false` where
    /// the backend models no encryption (sim).
    fn create_encrypted(&self, name: &DatasetName) -> bool;
    /// A native property's value (`zfs get -Hp`); `None` for sim.
    fn native_property(&self, dataset: &DatasetName, property: &str) -> Option<String>;
    /// Leaves the pool so that a snapshot of `dataset` cannot fit.
    fn exhaust_space(&self, dataset: &DatasetName);
    /// Bookmarks (name after '#', guid) of the dataset; `None` where the
    /// backend has no way to list them (sim).
    fn bookmarks(&self, dataset: &DatasetName) -> Option<Vec<(String, u64)>>;
    /// A backend of the same kind that can reach no ZFS at all: any call that
    /// gets past name checking fails with something other than `Name`.
    fn blind_backend(&self) -> Box<dyn Backend>;
    /// Whether real zfs(8) succeeds with this argv; `None` for sim.
    fn raw_zfs(&self, args: &[&str]) -> Option<bool>;

    fn ds(&self, rel: &str) -> DatasetName {
        DatasetName::parse(&format!("{}/{rel}", self.pool())).unwrap()
    }
    fn root(&self) -> DatasetName {
        DatasetName::parse(self.pool()).unwrap()
    }
    /// Creates `rel` below the pool and returns its name.
    fn make(&self, rel: &str) -> DatasetName {
        let d = self.ds(rel);
        self.create_dataset(&d);
        d
    }
}

/// A fresh fixture for one test, by `ZDR_CONFORMANCE` (`sim`, the default, or `cli`).
fn fixture(test: &str) -> Box<dyn Fixture> {
    let pool = format!("zc{}_{test}", std::process::id());
    let mode = std::env::var("ZDR_CONFORMANCE").unwrap_or_default();
    let f: Box<dyn Fixture> = match mode.as_str() {
        "" | "sim" => Box::new(SimFixture::new(&pool)),
        "cli" => Box::new(CliFixture::new(&pool, false)),
        #[cfg(feature = "lzc")]
        "lzc" => Box::new(CliFixture::new(&pool, true)),
        other => panic!("ZDR_CONFORMANCE={other:?}: expected sim, cli or (with feature lzc) lzc"),
    };
    assert_eq!(
        f.backend().kind(),
        if mode.is_empty() { "sim" } else { &mode }
    );
    f
}

struct SimFixture {
    sim: SimBackend,
    pool: String,
}

impl SimFixture {
    fn new(pool: &str) -> Self {
        let sim = SimBackend::new();
        sim.add_pool(pool, 64 << 20).unwrap();
        SimFixture {
            sim,
            pool: pool.into(),
        }
    }
}

impl Fixture for SimFixture {
    fn backend(&self) -> &dyn Backend {
        &self.sim
    }
    fn pool(&self) -> &str {
        &self.pool
    }
    fn create_dataset(&self, name: &DatasetName) {
        self.sim.create_dataset(name).unwrap();
    }
    fn set_property(&self, dataset: &DatasetName, key: &str, value: &str) {
        self.sim.set_property(dataset, key, value).unwrap();
    }
    fn write_data(&self, dataset: &DatasetName, bytes: usize) {
        self.sim.write_data(dataset, bytes as u64).unwrap();
    }
    fn mount(&self, _dataset: &DatasetName) {}
    fn create_encrypted(&self, _name: &DatasetName) -> bool {
        false
    }
    fn native_property(&self, _dataset: &DatasetName, _property: &str) -> Option<String> {
        None
    }
    fn exhaust_space(&self, _dataset: &DatasetName) {
        // Filler datasets until one no longer fits, then filler snapshots
        // until one no longer fits either.
        let mut n = 0;
        loop {
            match self.sim.create_dataset(&self.ds(&format!("fill {n}"))) {
                Ok(()) => n += 1,
                Err(ZfsError::NoSpace { .. }) => break,
                Err(e) => panic!("filling the pool: {e}"),
            }
        }
        let filler = self.ds("fill 0");
        for i in 0.. {
            match self
                .sim
                .snapshot(std::slice::from_ref(&filler), &format!("f{i}"), false)
            {
                Ok(()) => {}
                Err(ZfsError::NoSpace { .. }) => break,
                Err(e) => panic!("filling the pool: {e}"),
            }
        }
    }
    fn bookmarks(&self, _dataset: &DatasetName) -> Option<Vec<(String, u64)>> {
        None
    }
    fn blind_backend(&self) -> Box<dyn Backend> {
        Box::new(SimBackend::new())
    }
    fn raw_zfs(&self, _args: &[&str]) -> Option<bool> {
        None
    }
}

/// A file-backed pool on real OpenZFS, destroyed on drop, used through the
/// `cli` backend or (feature `lzc`) the libzfs_core one.
struct CliFixture {
    backend: Box<dyn Backend>,
    lzc: bool,
    zfs: PathBuf,
    zpool: PathBuf,
    pool: String,
    _dir: tempfile::TempDir,
}

fn sbin(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/local/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs an argv with messages in English; `Err(stderr)` when it fails.
fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

impl CliFixture {
    fn new(pool: &str, lzc: bool) -> Self {
        let (zfs, zpool) = (sbin("zfs"), sbin("zpool"));
        let dir = tempfile::Builder::new()
            .prefix("zdr-conformance")
            .tempdir_in("/tmp")
            .unwrap();
        let vdev = dir.path().join("vdev.img");
        std::fs::File::create(&vdev)
            .and_then(|f| f.set_len(128 << 20))
            .unwrap();
        let mnt = dir.path().join("mnt");
        let (vdev, mnt) = (vdev.to_str().unwrap(), mnt.to_str().unwrap());
        run(
            &zpool,
            &[
                "create",
                "-f",
                "-m",
                mnt,
                "-O",
                "compression=off",
                pool,
                vdev,
            ],
        )
        .unwrap_or_else(|e| panic!("zpool create {pool}: {e}"));
        CliFixture {
            backend: backend(lzc, zfs.clone(), zpool.clone(), true),
            lzc,
            zfs,
            zpool,
            pool: pool.into(),
            _dir: dir,
        }
    }

    fn zfs(&self, args: &[&str]) -> String {
        run(&self.zfs, args).unwrap_or_else(|e| panic!("zfs {args:?}: {e}"))
    }

    fn get(&self, property: &str, dataset: &DatasetName) -> String {
        self.zfs(&["get", "-Hp", "-o", "value", property, dataset.as_str()])
            .trim_end_matches('\n')
            .to_string()
    }
}

#[cfg(feature = "lzc")]
fn backend(lzc: bool, zfs: PathBuf, zpool: PathBuf, open: bool) -> Box<dyn Backend> {
    use zdr_agent::zfs::lzc::LzcBackend;
    match (lzc, open) {
        (false, _) => Box::new(CliBackend::new(zfs, zpool)),
        (true, true) => Box::new(
            LzcBackend::open(Box::new(CliBackend::new(zfs, zpool))).expect("libzfs_core init"),
        ),
        (true, false) => Box::new(LzcBackend::new(Box::new(CliBackend::new(zfs, zpool)))),
    }
}

#[cfg(not(feature = "lzc"))]
fn backend(lzc: bool, zfs: PathBuf, zpool: PathBuf, _open: bool) -> Box<dyn Backend> {
    assert!(!lzc, "built without feature lzc");
    Box::new(CliBackend::new(zfs, zpool))
}

impl Drop for CliFixture {
    fn drop(&mut self) {
        if let Err(e) = run(&self.zpool, &["destroy", "-f", &self.pool]) {
            eprintln!("zpool destroy {}: {e}", self.pool);
        }
    }
}

impl Fixture for CliFixture {
    fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
    fn pool(&self) -> &str {
        &self.pool
    }
    fn create_dataset(&self, name: &DatasetName) {
        self.zfs(&["create", name.as_str()]);
    }
    fn set_property(&self, dataset: &DatasetName, key: &str, value: &str) {
        self.zfs(&["set", &format!("{key}={value}"), dataset.as_str()]);
    }
    fn write_data(&self, dataset: &DatasetName, bytes: usize) {
        let dir = PathBuf::from(self.get("mountpoint", dataset));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ bytes as u64;
        let data: Vec<u8> = (0..bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let path = dir.join(format!("data-{}", data.len()));
        std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        run(&self.zpool, &["sync", &self.pool]).unwrap();
    }
    fn mount(&self, dataset: &DatasetName) {
        self.zfs(&["mount", dataset.as_str()]);
    }
    fn create_encrypted(&self, name: &DatasetName) -> bool {
        // A raw hex key from a file: no passphrase derivation, which is slow
        // under emulation.
        let key = self._dir.path().join("key.hex");
        std::fs::write(&key, "0123456789abcdef".repeat(4)).unwrap();
        self.zfs(&[
            "create",
            "-o",
            "encryption=on",
            "-o",
            "keyformat=hex",
            "-o",
            &format!("keylocation=file://{}", key.display()),
            name.as_str(),
        ]);
        true
    }
    fn native_property(&self, dataset: &DatasetName, property: &str) -> Option<String> {
        Some(self.get(property, dataset))
    }
    fn exhaust_space(&self, dataset: &DatasetName) {
        // A snapshot of a dataset with a refreservation needs room outside it
        // for the dataset's unique bytes: reserve all but 2 MiB of the pool
        // for the dataset, then give it 8 MiB of its own data.
        let avail: u64 = self.get("available", dataset).parse().unwrap();
        let reserve = (avail - (2 << 20)) & !((128 << 10) - 1);
        self.zfs(&[
            "set",
            &format!("refreservation={reserve}"),
            dataset.as_str(),
        ]);
        self.write_data(dataset, 8 << 20);
    }
    fn bookmarks(&self, dataset: &DatasetName) -> Option<Vec<(String, u64)>> {
        let out = self.zfs(&[
            "list",
            "-Hp",
            "-t",
            "bookmark",
            "-o",
            "name,guid",
            "-d",
            "1",
            dataset.as_str(),
        ]);
        let prefix = format!("{dataset}#");
        Some(
            out.lines()
                .map(|l| {
                    let (name, guid) = l.split_once('\t').unwrap();
                    let name = name.strip_prefix(&prefix).unwrap_or_else(|| panic!("{l}"));
                    (name.to_string(), guid.parse().unwrap())
                })
                .collect(),
        )
    }
    fn blind_backend(&self) -> Box<dyn Backend> {
        let missing = PathBuf::from("/nonexistent/zdr-conformance/zfs");
        backend(self.lzc, missing.clone(), missing, false)
    }
    fn raw_zfs(&self, args: &[&str]) -> Option<bool> {
        Some(run(&self.zfs, args).is_ok())
    }
}

// -------------------------------------------------------------- helpers ---

fn snaps(f: &dyn Fixture, d: &DatasetName) -> Vec<SnapshotInfo> {
    f.backend()
        .list_snapshots(d)
        .unwrap_or_else(|e| panic!("list_snapshots {d}: {e}"))
}

fn names(s: &[SnapshotInfo]) -> Vec<&str> {
    s.iter().map(|x| x.name.as_str()).collect()
}

fn snap(f: &dyn Fixture, datasets: &[&DatasetName], name: &str, recursive: bool) {
    let owned: Vec<DatasetName> = datasets.iter().map(|d| (*d).clone()).collect();
    f.backend()
        .snapshot(&owned, name, recursive)
        .unwrap_or_else(|e| panic!("snapshot {owned:?}@{name}: {e}"));
}

fn sorted(v: Vec<String>) -> Vec<String> {
    v.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn full(d: &DatasetName, snapshot: &str) -> SendSpec {
    SendSpec::Full {
        dataset: d.clone(),
        snapshot: snapshot.into(),
        raw: false,
    }
}

fn incr(d: &DatasetName, from: &str, to: &str, intermediates: bool) -> SendSpec {
    SendSpec::Incremental {
        dataset: d.clone(),
        from: SendBase::Snapshot(from.into()),
        to: to.into(),
        intermediates,
        raw: false,
    }
}

fn send_all(f: &dyn Fixture, spec: &SendSpec) -> Vec<u8> {
    let mut buf = Vec::new();
    let n = f
        .backend()
        .send(spec, &mut buf)
        .unwrap_or_else(|e| panic!("send {spec:?}: {e}"));
    assert_eq!(n, buf.len() as u64);
    buf
}

fn transfer(
    f: &dyn Fixture,
    spec: &SendSpec,
    target: &DatasetName,
    force: bool,
) -> Result<(), ZfsError> {
    let buf = send_all(f, spec);
    f.backend().receive(
        target,
        &RecvSpec {
            force,
            ..RecvSpec::default()
        },
        &mut &buf[..],
    )
}

/// (name, guid) of each snapshot, in order.
fn ids(f: &dyn Fixture, d: &DatasetName) -> Vec<(String, u64)> {
    snaps(f, d).into_iter().map(|s| (s.name, s.guid)).collect()
}

/// Keeps the first `limit` bytes, then fails like a dropped connection.
struct CutWriter {
    kept: Vec<u8>,
    limit: usize,
}

impl std::io::Write for CutWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.limit - self.kept.len();
        if room == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "link cut",
            ));
        }
        let n = room.min(buf.len());
        self.kept.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `spec` into a link cut halfway and feeds what got through to
/// `target`; returns the full stream size.
fn interrupted_transfer(f: &dyn Fixture, spec: &SendSpec, target: &DatasetName) -> u64 {
    let b = f.backend();
    let size = b.send(spec, &mut std::io::sink()).unwrap();
    let mut cut = CutWriter {
        kept: Vec::new(),
        limit: (size / 2) as usize,
    };
    match b.send(spec, &mut cut) {
        Err(ZfsError::Stream { .. }) => {}
        other => panic!("send into a cut link: {other:?}"),
    }
    assert_eq!(cut.kept.len() as u64, size / 2);
    match b.receive(target, &RecvSpec::default(), &mut &cut.kept[..]) {
        Err(ZfsError::Incomplete { detail, .. }) => eprintln!("truncated receive: {detail}"),
        other => panic!("receive of half a stream: {other:?}"),
    }
    size
}

// ---------------------------------------------------------------- cases ---

#[test]
fn snapshots_list_in_createtxg_order_with_all_fields() {
    let f = fixture("list");
    let f = f.as_ref();
    let b = f.backend();
    let d = f.make("my data");
    let start = now();
    // Creation order differs from name order both ways.
    for name in ["zeta", "alpha", "mid snap", "beta"] {
        snap(f, &[&d], name, false);
    }
    b.hold(&d, "mid snap", "zdr").unwrap();
    let got = snaps(f, &d);
    assert_eq!(names(&got), ["zeta", "alpha", "mid snap", "beta"]);
    for w in got.windows(2) {
        assert!(w[0].createtxg < w[1].createtxg, "{got:?}");
    }
    let guids: BTreeSet<u64> = got.iter().map(|s| s.guid).collect();
    assert_eq!(guids.len(), got.len(), "guids not unique: {got:?}");
    assert!(!guids.contains(&0));
    for s in &got {
        assert!(s.createtxg > 0, "{s:?}");
        assert!(
            (start - 60..=now() + 60).contains(&s.creation),
            "creation {} not near {start}",
            s.creation
        );
        let want = u32::from(s.name == "mid snap");
        assert_eq!(s.userrefs, want, "{s:?}");
    }
    // Only this dataset's snapshots, not the parent's or a child's.
    let child = f.make("my data/child");
    snap(f, &[&child], "c", false);
    snap(f, &[&f.root()], "r", false);
    assert_eq!(snaps(f, &d).len(), 4);
    assert_eq!(names(&snaps(f, &child)), ["c"]);
    assert!(snaps(f, &f.make("empty")).is_empty());
    b.release(&d, "mid snap", "zdr").unwrap();
    assert!(snaps(f, &d).iter().all(|s| s.userrefs == 0));

    let pools = b.pools().unwrap();
    let pool = pools
        .iter()
        .find(|p| p.name == f.pool())
        .expect("own pool listed");
    assert_eq!(pool.health, "ONLINE");
    assert!(
        pool.size > 0 && pool.allocated > 0 && pool.free > 0,
        "{pool:?}"
    );
    assert!(pool.allocated + pool.free <= pool.size, "{pool:?}");
}

#[test]
fn list_datasets_reads_a_user_property_set_inherited_or_unset() {
    let f = fixture("props");
    let f = f.as_ref();
    let a = f.make("a");
    let child = f.make("a/child");
    let grandchild = f.make("a/child/deep");
    let local = f.make("a/local");
    let unset = f.make("b with space");
    f.set_property(&a, "zdr:class", "gold");
    f.set_property(&local, "zdr:class", "bronze tier");
    f.set_property(&unset, "other:prop", "x");
    let inherits_later = f.make("a/later");
    // Values are free text to ZFS: empty, tabs, non-ASCII.
    let odd = [("", "empty"), ("x\ty", "tab"), ("données", "utf8")];
    for (value, rel) in odd {
        f.set_property(&f.make(&format!("odd {rel}")), "zdr:class", value);
    }
    let listed = f.backend().list_datasets("zdr:class").unwrap();
    let mine: Vec<_> = listed
        .iter()
        .filter(|d| f.root().contains(&d.name))
        .collect();
    let class = |d: &DatasetName| {
        mine.iter()
            .find(|x| &x.name == d)
            .unwrap_or_else(|| panic!("{d} not listed"))
            .class_property
            .clone()
    };
    assert_eq!(class(&f.root()), None);
    assert_eq!(class(&a).as_deref(), Some("gold"));
    assert_eq!(class(&child).as_deref(), Some("gold"));
    assert_eq!(class(&grandchild).as_deref(), Some("gold"));
    assert_eq!(class(&inherits_later).as_deref(), Some("gold"));
    assert_eq!(class(&local).as_deref(), Some("bronze tier"));
    assert_eq!(class(&unset), None);
    for (value, rel) in odd {
        assert_eq!(class(&f.ds(&format!("odd {rel}"))).as_deref(), Some(value));
    }
    assert_eq!(mine.len(), 10, "{mine:?}");
    let guids: BTreeSet<u64> = mine.iter().map(|d| d.guid).collect();
    assert_eq!(guids.len(), 10);
    assert!(mine
        .iter()
        .all(|d| d.guid != 0 && d.used > 0 && d.available > 0));
    // A property nobody set reads as unset everywhere.
    let none = f.backend().list_datasets("zdr:nothing").unwrap();
    assert!(none
        .iter()
        .filter(|d| f.root().contains(&d.name))
        .all(|d| d.class_property.is_none()));
    assert!(matches!(
        f.backend().list_datasets("Bad,prop"),
        Err(ZfsError::Invalid { .. })
    ));
}

#[test]
fn multi_dataset_snapshot_is_atomic() {
    let f = fixture("atomic");
    let f = f.as_ref();
    let b = f.backend();
    let (a, bb, c) = (f.make("a"), f.make("b b"), f.make("c"));
    snap(f, &[&a, &bb, &c], "n", false);
    let txgs: BTreeSet<u64> = [&a, &bb, &c]
        .iter()
        .map(|d| snaps(f, d)[0].createtxg)
        .collect();
    assert_eq!(txgs.len(), 1, "one transaction, one createtxg: {txgs:?}");
    let guids: BTreeSet<u64> = [&a, &bb, &c].iter().map(|d| snaps(f, d)[0].guid).collect();
    assert_eq!(guids.len(), 3);

    // One dataset already has the name: none of them get it.
    snap(f, &[&bb], "x", false);
    match b.snapshot(&[a.clone(), bb.clone(), c.clone()], "x", false) {
        Err(ZfsError::Exists { what }) => assert!(what.contains("b b@x"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&snaps(f, &a)), ["n"]);
    assert_eq!(names(&snaps(f, &bb)), ["n", "x"]);
    assert_eq!(names(&snaps(f, &c)), ["n"]);

    // One dataset is missing: none of them get it.
    let missing = f.ds("missing");
    assert!(matches!(
        b.snapshot(&[a.clone(), missing], "y", false),
        Err(ZfsError::NotFound { .. })
    ));
    assert_eq!(names(&snaps(f, &a)), ["n"]);

    // ZFS is atomic only within a pool: a set spanning two is refused up
    // front, and an empty set is nothing to do.
    let elsewhere = DatasetName::parse("zdrnosuchpool/x").unwrap();
    assert!(matches!(
        b.snapshot(&[a.clone(), elsewhere], "z", false),
        Err(ZfsError::Invalid { .. })
    ));
    b.snapshot(&[], "z", false).unwrap();
    assert_eq!(names(&snaps(f, &a)), ["n"]);
}

#[test]
fn recursive_snapshot_includes_children_only() {
    let f = fixture("recursive");
    let f = f.as_ref();
    let a = f.make("a");
    let child = f.make("a/child");
    let deep = f.make("a/child/deep one");
    let sibling = f.make("a b");
    let other = f.make("a2");
    snap(f, &[&a], "r", true);
    let txg = snaps(f, &a)[0].createtxg;
    for d in [&a, &child, &deep] {
        let s = snaps(f, d);
        assert_eq!(names(&s), ["r"], "{d}");
        assert_eq!(s[0].createtxg, txg, "{d}");
    }
    for d in [&sibling, &other, &f.root()] {
        assert!(snaps(f, d).is_empty(), "{d}");
    }
    // Recursive on the root takes every dataset of the pool; a child that
    // already has the name makes the whole set fail.
    assert!(matches!(
        f.backend().snapshot(&[f.root()], "r", true),
        Err(ZfsError::Exists { .. })
    ));
    assert!(snaps(f, &sibling).is_empty());
    snap(f, &[&f.root()], "all", true);
    for d in [&f.root(), &a, &child, &deep, &sibling, &other] {
        assert_eq!(names(&snaps(f, d)).last(), Some(&"all"), "{d}");
    }
    // A set that lists a child of a recursive parent takes it once.
    snap(f, &[&a, &child, &deep], "overlap", true);
    for d in [&a, &child, &deep] {
        assert_eq!(
            names(&snaps(f, d))
                .iter()
                .filter(|n| **n == "overlap")
                .count(),
            1,
            "{d}"
        );
    }
    assert_eq!(names(&snaps(f, &sibling)).last(), Some(&"all"));
}

#[test]
fn holds_block_destroy_until_released() {
    let f = fixture("holds");
    let f = f.as_ref();
    let b = f.backend();
    let d = f.make("held data");
    snap(f, &[&d], "s 1", false);
    assert!(b.holds(&d, "s 1").unwrap().is_empty());
    b.hold(&d, "s 1", "zdr").unwrap();
    b.hold(&d, "s 1", "other tool").unwrap();
    assert!(matches!(
        b.hold(&d, "s 1", "zdr"),
        Err(ZfsError::Exists { .. })
    ));
    assert_eq!(sorted(b.holds(&d, "s 1").unwrap()), ["other tool", "zdr"]);
    assert_eq!(snaps(f, &d)[0].userrefs, 2);
    match b.destroy_snapshot(&d, "s 1") {
        Err(ZfsError::Held { what, tags }) => {
            assert_eq!(what, format!("{d}@s 1"));
            let mut tags: Vec<&str> = tags.split(", ").collect();
            tags.sort();
            assert_eq!(tags, ["other tool", "zdr"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&snaps(f, &d)), ["s 1"]);
    b.release(&d, "s 1", "zdr").unwrap();
    assert_eq!(b.holds(&d, "s 1").unwrap(), ["other tool"]);
    assert_eq!(snaps(f, &d)[0].userrefs, 1);
    assert!(matches!(
        b.release(&d, "s 1", "zdr"),
        Err(ZfsError::NotFound { .. })
    ));
    assert!(matches!(
        b.destroy_snapshot(&d, "s 1"),
        Err(ZfsError::Held { .. })
    ));
    b.release(&d, "s 1", "other tool").unwrap();
    b.destroy_snapshot(&d, "s 1").unwrap();
    assert!(snaps(f, &d).is_empty());

    // On a snapshot that does not exist.
    assert!(matches!(
        b.hold(&d, "s 1", "zdr"),
        Err(ZfsError::NotFound { .. })
    ));
    assert!(matches!(
        b.release(&d, "s 1", "zdr"),
        Err(ZfsError::NotFound { .. })
    ));
    assert!(matches!(b.holds(&d, "s 1"), Err(ZfsError::NotFound { .. })));
    assert!(matches!(
        b.hold(&f.ds("missing"), "s", "zdr"),
        Err(ZfsError::NotFound { .. })
    ));
    assert!(matches!(
        b.hold(&d, "s 1", "-r"),
        Err(ZfsError::Invalid { .. })
    ));
}

#[test]
fn bookmarks_outlive_their_snapshot() {
    let f = fixture("bookmarks");
    let f = f.as_ref();
    let b = f.backend();
    let d = f.make("marked data");
    assert!(matches!(
        b.bookmark(&d, "s", "bm"),
        Err(ZfsError::NotFound { .. })
    ));
    snap(f, &[&d], "s", false);
    snap(f, &[&d], "t", false);
    let guid = snaps(f, &d)[0].guid;
    b.bookmark(&d, "s", "bm").unwrap();
    b.bookmark(&d, "s", "bm two").unwrap();
    match b.bookmark(&d, "t", "bm") {
        Err(ZfsError::Exists { what }) => assert!(what.contains(&format!("{d}#bm")), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.bookmark(&d, "s", "bm"),
        Err(ZfsError::Exists { .. })
    ));
    b.destroy_snapshot(&d, "s").unwrap();
    assert_eq!(names(&snaps(f, &d)), ["t"]);
    // Still there: the name is still taken.
    assert!(matches!(
        b.bookmark(&d, "t", "bm"),
        Err(ZfsError::Exists { .. })
    ));
    if let Some(marks) = f.bookmarks(&d) {
        assert_eq!(
            marks,
            [("bm".to_string(), guid), ("bm two".to_string(), guid)]
        );
    }
    // From a snapshot that is gone, and with names ZFS would refuse.
    assert!(matches!(
        b.bookmark(&d, "s", "again"),
        Err(ZfsError::NotFound { .. })
    ));
    assert!(matches!(b.bookmark(&d, "t", "b#c"), Err(ZfsError::Name(_))));
    assert!(matches!(b.bookmark(&d, "t", "b;c"), Err(ZfsError::Name(_))));
}

#[test]
fn bookmarks_list_in_createtxg_order_and_destroy() {
    let f = fixture("listbook");
    let f = f.as_ref();
    let b = f.backend();
    let d = f.make("marked data");
    let child = f.make("marked data/child");
    assert!(b.list_bookmarks(&d).unwrap().is_empty());
    snap(f, &[&d], "s", false);
    f.write_data(&d, 64 << 10);
    snap(f, &[&d, &child], "t", false);
    // Made first, but of the later snapshot: listed last.
    b.bookmark(&d, "t", "a late").unwrap();
    b.bookmark(&d, "s", "m two").unwrap();
    b.bookmark(&d, "s", "b one").unwrap();
    b.bookmark(&child, "t", "child mark").unwrap();
    let s = snaps(f, &d);
    let marks = b.list_bookmarks(&d).unwrap();
    let got: Vec<(&str, u64, u64, i64)> = marks
        .iter()
        .map(|m| (m.name.as_str(), m.guid, m.createtxg, m.creation))
        .collect();
    let of = |name, x: &SnapshotInfo| (name, x.guid, x.createtxg, x.creation);
    assert_eq!(
        got,
        [of("b one", &s[0]), of("m two", &s[0]), of("a late", &s[1])]
    );
    if let Some(raw) = f.bookmarks(&d) {
        assert_eq!(
            sorted(raw.into_iter().map(|(n, _)| n).collect()),
            sorted(marks.iter().map(|m| m.name.clone()).collect())
        );
    }
    // They outlive their snapshot, unchanged.
    b.destroy_snapshot(&d, "s").unwrap();
    assert_eq!(b.list_bookmarks(&d).unwrap(), marks);
    let child_marks = b.list_bookmarks(&child).unwrap();
    assert_eq!(child_marks.len(), 1);
    assert_eq!(child_marks[0].name, "child mark");
    assert_eq!(child_marks[0].guid, snaps(f, &child)[0].guid);

    b.destroy_bookmark(&d, "m two").unwrap();
    let left: Vec<String> = b
        .list_bookmarks(&d)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(left, ["b one", "a late"]);
    match b.destroy_bookmark(&d, "m two") {
        Err(ZfsError::NotFound { what }) => assert!(what.contains("m two"), "{what}"),
        other => panic!("destroying a missing bookmark: {other:?}"),
    }
    let missing = f.ds("nowhere");
    assert!(matches!(
        b.destroy_bookmark(&missing, "b one"),
        Err(ZfsError::NotFound { .. })
    ));
    assert!(matches!(
        b.list_bookmarks(&missing),
        Err(ZfsError::NotFound { .. })
    ));
    // The name is free again, and the child's bookmark was not touched.
    b.bookmark(&d, "t", "m two").unwrap();
    assert_eq!(b.list_bookmarks(&child).unwrap(), child_marks);
    // Names ZFS would refuse never reach it.
    let blind = f.blind_backend();
    for be in [b, blind.as_ref()] {
        for bad in ["$(reboot)", "a;b", "a@b", "a#b", "", "a/b"] {
            assert!(
                matches!(be.destroy_bookmark(&d, bad), Err(ZfsError::Name(_))),
                "{} destroy_bookmark {bad:?}",
                be.kind()
            );
        }
    }
    // A well-formed name gets past the check. (The lzc backend is not blind
    // here: it reaches the kernel without zfs(8), and finds no such bookmark.)
    assert!(!matches!(
        blind.destroy_bookmark(&d, "never made"),
        Ok(_) | Err(ZfsError::Name(_))
    ));
}

#[test]
fn missing_and_duplicate_objects() {
    let f = fixture("errors");
    let f = f.as_ref();
    let b = f.backend();
    let d = f.make("there");
    let missing = f.ds("not there");
    let is_not_found = |r: Result<(), ZfsError>, what: &str| match r {
        Err(ZfsError::NotFound { .. }) => {}
        other => panic!("{what}: {other:?}"),
    };
    match b.list_snapshots(&missing) {
        Err(ZfsError::NotFound { .. }) => {}
        other => panic!("list_snapshots of a missing dataset: {other:?}"),
    }
    is_not_found(
        b.snapshot(std::slice::from_ref(&missing), "s", false),
        "snapshot",
    );
    is_not_found(
        b.snapshot(std::slice::from_ref(&missing), "s", true),
        "recursive snapshot",
    );
    is_not_found(b.destroy_snapshot(&d, "nope"), "destroy missing snapshot");
    is_not_found(
        b.destroy_snapshot(&missing, "s"),
        "destroy on missing dataset",
    );
    is_not_found(
        b.bookmark(&missing, "s", "b"),
        "bookmark on missing dataset",
    );
    assert!(matches!(
        b.holds(&missing, "s"),
        Err(ZfsError::NotFound { .. })
    ));

    snap(f, &[&d], "dup", false);
    match b.snapshot(std::slice::from_ref(&d), "dup", false) {
        Err(ZfsError::Exists { what }) => assert!(what.contains(&format!("{d}@dup")), "{what}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&snaps(f, &d)), ["dup"]);
    b.destroy_snapshot(&d, "dup").unwrap();
    is_not_found(b.destroy_snapshot(&d, "dup"), "destroy twice");
}

#[test]
fn hostile_names_are_refused_before_any_command_runs() {
    let f = fixture("names");
    let f = f.as_ref();
    let pool = f.pool();
    for bad in ["$(reboot)", "données", "a;b", "a`id`", "a|b", "a\nb", "a'b"] {
        let full = format!("{pool}/{bad}");
        assert!(
            matches!(DatasetName::parse(&full), Err(NameError::BadChar { .. })),
            "{full:?} accepted"
        );
        // Real ZFS refuses them too: we are not stricter than it on these.
        if let Some(accepted) = f.raw_zfs(&["create", &full]) {
            assert!(!accepted, "zfs accepted {full:?}");
        }
    }
    // Names with spaces are legal for both.
    let spaced = format!("{pool}/my data");
    let parsed = DatasetName::parse(&spaced).unwrap();
    if let Some(accepted) = f.raw_zfs(&["create", &spaced]) {
        assert!(accepted, "zfs refused {spaced:?}");
        assert_eq!(f.raw_zfs(&["destroy", &spaced]), Some(true));
    }

    // Snapshot, bookmark and hold names reach the backend as strings: the
    // real backend and one that can reach no ZFS at all both answer Name,
    // so nothing ran.
    let d = f.make("target");
    snap(f, &[&d], "ok", false);
    let blind = f.blind_backend();
    for b in [f.backend(), blind.as_ref()] {
        let kind = b.kind();
        for bad in ["$(reboot)", "données", "a;b", "a@b", "", "-r", "a/b"] {
            let checks: [(&str, Result<(), ZfsError>); 6] = [
                ("snapshot", b.snapshot(std::slice::from_ref(&d), bad, false)),
                (
                    "recursive snapshot",
                    b.snapshot(&[d.clone(), parsed.clone()], bad, true),
                ),
                ("destroy", b.destroy_snapshot(&d, bad)),
                ("hold", b.hold(&d, bad, "zdr")),
                ("release", b.release(&d, bad, "zdr")),
                ("bookmark", b.bookmark(&d, "ok", bad)),
            ];
            for (op, r) in checks {
                // "-r" is a legal ZFS component name; only the ones ZFS
                // would refuse must come back as Name.
                if bad == "-r" {
                    continue;
                }
                assert!(
                    matches!(r, Err(ZfsError::Name(_))),
                    "{kind} {op} {bad:?}: {r:?}"
                );
            }
            assert!(
                matches!(b.holds(&d, bad), Err(ZfsError::Name(_))) || bad == "-r",
                "{kind} holds {bad:?}"
            );
        }
        // Hold tags are checked the same way, as Invalid.
        for tag in ["-r", "a;b", "", "données"] {
            assert!(
                matches!(b.hold(&d, "ok", tag), Err(ZfsError::Invalid { .. })),
                "{kind} hold tag {tag:?}"
            );
        }
    }
    // The blind backend really is blind: a well-formed call fails otherwise.
    assert!(!matches!(
        blind.list_snapshots(&d),
        Ok(_) | Err(ZfsError::Name(_))
    ));
    assert_eq!(names(&snaps(f, &d)), ["ok"]);
}

#[test]
fn names_with_spaces_round_trip() {
    let f = fixture("spaces");
    let f = f.as_ref();
    let b = f.backend();
    let d = f.make("my data");
    let child = f.make("my data/sub dir");
    f.write_data(&d, 64 << 10);
    snap(f, &[&d], "before upgrade", true);
    assert_eq!(names(&snaps(f, &d)), ["before upgrade"]);
    assert_eq!(names(&snaps(f, &child)), ["before upgrade"]);
    b.hold(&d, "before upgrade", "zdr keep").unwrap();
    assert_eq!(b.holds(&d, "before upgrade").unwrap(), ["zdr keep"]);
    b.bookmark(&d, "before upgrade", "mark one").unwrap();
    assert!(matches!(
        b.destroy_snapshot(&d, "before upgrade"),
        Err(ZfsError::Held { .. })
    ));
    b.release(&d, "before upgrade", "zdr keep").unwrap();
    b.destroy_snapshot(&d, "before upgrade").unwrap();
    assert!(snaps(f, &d).is_empty());
    assert_eq!(names(&snaps(f, &child)), ["before upgrade"]);
    let listed = b.list_datasets("zdr:class").unwrap();
    for want in [&d, &child] {
        assert!(listed.iter().any(|x| &x.name == want), "{want} not listed");
    }
}

#[test]
fn snapshot_on_a_full_pool_is_no_space() {
    let f = fixture("nospace");
    let f = f.as_ref();
    let d = f.make("full");
    f.exhaust_space(&d);
    match f.backend().snapshot(std::slice::from_ref(&d), "s", false) {
        Err(ZfsError::NoSpace { pool }) => assert_eq!(pool, f.pool()),
        other => panic!("{other:?}"),
    }
    assert!(snaps(f, &d).is_empty());
}

#[test]
fn names_at_the_255_byte_limit() {
    let f = fixture("long");
    let f = f.as_ref();
    let b = f.backend();
    let d = f.make("a");
    let child = f.make("a/cc");
    // `<pool>/a@` plus the snapshot name: exactly 255 bytes fits, 256 does not.
    let room = 255 - d.as_str().len() - 1;
    let fits = "s".repeat(room);
    let over = "s".repeat(room + 1);
    snap(f, &[&d], &fits, false);
    assert_eq!(names(&snaps(f, &d)), [fits.as_str()]);
    assert!(
        matches!(
            b.snapshot(std::slice::from_ref(&d), &over, false),
            Err(ZfsError::Name(NameError::TooLong { .. }))
        ),
        "256-byte snapshot name"
    );
    if let Some(ok) = f.raw_zfs(&["snapshot", &format!("{d}@{over}")]) {
        assert!(!ok, "zfs took a 256-byte snapshot name");
    }
    b.bookmark(&d, &fits, &"b".repeat(room)).unwrap();
    assert!(matches!(
        b.bookmark(&d, &fits, &"b".repeat(room + 1)),
        Err(ZfsError::Name(NameError::TooLong { .. }))
    ));
    b.hold(&d, &fits, &"t".repeat(255)).unwrap();
    assert!(matches!(
        b.hold(&d, &fits, &"t".repeat(256)),
        Err(ZfsError::Invalid { .. })
    ));
    assert_eq!(b.holds(&d, &fits).unwrap(), ["t".repeat(255)]);
    assert_eq!(snaps(f, &d)[0].userrefs, 1);

    // Recursive: the listed dataset's name fits, its child's would not, so
    // the whole set is refused, naming the child.
    let r = "r".repeat(room - 1);
    match b.snapshot(std::slice::from_ref(&d), &r, true) {
        Err(ZfsError::Name(NameError::TooLong { name, .. })) => {
            assert_eq!(name, format!("{child}@{r}"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snaps(f, &d).len(), 1);
    assert!(snaps(f, &child).is_empty());
}

#[test]
fn send_receive_full_and_incremental_keep_guids() {
    let f = fixture("sendrecv");
    let f = f.as_ref();
    let b = f.backend();
    let src = f.make("src");
    let dst = f.ds("dst");
    f.write_data(&src, 256 << 10);
    snap(f, &[&src], "a", false);
    for (i, name) in ["b", "c", "d"].into_iter().enumerate() {
        f.write_data(&src, (64 << 10) + i);
        snap(f, &[&src], name, false);
    }
    let all = ids(f, &src);

    transfer(f, &full(&src, "a"), &dst, false).unwrap();
    assert_eq!(ids(f, &dst), all[..1]);
    transfer(f, &incr(&src, "a", "b", false), &dst, false).unwrap();
    assert_eq!(ids(f, &dst), all[..2]);
    // -I brings every snapshot in between.
    transfer(f, &incr(&src, "b", "d", true), &dst, false).unwrap();
    assert_eq!(ids(f, &dst), all);
    let (s, d) = (snaps(f, &src), snaps(f, &dst));
    for (x, y) in s.iter().zip(&d) {
        assert_eq!(x.creation, y.creation, "creation of {}", x.name);
    }
    for w in d.windows(2) {
        assert!(w[0].createtxg < w[1].createtxg, "{d:?}");
    }

    // A stream the target already has, or that does not continue it.
    for force in [false, true] {
        match transfer(f, &full(&src, "a"), &dst, force) {
            Err(ZfsError::Diverged { detail, .. }) => {
                eprintln!("full onto dst (-F {force}): {detail}")
            }
            other => panic!("full stream onto an existing target (-F {force}): {other:?}"),
        }
    }
    // A snapshot the target already has: zfs(8) succeeds, nothing changes.
    transfer(f, &incr(&src, "a", "b", false), &dst, false).unwrap();
    match transfer(f, &incr(&src, "a", "b", false), &f.ds("nowhere"), false) {
        Err(ZfsError::NotFound { what }) => eprintln!("incremental into missing: {what}"),
        other => panic!("incremental into a missing target: {other:?}"),
    }
    match transfer(f, &full(&src, "a"), &f.ds("no parent/dst"), false) {
        Err(ZfsError::NotFound { what }) => eprintln!("full into missing parent: {what}"),
        other => panic!("full stream below a missing parent: {other:?}"),
    }
    assert_eq!(ids(f, &dst), all);
    assert!(matches!(
        b.send(&full(&src, "nope"), &mut std::io::sink()),
        Err(ZfsError::NotFound { .. })
    ));
    assert!(matches!(
        b.send(&full(&src, "a;b"), &mut std::io::sink()),
        Err(ZfsError::Name(_))
    ));
    assert!(matches!(
        b.send(
            &SendSpec::Resume { token: "-n".into() },
            &mut std::io::sink()
        ),
        Err(ZfsError::Invalid { .. })
    ));
    assert_eq!(b.resume_token(&dst).unwrap(), None);
    assert!(matches!(
        b.resume_token(&f.ds("nowhere")),
        Err(ZfsError::NotFound { .. })
    ));
}

#[test]
fn incremental_from_a_bookmark() {
    let f = fixture("sendbook");
    let f = f.as_ref();
    let b = f.backend();
    let src = f.make("src");
    let dst = f.ds("dst");
    f.write_data(&src, 128 << 10);
    snap(f, &[&src], "a", false);
    transfer(f, &full(&src, "a"), &dst, false).unwrap();
    b.bookmark(&src, "a", "mark").unwrap();
    let a = ids(f, &src);
    b.destroy_snapshot(&src, "a").unwrap();
    f.write_data(&src, 64 << 10);
    snap(f, &[&src], "b", false);
    let spec = SendSpec::Incremental {
        dataset: src.clone(),
        from: SendBase::Bookmark("mark".into()),
        to: "b".into(),
        intermediates: false,
        raw: false,
    };
    let est = b.estimate(&spec).unwrap();
    eprintln!("estimate from a bookmark: {est:?}");
    transfer(f, &spec, &dst, false).unwrap();
    let mut want = a;
    want.extend(ids(f, &src));
    assert_eq!(ids(f, &dst), want);
    let dash_i = SendSpec::Incremental {
        dataset: src.clone(),
        from: SendBase::Bookmark("mark".into()),
        to: "b".into(),
        intermediates: true,
        raw: false,
    };
    assert!(matches!(
        b.send(&dash_i, &mut std::io::sink()),
        Err(ZfsError::Invalid { .. })
    ));
    let missing = SendSpec::Incremental {
        dataset: src.clone(),
        from: SendBase::Bookmark("gone".into()),
        to: "b".into(),
        intermediates: false,
        raw: false,
    };
    match b.send(&missing, &mut std::io::sink()) {
        Err(ZfsError::NotFound { what }) => eprintln!("missing bookmark: {what}"),
        other => panic!("send from a missing bookmark: {other:?}"),
    }
}

#[test]
fn diverged_target_is_refused_unless_forced() {
    let f = fixture("diverged");
    let f = f.as_ref();
    let src = f.make("src");
    let dst = f.ds("dst");
    f.write_data(&src, 64 << 10);
    snap(f, &[&src], "a", false);
    snap(f, &[&src], "b", false);
    transfer(f, &full(&src, "a"), &dst, false).unwrap();
    transfer(f, &incr(&src, "a", "b", false), &dst, false).unwrap();
    // A snapshot of the target's own that changes no data is no divergence.
    snap(f, &[&dst], "local", false);
    f.write_data(&src, 32 << 10);
    snap(f, &[&src], "c", false);
    transfer(f, &incr(&src, "b", "c", false), &dst, false).unwrap();
    eprintln!("after b..c over local: {:?}", names(&snaps(f, &dst)));
    assert_eq!(names(&snaps(f, &dst)), ["a", "b", "local", "c"]);

    // Data written on the target since the base is.
    f.mount(&dst);
    f.write_data(&dst, 16 << 10);
    snap(f, &[&dst], "mine", false);
    f.write_data(&src, 16 << 10);
    snap(f, &[&src], "d", false);
    match transfer(f, &incr(&src, "c", "d", false), &dst, false) {
        Err(ZfsError::Diverged { detail, .. }) => eprintln!("diverged: {detail}"),
        other => panic!("incremental onto a diverged target: {other:?}"),
    }
    assert_eq!(names(&snaps(f, &dst)), ["a", "b", "local", "c", "mine"]);
    transfer(f, &incr(&src, "c", "d", false), &dst, true).unwrap();
    eprintln!("after -F c..d: {:?}", names(&snaps(f, &dst)));
    assert_eq!(names(&snaps(f, &dst)), ["a", "b", "local", "c", "d"]);
    let s = ids(f, &src);
    assert_eq!(ids(f, &dst).last(), s.last());

    // From a base older than the target's newest: refused, and -F rolls back to it.
    f.write_data(&src, 16 << 10);
    snap(f, &[&src], "e", false);
    match transfer(f, &incr(&src, "a", "e", false), &dst, false) {
        Err(ZfsError::Diverged { detail, .. }) => eprintln!("old base: {detail}"),
        other => panic!("incremental from an old base: {other:?}"),
    }
    transfer(f, &incr(&src, "a", "e", false), &dst, true).unwrap();
    eprintln!("after -F a..e: {:?}", names(&snaps(f, &dst)));
    let s = ids(f, &src);
    assert_eq!(ids(f, &dst), [s[0].clone(), s[4].clone()]);

    // A base the target never had is refused even with -F.
    let other = f.make("other");
    snap(f, &[&other], "x", false);
    snap(f, &[&other], "y", false);
    for force in [false, true] {
        match transfer(f, &incr(&other, "x", "y", false), &dst, force) {
            Err(ZfsError::Diverged { detail, .. }) => {
                eprintln!("foreign base (-F {force}): {detail}")
            }
            other => panic!("incremental from a foreign base (-F {force}): {other:?}"),
        }
    }
    assert_eq!(ids(f, &dst), [s[0].clone(), s[4].clone()]);
}

/// `receive -F` would destroy the target's snapshots after the base; a hold on
/// one of them makes ZFS refuse the receive and keep them all. (The floor's
/// `zdr-floor` hold relies on this even when a signed command asks.) ZFS
/// finds the hold only once the stream is read, so `-s` leaves it as saved
/// state, which blocks the next receive until it is aborted.
#[test]
fn a_forced_receive_over_a_held_snapshot_is_refused_and_keeps_it() {
    let f = fixture("forced held");
    let f = f.as_ref();
    let src = f.make("src");
    let dst = f.ds("dst");
    f.write_data(&src, 64 << 10);
    snap(f, &[&src], "a", false);
    f.write_data(&src, 16 << 10);
    snap(f, &[&src], "b", false);
    transfer(f, &full(&src, "a"), &dst, false).unwrap();
    transfer(f, &incr(&src, "a", "b", false), &dst, false).unwrap();
    let before = ids(f, &dst);
    f.write_data(&src, 16 << 10);
    snap(f, &[&src], "c", false);

    f.backend().hold(&dst, "b", "zdr-floor").unwrap();
    match transfer(f, &incr(&src, "a", "c", false), &dst, true) {
        Err(e @ (ZfsError::Busy { .. } | ZfsError::Held { .. })) => {
            eprintln!("-F over a held snapshot: {e}")
        }
        other => panic!("-F from a over held @b: {other:?}"),
    }
    assert_eq!(ids(f, &dst), before);
    assert_eq!(f.backend().holds(&dst, "b").unwrap(), ["zdr-floor"]);
    assert!(f.backend().resume_token(&dst).unwrap().is_some());
    f.backend().abort_receive(&dst).unwrap();
    assert_eq!(f.backend().resume_token(&dst).unwrap(), None);
    assert_eq!(ids(f, &dst), before);

    f.backend().release(&dst, "b", "zdr-floor").unwrap();
    transfer(f, &incr(&src, "a", "c", false), &dst, true).unwrap();
    let s = ids(f, &src);
    assert_eq!(ids(f, &dst), [s[0].clone(), s[2].clone()]);
}

#[test]
fn interrupted_receive_resumes_or_aborts() {
    let f = fixture("resume");
    let f = f.as_ref();
    let b = f.backend();
    let src = f.make("src");
    f.write_data(&src, 4 << 20);
    snap(f, &[&src], "big", false);
    let spec = full(&src, "big");

    let dst = f.ds("resumed");
    let size = interrupted_transfer(f, &spec, &dst);
    let est = b
        .estimate(&spec)
        .unwrap()
        .expect("an estimate for a full send");
    eprintln!("full stream {size} bytes, estimate {est}");
    assert!(
        est >= size / 2 && est <= size * 2,
        "estimate {est} for {size}"
    );
    let token = b.resume_token(&dst).unwrap().expect("a resume token");
    // The token says what the partial receive is of, in OpenZFS's format.
    let decoded = resume_token::decode(&token).unwrap();
    let big = &snaps(f, &src)[0];
    assert_eq!(
        (decoded.toguid, decoded.fromguid, decoded.toname.as_str()),
        (big.guid, None, format!("{src}@big").as_str())
    );
    assert!(decoded.bytes > 0 && decoded.bytes < size, "{decoded:?}");
    eprintln!(
        "resume estimate: {:?}",
        b.estimate(&SendSpec::Resume {
            token: token.clone()
        })
    );
    let rest = send_all(f, &SendSpec::Resume { token });
    assert!(
        (rest.len() as u64) < size,
        "resumed {} of {size}",
        rest.len()
    );
    b.receive(&dst, &RecvSpec::default(), &mut &rest[..])
        .unwrap();
    assert_eq!(b.resume_token(&dst).unwrap(), None);
    assert_eq!(ids(f, &dst), ids(f, &src));

    // Aborting an interrupted incremental keeps the target as it was.
    f.write_data(&src, 2 << 20);
    snap(f, &[&src], "more", false);
    interrupted_transfer(f, &incr(&src, "big", "more", false), &dst);
    let token = b.resume_token(&dst).unwrap().expect("a resume token");
    let decoded = resume_token::decode(&token).unwrap();
    let s = snaps(f, &src);
    assert_eq!(
        (decoded.toguid, decoded.fromguid),
        (s[1].guid, Some(s[0].guid))
    );
    b.abort_receive(&dst).unwrap();
    assert_eq!(b.resume_token(&dst).unwrap(), None);
    assert_eq!(names(&snaps(f, &dst)), ["big"]);
    match b.abort_receive(&dst) {
        Err(ZfsError::NotFound { what }) => eprintln!("abort twice: {what}"),
        other => panic!("abort without partial state: {other:?}"),
    }
    transfer(f, &incr(&src, "big", "more", false), &dst, false).unwrap();
    assert_eq!(ids(f, &dst), ids(f, &src));

    // Aborting an interrupted full receive removes the new filesystem.
    let fresh = f.ds("fresh");
    interrupted_transfer(f, &spec, &fresh);
    assert!(b.resume_token(&fresh).unwrap().is_some());
    b.abort_receive(&fresh).unwrap();
    assert!(matches!(
        b.list_snapshots(&fresh),
        Err(ZfsError::NotFound { .. })
    ));
}

#[test]
fn fresh_receive_onto_pending_partial_state_is_busy() {
    let f = fixture("busy");
    let f = f.as_ref();
    let b = f.backend();
    let src = f.make("src");
    f.write_data(&src, 256 << 10);
    snap(f, &[&src], "a", false);
    let dst = f.ds("dst");
    transfer(f, &full(&src, "a"), &dst, false).unwrap();
    f.write_data(&src, 4 << 20);
    snap(f, &[&src], "b", false);

    // An interrupted incremental leaves resumable state on the target; the
    // same increment sent afresh (not as a resume), with or without force,
    // is refused as busy and changes nothing.
    let step = incr(&src, "a", "b", false);
    interrupted_transfer(f, &step, &dst);
    let token = b.resume_token(&dst).unwrap().expect("a resume token");
    for force in [false, true] {
        match transfer(f, &step, &dst, force) {
            Err(ZfsError::Busy { what, detail }) => {
                eprintln!("fresh incremental (force {force}): {what}: {detail}")
            }
            other => panic!("fresh incremental over partial state (force {force}): {other:?}"),
        }
    }
    assert_eq!(names(&snaps(f, &dst)), ["a"]);
    assert_eq!(b.resume_token(&dst).unwrap().as_ref(), Some(&token));
    let rest = send_all(f, &SendSpec::Resume { token });
    b.receive(&dst, &RecvSpec::default(), &mut &rest[..])
        .unwrap();
    assert_eq!(ids(f, &dst), ids(f, &src));

    // An interrupted full receive into a new filesystem: a fresh full
    // stream with force is refused as busy too (OpenZFS 2.3.2: "destination
    // ... contains partially-complete state from \"zfs receive -s\".").
    let fresh = f.ds("fresh");
    let whole = full(&src, "b");
    interrupted_transfer(f, &whole, &fresh);
    let token = b.resume_token(&fresh).unwrap().expect("a resume token");
    // Without force, zfs(8) first refuses to overwrite an existing dataset
    // (Diverged); libzfs_core has no such userland check and the kernel says
    // EBUSY (Busy). Refused either way, and the partial state stays.
    match transfer(f, &whole, &fresh, false) {
        Err(ZfsError::Diverged { detail, .. }) if b.kind() != "lzc" => {
            eprintln!("fresh full (no force): {detail}")
        }
        Err(ZfsError::Busy { detail, .. }) if b.kind() == "lzc" => {
            eprintln!("fresh full (no force): {detail}")
        }
        other => panic!("fresh full over partial state (no force): {other:?}"),
    }
    match transfer(f, &whole, &fresh, true) {
        Err(ZfsError::Busy { what, detail }) => eprintln!("fresh full (force): {what}: {detail}"),
        other => panic!("fresh full over partial state (force): {other:?}"),
    }
    assert_eq!(b.resume_token(&fresh).unwrap().as_ref(), Some(&token));
    b.abort_receive(&fresh).unwrap();
}

#[test]
fn raw_send_keeps_the_target_encrypted_without_its_key() {
    let f = fixture("raw");
    let f = f.as_ref();
    let src = f.ds("secret");
    if !f.create_encrypted(&src) {
        eprintln!("{}: no encryption modelled; skipped", f.backend().kind());
        return;
    }
    f.write_data(&src, 256 << 10);
    snap(f, &[&src], "a", false);
    f.write_data(&src, 64 << 10);
    snap(f, &[&src], "b", false);
    let dst = f.ds("copy");
    let raw_full = SendSpec::Full {
        dataset: src.clone(),
        snapshot: "a".into(),
        raw: true,
    };
    transfer(f, &raw_full, &dst, false).unwrap();
    let raw_incr = SendSpec::Incremental {
        dataset: src.clone(),
        from: SendBase::Snapshot("a".into()),
        to: "b".into(),
        intermediates: false,
        raw: true,
    };
    transfer(f, &raw_incr, &dst, false).unwrap();
    assert_eq!(ids(f, &dst), ids(f, &src));
    let enc = f.native_property(&dst, "encryption").unwrap();
    let status = f.native_property(&dst, "keystatus").unwrap();
    eprintln!("raw copy: encryption={enc} keystatus={status}");
    assert_ne!(enc, "off");
    assert_eq!(status, "unavailable");
}

#[test]
fn a_received_scratch_hashes_like_its_source_and_is_destroyed_whole() {
    let f = fixture("drill");
    let b = f.backend();
    let src = f.make("src");
    f.write_data(&src, 256 * 1024);
    snap(&*f, &[&src], "s1", false);
    f.write_data(&src, 64 * 1024);
    snap(&*f, &[&src], "s2", false);
    f.make("zdr-drill");
    let scratch = f.ds("zdr-drill/d1");
    let buf = send_all(&*f, &full(&src, "s1"));
    let noauto = RecvSpec {
        noauto: true,
        ..RecvSpec::default()
    };
    b.receive(&scratch, &noauto, &mut &buf[..]).unwrap();
    if let Some(v) = f.native_property(&scratch, "canmount") {
        assert_eq!(v, "noauto");
    }
    let h = |d: &DatasetName, s: &str| {
        b.content_hash(d, s)
            .unwrap_or_else(|e| panic!("content hash of {d}@{s}: {e}"))
    };
    let (source, copy) = (h(&src, "s1"), h(&scratch, "s1"));
    assert_eq!(source.level, zdr_common::wire::CheckLevel::FilesHashed);
    assert!(source.digest.is_some());
    assert_eq!(
        (copy.level, &copy.digest, copy.files, copy.bytes),
        (source.level, &source.digest, source.files, source.bytes)
    );
    assert_ne!(h(&src, "s2").digest, source.digest, "s2 holds more data");
    assert!(matches!(
        b.content_hash(&src, "nope"),
        Err(ZfsError::NotFound { .. } | ZfsError::Command { .. })
    ));
    b.hold(&scratch, "s1", "zdr-test").unwrap();
    assert!(
        b.destroy_dataset(&scratch).is_err(),
        "a held snapshot stops the destroy"
    );
    b.release(&scratch, "s1", "zdr-test").unwrap();
    b.destroy_dataset(&scratch).unwrap();
    assert!(matches!(
        b.list_snapshots(&scratch),
        Err(ZfsError::NotFound { .. })
    ));
    assert!(matches!(
        b.destroy_dataset(&scratch),
        Err(ZfsError::NotFound { .. })
    ));
    assert_eq!(
        names(&snaps(&*f, &src)),
        ["s1", "s2"],
        "the source is untouched"
    );
}
