//! The data plane end to end on loopback: mutual TLS, job tokens, hashes,
//! compression and throttling.

mod support {
    pub mod pki;
}

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use support::pki::Pki;
use tokio::sync::watch;
use zdr_agent::transfer::{
    Compression, FleetTls, Job, JobToken, Listener, Progress, RateHandle, Receiver, Refusal,
    SendOptions, Sender, Summary, TransferError,
};

const LOOPBACK: &str = "127.0.0.1:0";

fn noise(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    data
}

fn job() -> Job {
    Job::new("pool/a@zdr-1..pool/a@zdr-2", JobToken::generate()).unwrap()
}

struct Outcome {
    sent: Result<Summary, TransferError>,
    received: Result<Summary, TransferError>,
    sink: Vec<u8>,
    elapsed: Duration,
}

/// One transfer from a sender on `source_tls` to a receiver on `target_tls`
/// named "node-b"; the receiver expects `expected`, the sender presents `presented`.
async fn transfer(
    source_tls: &FleetTls,
    target_tls: &FleetTls,
    expected: &Job,
    presented: &Job,
    data: &[u8],
    opts: &SendOptions,
) -> Outcome {
    let receiver = Receiver::bind(target_tls, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let addr = receiver.local_addr().unwrap();
    let sender = Sender::new(source_tls);
    let mut sink = Vec::new();
    let mut source = data;
    let started = Instant::now();
    let (sent, received) = tokio::join!(
        sender.send(addr, "node-b", presented, &mut source, opts, None),
        receiver.accept(expected, &mut sink, None),
    );
    Outcome {
        sent,
        received,
        sink,
        elapsed: started.elapsed(),
    }
}

async fn round_trip(data: &[u8], opts: &SendOptions) -> Outcome {
    let pki = Pki::new("fleet");
    let job = job();
    transfer(
        &pki.tls("node-a"),
        &pki.tls("node-b"),
        &job,
        &job,
        data,
        opts,
    )
    .await
}

fn rate(bytes_per_sec: u64) -> Option<NonZeroU64> {
    NonZeroU64::new(bytes_per_sec)
}

#[tokio::test]
async fn random_bytes_round_trip_with_matching_hashes() {
    let data = noise(5 * 1024 * 1024 + 123);
    let out = round_trip(&data, &SendOptions::default()).await;
    let (sent, received) = (out.sent.unwrap(), out.received.unwrap());
    assert_eq!(out.sink, data);
    assert_eq!(sent, received);
    assert_eq!(sent.hash, blake3::hash(&data));
    assert_eq!(sent.bytes, data.len() as u64);
    assert!(sent.wire_bytes > sent.bytes);
}

#[tokio::test]
async fn zstd_round_trip_with_matching_hashes() {
    // Half compressible, half not: both frame kinds on the wire.
    let mut data = b"zfs send stream ".repeat(256 * 1024);
    data.extend(noise(2 * 1024 * 1024));
    let opts = SendOptions {
        compression: Compression::Zstd { level: 1 },
        ..SendOptions::default()
    };
    let out = round_trip(&data, &opts).await;
    let (sent, received) = (out.sent.unwrap(), out.received.unwrap());
    assert_eq!(out.sink, data);
    assert_eq!(sent, received);
    assert_eq!(sent.hash, blake3::hash(&data));
    assert!(
        sent.wire_bytes < 3 * 1024 * 1024,
        "4 MiB of text should shrink: {sent:?}"
    );
}

#[tokio::test]
async fn both_ends_report_progress_and_the_size_hint() {
    let pki = Pki::new("fleet");
    let (source_tls, target_tls) = (pki.tls("node-a"), pki.tls("node-b"));
    let job = job();
    let data = noise(1024 * 1024 + 1);
    let opts = SendOptions {
        size_hint: Some(data.len() as u64),
        ..SendOptions::default()
    };
    let receiver = Receiver::bind(&target_tls, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let addr = receiver.local_addr().unwrap();
    let (sent_tx, sent_rx) = watch::channel(Progress::default());
    let (received_tx, received_rx) = watch::channel(Progress::default());
    let mut sink = Vec::new();
    let sender = Sender::new(&source_tls);
    let mut source = &data[..];
    let (sent, received) = tokio::join!(
        sender.send(addr, "node-b", &job, &mut source, &opts, Some(&sent_tx)),
        receiver.accept(&job, &mut sink, Some(&received_tx)),
    );
    sent.unwrap();
    received.unwrap();
    let expected = Progress {
        bytes: data.len() as u64,
        size_hint: Some(data.len() as u64),
    };
    assert_eq!(*sent_rx.borrow(), expected);
    assert_eq!(*received_rx.borrow(), expected);
}

#[tokio::test]
async fn a_wrong_job_token_is_refused_and_the_right_sender_still_gets_through() {
    let pki = Pki::new("fleet");
    let (source_tls, target_tls) = (pki.tls("node-a"), pki.tls("node-b"));
    let expected = job();
    let impostor = Job::new(expected.id(), JobToken::generate()).unwrap();
    let receiver = Receiver::bind(&target_tls, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let addr = receiver.local_addr().unwrap();
    let sender = Sender::new(&source_tls);
    let opts = SendOptions::default();
    let data = noise(300 * 1024);
    let mut sink = Vec::new();

    let mut source = &data[..];
    let (sent, received) = tokio::join!(
        sender.send(addr, "node-b", &impostor, &mut source, &opts, None),
        receiver.accept(&expected, &mut sink, None),
    );
    assert!(
        matches!(
            sent,
            Err(TransferError::RefusedByReceiver(Refusal::WrongToken))
        ),
        "{sent:?}"
    );
    let received = received.unwrap_err();
    assert!(
        matches!(received, TransferError::Refused(Refusal::WrongToken)),
        "{received:?}"
    );
    assert_eq!(received.to_string(), "refused the sender: wrong job token");
    assert!(sink.is_empty());

    let mut source = &data[..];
    let (sent, received) = tokio::join!(
        sender.send(addr, "node-b", &expected, &mut source, &opts, None),
        receiver.accept(&expected, &mut sink, None),
    );
    assert_eq!(sent.unwrap(), received.unwrap());
    assert_eq!(sink, data);
}

#[tokio::test]
async fn the_right_token_for_another_job_is_refused() {
    let pki = Pki::new("fleet");
    let expected = job();
    let other = Job::new("another-job", expected.token().clone()).unwrap();
    let out = transfer(
        &pki.tls("node-a"),
        &pki.tls("node-b"),
        &expected,
        &other,
        b"data",
        &SendOptions::default(),
    )
    .await;
    assert!(matches!(
        out.sent,
        Err(TransferError::RefusedByReceiver(Refusal::WrongJob))
    ));
    assert!(matches!(
        out.received,
        Err(TransferError::Refused(Refusal::WrongJob))
    ));
    assert!(out.sink.is_empty());
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let fleet = Pki::new("fleet");
    let rogue = Pki::new("rogue");
    // The rogue node trusts the fleet CA, so only the receiver's check stops it.
    let rogue_node = rogue.node_pem("node-a");
    let rogue_tls = FleetTls::from_pem(
        fleet.node_pem("unused").ca.as_bytes(),
        rogue_node.cert.as_bytes(),
        rogue_node.key.as_bytes(),
    )
    .unwrap();
    let job = job();
    let out = transfer(
        &rogue_tls,
        &fleet.tls("node-b"),
        &job,
        &job,
        b"data",
        &SendOptions::default(),
    )
    .await;
    let received = out.received.unwrap_err();
    assert!(
        matches!(received, TransferError::Handshake(_)),
        "{received:?}"
    );
    assert!(received.to_string().contains("UnknownIssuer"), "{received}");
    let sent = out.sent.unwrap_err();
    assert!(matches!(sent, TransferError::Handshake(_)), "{sent:?}");
    assert!(out.sink.is_empty());
}

#[tokio::test]
async fn a_receiver_with_another_name_is_refused_by_the_sender() {
    let pki = Pki::new("fleet");
    let job = job();
    // The receiver's certificate names node-c; the sender dials node-b.
    let out = transfer(
        &pki.tls("node-a"),
        &pki.tls("node-c"),
        &job,
        &job,
        b"data",
        &SendOptions::default(),
    )
    .await;
    let sent = out.sent.unwrap_err();
    assert!(matches!(sent, TransferError::Handshake(_)), "{sent:?}");
    assert!(sent.to_string().contains("not valid for name"), "{sent}");
    assert!(out.received.is_err());
}

#[tokio::test]
async fn tls_material_loads_from_pem_files() {
    let pki = Pki::new("fleet");
    let pem = pki.node_pem("node-a");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let (ca, cert, key) = (
        path("ca.pem", &pem.ca),
        path("node.pem", &pem.cert),
        path("node.key", &pem.key),
    );
    let tls = FleetTls::from_pem_files(&ca, &cert, &key).unwrap();
    let job = job();
    let out = transfer(
        &tls,
        &pki.tls("node-b"),
        &job,
        &job,
        b"from files",
        &SendOptions::default(),
    )
    .await;
    out.sent.unwrap();
    assert_eq!(out.sink, b"from files");

    let missing = FleetTls::from_pem_files(&dir.path().join("nope.pem"), &cert, &key);
    assert!(matches!(missing, Err(TransferError::ReadPem { .. })));
    let no_cert = FleetTls::from_pem(pem.key.as_bytes(), pem.cert.as_bytes(), pem.key.as_bytes());
    assert!(matches!(no_cert, Err(TransferError::NoCertificate("CA"))));
}

#[tokio::test]
async fn four_megabytes_at_two_megabytes_a_second_take_about_two_seconds() {
    let data = noise(4_000_000);
    let opts = SendOptions {
        rate: RateHandle::new(rate(2_000_000)),
        ..SendOptions::default()
    };
    let out = round_trip(&data, &opts).await;
    out.sent.unwrap();
    assert_eq!(out.sink, data);
    let secs = out.elapsed.as_secs_f64();
    // The upper bound only absorbs a loaded machine; unthrottled takes ~0.05 s.
    assert!((1.6..8.0).contains(&secs), "took {secs:.2} s");
}

#[tokio::test]
async fn a_rate_change_reaches_a_running_transfer() {
    // 3 MB at 200 kB/s would take 15 s. After 0.5 s the rate becomes 4 MB/s:
    // about 1.2 s in all, and never as fast as unlimited (~0.5 s).
    let data = noise(3_000_000);
    let handle = RateHandle::new(rate(200_000));
    let opts = SendOptions {
        rate: handle.clone(),
        ..SendOptions::default()
    };
    let speed_up = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        handle.set(rate(4_000_000));
    };
    let (out, ()) = tokio::join!(round_trip(&data, &opts), speed_up);
    out.sent.unwrap();
    assert_eq!(out.sink, data);
    assert_eq!(handle.get(), rate(4_000_000));
    let secs = out.elapsed.as_secs_f64();
    assert!(
        (1.0..8.0).contains(&secs),
        "took {secs:.2} s; 15 s if the change were ignored"
    );
}

#[tokio::test]
async fn a_throttled_transfer_can_be_set_unlimited() {
    let data = noise(2_000_000);
    let handle = RateHandle::new(rate(100_000));
    let opts = SendOptions {
        rate: handle.clone(),
        ..SendOptions::default()
    };
    let lift = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.set(None);
    };
    let (out, ()) = tokio::join!(round_trip(&data, &opts), lift);
    out.sent.unwrap();
    assert_eq!(out.sink, data);
    let secs = out.elapsed.as_secs_f64();
    assert!(
        secs < 8.0,
        "took {secs:.2} s; 20 s if the change were ignored"
    );
}

#[tokio::test]
async fn nothing_listens_is_a_connect_error() {
    let pki = Pki::new("fleet");
    let addr: SocketAddr = {
        let listener = std::net::TcpListener::bind(LOOPBACK).unwrap();
        listener.local_addr().unwrap()
    };
    let sent = Sender::new(&pki.tls("node-a"))
        .send(
            addr,
            "node-b",
            &job(),
            &mut &b"x"[..],
            &SendOptions::default(),
            None,
        )
        .await;
    assert!(
        matches!(sent, Err(TransferError::Connect { .. })),
        "{sent:?}"
    );
}

/// The agent's one listener serves each job to its own source node only; a
/// sender from the fleet CA that names another node is turned away, and the
/// job still waits for the right one.
#[tokio::test]
async fn the_listener_serves_a_job_only_to_its_source_node() {
    let pki = Pki::new("fleet");
    let listener = Listener::bind(&pki.tls("node-b"), LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener.clone().serve());
    let job = job();
    let pending = listener.expect(job.clone(), "node-a");
    let data = noise(700 * 1024);
    let opts = SendOptions::default();

    let impostor = Sender::new(&pki.tls("node-c"));
    let mut source = &data[..];
    let refused = impostor
        .send(addr, "node-b", &job, &mut source, &opts, None)
        .await;
    assert!(
        matches!(
            refused,
            Err(TransferError::RefusedByReceiver(Refusal::WrongPeer))
        ),
        "{refused:?}"
    );

    let sender = Sender::new(&pki.tls("node-a"));
    let mut sink = Vec::new();
    let mut source = &data[..];
    let (sent, received) = tokio::join!(
        sender.send(addr, "node-b", &job, &mut source, &opts, None),
        pending.receive(Duration::from_secs(30), &mut sink, None),
    );
    assert_eq!(sent.unwrap(), received.unwrap());
    assert_eq!(sink, data);

    // Served once: the job is forgotten, and a forgotten job is refused.
    let mut source = &data[..];
    let again = sender
        .send(addr, "node-b", &job, &mut source, &opts, None)
        .await;
    assert!(
        matches!(
            again,
            Err(TransferError::RefusedByReceiver(Refusal::WrongJob))
        ),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_job_nobody_sends_gives_up_in_time() {
    let pki = Pki::new("fleet");
    let listener = Listener::bind(&pki.tls("node-b"), LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let pending = listener.expect(job(), "node-a");
    let mut sink = Vec::new();
    let r = pending
        .receive(Duration::from_millis(300), &mut sink, None)
        .await;
    assert!(matches!(r, Err(TransferError::NoSender(_))), "{r:?}");
}
