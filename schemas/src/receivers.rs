//! Alert receivers (`specs/alerts/receivers.yaml`): where the coordinator
//! sends the alerts its rules raise. Only the coordinator reads this file;
//! it is not part of the signed policy, as agents have no use for it.
//!
//! Rules:
//! - `name` is one NATS subject token (letters, digits, `-`, `_`): each
//!   receiver has its own queue subject `zdr.v1.alerts.<name>`, so that one
//!   receiver that is down never holds back another;
//! - `url` is `http://` or `https://`;
//! - `timeout` is 1 s to 60 s: a slow receiver costs one try that long;
//! - `retry_for` (default 24 h, at most 7 d, the queue's age limit) is how
//!   long an alert is retried before it is dropped and counted.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zdr_common::duration::Duration;
use zdr_common::policy::Problem;

use crate::tasks::problem;

/// The whole receivers file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Receivers {
    /// File format version; must be 1.
    pub version: u32,
    pub receivers: Vec<Receiver>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Unique; names the receiver's queue and its metrics.
    pub name: String,
    /// Where the notifications are POSTed.
    pub url: String,
    /// The body: Alertmanager's webhook payload (version 4), or zdr's own JSON.
    #[serde(default)]
    pub format: Format,
    /// How long one POST may take.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// How long an alert is retried before it is dropped.
    #[serde(default = "default_retry_for")]
    pub retry_for: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// What Alertmanager sends to a webhook receiver (payload version 4).
    #[default]
    Alertmanager,
    /// One notification as a flat JSON object.
    Json,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retry_for() -> Duration {
    Duration::from_secs(86_400)
}

/// The alert queue keeps nothing longer than this, so no retry outlives it.
pub const MAX_RETRY_FOR_SECS: u64 = 7 * 86_400;

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 {
        return Some(format!(
            "receiver name {name:?} must be 1 to 64 characters long"
        ));
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        .map(|c| {
            format!(
                "receiver name {name:?} contains {c:?}; use only ASCII letters, digits, '-' and '_' (it names a NATS subject token)"
            )
        })
}

impl Receivers {
    /// Every semantic problem; empty when the file is sound.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.version != 1 {
            out.push(problem(
                &["version"],
                format!(
                    "version {} is not supported; this zdr reads version 1",
                    self.version
                ),
            ));
        }
        for (i, r) in self.receivers.iter().enumerate() {
            let mut found = Vec::new();
            if let Some(m) = name_problem(&r.name) {
                found.push(problem(&["name"], m));
            }
            if let Some(first) = self.receivers[..i].iter().position(|o| o.name == r.name) {
                found.push(problem(
                    &["name"],
                    format!(
                        "receiver name {:?} is already used by receivers[{first}]; names must be unique",
                        r.name
                    ),
                ));
            }
            let host = r
                .url
                .strip_prefix("http://")
                .or_else(|| r.url.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                found.push(problem(
                    &["url"],
                    format!(
                        "url {:?} is not an http:// or https:// address with a host; write it as http://host:port/path",
                        r.url
                    ),
                ));
            }
            if !(1..=60).contains(&r.timeout.secs()) {
                found.push(problem(
                    &["timeout"],
                    format!(
                        "timeout {}s is out of range; use 1s to 60s",
                        r.timeout.secs()
                    ),
                ));
            }
            if r.retry_for.secs() == 0 || r.retry_for.secs() > MAX_RETRY_FOR_SECS {
                found.push(problem(
                    &["retry_for"],
                    format!(
                        "retry_for {}s is out of range; use 1s to 7d (the alert queue keeps nothing longer)",
                        r.retry_for.secs()
                    ),
                ));
            }
            for mut p in found {
                p.path
                    .splice(0..0, ["receivers".to_string(), i.to_string()]);
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::parse_receivers;

    #[test]
    fn a_sound_file_with_defaults() {
        let r = parse_receivers(
            "r.yaml",
            "version: 1\nreceivers:\n  - name: ops\n    url: http://127.0.0.1:9/hook\n",
        )
        .unwrap();
        assert_eq!(r.receivers[0].format, super::Format::Alertmanager);
        assert_eq!(r.receivers[0].timeout.secs(), 10);
        assert_eq!(r.receivers[0].retry_for.secs(), 86_400);
    }

    #[test]
    fn the_shipped_example_is_sound() {
        let text = include_str!("../../specs/alerts/receivers.yaml");
        let r = parse_receivers("specs/alerts/receivers.yaml", text).unwrap();
        assert_eq!(r.receivers.len(), 2);
        assert_eq!(r.receivers[1].format, super::Format::Json);
    }

    #[test]
    fn each_problem_is_named_at_its_line_and_column() {
        let text = "version: 1\nreceivers:\n  - name: ops\n    url: http://a/\n  - name: ops\n    url: ftp://a/\n    timeout: 2m\n  - name: \"a.b\"\n    url: https://x/\n    retry_for: 30d\n";
        let e = parse_receivers("r.yaml", text).unwrap_err().to_string();
        for want in [
            "r.yaml:5:11: receivers[1].name: receiver name \"ops\" is already used by receivers[0]",
            "r.yaml:6:10: receivers[1].url: url \"ftp://a/\" is not an http:// or https:// address",
            "r.yaml:7:14: receivers[1].timeout: timeout 120s is out of range",
            "r.yaml:8:11: receivers[2].name: receiver name \"a.b\" contains '.'",
            "r.yaml:10:16: receivers[2].retry_for: retry_for 2592000s is out of range",
        ] {
            assert!(e.contains(want), "missing {want:?} in\n{e}");
        }
    }

    #[test]
    fn an_unknown_format_names_the_choices() {
        let e = parse_receivers(
            "r.yaml",
            "version: 1\nreceivers:\n  - name: ops\n    url: http://a/\n    format: slack\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("r.yaml:5:13: receivers[0].format:"), "{e}");
        assert!(e.contains("alertmanager") && e.contains("json"), "{e}");
    }
}
