//! Alert delivery, the shell: a durable queue in JetStream and one sender
//! task per receiver.
//!
//! ```text
//!  leader's 5 s tick ── enqueue ──▶ stream ZDR_ALERTS (work queue, file, 7 d)
//!                                     zdr.v1.alerts.<receiver>
//!                                           │ durable pull consumer alerts-<receiver>,
//!                                           │ one message in flight (order kept)
//!  every coordinator ── send ◀──────────────┘
//!       POST with the receiver's timeout; 2xx: ack;
//!       else try again after `webhook::backoff`, telling JetStream the
//!       message is in progress; past `retry_for`: terminate, count a drop.
//! ```
//!
//! The queue outlives the coordinator: a receiver that is down, or a
//! coordinator killed mid-retry, loses nothing; an unacked message is
//! delivered again once its ack wait runs out, to whichever coordinator
//! fetches it. No sender shares a loop with the leader's work, so a slow
//! receiver delays nothing but its own alerts.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zdr_common::subject;
use zdr_schemas::receivers::Receiver;

use super::group::Batch;
use super::state::Notification;
use super::webhook;

pub const STREAM: &str = "ZDR_ALERTS";
const QUEUE_MAX_AGE: Duration = Duration::from_secs(zdr_schemas::receivers::MAX_RETRY_FOR_SECS);
/// Longer than a try and the wait after it: a live sender says "in
/// progress" before it runs out, a dead one lets the message go to another.
const ACK_WAIT: Duration = Duration::from_secs(120);
/// How long one fetch waits for a message before asking again.
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// What the queue holds: a batch and when it was queued, which is what
/// `retry_for` counts from. Releases before batches queued one
/// notification (`note`); such a message, still queued at an upgrade, is
/// read as a batch of one.
#[derive(Debug, Serialize, Deserialize)]
struct Queued {
    queued_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<Batch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<Notification>,
}

impl Queued {
    fn into_batch(self) -> Option<Batch> {
        match (self.batch, self.note) {
            (Some(b), _) => Some(b),
            (None, Some(n)) => super::group::batches(&[n]).pop(),
            (None, None) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("alert queue {what}: {source}")]
pub struct QueueError {
    what: String,
    source: async_nats::Error,
}

fn queue_subject(receiver: &str) -> String {
    format!("{}.{receiver}", subject::ALERTS_PREFIX)
}

/// Creates (or opens) the stream the alerts wait in, with `replicas` replicas.
pub async fn open_queue(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<stream::Stream, QueueError> {
    js.get_or_create_stream(stream::Config {
        name: STREAM.into(),
        description: Some("zdr alerts waiting for their receivers".into()),
        subjects: vec![format!("{}.>", subject::ALERTS_PREFIX)],
        retention: stream::RetentionPolicy::WorkQueue,
        max_age: QUEUE_MAX_AGE,
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| QueueError {
        what: format!("stream {STREAM}"),
        source: e.into(),
    })
}

/// Puts every notification in every receiver's queue, in batches
/// (`group::batches`). A batch that cannot be queued is logged and its
/// alerts counted as dropped; nothing here waits on a receiver.
pub async fn enqueue(
    js: &jetstream::Context,
    replicas: usize,
    receivers: &[Receiver],
    notes: &[Notification],
    now: i64,
) {
    // Normally there already (the senders open it at start); idempotent.
    if let Err(e) = open_queue(js, replicas).await {
        warn!(error = %e, dropped = notes.len(), "cannot open the alert queue; these alerts are dropped");
        for r in receivers {
            metrics::counter!("zdr_alerts_dropped_total", "receiver" => r.name.clone())
                .increment(notes.len() as u64);
        }
        return;
    }
    for batch in super::group::batches(notes) {
        let alerts = batch.notes.len() as u64;
        let payload = match serde_json::to_vec(&Queued {
            queued_at: now,
            batch: Some(batch.clone()),
            note: None,
        }) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot encode an alert batch for the queue");
                continue;
            }
        };
        for r in receivers {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                webhook::message_id(&r.name, &batch, now).as_str(),
            );
            let queued = match js
                .publish_with_headers(queue_subject(&r.name), headers, payload.clone().into())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(async_nats::Error::from),
                Err(e) => Err(e.into()),
            };
            match queued {
                Ok(()) => {
                    metrics::counter!("zdr_alerts_queued_total", "receiver" => r.name.clone())
                        .increment(alerts)
                }
                Err(e) => {
                    metrics::counter!("zdr_alerts_dropped_total", "receiver" => r.name.clone())
                        .increment(alerts);
                    warn!(receiver = %r.name, group = %batch.key(), alerts, error = %e,
                        "could not queue an alert batch; it is dropped");
                }
            }
        }
    }
}

/// Runs one sender per receiver until `shutdown`. Every coordinator runs
/// them, leader or not: the queue hands each message to one of them.
pub async fn run(
    js: jetstream::Context,
    replicas: usize,
    receivers: Vec<Receiver>,
    external_url: String,
    shutdown: CancellationToken,
) {
    if receivers.is_empty() {
        return;
    }
    let stream = loop {
        match open_queue(&js, replicas).await {
            Ok(s) => break s,
            Err(e) => {
                warn!(error = %e, "cannot open the alert queue; trying again in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    let mut senders = tokio::task::JoinSet::new();
    for r in receivers {
        senders.spawn(send_loop(
            stream.clone(),
            r,
            external_url.clone(),
            shutdown.clone(),
        ));
    }
    while senders.join_next().await.is_some() {}
}

async fn consumer_for(
    stream: &stream::Stream,
    r: &Receiver,
) -> Result<consumer::PullConsumer, async_nats::Error> {
    let name = format!("alerts-{}", r.name);
    Ok(stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: queue_subject(&r.name),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: 1,
                ..Default::default()
            },
        )
        .await?)
}

async fn send_loop(
    stream: stream::Stream,
    r: Receiver,
    external_url: String,
    shutdown: CancellationToken,
) {
    let pause = |d| {
        let s = shutdown.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => true,
                _ = s.cancelled() => false,
            }
        }
    };
    let consumer = loop {
        match consumer_for(&stream, &r).await {
            Ok(c) => break c,
            Err(e) => {
                warn!(receiver = %r.name, error = %e, "cannot open the receiver's queue; trying again in 5 s");
                if !pause(Duration::from_secs(5)).await {
                    return;
                }
            }
        }
    };
    // Every series from the start, so a rule on `increase()` sees the first one.
    for name in [
        "zdr_alerts_queued_total",
        "zdr_alerts_sent_total",
        "zdr_alerts_failed_tries_total",
        "zdr_alerts_dropped_total",
    ] {
        metrics::counter!(name, "receiver" => r.name.clone()).increment(0);
    }
    info!(receiver = %r.name, url = %r.url, "alert sender running");
    loop {
        let batch = tokio::select! {
            b = consumer.fetch().max_messages(1).expires(FETCH_WAIT).messages() => b,
            _ = shutdown.cancelled() => return,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(receiver = %r.name, error = %e, "cannot fetch from the alert queue");
                if !pause(Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = batch.next() => m,
                _ = shutdown.cancelled() => return,
            };
            match msg {
                Some(Ok(msg)) => {
                    if !send_one(&r, &external_url, msg, &shutdown).await {
                        return;
                    }
                }
                Some(Err(e)) => {
                    warn!(receiver = %r.name, error = %e, "alert queue");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Tries one queued batch until it is sent or expired. False when stopped
/// on the way: the message stays unacked, to be sent after a restart.
async fn send_one(
    r: &Receiver,
    external_url: &str,
    msg: jetstream::Message,
    shutdown: &CancellationToken,
) -> bool {
    let receiver = r.name.clone();
    let queued = serde_json::from_slice::<Queued>(&msg.payload)
        .map_err(|e| e.to_string())
        .and_then(|q| {
            let at = q.queued_at;
            q.into_batch()
                .map(|b| (at, b))
                .ok_or_else(|| "it holds neither a batch nor a notification".to_string())
        });
    let (queued_at, batch) = match queued {
        Ok(q) => q,
        Err(error) => {
            // Only this coordinator's publisher writes here: never retry junk.
            warn!(
                receiver,
                error, "an unreadable message in the alert queue is dropped"
            );
            metrics::counter!("zdr_alerts_dropped_total", "receiver" => receiver).increment(1);
            let _ = msg.ack_with(AckKind::Term).await;
            return true;
        }
    };
    let body = webhook::body(r.format, &r.name, &batch, external_url).to_string();
    let group = batch.key();
    let alerts = batch.notes.len() as u64;
    let mut attempt = 0u32;
    loop {
        if webhook::expired(queued_at, crate::state::now(), r.retry_for.secs()) {
            warn!(
                receiver,
                group,
                alerts,
                attempts = attempt,
                "the alerts were not delivered within retry_for ({}s); they are dropped",
                r.retry_for.secs()
            );
            metrics::counter!("zdr_alerts_dropped_total", "receiver" => receiver).increment(alerts);
            let _ = msg.ack_with(AckKind::Term).await;
            return true;
        }
        attempt += 1;
        match post(&r.url, body.clone(), r.timeout.std()).await {
            Ok(()) => {
                metrics::counter!("zdr_alerts_sent_total", "receiver" => receiver.clone())
                    .increment(alerts);
                if let Err(e) = msg.ack().await {
                    // Sent but not acked: it may be sent once more; receivers dedupe by fingerprint.
                    warn!(receiver, error = %e, "could not ack a delivered alert");
                }
                return true;
            }
            Err(e) => {
                metrics::counter!("zdr_alerts_failed_tries_total", "receiver" => receiver.clone())
                    .increment(1);
                let wait = webhook::backoff(attempt);
                warn!(receiver, group, attempt, error = %e,
                    "alert delivery failed; trying again in {}s", wait.as_secs());
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("{0}")]
    Http(#[from] ureq::Error),
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
    #[error("the sending thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One POST, on a blocking thread, bounded by `timeout`.
async fn post(url: &str, body: String, timeout: Duration) -> Result<(), PostError> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let resp = agent
            .post(&url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("zdr-coordinator/", env!("CARGO_PKG_VERSION")),
            )
            .send(body)?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(PostError::Status(status))
        }
    })
    .await?
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alerts::state::Status;
    use crate::alerts::Alert;

    #[test]
    fn a_message_queued_by_an_older_release_is_a_batch_of_one() {
        let note = Notification {
            status: Status::Firing,
            alert: Alert::new(
                BTreeMap::from([
                    ("alertname".to_string(), "ZdrAgentOffline".to_string()),
                    ("node".to_string(), "n1".to_string()),
                ]),
                "agent n1 has sent nothing for 40s".into(),
            ),
            starts_at: 1_764_900_000,
            ends_at: None,
        };
        // The shape older releases queued: `queued_at` and one `note`.
        let old = serde_json::json!({ "queued_at": 7, "note": note }).to_string();
        let q: Queued = serde_json::from_str(&old).unwrap();
        assert_eq!(q.queued_at, 7);
        let b = q.into_batch().unwrap();
        assert_eq!(b.notes, std::slice::from_ref(&note));
        assert_eq!(b.group["node"], "n1");
        // Today's shape reads back as written.
        let new = serde_json::to_string(&Queued {
            queued_at: 8,
            batch: Some(b.clone()),
            note: None,
        })
        .unwrap();
        let q: Queued = serde_json::from_str(&new).unwrap();
        assert_eq!(q.into_batch(), Some(b));
        // Neither: nothing to send.
        let q: Queued = serde_json::from_str(r#"{"queued_at": 9}"#).unwrap();
        assert!(q.into_batch().is_none());
    }
}
