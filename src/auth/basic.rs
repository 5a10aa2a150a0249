//! The `Authorization` request header (RFC 9110 section 11.6.2) with the
//! Basic scheme (RFC 7617): `Basic <base64 of user:password>`. Only decoding
//! and shape checks here; whether the credentials are any good is
//! `password`'s business.

use crate::base64::{self, Alphabet, Padding};

/// The most credential bytes accepted: a password may be up to 4096 bytes
/// (`angos hash-password` refuses longer), and nothing legitimate is longer.
const DECODED_MAX: usize = 4096;
/// The base64 length that can carry `DECODED_MAX` bytes, padding included;
/// longer tokens are refused before any decoding work.
const ENCODED_MAX: usize = DECODED_MAX.div_ceil(3) * 4;

/// Who a request claims to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No header, or Basic with an empty user name and password (container
    /// clients send `Basic Og==` when they have no credentials).
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

/// Why an `Authorization` header was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationError {
    /// A scheme other than Basic (Bearer, Digest...), which we do not accept.
    UnsupportedScheme,
    /// Basic, but not well-formed; the text says how, for the log.
    Malformed(&'static str),
}

/// `value` is the header value, None when the header is absent.
pub fn parse_authorization(value: Option<&str>) -> Result<Credentials, AuthorizationError> {
    let Some(value) = value else {
        return Ok(Credentials::Anonymous);
    };
    let value = value.trim_matches(is_blank);
    if value.is_empty() {
        return Err(AuthorizationError::Malformed("empty Authorization header"));
    }
    let (scheme, token) = match value.split_once(is_blank) {
        Some((scheme, rest)) => (scheme, rest.trim_start_matches(is_blank)),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthorizationError::UnsupportedScheme);
    }
    if token.is_empty() {
        return Err(AuthorizationError::Malformed("Basic without credentials"));
    }
    // token68 has no blanks: anything after one is an auth-param list or junk.
    if token.contains(is_blank) {
        return Err(AuthorizationError::Malformed("Basic credentials contain a space"));
    }
    if token.len() > ENCODED_MAX {
        return Err(AuthorizationError::Malformed("Basic credentials are too long"));
    }

    let decoded = base64::decode(token, Alphabet::Standard, Padding::Optional).ok_or(
        AuthorizationError::Malformed("Basic credentials are not valid base64"),
    )?;
    if decoded.len() > DECODED_MAX {
        return Err(AuthorizationError::Malformed("Basic credentials are too long"));
    }
    let decoded = String::from_utf8(decoded)
        .map_err(|_| AuthorizationError::Malformed("Basic credentials are not UTF-8"))?;
    // RFC 7617 section 2: neither part may hold control characters; they
    // would also end up in logs and in the event webhooks as the user name.
    if decoded.bytes().any(|byte| byte < 0x20 || byte == 0x7f) {
        return Err(AuthorizationError::Malformed(
            "Basic credentials contain control characters",
        ));
    }
    // The user name cannot contain ':', the password can: split at the first.
    let Some((username, password)) = decoded.split_once(':') else {
        return Err(AuthorizationError::Malformed("Basic credentials have no ':'"));
    };
    match (username.is_empty(), password.is_empty()) {
        (true, true) => Ok(Credentials::Anonymous),
        (true, false) => Err(AuthorizationError::Malformed(
            "Basic credentials have an empty user name",
        )),
        (false, _) => Ok(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }),
    }
}

/// HTTP's optional whitespace (RFC 9110 section 5.6.3): space and tab only.
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthorizationError::{Malformed, UnsupportedScheme};

    fn basic(username: &str, password: &str) -> Result<Credentials, AuthorizationError> {
        Ok(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    fn header(credentials: &[u8]) -> String {
        format!("Basic {}", base64::encode(credentials, Alphabet::Standard))
    }

    fn parse(value: &str) -> Result<Credentials, AuthorizationError> {
        parse_authorization(Some(value))
    }

    #[test]
    fn no_header_is_anonymous() {
        assert_eq!(parse_authorization(None), Ok(Credentials::Anonymous));
    }

    #[test]
    fn empty_credentials_are_anonymous() {
        // What docker, podman and containerd send without a login.
        assert_eq!(parse("Basic Og=="), Ok(Credentials::Anonymous));
        assert_eq!(parse("Basic Og"), Ok(Credentials::Anonymous));
    }

    #[test]
    fn decodes_the_rfc_7617_example() {
        assert_eq!(
            parse("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            basic("Aladdin", "open sesame")
        );
        // Padding is optional.
        assert_eq!(
            parse("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ"),
            basic("Aladdin", "open sesame")
        );
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            assert_eq!(
                parse(&format!("{scheme} dXNlcjpwdw==")),
                basic("user", "pw"),
                "{scheme}"
            );
        }
    }

    #[test]
    fn blanks_around_and_between_are_accepted() {
        for value in [
            "Basic  dXNlcjpwdw==",
            "Basic\tdXNlcjpwdw==",
            "Basic \t dXNlcjpwdw==",
            "  Basic dXNlcjpwdw==",
            "Basic dXNlcjpwdw==  ",
            "\tBasic dXNlcjpwdw==\t",
        ] {
            assert_eq!(parse(value), basic("user", "pw"), "{value:?}");
        }
    }

    #[test]
    fn the_password_may_contain_colons_and_be_empty() {
        assert_eq!(parse(&header(b"user:p:w:")), basic("user", "p:w:"));
        assert_eq!(parse(&header(b"user::")), basic("user", ":"));
        assert_eq!(parse(&header(b"user:")), basic("user", ""));
    }

    #[test]
    fn unicode_and_spaces_inside_credentials_are_kept() {
        assert_eq!(
            parse(&header("jösé:pass wörd ✓".as_bytes())),
            basic("jösé", "pass wörd ✓")
        );
        assert_eq!(parse(&header(b" user : pw ")), basic(" user ", " pw "));
    }

    #[test]
    fn other_schemes_are_unsupported() {
        for value in [
            "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x",
            "Digest username=\"a\", realm=\"r\"",
            "Negotiate YIIB",
            "Bearer",
            "Basicx dXNlcjpwdw==",
            "Basic-dXNlcjpwdw==",
            "dXNlcjpwdw==",
            "Basıc dXNlcjpwdw==",
        ] {
            assert_eq!(parse(value), Err(UnsupportedScheme), "{value:?}");
        }
    }

    #[test]
    fn malformed_headers_say_why() {
        let cases = [
            ("", "empty Authorization header"),
            ("   ", "empty Authorization header"),
            ("\t", "empty Authorization header"),
            ("Basic", "Basic without credentials"),
            ("Basic   ", "Basic without credentials"),
            ("Basic dXNl cjpwdw==", "Basic credentials contain a space"),
            ("Basic dXNlcjpwdw== extra", "Basic credentials contain a space"),
            ("Basic realm=\"x\"", "Basic credentials are not valid base64"),
            ("Basic dXNlcjpwdw=", "Basic credentials are not valid base64"),
            ("Basic dXNlcjpwdw===", "Basic credentials are not valid base64"),
            ("Basic dXNlcjpwd", "Basic credentials are not valid base64"),
            ("Basic dXNlcjpwdx==", "Basic credentials are not valid base64"),
            ("Basic dXNlcjpw-w==", "Basic credentials are not valid base64"),
            ("Basic dXNlcjpw_w==", "Basic credentials are not valid base64"),
            ("Basic =", "Basic credentials are not valid base64"),
            ("Basic ====", "Basic credentials are not valid base64"),
            ("Basic dXNlcg==", "Basic credentials have no ':'"),
            ("Basic OnB3", "Basic credentials have an empty user name"),
        ];
        for (value, reason) in cases {
            assert_eq!(parse(value), Err(Malformed(reason)), "{value:?}");
        }
    }

    #[test]
    fn control_characters_are_rejected_anywhere() {
        for credentials in [
            &b"us\0er:pw"[..],
            b"user:p\x01w",
            b"user\t:pw",
            b"user:pw\n",
            b"user:pw\r",
            b"\x1f:pw",
            b"user:\x7f",
            b"\0:",
        ] {
            assert_eq!(
                parse(&header(credentials)),
                Err(Malformed("Basic credentials contain control characters")),
                "{credentials:?}"
            );
        }
    }

    #[test]
    fn credentials_must_be_utf8() {
        for credentials in [&b"user:\xff"[..], b"\xc3:pw", b"user:\xed\xa0\x80"] {
            assert_eq!(
                parse(&header(credentials)),
                Err(Malformed("Basic credentials are not UTF-8")),
                "{credentials:?}"
            );
        }
    }

    #[test]
    fn length_is_limited_to_4096_decoded_bytes() {
        let mut credentials = b"user:".to_vec();
        credentials.resize(DECODED_MAX, b'p');
        let password = String::from_utf8(credentials[5..].to_vec()).unwrap();
        assert_eq!(parse(&header(&credentials)), basic("user", &password));

        credentials.push(b'p');
        assert_eq!(
            parse(&header(&credentials)),
            Err(Malformed("Basic credentials are too long"))
        );
        // Too long to be worth decoding at all, valid base64 or not.
        let huge = format!("Basic {}", "A".repeat(ENCODED_MAX + 1));
        assert_eq!(parse(&huge), Err(Malformed("Basic credentials are too long")));
        let huge = format!("Basic {}", "!".repeat(100_000));
        assert_eq!(parse(&huge), Err(Malformed("Basic credentials are too long")));
    }

    #[test]
    fn the_longest_padded_token_is_accepted() {
        // 4096 bytes with their '=' padding are exactly the encoded limit.
        let mut credentials = b"u:".to_vec();
        credentials.resize(DECODED_MAX, b'p');
        let token = format!("{}==", base64::encode(&credentials, Alphabet::Standard));
        assert_eq!(token.len(), ENCODED_MAX);
        assert!(matches!(
            parse(&format!("Basic {token}")),
            Ok(Credentials::Basic { .. })
        ));
    }
}
