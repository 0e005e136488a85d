//! Moving streams between the caller and ZFS, and reading ZFS's size
//! estimates, shared by the backends so every one reports a failed write,
//! a refused receive and an implausible estimate the same way.

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

/// Feeds `input` to a receiver through `into` until the input ends or the
/// receiver stops reading (it refused the stream: its own error says why,
/// so a failed write just ends the pump). Returns the error reading the
/// input, if that is what ended it; the receiver then sees a truncated
/// stream and keeps the partial state.
pub(crate) fn pump(input: &mut dyn Read, into: &mut dyn Write) -> Option<std::io::Error> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(e),
        };
        if into.write_all(&buf[..n]).is_err() {
            return None;
        }
    }
}

/// Values past i64::MAX are the wrapped negatives of OpenZFS #12265.
const MAX_PLAUSIBLE_ESTIMATE: u64 = i64::MAX as u64;

/// The one reading of a ZFS size estimate, whichever backend asked: no
/// figure for the wrapped negatives of OpenZFS #12265, nor for 0 from a
/// bookmark (the same issue).
pub(crate) fn plausible_estimate(bytes: u64, from_bookmark: bool) -> Option<u64> {
    (bytes <= MAX_PLAUSIBLE_ESTIMATE && !(from_bookmark && bytes == 0)).then_some(bytes)
}

/// Reads until `buf` is full or the input ends: the bytes read, and the
/// read error that stopped it early, if any.
pub(crate) fn fill(input: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<std::io::Error>) {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}
