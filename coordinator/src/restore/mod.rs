//! Restore: the copies of a protected dataset and their snapshots
//! (`points`), the choice of copy, snapshot and steps (`plan`), both pure.
//! The restore runs as a job of kind `Restore` (`crate::jobs`).

pub mod plan;
pub mod points;
