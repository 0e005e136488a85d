//! A blocking HTTP client for the coordinator's API, whose errors say what
//! to do: where the coordinator was looked for, how to point elsewhere, and
//! the API's own error message as it came.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::args::DEFAULT_COORDINATOR;

/// Large fleets answer with large inventories; ureq's default is 10 MiB.
const BODY_LIMIT: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "--coordinator {0:?} is not an http:// or https:// URL; write it like http://coordinator.example:8080"
    )]
    BadUrl(String),
    #[error(
        "cannot reach the coordinator at {url} ({reason}).\n\
         Check the address: pass --coordinator URL or set ZDR_COORDINATOR (default {DEFAULT_COORDINATOR}); \
         on the coordinator's host, `systemctl status zdr-coordinator` shows whether it runs and where it listens"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "{method} {url}: the coordinator answered {status}: {message}\n\
         A standby coordinator answers {status} too: point --coordinator (or ZDR_COORDINATOR) at the \
         leader; each instance's /readyz says whether it leads"
    )]
    Unavailable {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: the coordinator answered {status}: {message}")]
    Api {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "{url}: the answer is not what this zdr expects ({reason}); is {url} a zdr coordinator of the same version?"
    )]
    BadBody { url: String, reason: String },
    #[error(
        "--token-file {path}: {reason}; it holds the coordinator's API token (the file its \
         --api-token-file names), one word"
    )]
    TokenFile { path: String, reason: String },
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// Sent as a bearer token with every POST.
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/');
        let scheme_ok = base
            .split_once("://")
            .is_some_and(|(s, host)| (s == "http" || s == "https") && !host.is_empty());
        if !scheme_ok {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Client {
            base: base.to_string(),
            agent,
            token: None,
        })
    }

    /// Sends the token in `path` with every mutating request.
    pub fn with_token_file(self, path: Option<&std::path::Path>) -> Result<Client, ClientError> {
        let Some(path) = path else {
            return Ok(self);
        };
        let bad = |reason: String| ClientError::TokenFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("it is empty or not one word".into()));
        }
        Ok(Client {
            token: Some(token.to_string()),
            ..self
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The body of a 2xx answer to `GET path`.
    pub fn get(&self, path: &str) -> Result<String, ClientError> {
        let url = self.url(path);
        let resp = self.agent.get(&url).call();
        self.answer("GET", &url, resp)
    }

    /// The body of a 2xx answer to `POST path` with a JSON body.
    pub fn post(&self, path: &str, json: &str) -> Result<String, ClientError> {
        let url = self.url(path);
        let mut req = self
            .agent
            .post(&url)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send(json);
        self.answer("POST", &url, resp)
    }

    fn answer(
        &self,
        method: &'static str,
        url: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, ClientError> {
        let mut resp = resp.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: format!("reading the answer: {e}"),
            })?;
        outcome(method, url, status, body)
    }
}

/// A 2xx body, or the error the status and body make.
pub fn outcome(
    method: &'static str,
    url: &str,
    status: u16,
    body: String,
) -> Result<String, ClientError> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    // Every endpoint's own 404 says what is unknown; an empty one is the
    // router's: the coordinator has no such endpoint.
    let message = if status == 404 && body.trim().is_empty() {
        "no such endpoint; is the coordinator older than this zdr? (`zdr-coordinator --version`)"
            .to_string()
    } else {
        error_message(&body)
    };
    let url = url.to_string();
    Err(if status == 502 || status == 503 {
        ClientError::Unavailable {
            method,
            url,
            status,
            message,
        }
    } else {
        ClientError::Api {
            method,
            url,
            status,
            message,
        }
    })
}

/// `{"error": ...}` as the newer endpoints send it, or the plain text of
/// the older ones.
pub fn error_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct ApiError {
        error: String,
    }
    match serde_json::from_str::<ApiError>(body) {
        Ok(e) => e.error,
        Err(_) if body.trim().is_empty() => "(no message)".to_string(),
        Err(_) => body.trim().to_string(),
    }
}

pub fn decode<T: DeserializeOwned>(url: &str, body: &str) -> Result<T, ClientError> {
    serde_json::from_str(body).map_err(|e| ClientError::BadBody {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// Serves one canned answer per connection; returns the base URL and
    /// the requests it received (head and body).
    pub(crate) fn serve(
        answers: Vec<(u16, String)>,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut head = String::new();
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let mut b = vec![0; len];
                r.read_exact(&mut b).unwrap();
                seen.push(format!("{head}\n{}", String::from_utf8(b).unwrap()));
                let mut s = s;
                write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (base, h)
    }

    #[test]
    fn answers_and_errors_from_a_real_socket() {
        let (base, h) = serve(
            vec![
                (200, r#"{"restores":[]}"#),
                (409, r#"{"error":"node-a2:tank/r exists; pass --replace"}"#),
                (
                    502,
                    "this coordinator is a standby; send commands to the leader\n",
                ),
                (202, r#"{"job":"r-1"}"#),
            ]
            .into_iter()
            .map(|(c, b)| (c, b.to_string()))
            .collect(),
        );
        let c = Client::new(&format!("{base}/")).unwrap();
        assert_eq!(c.get("/api/v1/restores").unwrap(), r#"{"restores":[]}"#);

        let e = c.post("/api/v1/restores", "{}").unwrap_err();
        assert!(
            matches!(&e, ClientError::Api { status: 409, message, .. } if message == "node-a2:tank/r exists; pass --replace"),
            "{e:?}"
        );

        let e = c.get("/api/v1/jobs").unwrap_err().to_string();
        assert!(
            e.contains("answered 502: this coordinator is a standby"),
            "{e}"
        );
        assert!(e.contains("at the leader"), "{e}");

        assert_eq!(
            c.post("/api/v1/restores", r#"{"to":"x"}"#).unwrap(),
            r#"{"job":"r-1"}"#
        );
        let seen = h.join().unwrap();
        assert!(
            seen[0].starts_with("GET /api/v1/restores HTTP/1.1"),
            "{}",
            seen[0]
        );
        assert!(seen[3].starts_with("POST /api/v1/restores "), "{}", seen[3]);
        assert!(seen[3]
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        assert!(seen[3].ends_with("\n{\"to\":\"x\"}"), "{}", seen[3]);
    }

    #[test]
    fn an_unreachable_coordinator_says_where_and_what_to_check() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = c.get("/api/v1/fleet").unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        let text = e.to_string();
        let url = format!("http://127.0.0.1:{port}");
        for want in [
            url.as_str(),
            "--coordinator",
            "ZDR_COORDINATOR",
            "systemctl status zdr-coordinator",
        ] {
            assert!(text.contains(want), "{want:?} missing from: {text}");
        }
    }

    #[test]
    fn the_token_goes_with_posts_only() {
        let (base, h) = serve(vec![(200, "{}".into()), (202, "{}".into())]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.token");
        std::fs::write(&file, "s3cret-token-0123456789\n").unwrap();
        let c = Client::new(&base)
            .unwrap()
            .with_token_file(Some(&file))
            .unwrap();
        c.get("/api/v1/fleet").unwrap();
        c.post("/api/v1/restores", "{}").unwrap();
        let seen = h.join().unwrap();
        assert!(
            !seen[0].to_ascii_lowercase().contains("authorization"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1]
                .to_ascii_lowercase()
                .contains("authorization: bearer s3cret-token-0123456789\r\n"),
            "{}",
            seen[1]
        );

        std::fs::write(&file, "\n").unwrap();
        let e = Client::new(&base)
            .unwrap()
            .with_token_file(Some(&file))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--token-file") && e.contains("api.token"), "{e}");
    }

    #[test]
    fn urls_need_a_scheme() {
        assert!(matches!(
            Client::new("127.0.0.1:8080"),
            Err(ClientError::BadUrl(_))
        ));
        assert!(Client::new("https://c.example").is_ok());
    }

    #[test]
    fn error_bodies_are_shown_as_they_come() {
        assert_eq!(
            error_message(r#"{"error":"no copy online"}"#),
            "no copy online"
        );
        assert_eq!(error_message("plain text\n"), "plain text");
        assert_eq!(error_message(""), "(no message)");
        assert!(matches!(
            outcome("GET", "u", 503, r#"{"error":"x"}"#.into()),
            Err(ClientError::Unavailable { status: 503, .. })
        ));
        let e = outcome("GET", "u", 404, String::new()).unwrap_err();
        assert!(e.to_string().contains("no such endpoint"), "{e}");
        let e = outcome(
            "GET",
            "u",
            404,
            r#"{"error":"restore job \"x\" is not known"}"#.into(),
        );
        assert!(
            matches!(e, Err(ClientError::Api { status: 404, message, .. }) if message == "restore job \"x\" is not known")
        );
    }
}
