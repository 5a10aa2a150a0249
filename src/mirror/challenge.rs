//! The upstream side of registry authentication: a `WWW-Authenticate`
//! challenge (RFC 9110 section 11.6.1: `Bearer realm="...",service="...",
//! scope="..."` or `Basic realm="..."`), the token request it asks for, and
//! the token endpoint's JSON answer (distribution's token specification).

/// What a 401 asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Tokens shorter-lived than this are taken as living this long: the
/// specification's default when `expires_in` is absent.
pub const TOKEN_LIFETIME_DEFAULT_SECS: u64 = 60;

/// The first challenge we can answer among the `WWW-Authenticate` values;
/// Bearer is preferred over Basic.
pub fn parse_challenges<'a>(values: impl Iterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for value in values {
        let mut rest = value.trim();
        // One field may carry several challenges; each starts with a scheme
        // token followed by a space (or ends the value).
        while !rest.is_empty() {
            let scheme_end = rest.find([' ', ',']).unwrap_or(rest.len());
            let scheme = &rest[..scheme_end];
            rest = rest[scheme_end..].trim_start_matches([' ', ',']);
            let (params, after) = parse_params(rest);
            rest = after;
            if scheme.eq_ignore_ascii_case("bearer") {
                let find = |key: &str| {
                    params
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(key))
                        .map(|(_, value)| value.clone())
                };
                if let Some(realm) = find("realm") {
                    return Some(Challenge::Bearer {
                        realm,
                        service: find("service"),
                        scope: find("scope"),
                    });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Reads `name=value` or `name="quoted value"` pairs separated by commas,
/// up to the next challenge (a token not followed by `=`); returns them and
/// the rest.
fn parse_params(mut text: &str) -> (Vec<(String, String)>, &str) {
    let mut params = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        let Some(equals) = text.find('=') else {
            return (params, text);
        };
        let name = &text[..equals];
        if name.is_empty() || name.contains([' ', ',', '"']) {
            // A new challenge's scheme: not ours to read.
            return (params, text);
        }
        let after = &text[equals + 1..];
        if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut escaped = false;
            let mut end = quoted.len();
            for (index, character) in quoted.char_indices() {
                if escaped {
                    value.push(character);
                    escaped = false;
                } else if character == '\\' {
                    escaped = true;
                } else if character == '"' {
                    end = index + 1;
                    break;
                } else {
                    value.push(character);
                }
            }
            params.push((name.trim().to_string(), value));
            text = &quoted[end.min(quoted.len())..];
        } else {
            let value_end = after.find(',').unwrap_or(after.len());
            params.push((name.trim().to_string(), after[..value_end].trim().to_string()));
            text = &after[value_end..];
        }
    }
}

/// The token endpoint's answer: the token and how long it lives (seconds).
pub fn parse_token_response(body: &[u8]) -> Result<(String, u64), String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|error| format!("token answer is not JSON: {error}"))?;
    let token = value
        .get("token")
        .or_else(|| value.get("access_token"))
        .and_then(serde_json::Value::as_str)
        .filter(|token| !token.is_empty())
        .ok_or("token answer has no token")?;
    if token.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("token contains spaces or control characters".into());
    }
    let lifetime = value
        .get("expires_in")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(TOKEN_LIFETIME_DEFAULT_SECS)
        .max(TOKEN_LIFETIME_DEFAULT_SECS);
    Ok((token.to_string(), lifetime))
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved kept).
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_give_realm_service_and_scope() {
        let challenge = parse_challenges(
            [r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#]
                .into_iter(),
        );
        assert_eq!(
            challenge,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
    }

    #[test]
    fn bearer_is_preferred_and_basic_is_recognised() {
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#].into_iter()),
            Some(Challenge::Basic)
        );
        let both = parse_challenges([r#"Basic realm="x", Bearer realm="http://h/t",service=s"#].into_iter());
        assert_eq!(
            both,
            Some(Challenge::Bearer {
                realm: "http://h/t".into(),
                service: Some("s".into()),
                scope: None
            })
        );
        assert_eq!(parse_challenges(["Negotiate"].into_iter()), None);
        assert_eq!(
            parse_challenges([r#"Bearer service="no realm""#].into_iter()),
            None
        );
    }

    #[test]
    fn quoted_values_keep_commas_and_escapes() {
        let challenge = parse_challenges(
            [r#"Bearer realm="http://h/t",scope="repository:a:pull,push",service="a\"b""#].into_iter(),
        );
        assert_eq!(
            challenge,
            Some(Challenge::Bearer {
                realm: "http://h/t".into(),
                service: Some("a\"b".into()),
                scope: Some("repository:a:pull,push".into()),
            })
        );
    }

    #[test]
    fn token_answers_parse_with_their_lifetime() {
        assert_eq!(
            parse_token_response(br#"{"token":"abc","expires_in":300}"#),
            Ok(("abc".to_string(), 300))
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"xyz"}"#),
            Ok(("xyz".to_string(), TOKEN_LIFETIME_DEFAULT_SECS))
        );
        assert!(parse_token_response(br#"{"token":""}"#).is_err());
        assert!(parse_token_response(b"<html>").is_err());
        assert!(parse_token_response(br#"{"token":"a b"}"#).is_err());
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
