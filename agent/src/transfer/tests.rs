//! The protocol over in-memory transports, where a test can tamper with bytes
//! above TLS (which would otherwise catch them first).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use super::protocol::{admit, offer, stream_in, stream_out};
use super::*;

/// Flips one byte of what is written through it.
struct FlipOne {
    inner: DuplexStream,
    at: u64,
    written: u64,
}

impl AsyncRead for FlipOne {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FlipOne {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut copy = buf.to_vec();
        if let Some(i) = self.at.checked_sub(self.written) {
            if let Some(byte) = copy.get_mut(i as usize) {
                *byte ^= 0x01;
            }
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, &copy);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn job() -> Job {
    Job::new("job-1", JobToken::generate()).unwrap()
}

fn noise(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    data
}

/// Runs both ends over `client`/`server`; returns (sender, receiver) results
/// and what the sink got.
async fn run<C>(
    mut client: C,
    mut server: DuplexStream,
    job: &Job,
    data: &[u8],
    opts: SendOptions,
) -> (
    Result<Summary, TransferError>,
    Result<Summary, TransferError>,
    Vec<u8>,
)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut source = data;
    let mut sink = Vec::new();
    let send = async {
        offer(&mut client, job, &opts).await?;
        stream_out(&mut client, &mut source, &opts, None).await
    };
    let receive = async {
        let (hello, _) = admit(&mut server, |id| {
            (id == job.id().as_bytes())
                .then(|| job.clone())
                .ok_or(Refusal::WrongJob)
        })
        .await?;
        stream_in(&mut server, &hello, &mut sink, None).await
    };
    let (sent, received) = tokio::join!(send, receive);
    (sent, received, sink)
}

#[tokio::test]
async fn a_flipped_byte_above_tls_is_a_hash_mismatch_on_both_ends() {
    let (client, server) = tokio::io::duplex(1 << 20);
    let job = job();
    // Past the hello and the first frame header: inside the first payload.
    let hello = 47 + job.id().len() as u64;
    let client = FlipOne {
        inner: client,
        at: hello + 9 + 1000,
        written: 0,
    };
    let data = noise(3 * 256 * 1024 + 17);
    let (sent, received, sink) = run(client, server, &job, &data, SendOptions::default()).await;

    // Everything but the last frame reached the sink, corrupt; the last frame
    // was held back, so a `zfs receive` behind the sink never sees the end.
    assert_eq!(sink.len(), 3 * 256 * 1024);
    assert_ne!(sink[..], data[..sink.len()]);
    for result in [sent, received] {
        match result {
            Err(TransferError::HashMismatch {
                sent_bytes,
                sent,
                received_bytes,
                received,
            }) => {
                assert_eq!(sent_bytes, received_bytes);
                assert_eq!(sent, blake3::hash(&data));
                // The held-back tail arrived intact; the receiver hashed it too.
                let arrived = [&sink[..], &data[sink.len()..]].concat();
                assert_eq!(received, blake3::hash(&arrived));
            }
            other => panic!("expected a hash mismatch, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn compressible_frames_shrink_and_incompressible_ones_go_raw() {
    let mut data = vec![7u8; 600 * 1024];
    data.extend(noise(300 * 1024));
    let opts = SendOptions {
        compression: Compression::Zstd { level: 3 },
        ..SendOptions::default()
    };
    let (client, server) = tokio::io::duplex(1 << 20);
    let (sent, received, sink) = run(client, server, &job(), &data, opts).await;
    let (sent, received) = (sent.unwrap(), received.unwrap());
    assert_eq!(sink, data);
    assert_eq!(sent, received);
    assert_eq!(sent.hash, blake3::hash(&data));
    // Two frames of sevens shrink to almost nothing; the noise goes raw.
    assert!(sent.wire_bytes < 400 * 1024, "{sent:?}");
    assert!(sent.wire_bytes > 300 * 1024, "{sent:?}");
}

#[tokio::test]
async fn an_empty_stream_is_a_valid_transfer() {
    let (client, server) = tokio::io::duplex(1 << 16);
    let (sent, received, sink) = run(client, server, &job(), &[], SendOptions::default()).await;
    assert!(sink.is_empty());
    assert_eq!(sent.unwrap().hash, blake3::hash(&[]));
    assert_eq!(received.unwrap().bytes, 0);
}

#[tokio::test]
async fn a_sender_that_stops_before_the_end_frame_is_an_error() {
    let (mut client, mut server) = tokio::io::duplex(1 << 20);
    let job = job();
    let opts = SendOptions::default();
    let receive = async {
        let (hello, _) = admit(&mut server, |id| {
            (id == job.id().as_bytes())
                .then(|| job.clone())
                .ok_or(Refusal::WrongJob)
        })
        .await?;
        stream_in(&mut server, &hello, &mut Vec::new(), None).await
    };
    let send = async {
        offer(&mut client, &job, &opts).await.unwrap();
        // One raw frame of 4 bytes, then the sender vanishes.
        tokio::io::AsyncWriteExt::write_all(&mut client, &[1, 0, 0, 0, 4, 0, 0, 0, 4, 1, 2, 3, 4])
            .await
            .unwrap();
        drop(client);
    };
    let (received, ()) = tokio::join!(receive, send);
    assert!(
        matches!(received, Err(TransferError::Protocol(m)) if m.contains("before its end frame")),
        "{received:?}"
    );
}

#[tokio::test]
async fn a_zstd_frame_without_the_compression_flag_is_refused() {
    let (mut client, mut server) = tokio::io::duplex(1 << 20);
    let job = job();
    let opts = SendOptions::default();
    let receive = async {
        let (hello, _) = admit(&mut server, |id| {
            (id == job.id().as_bytes())
                .then(|| job.clone())
                .ok_or(Refusal::WrongJob)
        })
        .await?;
        stream_in(&mut server, &hello, &mut Vec::new(), None).await
    };
    let send = async {
        offer(&mut client, &job, &opts).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, &[2, 0, 0, 0, 1, 0, 0, 0, 4, 0])
            .await
            .unwrap();
        client
    };
    let (received, _client) = tokio::join!(receive, send);
    assert!(
        matches!(received, Err(TransferError::Protocol(m)) if m.contains("without compression")),
        "{received:?}"
    );
}

#[test]
fn job_tokens_print_as_hex_and_never_in_debug() {
    let token = JobToken::from_bytes([0xab; 32]);
    assert_eq!(token.to_string(), "ab".repeat(32));
    assert_eq!(token.to_string().parse::<JobToken>().unwrap(), token);
    assert_eq!(format!("{token:?}"), "JobToken(..)");
    assert!("ab".parse::<JobToken>().is_err());
    assert!("zz".repeat(32).parse::<JobToken>().is_err());
    assert_ne!(JobToken::generate(), JobToken::generate());
}

#[test]
fn job_ids_are_bounded() {
    assert!(Job::new("", JobToken::generate()).is_err());
    assert!(Job::new("x".repeat(256), JobToken::generate()).is_err());
    assert!(Job::new("x".repeat(255), JobToken::generate()).is_ok());
}

#[test]
fn a_record_failing_tls_integrity_is_told_apart_from_a_network_error() {
    let altered =
        |e: rustls::Error| TransferError::network(io::Error::new(io::ErrorKind::InvalidData, e));
    let here = altered(rustls::Error::DecryptError);
    assert!(matches!(here, TransferError::Altered(_)), "{here}");
    assert!(here.to_string().contains("altered in transit"), "{here}");
    let there = altered(rustls::Error::AlertReceived(
        rustls::AlertDescription::BadRecordMac,
    ));
    assert!(matches!(there, TransferError::Altered(_)), "{there}");
    let other = altered(rustls::Error::AlertReceived(
        rustls::AlertDescription::HandshakeFailure,
    ));
    assert!(matches!(other, TransferError::Network(_)), "{other}");
    let reset = TransferError::network(io::ErrorKind::ConnectionReset.into());
    assert!(matches!(reset, TransferError::Network(_)), "{reset}");
}
