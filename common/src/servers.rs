//! The NATS servers a process connects to. One URL, or several separated by
//! commas (as the `nats` CLI's `--server` takes them): the servers of one
//! cluster, so a client reconnects to another when one goes away.

/// What is wrong with a server list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerListError {
    #[error("the NATS server list is empty; give one URL such as nats://127.0.0.1:4222, or several separated by commas")]
    Empty,
    #[error("entry {index} of the NATS server list is empty (a stray comma?); separate URLs with single commas")]
    EmptyEntry { index: usize },
    #[error(
        "{url:?} (entry {index} of the NATS server list) has no host; write it as nats://HOST:PORT"
    )]
    NoHost { index: usize, url: String },
    #[error("{url:?} (entry {index} of the NATS server list) has the scheme {scheme:?}; use nats, tls, ws or wss")]
    Scheme {
        index: usize,
        url: String,
        scheme: String,
    },
    #[error("{url:?} is listed twice in the NATS server list")]
    Duplicate { url: String },
}

const SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

/// Splits and checks a server list. Entries are numbered from 1 in errors.
/// A bare `host:port` is accepted (the client reads it as `nats://`).
pub fn server_urls(list: &str) -> Result<Vec<String>, ServerListError> {
    if list.trim().is_empty() {
        return Err(ServerListError::Empty);
    }
    let mut out: Vec<String> = Vec::new();
    for (i, raw) in list.split(',').enumerate() {
        let index = i + 1;
        let url = raw.trim();
        if url.is_empty() {
            return Err(ServerListError::EmptyEntry { index });
        }
        let rest = match url.split_once("://") {
            Some((scheme, rest)) => {
                if !SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                    return Err(ServerListError::Scheme {
                        index,
                        url: url.into(),
                        scheme: scheme.into(),
                    });
                }
                rest
            }
            None => url,
        };
        // user:password@ may precede the host.
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host_port.split(['/', '?']).next().unwrap_or("");
        let host = host
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        if host.is_empty() {
            return Err(ServerListError::NoHost {
                index,
                url: url.into(),
            });
        }
        if out.iter().any(|u| u == url) {
            return Err(ServerListError::Duplicate { url: url.into() });
        }
        out.push(url.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_several_urls() {
        assert_eq!(
            server_urls("nats://127.0.0.1:4222").unwrap(),
            ["nats://127.0.0.1:4222"]
        );
        assert_eq!(
            server_urls("nats://a:4222, tls://b:4222,c:4222").unwrap(),
            ["nats://a:4222", "tls://b:4222", "c:4222"]
        );
        assert_eq!(
            server_urls("nats://user:pw@a:4222").unwrap(),
            ["nats://user:pw@a:4222"]
        );
    }

    #[test]
    fn bad_lists_name_the_entry() {
        assert_eq!(server_urls("  "), Err(ServerListError::Empty));
        assert_eq!(
            server_urls("nats://a:1,,nats://b:1"),
            Err(ServerListError::EmptyEntry { index: 2 })
        );
        assert!(matches!(
            server_urls("nats://a:1,http://b:1"),
            Err(ServerListError::Scheme { index: 2, .. })
        ));
        assert!(matches!(
            server_urls("nats://:4222"),
            Err(ServerListError::NoHost { index: 1, .. })
        ));
        assert!(matches!(
            server_urls("nats://a:1,nats://a:1"),
            Err(ServerListError::Duplicate { .. })
        ));
        let msg = server_urls("nats://a:1,http://b:1")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("entry 2") && msg.contains("nats, tls, ws or wss"),
            "{msg}"
        );
    }
}
