//! Reading the S3 credentials a [`CredentialsRef`] names, on the host that
//! uses them: the source agent (write-only keys, for uploads) or the
//! coordinator (keys that may delete, for pruning). The file and the
//! environment are passed in, so the rules stay pure.

use crate::wire::CredentialsRef;

/// The key pair a credentials file gives: `access_key_id = ...` and
/// `secret_access_key = ...` lines (quotes optional, `#` comments).
pub fn parse_file(label: &str, text: &str) -> Result<(String, String), String> {
    let (mut id, mut secret) = (None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "{label}:{}: expected `key = value`; the file holds `access_key_id = ...` and `secret_access_key = ...`",
                n + 1
            ));
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "access_key_id" | "aws_access_key_id" => id = Some(v),
            "secret_access_key" | "aws_secret_access_key" => secret = Some(v),
            other => {
                return Err(format!(
                    "{label}:{}: unknown key `{other}`; the file holds `access_key_id` and `secret_access_key`",
                    n + 1
                ))
            }
        }
    }
    match (id, secret) {
        (Some(i), Some(s)) if !i.is_empty() && !s.is_empty() => Ok((i, s)),
        _ => Err(format!(
            "{label}: needs both `access_key_id = ...` and `secret_access_key = ...`"
        )),
    }
}

/// The key pair an environment variable gives: `KEY_ID:SECRET`.
pub fn parse_env(name: &str, value: &str) -> Result<(String, String), String> {
    match value.trim().split_once(':') {
        Some((i, s)) if !i.is_empty() && !s.is_empty() => Ok((i.to_string(), s.to_string())),
        _ => Err(format!(
            "environment variable {name} must hold `KEY_ID:SECRET`"
        )),
    }
}

/// The key pair `credentials` names. `who` ends the message when the
/// variable is unset ("this agent", "the coordinator").
pub fn resolve(
    credentials: &CredentialsRef,
    who: &str,
    read_file: impl FnOnce(&str) -> std::io::Result<String>,
    var: impl FnOnce(&str) -> Option<String>,
) -> Result<(String, String), String> {
    match credentials {
        CredentialsRef::File(path) => {
            if !path.starts_with('/') {
                return Err(format!("credentials file {path:?} is not an absolute path"));
            }
            let text = read_file(path).map_err(|e| format!("credentials file {path}: {e}"))?;
            parse_file(path, &text)
        }
        CredentialsRef::Env(name) => {
            let value = var(name).ok_or_else(|| {
                format!("environment variable {name}, named as the bucket's credentials, is not set for {who}")
            })?;
            parse_env(name, &value)
        }
    }
}

/// [`resolve`] with this host's files and environment.
pub fn resolve_here(credentials: &CredentialsRef, who: &str) -> Result<(String, String), String> {
    resolve(
        credentials,
        who,
        |p| std::fs::read_to_string(p),
        |v| std::env::var(v).ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_a_file_or_a_variable() {
        assert_eq!(
            parse_file(
                "/c",
                "# keys\naccess_key_id = AKIA\nsecret_access_key = \"s3cr:et\"\n"
            )
            .unwrap(),
            ("AKIA".to_string(), "s3cr:et".to_string())
        );
        assert!(parse_file("/c", "access_key_id = A\n")
            .unwrap_err()
            .contains("needs both"));
        assert!(parse_file("/c", "token = x\n")
            .unwrap_err()
            .contains("/c:1: unknown key `token`"));
        assert_eq!(
            parse_env("V", "id:sec:ret").unwrap(),
            ("id".to_string(), "sec:ret".to_string())
        );
        assert!(parse_env("V", "idonly").is_err());
    }

    #[test]
    fn resolve_names_what_is_missing() {
        let file = CredentialsRef::File("/etc/zdr/b.credentials".into());
        let err = resolve(
            &file,
            "x",
            |_| Err(std::io::ErrorKind::NotFound.into()),
            |_| None,
        )
        .unwrap_err();
        assert!(
            err.starts_with("credentials file /etc/zdr/b.credentials:"),
            "{err}"
        );
        let rel = CredentialsRef::File("b.credentials".into());
        assert!(resolve(&rel, "x", |_| Ok(String::new()), |_| None)
            .unwrap_err()
            .contains("not an absolute path"));
        let env = CredentialsRef::Env("ZDR_B".into());
        assert!(
            resolve(&env, "the coordinator", |_| unreachable!(), |_| None)
                .unwrap_err()
                .ends_with("is not set for the coordinator")
        );
        assert_eq!(
            resolve(&env, "x", |_| unreachable!(), |_| Some("a:b".into())).unwrap(),
            ("a".into(), "b".into())
        );
    }
}
