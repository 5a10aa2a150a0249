//! The `Authorization` request header (`auth::basic`, and bearer tokens of
//! `auth::token`) and the password hash strings of the configuration
//! (`auth::password`). Input: the text, with invalid UTF-8 replaced, as a
//! header value, a token and a hash string.
#![no_main]

use angos::auth::basic::{AuthorizationError, Credentials, parse_authorization};
use angos::auth::password::{MAX_ITERATIONS, MIN_ITERATIONS, PasswordHash};
use angos::auth::token::{TOKEN_LIFETIME_SECS, TokenError, TokenKey, bearer};
use libfuzzer_sys::fuzz_target;

/// Standard base64 with padding, written independently of the crate's
/// decoder so the two check each other.
fn encode(bytes: &[u8]) -> String {
    const SYMBOLS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let word = group
            .iter()
            .enumerate()
            .fold(0u32, |word, (at, &byte)| word | u32::from(byte) << (16 - 8 * at));
        for at in 0..4 {
            if at <= group.len() {
                out.push(char::from(SYMBOLS[(word >> (18 - 6 * at)) as usize & 0x3f]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);

    match parse_authorization(Some(&text)) {
        Ok(Credentials::Basic { username, password }) => {
            // The user name ends at the first ':', and only the anonymous pair is empty.
            assert!(!username.contains(':'));
            assert!(!username.is_empty());
            assert!(username.len() + 1 + password.len() <= 4096);
            let all = format!("{username}:{password}");
            assert!(!all.bytes().any(|byte| byte < 0x20 || byte == 0x7f));
            // What a client would send for these credentials reads back the same.
            let again = parse_authorization(Some(&format!("Basic {}", encode(all.as_bytes()))));
            assert_eq!(again, Ok(Credentials::Basic { username, password }));
        }
        Ok(Credentials::Anonymous) => {
            assert!(text.trim_matches([' ', '\t']).len() > "Basic".len());
        }
        Err(AuthorizationError::UnsupportedScheme) => {
            let scheme = text
                .trim_matches([' ', '\t'])
                .split([' ', '\t'])
                .next()
                .unwrap_or("");
            assert!(!scheme.eq_ignore_ascii_case("basic"));
        }
        Err(AuthorizationError::Malformed(reason)) => assert!(!reason.is_empty()),
    }

    // Tokens: anything a client sends is refused unless we signed it, and
    // whatever we sign reads back as the identity it names.
    let key = TokenKey::from_bytes([0x5a; 32]);
    if let Some(token) = bearer(Some(&text)) {
        assert!(!token.is_empty());
    }
    // Accepting the fuzzer's text would mean it forged an HMAC.
    let credential = |_: &str| Some("user\n$hash");
    assert!(key.verify(&text, 1_000, credential).is_err(), "accepted {text:?}");
    if text.len() <= 400 {
        let identity = (!text.is_empty()).then(|| text.to_string());
        let bound = if identity.is_some() { "user\n$hash" } else { "" };
        let token = key.issue(identity.as_deref(), bound, 1_000);
        assert_eq!(
            key.verify(&token, 1_000 + TOKEN_LIFETIME_SECS - 1, credential),
            Ok(identity.clone())
        );
        assert_eq!(
            key.verify(&token, 1_000 + TOKEN_LIFETIME_SECS, credential),
            Err(TokenError::Expired)
        );
        if identity.is_some() {
            // Bound to the credential it was issued for.
            let changed = |_: &str| Some("user\n$other");
            assert!(key.verify(&token, 1_000, changed).is_err());
        }
        // One flipped character anywhere is refused.
        let mut altered = token.clone().into_bytes();
        let at = usize::from(input.first().copied().unwrap_or(0)) % altered.len();
        altered[at] = if altered[at] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(
            key.verify(&altered, 1_000, credential).is_err(),
            "accepted {altered:?}"
        );
    }

    match PasswordHash::parse(&text) {
        Ok(hash) => {
            assert!((MIN_ITERATIONS..=MAX_ITERATIONS).contains(&hash.iterations()));
            // Display writes the PHC form, which parses to the same hash and
            // prints the same again, whichever form was read.
            let written = hash.to_string();
            assert!(written.starts_with("$pbkdf2-sha256$i="));
            assert_eq!(PasswordHash::parse(&written).as_ref(), Ok(&hash));
            assert_eq!(
                PasswordHash::parse(&written).map(|again| again.to_string()),
                Ok(written)
            );
            // Starting a check is cheap; running it is not (at least 10,000 iterations).
            assert_eq!(hash.verify(b"x").remaining(), hash.iterations());
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
