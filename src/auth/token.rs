//! Bearer tokens for the registry token handshake that docker, containerd,
//! podman and oras speak: a client challenged with `Bearer realm=...` asks
//! the realm (our `/v2/token`) for a token, with Basic credentials or none,
//! and sends it with every request after. One slow password check buys a
//! token; each request then costs one HMAC. Anonymous clients get a token
//! too, which is what lets anonymous pulls and authenticated pushes share a
//! registry: the `/v2/` ping can always challenge.
//!
//! A token is `v1.<hex identity>.<expiry, unix seconds>.<hex HMAC-SHA256>`,
//! keyed by a secret drawn at start: tokens do not survive a restart, and a
//! client whose token is refused fetches a new one. The HMAC also covers the
//! identity's credential (user name and password hash), which the token
//! does not carry: a reload that changes either voids the identity's tokens.

use super::password::constant_time_eq;
use crate::digest::to_lower_hex as hex;
use crate::hmac::hmac_sha256;

/// How long a token is good for (what `expires_in` says).
pub const TOKEN_LIFETIME_SECS: u64 = 300;
/// Longer strings are not ours: refused before any work.
const TOKEN_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn random() -> TokenKey {
        let mut key = [0u8; 32];
        crate::storage::random_bytes(&mut key);
        TokenKey(key)
    }

    pub fn from_bytes(key: [u8; 32]) -> TokenKey {
        TokenKey(key)
    }

    /// A token for `identity` (its configuration name), bound to its
    /// `credential`, or an anonymous one (an empty credential).
    pub fn issue(&self, identity: Option<&str>, credential: &str, now_secs: u64) -> String {
        let body = format!(
            "v1.{}.{}",
            hex(identity.unwrap_or("").as_bytes()),
            now_secs + TOKEN_LIFETIME_SECS
        );
        let signature = hex(&self.sign(&body, credential));
        format!("{body}.{signature}")
    }

    /// The HMAC of a token's text and the credential it is bound to.
    fn sign(&self, body: &str, credential: &str) -> [u8; 32] {
        let mut message = Vec::with_capacity(body.len() + 1 + credential.len());
        message.extend_from_slice(body.as_bytes());
        message.push(b'\n');
        message.extend_from_slice(credential.as_bytes());
        hmac_sha256(&self.0, &message)
    }

    /// The identity a token names (`None`: anonymous), if it is ours, current,
    /// and bound to the credential `credential_of` gives for that identity
    /// now (`None` from it: the identity no longer exists).
    pub fn verify<'a>(
        &self,
        token: &str,
        now_secs: u64,
        credential_of: impl FnOnce(&str) -> Option<&'a str>,
    ) -> Result<Option<String>, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Malformed);
        }
        let (body, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = body.split('.');
        let (Some("v1"), Some(identity), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature: [u8; 32] = unhex(signature)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        let identity = String::from_utf8(unhex(identity).ok_or(TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
        let credential = if identity.is_empty() {
            ""
        } else {
            credential_of(&identity).ok_or(TokenError::BadSignature)?
        };
        let expected = self.sign(body, credential);
        if !constant_time_eq(&signature, &expected) {
            return Err(TokenError::BadSignature);
        }
        let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        if now_secs >= expiry {
            return Err(TokenError::Expired);
        }
        Ok((!identity.is_empty()).then_some(identity))
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

/// The token value of an `Authorization: Bearer <token>` header, if it is one.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_bytes([7; 32])
    }

    /// ci's credential as the policy would give it.
    fn current(id: &str) -> Option<&'static str> {
        (id == "ci").then_some("ci-bot\n$hash")
    }

    #[test]
    fn tokens_name_their_identity_until_they_expire() {
        let key = key();
        let token = key.issue(Some("ci"), "ci-bot\n$hash", 1000);
        assert_eq!(key.verify(&token, 1000, current), Ok(Some("ci".to_string())));
        assert_eq!(
            key.verify(&token, 1000 + TOKEN_LIFETIME_SECS - 1, current),
            Ok(Some("ci".into()))
        );
        assert_eq!(
            key.verify(&token, 1000 + TOKEN_LIFETIME_SECS, current),
            Err(TokenError::Expired)
        );
        let anonymous = key.issue(None, "", 1000);
        assert_eq!(key.verify(&anonymous, 1001, current), Ok(None));
    }

    #[test]
    fn a_changed_credential_or_a_removed_identity_voids_the_token() {
        let key = key();
        let token = key.issue(Some("ci"), "ci-bot\n$hash", 1000);
        let changed = |_: &str| Some("ci-bot\n$new-hash");
        assert_eq!(key.verify(&token, 1000, changed), Err(TokenError::BadSignature));
        let renamed = |_: &str| Some("robot\n$hash");
        assert_eq!(key.verify(&token, 1000, renamed), Err(TokenError::BadSignature));
        assert_eq!(key.verify(&token, 1000, |_| None), Err(TokenError::BadSignature));
    }

    #[test]
    fn forgeries_and_junk_are_refused() {
        let key = key();
        let token = key.issue(Some("ci"), "ci-bot\n$hash", 1000);
        // Another key's token, a renamed identity, a later expiry: all unsigned by us.
        let other = TokenKey::from_bytes([8; 32]).issue(Some("ci"), "ci-bot\n$hash", 1000);
        assert_eq!(key.verify(&other, 1000, current), Err(TokenError::BadSignature));
        let renamed = token.replacen(&hex(b"ci"), &hex(b"admin"), 1);
        let any = |_: &str| Some("ci-bot\n$hash");
        assert_eq!(key.verify(&renamed, 1000, any), Err(TokenError::BadSignature));
        let (body, signature) = token.rsplit_once('.').unwrap();
        let (prefix, _) = body.rsplit_once('.').unwrap();
        let extended = format!("{prefix}.99999999999.{signature}");
        assert_eq!(
            key.verify(&extended, 1000, current),
            Err(TokenError::BadSignature)
        );
        for junk in [
            "",
            "v1",
            "v1...",
            "v2.00.1.00",
            "v1.zz.1.00",
            "v1.00.x.00",
            &"a".repeat(2000),
        ] {
            assert!(key.verify(junk, 1000, current).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn bearer_headers_are_recognised() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer \t abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
