//! Bearer-token auth for the HTTP API.
//!
//! Rules:
//! - GET, HEAD and OPTIONS stay open: they only read the fleet's state.
//! - Every other method, on any route (so an endpoint added later is covered
//!   too), needs `Authorization: Bearer <token>`. The token is compared in
//!   constant time (SHA-256 of both sides, then `subtle`), so neither its
//!   bytes nor its length leak through timing.
//! - The token is read at start from a file only the coordinator's user may
//!   read (`--api-token-file`); a file group or others can read, or an empty,
//!   short or multi-word one, stops the coordinator with the reason.
//! - Without a token file every mutation is refused (403) with how to
//!   configure one: an open mutating API is never the default.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A shorter token is refused at start: it could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// The API token. Its `Debug` does not show it.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    fn new(token: &[u8]) -> ApiToken {
        ApiToken {
            digest: Sha256::digest(token).into(),
        }
    }

    /// Constant time in the content of both sides.
    fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        self.digest.ct_eq(&presented).into()
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    #[error("--api-token-file {path}: cannot read it: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "--api-token-file {path} has mode {mode:04o}: group or others may read the API token; \
         run `chmod 600 {path}` (owned by the coordinator's user)"
    )]
    TooOpen { path: String, mode: u32 },
    #[error(
        "--api-token-file {path} is empty; write a random token into it, \
         e.g. `openssl rand -hex 32 > {path} && chmod 600 {path}`"
    )]
    Empty { path: String },
    #[error(
        "--api-token-file {path}: the token is {len} characters, fewer than {MIN_TOKEN_LEN}; \
         write a random one, e.g. `openssl rand -hex 32 > {path}`"
    )]
    TooShort { path: String, len: usize },
    #[error(
        "--api-token-file {path}: the token must be one word of visible ASCII characters \
         (it travels in an HTTP header); e.g. `openssl rand -hex 32 > {path}`"
    )]
    NotOneWord { path: String },
}

/// Checks a token file's mode and text (pure: the caller reads the file).
pub fn token_from_file(path: &Path, mode: u32, text: &str) -> Result<ApiToken, TokenFileError> {
    let path = path.display().to_string();
    if mode & 0o077 != 0 {
        return Err(TokenFileError::TooOpen {
            path,
            mode: mode & 0o7777,
        });
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty { path });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenFileError::NotOneWord { path });
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenFileError::TooShort {
            path,
            len: token.len(),
        });
    }
    Ok(ApiToken::new(token.as_bytes()))
}

/// Reads and checks the token file.
pub fn read_token(path: &Path) -> Result<ApiToken, TokenFileError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |e: std::io::Error| TokenFileError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
    let text = std::fs::read_to_string(path).map_err(read)?;
    token_from_file(path, mode, &text)
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The coordinator has no token file: no mutation is possible.
    NotConfigured,
    Missing,
    /// The header is not `Bearer <token>`.
    NotBearer,
    Wrong,
}

impl Denied {
    pub fn status(self) -> StatusCode {
        match self {
            Denied::NotConfigured => StatusCode::FORBIDDEN,
            Denied::Missing | Denied::NotBearer | Denied::Wrong => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn message(self, method: &Method) -> String {
        match self {
            Denied::NotConfigured => format!(
                "this coordinator has no API token, so it refuses every {method} request; \
                 start it with --api-token-file FILE (or ZDR_API_TOKEN_FILE), FILE holding a \
                 random token with mode 0600, and give clients that token (zdr --token-file \
                 or ZDR_TOKEN_FILE)"
            ),
            Denied::Missing => format!(
                "{method} needs `Authorization: Bearer <token>`, the token in the coordinator's \
                 --api-token-file; the zdr CLI sends it with --token-file FILE or ZDR_TOKEN_FILE"
            ),
            Denied::NotBearer => {
                "the Authorization header is not `Bearer <token>`; send the API token as a \
                 bearer token"
                    .to_string()
            }
            Denied::Wrong => "the bearer token is not this coordinator's API token; check \
                 --token-file or ZDR_TOKEN_FILE against the coordinator's --api-token-file"
                .to_string(),
        }
    }
}

/// Whether a request with `method` and this `Authorization` header may pass.
pub fn check(
    token: Option<&ApiToken>,
    method: &Method,
    authorization: Option<&[u8]>,
) -> Result<(), Denied> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let token = token.ok_or(Denied::NotConfigured)?;
    let header = authorization.ok_or(Denied::Missing)?;
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let presented = match header.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
        _ => return Err(Denied::NotBearer),
    };
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Denied::Wrong)
    }
}

/// The axum middleware: [`check`] on every request.
pub async fn guard(State(token): State<Option<ApiToken>>, req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match check(token.as_ref(), req.method(), authorization) {
        Ok(()) => next.run(req).await,
        Err(denied) => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), reason = ?denied,
                "HTTP request refused");
            let mut resp = (
                denied.status(),
                Json(serde_json::json!({ "error": denied.message(req.method()) })),
            )
                .into_response();
            if denied.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn token() -> ApiToken {
        token_from_file(
            Path::new("/etc/zdr/api.token"),
            0o100600,
            &format!("{TOKEN}\n"),
        )
        .unwrap()
    }

    #[test]
    fn reads_stay_open_and_mutations_need_the_token() {
        let t = token();
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert_eq!(check(Some(&t), &m, None), Ok(()));
            assert_eq!(check(None, &m, None), Ok(()));
        }
        let bearer = format!("Bearer {TOKEN}");
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(check(Some(&t), &m, None), Err(Denied::Missing));
            assert_eq!(check(Some(&t), &m, Some(bearer.as_bytes())), Ok(()));
            assert_eq!(
                check(None, &m, Some(bearer.as_bytes())),
                Err(Denied::NotConfigured)
            );
        }
        let post = |h: &str| check(Some(&t), &Method::POST, Some(h.as_bytes()));
        assert_eq!(post(&format!("bearer  {TOKEN} ")), Ok(()));
        assert_eq!(post(&format!("Bearer {TOKEN}x")), Err(Denied::Wrong));
        assert_eq!(post(&format!("Bearer {}", &TOKEN[1..])), Err(Denied::Wrong));
        assert_eq!(post("Bearer "), Err(Denied::Wrong));
        assert_eq!(post(&format!("Basic {TOKEN}")), Err(Denied::NotBearer));
        assert_eq!(post(TOKEN), Err(Denied::NotBearer));
        assert_eq!(post(""), Err(Denied::NotBearer));
    }

    #[test]
    fn refusals_say_how_to_get_through() {
        assert_eq!(Denied::Wrong.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Denied::NotConfigured.status(), StatusCode::FORBIDDEN);
        let m = Denied::NotConfigured.message(&Method::POST);
        assert!(
            m.contains("--api-token-file") && m.contains("ZDR_TOKEN_FILE"),
            "{m}"
        );
        let m = Denied::Missing.message(&Method::DELETE);
        assert!(m.starts_with("DELETE needs `Authorization: Bearer"), "{m}");
        assert!(!format!("{:?}", token()).contains(TOKEN));
    }

    #[test]
    fn a_bad_token_file_is_refused_with_path_and_fix() {
        let p = Path::new("/etc/zdr/api.token");
        for mode in [0o100644, 0o640, 0o604] {
            let e = token_from_file(p, mode, TOKEN).unwrap_err();
            assert_eq!(
                e,
                TokenFileError::TooOpen {
                    path: "/etc/zdr/api.token".into(),
                    mode: mode & 0o7777
                }
            );
            assert!(
                e.to_string().contains("chmod 600 /etc/zdr/api.token"),
                "{e}"
            );
        }
        assert!(matches!(
            token_from_file(p, 0o600, " \n"),
            Err(TokenFileError::Empty { .. })
        ));
        assert!(matches!(
            token_from_file(p, 0o600, "short"),
            Err(TokenFileError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            token_from_file(p, 0o600, "two words of a long token"),
            Err(TokenFileError::NotOneWord { .. })
        ));
        assert!(token_from_file(p, 0o400, TOKEN).is_ok());
    }

    #[test]
    fn an_unreadable_token_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing.token");
        let e = read_token(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
    }
}
