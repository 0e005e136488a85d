//! Everything that crosses a process boundary in zdr: the NATS subject scheme, the
//! wire messages, the signed command envelope, and the policy model that the
//! coordinator distributes. No I/O lives here.

pub mod bus_auth;
pub mod dataset;
pub mod duration;
pub mod envelope;
pub mod policy;
pub mod servers;
pub mod subject;
pub mod wire;

pub use dataset::{DatasetName, NameError};
pub use duration::Duration;
