//! The answers to requests access control refuses: status, challenge and OCI
//! error body, worded so clients stop at once and say why. Sans-IO: what was
//! refused and what the client presented in, a `Response` out.
//!
//! Why the wording matters: docker (and every client built on the
//! distribution client) decodes an error whose message is the code's default
//! and that has no `detail` into a bare error code, which its push retry
//! logic does not recognise, so it retried refused pushes for 50 s. An error
//! with a `detail` (distribution's own: the type, name and action refused)
//! decodes into a full error that it does not retry. A `HEAD` has no body;
//! for it the `WWW-Authenticate` challenge carries RFC 6750's `error`
//! (`invalid_token`, `insufficient_scope`), which the same client maps to
//! `UNAUTHORIZED` and `DENIED`.

use super::{Action, Failure, Need};
use crate::http::Response;
use crate::http::oci_error::{ErrorCode, RegistryError};

/// What the client sent that did not get it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `Authorization` header, and the request needs one.
    NoCredentials,
    /// Credentials or a token that failed to authenticate.
    BadCredentials(Failure),
    /// A valid token issued to an anonymous client, for a request anonymous
    /// clients may not make.
    AnonymousToken,
    /// A known identity without the right.
    Denied,
}

/// The answer to a refused request. `challenge` is the `WWW-Authenticate`
/// value that sends the client to log in (`Basic ...` or `Bearer ...`);
/// `username` names a known identity that was denied.
pub fn refusal(refused: Refused, need: &Need, challenge: &str, username: Option<&str>) -> Response {
    let what = requested(need);
    let (error, status, message) = match refused {
        Refused::NoCredentials => (
            None,
            401,
            format!("authentication required to {what}; log in first"),
        ),
        Refused::BadCredentials(Failure::InvalidToken) => (
            Some("invalid_token"),
            401,
            "invalid or expired token; log in again".to_string(),
        ),
        Refused::BadCredentials(_) if *need == Need::Token => {
            (None, 401, "incorrect username or password".to_string())
        }
        Refused::BadCredentials(Failure::Malformed) => (
            Some("invalid_token"),
            401,
            "malformed Authorization header".to_string(),
        ),
        Refused::BadCredentials(_) => (None, 401, "incorrect username or password".to_string()),
        Refused::AnonymousToken => (
            Some("insufficient_scope"),
            401,
            format!("authentication required to {what}; log in first"),
        ),
        Refused::Denied => (
            Some("insufficient_scope"),
            403,
            match username {
                Some(username) => format!("{username} may not {what}"),
                None => format!("not allowed to {what}"),
            },
        ),
    };
    let code = if status == 403 {
        ErrorCode::Denied
    } else {
        ErrorCode::Unauthorized
    };
    let mut error_body = RegistryError::new(code, message.clone()).status(status);
    if let Some(detail) = access_detail(need) {
        error_body = error_body.detail(detail);
    }
    let mut body = error_body.body();
    if *need == Need::Token {
        // Docker reads a top-level `details` string from a token endpoint's
        // error first and prints it ("unauthorized: incorrect username or password").
        body["details"] = serde_json::Value::from(message.as_str());
    }
    let challenge = match error {
        // RFC 6750 section 3: the error and a human-readable description go
        // into the Bearer challenge; Basic has no such parameters.
        Some(error) if challenge.starts_with("Bearer ") => format!(
            "{challenge},error=\"{error}\",error_description=\"{}\"",
            quoted_string_safe(&message)
        ),
        _ => challenge.to_string(),
    };
    let response = Response::json(status, &body);
    if challenge.is_empty() {
        // The operator page asks itself for credentials: a challenge would
        // make the browser show its own login box over it.
        return response;
    }
    response.header("WWW-Authenticate", challenge)
}

/// What was asked for, in words: "push to team/app".
fn requested(need: &Need) -> String {
    match need {
        Need::Repository { namespace, action } => match action {
            Action::Pull => format!("pull from {namespace}"),
            Action::Push => format!("push to {namespace}"),
            Action::Delete => format!("delete from {namespace}"),
        },
        Need::Catalog => "list the catalog".to_string(),
        Need::Administrator => "use the administration API".to_string(),
        Need::Base | Need::Token | Need::Nothing => "use this registry".to_string(),
    }
}

/// distribution's `detail` for an authorization error: the access refused.
fn access_detail(need: &Need) -> Option<serde_json::Value> {
    let (kind, name, action) = match need {
        Need::Repository { namespace, action } => (
            "repository",
            namespace.as_str(),
            match action {
                Action::Pull => "pull",
                Action::Push => "push",
                Action::Delete => "delete",
            },
        ),
        Need::Catalog => ("registry", "catalog", "*"),
        _ => return None,
    };
    Some(serde_json::json!([{ "Type": kind, "Name": name, "Action": action }]))
}

/// `error_description` allows printable ASCII except `"` and `\` (RFC 6750
/// section 3); anything else becomes a space.
fn quoted_string_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => ' ',
            c if (' '..='~').contains(&c) => c,
            _ => ' ',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHALLENGE: &str =
        "Bearer realm=\"http://h/v2/token\",service=\"angos\",scope=\"repository:team/app:pull,push\"";

    fn push() -> Need {
        Need::Repository {
            namespace: "team/app".into(),
            action: Action::Push,
        }
    }

    fn body(response: &Response) -> serde_json::Value {
        match &response.body {
            crate::http::Body::Bytes(bytes) => serde_json::from_slice(bytes).unwrap(),
            other => panic!("not a JSON body: {other:?}"),
        }
    }

    /// Distribution's client turns an error without `detail` whose message is
    /// the code's default into a bare code, which docker's push retries.
    fn assert_not_a_bare_code(response: &Response) {
        let error = &body(response)["errors"][0];
        let default = match error["code"].as_str() {
            Some("UNAUTHORIZED") => "authentication required",
            Some("DENIED") => "requested access to the resource is denied",
            other => panic!("unexpected code {other:?}"),
        };
        assert!(
            error.get("detail").is_some() || error["message"] != default,
            "{error}"
        );
    }

    #[test]
    fn no_credentials_get_the_challenge_and_a_detail_naming_the_access() {
        let response = refusal(Refused::NoCredentials, &push(), CHALLENGE, None);
        assert_eq!(response.status, 401);
        // RFC 6750 3.1: no error code when the request had no credentials.
        assert_eq!(response.header_value("www-authenticate"), Some(CHALLENGE));
        let error = &body(&response)["errors"][0];
        assert_eq!(error["code"], "UNAUTHORIZED");
        assert_eq!(
            error["message"],
            "authentication required to push to team/app; log in first"
        );
        assert_eq!(
            error["detail"],
            serde_json::json!([{ "Type": "repository", "Name": "team/app", "Action": "push" }])
        );
        assert_not_a_bare_code(&response);
    }

    #[test]
    fn insufficient_tokens_and_rights_say_so_in_the_challenge() {
        let response = refusal(Refused::AnonymousToken, &push(), CHALLENGE, None);
        assert_eq!(response.status, 401);
        assert_eq!(
            response.header_value("www-authenticate").unwrap(),
            format!(
                "{CHALLENGE},error=\"insufficient_scope\",error_description=\"authentication required to push to team/app; log in first\""
            )
        );
        assert_not_a_bare_code(&response);

        let response = refusal(Refused::Denied, &push(), CHALLENGE, Some("alice"));
        assert_eq!(response.status, 403);
        assert!(
            response.header_value("www-authenticate").unwrap().ends_with(
                ",error=\"insufficient_scope\",error_description=\"alice may not push to team/app\""
            )
        );
        let error = &body(&response)["errors"][0];
        assert_eq!(error["code"], "DENIED");
        assert_eq!(error["message"], "alice may not push to team/app");
        assert_not_a_bare_code(&response);
    }

    #[test]
    fn bad_credentials_and_tokens() {
        let response = refusal(
            Refused::BadCredentials(Failure::InvalidToken),
            &push(),
            CHALLENGE,
            None,
        );
        assert_eq!(response.status, 401);
        assert!(
            response
                .header_value("www-authenticate")
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
        assert_not_a_bare_code(&response);

        let response = refusal(
            Refused::BadCredentials(Failure::WrongPassword),
            &push(),
            CHALLENGE,
            None,
        );
        assert_eq!(response.header_value("www-authenticate"), Some(CHALLENGE));
        assert_eq!(
            body(&response)["errors"][0]["message"],
            "incorrect username or password"
        );

        // The token endpoint: Basic challenge, and docker's `details` string.
        let basic = "Basic realm=\"angos\", charset=\"UTF-8\"";
        let response = refusal(
            Refused::BadCredentials(Failure::UnknownUser),
            &Need::Token,
            basic,
            None,
        );
        assert_eq!(response.status, 401);
        assert_eq!(response.header_value("www-authenticate"), Some(basic));
        let json = body(&response);
        assert_eq!(json["details"], "incorrect username or password");
        assert_eq!(json["errors"][0]["message"], "incorrect username or password");
    }

    #[test]
    fn descriptions_stay_inside_a_quoted_string() {
        assert_eq!(quoted_string_safe("a \"b\" \\ c\u{e9}"), "a  b    c ");
    }
}
