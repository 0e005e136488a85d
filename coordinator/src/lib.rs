//! The zdr coordinator: loads and signs the global policy, tracks the fleet from
//! what agents publish, keeps its durable state in JetStream KV, and serves the
//! HTTP health and status API. It never touches ZFS.

pub mod admit;
pub mod alerts;
pub mod api_auth;
pub mod bandwidth;
pub mod bucket_verify;
pub mod bus;
pub mod bus_auth;
pub mod compliance;
pub mod config;
pub mod drills;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod lease;
pub mod micro;
pub mod offsite;
pub mod pairing;
pub mod plan;
pub mod policy;
pub mod prune;
pub mod restore;
pub mod rtt;
pub mod service;
pub mod state;
pub mod status_page;
#[cfg(test)]
mod testing;
pub mod transfer_plan;
