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
    /// A receive refused because the target does not continue the stream's
    /// history (it has later snapshots, lacks the base, or already exists).
    #[error("receive into {target} refused: {detail}")]
    Diverged { target: String, detail: String },
    /// A stream that ended early; the target keeps a resume token.
    #[error("stream into {target} incomplete: {detail}")]
    Incomplete { target: String, detail: String },
    /// Reading or writing a stream failed on our side of the pipe.
    #[error("stream {what}: {source}")]
    Stream {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot parse zfs output line {line:?}: {reason}")]
    Parse { line: String, reason: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// A backend's own failure, not about a ZFS object (the simulator's
    /// state file, for one); `source` is the backend's error type.
    #[error("{source}")]
    Backend {
        backend: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
