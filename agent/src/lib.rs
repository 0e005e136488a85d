//! The zdr agent: one per storage node, the only process that touches ZFS.

pub mod retention;
pub mod zfs;
