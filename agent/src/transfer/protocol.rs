//! The transfer protocol over any authenticated byte stream (see the module
//! header in `mod.rs` for the layout).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::{
    Compression, Job, Progress, Refusal, SendOptions, Summary, TransferError, HANDSHAKE_TIMEOUT,
};

const MAGIC: [u8; 4] = *b"ZDRT";
const VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const FLAG_SIZE_HINT: u8 = 2;
/// Magic, version, flags, token, size hint, id length.
const HELLO_FIXED: usize = 4 + 1 + 1 + 32 + 8 + 1;

const ACCEPTED: u8 = 0;
const FRAME_RAW: u8 = 1;
const FRAME_ZSTD: u8 = 2;
const FRAME_END: u8 = 3;
/// Kind, wire length, raw length.
const FRAME_HEADER: usize = 1 + 4 + 4;
/// Stream bytes per data frame.
const MAX_CHUNK: usize = 256 * 1024;
/// The largest data frame on the wire: zstd frames are sent only when smaller.
pub(super) const MAX_FRAME: usize = FRAME_HEADER + MAX_CHUNK;
/// Bytes count and BLAKE3, after the end frame's kind and in the result.
const RESULT_LEN: usize = 8 + 32;

/// What the sender announced.
pub(super) struct Hello {
    compressed: bool,
    pub(super) size_hint: Option<u64>,
}

/// Sender: presents the job and waits for the receiver's verdict.
pub(super) async fn offer<S>(
    stream: &mut S,
    job: &Job,
    opts: &SendOptions,
) -> Result<(), TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut flags = 0;
    if matches!(opts.compression, Compression::Zstd { .. }) {
        flags |= FLAG_ZSTD;
    }
    if opts.size_hint.is_some() {
        flags |= FLAG_SIZE_HINT;
    }
    let mut hello = Vec::with_capacity(HELLO_FIXED + job.id.len());
    hello.extend_from_slice(&MAGIC);
    hello.push(VERSION);
    hello.push(flags);
    hello.extend_from_slice(job.token.as_bytes());
    hello.extend_from_slice(&opts.size_hint.unwrap_or(0).to_be_bytes());
    hello.push(u8::try_from(job.id.len()).expect("Job::new bounds the id"));
    hello.extend_from_slice(job.id.as_bytes());

    // In TLS 1.3 the receiver checks the client certificate after the client
    // considers the handshake done: a rejected certificate surfaces here.
    stream
        .write_all(&hello)
        .await
        .map_err(TransferError::Handshake)?;
    stream.flush().await.map_err(TransferError::Handshake)?;
    let verdict = stream.read_u8().await.map_err(TransferError::Handshake)?;
    match verdict {
        ACCEPTED => Ok(()),
        code => Err(TransferError::RefusedByReceiver(refusal_from(code)?)),
    }
}

/// Receiver: reads the hello and accepts it only for the job `expected`
/// gives for its id (or refuses as it says), and only with that job's token.
pub(super) async fn admit<S>(
    stream: &mut S,
    expected: impl FnOnce(&[u8]) -> Result<Job, Refusal>,
) -> Result<(Hello, Job), TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut fixed = [0u8; HELLO_FIXED];
    stream
        .read_exact(&mut fixed)
        .await
        .map_err(TransferError::Handshake)?;
    let check = || {
        if fixed[..4] != MAGIC {
            return Err(Refusal::BadHello);
        }
        if fixed[4] != VERSION {
            return Err(Refusal::UnsupportedVersion);
        }
        if fixed[5] & !(FLAG_ZSTD | FLAG_SIZE_HINT) != 0 {
            return Err(Refusal::BadHello);
        }
        Ok(())
    };
    if let Err(refusal) = check() {
        return refuse(stream, refusal).await;
    }
    let flags = fixed[5];
    let token: [u8; 32] = fixed[6..38].try_into().expect("32 bytes");
    let size_hint = u64::from_be_bytes(fixed[38..46].try_into().expect("8 bytes"));
    let mut id = vec![0u8; usize::from(fixed[46])];
    stream
        .read_exact(&mut id)
        .await
        .map_err(TransferError::Handshake)?;

    // Job ids are not secret; the token is compared in constant time.
    let job = match expected(&id) {
        Ok(job) => job,
        Err(refusal) => return refuse(stream, refusal).await,
    };
    if !job.token.matches(&token) {
        return refuse(stream, Refusal::WrongToken).await;
    }
    stream
        .write_all(&[ACCEPTED])
        .await
        .map_err(TransferError::network)?;
    stream.flush().await.map_err(TransferError::network)?;
    let hello = Hello {
        compressed: flags & FLAG_ZSTD != 0,
        size_hint: (flags & FLAG_SIZE_HINT != 0).then_some(size_hint),
    };
    Ok((hello, job))
}

async fn refuse<S, T>(stream: &mut S, refusal: Refusal) -> Result<T, TransferError>
where
    S: AsyncWrite + Unpin,
{
    let code = match refusal {
        Refusal::WrongToken => 1,
        Refusal::WrongJob => 2,
        Refusal::BadHello => 3,
        Refusal::UnsupportedVersion => 4,
        Refusal::WrongPeer => 5,
    };
    // Best effort: the sender may already be gone, and the refusal is the error.
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream.write_all(&[code]).await?;
        stream.shutdown().await
    })
    .await;
    Err(TransferError::Refused(refusal))
}

fn refusal_from(code: u8) -> Result<Refusal, TransferError> {
    Ok(match code {
        1 => Refusal::WrongToken,
        2 => Refusal::WrongJob,
        3 => Refusal::BadHello,
        4 => Refusal::UnsupportedVersion,
        5 => Refusal::WrongPeer,
        _ => return Err(TransferError::Protocol("unknown verdict from the receiver")),
    })
}

/// Sender: streams `source` in frames, then checks the receiver's result.
pub(super) async fn stream_out<S, R>(
    stream: &mut S,
    source: &mut R,
    opts: &SendOptions,
    progress: Option<&watch::Sender<Progress>>,
) -> Result<Summary, TransferError>
where
    S: AsyncWrite + AsyncRead + Unpin,
    R: AsyncRead + Unpin,
{
    let mut compressor = match opts.compression {
        Compression::None => None,
        Compression::Zstd { level } => Some((
            zstd::bulk::Compressor::new(level).map_err(TransferError::Zstd)?,
            vec![0u8; FRAME_HEADER + zstd::zstd_safe::compress_bound(MAX_CHUNK)],
        )),
    };
    let mut meter = opts.rate.meter();
    let mut hasher = blake3::Hasher::new();
    let mut raw = vec![0u8; MAX_FRAME];
    let (mut bytes, mut wire_bytes) = (0u64, 0u64);
    loop {
        let n = fill(source, &mut raw[FRAME_HEADER..])
            .await
            .map_err(TransferError::Source)?;
        if n == 0 {
            break;
        }
        let data = &raw[FRAME_HEADER..FRAME_HEADER + n];
        hasher.update(data);
        bytes += n as u64;

        let mut frame = None;
        if let Some((zstd, packed)) = &mut compressor {
            let len = zstd
                .compress_to_buffer(data, &mut packed[FRAME_HEADER..])
                .map_err(TransferError::Zstd)?;
            if len < n {
                write_frame_header(packed, FRAME_ZSTD, len, n);
                frame = Some(&packed[..FRAME_HEADER + len]);
            }
        }
        let frame = match frame {
            Some(frame) => frame,
            None => {
                write_frame_header(&mut raw, FRAME_RAW, n, n);
                &raw[..FRAME_HEADER + n]
            }
        };
        meter.take(frame.len()).await;
        stream
            .write_all(frame)
            .await
            .map_err(TransferError::network)?;
        wire_bytes += frame.len() as u64;
        if let Some(progress) = progress {
            // The caller may learn the size later and set it meanwhile.
            progress.send_modify(|p| {
                p.bytes = bytes;
                p.size_hint = opts.size_hint.or(p.size_hint);
            });
        }
        if n < MAX_CHUNK {
            break; // `fill` stops short only at the end of the source.
        }
    }

    let hash = hasher.finalize();
    let mut end = Vec::with_capacity(1 + RESULT_LEN);
    end.push(FRAME_END);
    end.extend_from_slice(&bytes.to_be_bytes());
    end.extend_from_slice(hash.as_bytes());
    stream
        .write_all(&end)
        .await
        .map_err(TransferError::network)?;
    stream.flush().await.map_err(TransferError::network)?;

    let mut result = [0u8; RESULT_LEN];
    stream
        .read_exact(&mut result)
        .await
        .map_err(TransferError::network)?;
    let (received_bytes, received) = parse_result(&result);
    if received_bytes != bytes || received != hash {
        return Err(TransferError::HashMismatch {
            sent_bytes: bytes,
            sent: hash,
            received_bytes,
            received,
        });
    }
    // close_notify; the receiver may already have gone, which is fine now.
    let _ = stream.shutdown().await;
    Ok(Summary {
        bytes,
        wire_bytes: wire_bytes + end.len() as u64,
        hash,
    })
}

/// Receiver: writes the frames' stream to `sink`, then compares hashes.
/// The sink is flushed, not shut down: on error the caller aborts the receive.
pub(super) async fn stream_in<S, W>(
    stream: &mut S,
    hello: &Hello,
    sink: &mut W,
    progress: Option<&watch::Sender<Progress>>,
) -> Result<Summary, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decompressor = match hello.compressed {
        true => Some(zstd::bulk::Decompressor::new().map_err(TransferError::Zstd)?),
        false => None,
    };
    let mut hasher = blake3::Hasher::new();
    let mut raw = vec![0u8; MAX_CHUNK];
    // The latest frame's data reaches the sink only after the next frame, or
    // after the end frame's hash matched: a corrupt stream never ends well
    // on the receiving side, so `zfs receive` cannot complete it.
    let mut held = vec![0u8; MAX_CHUNK];
    let mut held_len = 0;
    let mut packed = Vec::new();
    let (mut bytes, mut wire_bytes) = (0u64, 0u64);
    loop {
        let kind = stream.read_u8().await.map_err(network_or_truncated)?;
        if kind == FRAME_END {
            break;
        }
        let mut header = [0u8; FRAME_HEADER - 1];
        stream
            .read_exact(&mut header)
            .await
            .map_err(network_or_truncated)?;
        let wire_len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let raw_len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        if raw_len == 0 || raw_len > MAX_CHUNK {
            return Err(TransferError::Protocol("data frame length out of bounds"));
        }
        let data = match (kind, &mut decompressor) {
            (FRAME_RAW, _) if wire_len == raw_len => {
                stream
                    .read_exact(&mut raw[..raw_len])
                    .await
                    .map_err(network_or_truncated)?;
                &raw[..raw_len]
            }
            (FRAME_ZSTD, Some(zstd)) if wire_len < raw_len => {
                packed.resize(wire_len, 0);
                stream
                    .read_exact(&mut packed)
                    .await
                    .map_err(network_or_truncated)?;
                let len = zstd
                    .decompress_to_buffer(&packed, &mut raw[..raw_len])
                    .map_err(TransferError::Zstd)?;
                if len != raw_len {
                    return Err(TransferError::Protocol("zstd frame shorter than announced"));
                }
                &raw[..raw_len]
            }
            (FRAME_ZSTD, None) => {
                return Err(TransferError::Protocol("zstd frame without compression"))
            }
            _ => return Err(TransferError::Protocol("malformed data frame")),
        };
        hasher.update(data);
        sink.write_all(&held[..held_len])
            .await
            .map_err(TransferError::Sink)?;
        // The frame just read becomes the held one; no copy.
        std::mem::swap(&mut raw, &mut held);
        held_len = raw_len;
        bytes += raw_len as u64;
        wire_bytes += (FRAME_HEADER + wire_len) as u64;
        if let Some(progress) = progress {
            progress.send_replace(Progress {
                bytes,
                size_hint: hello.size_hint,
            });
        }
    }

    let mut end = [0u8; RESULT_LEN];
    stream
        .read_exact(&mut end)
        .await
        .map_err(network_or_truncated)?;
    let (sent_bytes, sent) = parse_result(&end);
    let hash = hasher.finalize();
    if sent_bytes == bytes && sent == hash {
        sink.write_all(&held[..held_len])
            .await
            .map_err(TransferError::Sink)?;
    }
    sink.flush().await.map_err(TransferError::Sink)?;
    // The sender judges too, so it learns of a mismatch from the same numbers.
    let mut result = [0u8; RESULT_LEN];
    result[..8].copy_from_slice(&bytes.to_be_bytes());
    result[8..].copy_from_slice(hash.as_bytes());
    let sent_result = async {
        stream.write_all(&result).await?;
        stream.flush().await
    }
    .await;
    if sent_bytes != bytes || sent != hash {
        return Err(TransferError::HashMismatch {
            sent_bytes,
            sent,
            received_bytes: bytes,
            received: hash,
        });
    }
    sent_result.map_err(TransferError::network)?;
    let _ = stream.shutdown().await;
    Ok(Summary {
        bytes,
        wire_bytes: wire_bytes + 1 + RESULT_LEN as u64,
        hash,
    })
}

fn write_frame_header(frame: &mut [u8], kind: u8, wire_len: usize, raw_len: usize) {
    frame[0] = kind;
    frame[1..5].copy_from_slice(&(wire_len as u32).to_be_bytes());
    frame[5..9].copy_from_slice(&(raw_len as u32).to_be_bytes());
}

fn parse_result(result: &[u8; RESULT_LEN]) -> (u64, blake3::Hash) {
    let bytes = u64::from_be_bytes(result[..8].try_into().expect("8 bytes"));
    let hash: [u8; 32] = result[8..].try_into().expect("32 bytes");
    (bytes, blake3::Hash::from_bytes(hash))
}

fn network_or_truncated(e: std::io::Error) -> TransferError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        TransferError::Protocol("the sender closed the stream before its end frame")
    } else {
        TransferError::network(e)
    }
}

/// Reads until `buf` is full or the source ends.
async fn fill<R: AsyncRead + Unpin>(source: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
