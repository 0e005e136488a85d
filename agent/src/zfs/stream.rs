//! Moving a send stream into the caller's writer, shared by the backends so
//! every one reports a failed write the same way.

use std::io::{Read, Write};

use super::ZfsError;

/// Writes `bytes` to `out`, counting them into `sent`.
pub(crate) fn write_stream(
    out: &mut dyn Write,
    bytes: &[u8],
    sent: &mut u64,
) -> Result<(), ZfsError> {
    out.write_all(bytes).map_err(|source| ZfsError::Stream {
        what: format!("after {sent} bytes: writing the output"),
        source,
    })?;
    *sent += bytes.len() as u64;
    Ok(())
}

/// Copies `from` (named `what` in errors) into `out` until EOF; the bytes copied.
pub(crate) fn copy_stream(
    from: &mut dyn Read,
    what: &str,
    out: &mut dyn Write,
) -> Result<u64, ZfsError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(sent),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ZfsError::Stream {
                    what: format!("reading from {what}"),
                    source,
                })
            }
        };
        write_stream(out, &buf[..n], &mut sent)?;
    }
}

pub(crate) fn flush_output(out: &mut dyn Write) -> Result<(), ZfsError> {
    out.flush().map_err(|source| ZfsError::Stream {
        what: "flushing the output".into(),
        source,
    })
}
