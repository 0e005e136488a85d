//! Fixtures the coordinator's unit tests share.

use zdr_common::wire::SnapshotInfo;

/// A snapshot whose createtxg is `txg` and whose creation time follows it.
pub fn snap_at(name: &str, guid: u64, txg: u64) -> SnapshotInfo {
    SnapshotInfo {
        name: name.into(),
        guid,
        createtxg: txg,
        creation: txg as i64,
        used: 0,
        userrefs: 0,
    }
}

/// A snapshot whose GUID also orders it (createtxg and creation).
pub fn snap(name: &str, guid: u64) -> SnapshotInfo {
    snap_at(name, guid, guid)
}
