//! The alert state machine, pure: the previous [`Book`], the alerts firing
//! now (from `rules`) and `now` in; the next book and the notifications to
//! send out.
//!
//! - A new fingerprint fires once, at once.
//! - While it keeps firing it is sent again every `repeat_secs`, with its
//!   newest figures; otherwise nothing is sent (deduplication).
//! - Once it has not fired for `keep_firing_secs` it is resolved: one
//!   notification with `ends_at`. A condition that clears and comes back
//!   within that hold is the same alert, neither resolved nor fired again,
//!   so a flapping condition does not flood the receivers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Alert;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub repeat_secs: i64,
    pub keep_firing_secs: i64,
}

/// The alerts active now, by fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    pub active: BTreeMap<String, Tracked>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub alert: Alert,
    /// Unix seconds: when it began to fire.
    pub starts_at: i64,
    pub last_sent: i64,
    /// The last evaluation that found it firing.
    pub last_firing: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// One alert to tell the receivers about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub status: Status,
    pub alert: Alert,
    pub starts_at: i64,
    /// Set when resolved.
    pub ends_at: Option<i64>,
}

fn firing(t: &Tracked) -> Notification {
    Notification {
        status: Status::Firing,
        alert: t.alert.clone(),
        starts_at: t.starts_at,
        ends_at: None,
    }
}

pub fn step(
    prev: &Book,
    now_firing: &[Alert],
    now: i64,
    s: &Settings,
) -> (Book, Vec<Notification>) {
    let mut next = Book::default();
    let mut out = Vec::new();
    for alert in now_firing {
        let t = match prev.active.get(&alert.fingerprint) {
            Some(old) => {
                let mut t = Tracked {
                    alert: alert.clone(),
                    last_firing: now,
                    ..old.clone()
                };
                if now - t.last_sent >= s.repeat_secs {
                    t.last_sent = now;
                    out.push(firing(&t));
                }
                t
            }
            None => {
                let t = Tracked {
                    alert: alert.clone(),
                    starts_at: now,
                    last_sent: now,
                    last_firing: now,
                };
                out.push(firing(&t));
                t
            }
        };
        next.active.insert(alert.fingerprint.clone(), t);
    }
    for (fp, old) in &prev.active {
        if next.active.contains_key(fp) {
            continue;
        }
        if now - old.last_firing >= s.keep_firing_secs {
            out.push(Notification {
                status: Status::Resolved,
                alert: old.alert.clone(),
                starts_at: old.starts_at,
                ends_at: Some(now),
            });
        } else {
            next.active.insert(fp.clone(), old.clone());
        }
    }
    (next, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        repeat_secs: 100,
        keep_firing_secs: 20,
    };

    fn alert(copy: &str, figure: &str) -> Alert {
        let labels = BTreeMap::from([
            ("alertname".to_string(), "ZdrCopyRpoBreach".to_string()),
            ("copy".to_string(), copy.to_string()),
        ]);
        Alert::new(labels, format!("{figure} behind"))
    }

    /// Runs `firing` (one entry per evaluation, `at` seconds) and returns
    /// what each evaluation sent, as (time, status, summary).
    fn run(evals: &[(i64, Vec<Alert>)]) -> Vec<(i64, Status, String)> {
        let mut book = Book::default();
        let mut sent = Vec::new();
        for (at, firing) in evals {
            let (next, notes) = step(&book, firing, *at, &S);
            book = next;
            for n in notes {
                if n.status == Status::Resolved {
                    assert_eq!(n.ends_at, Some(*at));
                }
                sent.push((*at, n.status, n.alert.annotations["summary"].clone()));
            }
        }
        sent
    }

    #[test]
    fn fires_once_repeats_at_the_interval_and_resolves() {
        use Status::*;
        let a = |f: &str| vec![alert("b1", f)];
        let sent = run(&[
            (0, a("1h")),
            (5, a("1h")),
            (99, a("2h")),
            (100, a("3h")),
            (150, a("4h")),
            (200, a("5h")),
            (205, vec![]),
            (219, vec![]),
            (220, vec![]),
            (300, vec![]),
        ]);
        assert_eq!(
            sent,
            vec![
                (0, Firing, "1h behind".into()),
                (100, Firing, "3h behind".into()),
                (200, Firing, "5h behind".into()),
                (220, Resolved, "5h behind".into()),
            ]
        );
    }

    #[test]
    fn a_flap_within_the_hold_is_one_alert() {
        use Status::*;
        let a = || vec![alert("b1", "x")];
        let sent = run(&[
            (0, a()),
            (5, vec![]),
            (10, a()),
            (15, vec![]),
            (30, a()),
            (40, vec![]),
            (60, vec![]),
        ]);
        assert_eq!(
            sent,
            vec![
                (0, Firing, "x behind".into()),
                (60, Resolved, "x behind".into())
            ]
        );
    }

    #[test]
    fn alerts_are_tracked_apart_and_start_times_kept() {
        let (b, n) = step(&Book::default(), &[alert("b1", "x")], 0, &S);
        assert_eq!(n.len(), 1);
        let (b, n) = step(&b, &[alert("b1", "x"), alert("b2", "y")], 10, &S);
        assert_eq!(n.len(), 1, "only the new one");
        assert_eq!(n[0].alert.labels["copy"], "b2");
        assert_eq!(n[0].starts_at, 10);
        let (b, n) = step(&b, &[alert("b2", "y")], 40, &S);
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].status, n[0].starts_at, &*n[0].alert.labels["copy"]),
            (Status::Resolved, 0, "b1")
        );
        assert_eq!(b.active.len(), 1);
        assert_eq!(b.active.values().next().unwrap().starts_at, 10);
    }

    /// For pseudo-random on/off sequences: the first notification of an
    /// episode is a firing, a resolve follows only a firing, firings of one
    /// episode are `repeat_secs` apart, and a resolve comes only after the
    /// condition was off for the hold.
    #[test]
    fn random_sequences_keep_the_invariants() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for _ in 0..200 {
            let mut book = Book::default();
            let mut t = 0;
            let mut active = false;
            let mut last_fire = i64::MIN;
            let mut last_on = i64::MIN;
            for _ in 0..60 {
                t += 1 + rnd(15) as i64;
                let on = rnd(3) != 0;
                let firing = if on { vec![alert("b1", "x")] } else { vec![] };
                let (next, notes) = step(&book, &firing, t, &S);
                book = next;
                assert!(notes.len() <= 1);
                if on {
                    last_on = t;
                }
                for n in notes {
                    match n.status {
                        Status::Firing => {
                            assert!(on, "fired at {t} while off");
                            if active {
                                assert!(t - last_fire >= S.repeat_secs, "repeat too soon at {t}");
                            }
                            active = true;
                            last_fire = t;
                        }
                        Status::Resolved => {
                            assert!(active, "resolve without a firing at {t}");
                            assert!(
                                t - last_on >= S.keep_firing_secs,
                                "resolved within the hold at {t}"
                            );
                            active = false;
                        }
                    }
                }
                assert_eq!(active, !book.active.is_empty(), "at {t}");
                if on {
                    assert!(active, "firing at {t} but not active");
                }
            }
        }
    }
}
