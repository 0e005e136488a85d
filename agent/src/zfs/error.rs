use zdr_common::NameError;

/// What went wrong in a backend call, in terms an admin can act on.
#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error(transparent)]
    Name(#[from] NameError),
    /// A tag, property name or request that ZFS would refuse or misread.
    #[error("{what} {value:?} refused: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("{what} does not exist")]
    NotFound { what: String },
    #[error("{what} already exists")]
    Exists { what: String },
    #[error("{what} is held ({tags}); release the holds first")]
    Held { what: String, tags: String },
    #[error("{what} is busy: {detail}")]
    Busy { what: String, detail: String },
    #[error("out of space on pool {pool}")]
    NoSpace { pool: String },
    #[error("`{argv}` failed with {status}: {stderr}")]
    Command {
        argv: String,
        status: String,
        stderr: String,
    },
    #[error("cannot parse zfs output line {line:?}: {reason}")]
    Parse { line: String, reason: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("simulated pool state {path}: {reason}")]
    SimState { path: String, reason: String },
}
