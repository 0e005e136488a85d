//! The replication data plane: ZFS streams go from agent to agent over mutual
//! TLS, never over NATS.
//!
//! The target agent listens ([`Receiver`]), the source agent connects
//! ([`Sender`]). Both present a certificate signed by the fleet CA
//! ([`FleetTls`]); the sender also checks the receiver's name. The
//! coordinator gives both ends the same one-time [`Job`] token; the receiver
//! serves only the sender that presents it.
//!
//! After the TLS 1.3 handshake (integers big-endian):
//!
//! ```text
//! sender   → hello   "ZDRT" version:u8 flags:u8 token:[32] size_hint:u64 id_len:u8 id
//! receiver → verdict u8 (0 accepted, else a refusal code), then closes if refused
//! sender   → data    kind:u8 (1 raw, 2 zstd) wire_len:u32 raw_len:u32 payload   (repeated)
//! sender   → end     kind:u8 (3) bytes:u64 blake3:[32]                          (of the raw stream)
//! receiver → result  bytes:u64 blake3:[32]                                      (what it wrote)
//! ```
//!
//! A data frame carries at most 256 KiB of stream. Both ends compare byte
//! counts and BLAKE3 hashes of the uncompressed stream; a mismatch is an error
//! on both sides, and the caller then aborts the receive (`zfs receive -A`).

mod net;
mod protocol;
mod throttle;
mod tls;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

pub use net::{Listener, Pending, Receiver, Sender};
pub use throttle::{pace, RateHandle};
pub use tls::FleetTls;

/// The receiving end of the protocol over bytes already in memory: the
/// hello checked against `job`, then the data frames and the end frame, read
/// as a [`Receiver`] reads them from TLS (verdict and result go nowhere).
/// Returns what reached the sink and how the stream ended. For the fuzz
/// target (`integration/fuzz/`), which feeds the decoder arbitrary bytes.
pub async fn receive_from_bytes(
    wire: &[u8],
    job: &Job,
) -> (Vec<u8>, Result<Summary, TransferError>) {
    let mut stream = tokio::io::join(wire, tokio::io::sink());
    let mut sink = Vec::new();
    let result = async {
        let (hello, _) = protocol::admit(&mut stream, |id| match id == job.id.as_bytes() {
            true => Ok(job.clone()),
            false => Err(Refusal::WrongJob),
        })
        .await?;
        protocol::stream_in(&mut stream, &hello, &mut sink, None).await
    }
    .await;
    (sink, result)
}

/// How long a connection may take to finish the TLS handshake and the hello.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A one-time secret that binds a connection to a job.
#[derive(Clone, PartialEq, Eq)]
pub struct JobToken([u8; 32]);

impl JobToken {
    /// 32 bytes from the OS random source.
    pub fn generate() -> JobToken {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        JobToken(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> JobToken {
        JobToken(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn matches(&self, other: &[u8; 32]) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other[..]).into()
    }
}

/// Lowercase hex, as it travels in the coordinator's signed commands.
impl fmt::Display for JobToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Redacted: tokens must not end up in logs.
impl fmt::Debug for JobToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobToken(..)")
    }
}

impl FromStr for JobToken {
    type Err = TransferError;

    fn from_str(s: &str) -> Result<JobToken, TransferError> {
        let digits = s.as_bytes();
        if digits.len() != 64 {
            return Err(TransferError::BadToken);
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| TransferError::BadToken)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| TransferError::BadToken)?;
        }
        Ok(JobToken(bytes))
    }
}

/// A transfer as the coordinator describes it to both ends.
#[derive(Debug, Clone)]
pub struct Job {
    id: String,
    token: JobToken,
}

impl Job {
    /// The id travels in a one-byte length field: 1 to 255 bytes.
    pub fn new(id: impl Into<String>, token: JobToken) -> Result<Job, TransferError> {
        let id = id.into();
        if id.is_empty() || id.len() > usize::from(u8::MAX) {
            return Err(TransferError::BadJobId(id));
        }
        Ok(Job { id, token })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn token(&self) -> &JobToken {
        &self.token
    }
}

/// Per-frame compression of the stream on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    /// zstd at this level; frames that do not shrink go raw.
    Zstd { level: i32 },
}

/// What the sender chooses for one transfer.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    pub compression: Compression,
    /// Shared by every transfer given a clone of it; changes apply mid-transfer.
    pub rate: RateHandle,
    /// Estimated stream size (`zfs send -nP`), passed on for progress.
    pub size_hint: Option<u64>,
}

/// Bytes of the uncompressed stream so far, for a `tokio::sync::watch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub bytes: u64,
    pub size_hint: Option<u64>,
}

/// A finished, verified transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Uncompressed stream bytes.
    pub bytes: u64,
    /// Frame bytes on the wire, headers included, before TLS.
    pub wire_bytes: u64,
    /// BLAKE3 of the uncompressed stream, agreed by both ends.
    pub hash: blake3::Hash,
}

/// Why a receiver turned a sender away. Sent as the hello verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    WrongToken,
    WrongJob,
    BadHello,
    UnsupportedVersion,
    /// The certificate does not name the job's source node.
    WrongPeer,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::WrongToken => "wrong job token",
            Refusal::WrongJob => "no such job expected",
            Refusal::BadHello => "malformed hello",
            Refusal::UnsupportedVersion => "unsupported protocol version",
            Refusal::WrongPeer => "the certificate does not name the job's source node",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("reading {path}: {source}")]
    ReadPem { path: PathBuf, source: io::Error },
    #[error("parsing the {what} PEM: {source}")]
    Pem {
        what: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in the {0} PEM")]
    NoCertificate(&'static str),
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("a job token is 64 hex digits")]
    BadToken,
    #[error("job id {0:?} must be 1 to 255 bytes")]
    BadJobId(String),
    #[error("binding the transfer listener: {0}")]
    Bind(io::Error),
    #[error("accepting a transfer connection: {0}")]
    Accept(io::Error),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    #[error("handshake or hello not done within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("no sender connected within {0:?}")]
    NoSender(std::time::Duration),
    #[error("refused the sender: {0}")]
    Refused(Refusal),
    #[error("the receiver refused the transfer: {0}")]
    RefusedByReceiver(Refusal),
    #[error("network: {0}")]
    Network(io::Error),
    /// TLS authenticates every record, so a changed byte ends the stream here.
    #[error("TLS: {0}: bytes were altered in transit")]
    Altered(rustls::Error),
    #[error("cancelled by the coordinator")]
    Cancelled,
    #[error("reading the source stream: {0}")]
    Source(io::Error),
    #[error("writing the sink: {0}")]
    Sink(io::Error),
    #[error("zstd: {0}")]
    Zstd(io::Error),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error(
        "stream corrupted: sender has {sent_bytes} bytes, BLAKE3 {sent}; receiver has {received_bytes} bytes, BLAKE3 {received}"
    )]
    HashMismatch {
        sent_bytes: u64,
        sent: blake3::Hash,
        received_bytes: u64,
        received: blake3::Hash,
    },
}

impl TransferError {
    /// A failed read or write on the data connection. A record that failed
    /// TLS's integrity check, here or (told by alert) at the other end, is
    /// told apart from a plain network error.
    pub(crate) fn network(e: io::Error) -> TransferError {
        use rustls::AlertDescription::{BadRecordMac, DecryptError};
        let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match tls {
            Some(
                t @ (rustls::Error::DecryptError
                | rustls::Error::AlertReceived(BadRecordMac | DecryptError)),
            ) => TransferError::Altered(t.clone()),
            _ => TransferError::Network(e),
        }
    }
}
