//! Everything that crosses a process boundary in zdr: the NATS subject scheme, the
//! wire messages, the signed command envelope, and the policy model that the
//! coordinator distributes. No I/O lives here: [`credentials`] is handed
//! the file and the environment, and [`s3`] (feature `s3`) only builds a
//! client.

pub mod bus_auth;
pub mod credentials;
pub mod dataset;
pub mod duration;
pub mod envelope;
pub mod policy;
#[cfg(feature = "s3")]
pub mod s3;
pub mod servers;
pub mod subject;
pub mod wire;

pub use dataset::{DatasetName, NameError};
pub use duration::Duration;
