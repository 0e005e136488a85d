//! The zdr agent: one per storage node, the only process that touches ZFS.
//!
//! - [`zfs`]: the backend trait and its backends; [`latency`] slows one down;
//! - [`retention`]: which snapshots the tiers keep (pure);
//! - [`floor`]: what no command may remove, the immutability windows (pure);
//! - [`lifecycle`]: the inventory cache, scheduled snapshots and pruning;
//! - [`scheduler`]: runs the lifecycle's passes until shutdown;
//! - [`node`]: the NATS side (hello, heartbeats, inventory, commands, policy);
//! - [`replication`]: both ends of a replication job, over [`transfer`];
//! - [`offsite`]: streams to and from an S3 bucket (the offsite tier);
//! - [`state`], [`audit`], [`config`]: what the agent keeps on disk;
//! - [`clock`]: the wall clock, read in the shells only.

pub mod audit;
pub mod clock;
pub mod config;
pub mod drill;
pub mod floor;
pub mod latency;
pub mod lifecycle;
pub mod micro;
pub mod node;
pub mod offsite;
pub mod replication;
pub mod retention;
pub mod scheduler;
pub mod state;
pub mod telemetry;
pub mod transfer;
pub mod zfs;
