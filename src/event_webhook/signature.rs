//! HMAC-SHA256 signatures of webhook bodies (RFC 2104): our
//! `X-Registry-Signature-256`, and the Standard Webhooks `webhook-signature`.
//! Pure functions of key and bytes: no I/O, no clock, no state; the token never leaves here
//! except as the keyed digest.

use crate::hmac::hmac_sha256;

/// The `X-Registry-Signature-256` value for `body`: `sha256=<lowercase hex>`, the
/// form the seed's Python and Go verifiers compare against.
pub fn signature_header(token: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(token.as_bytes(), body);
    format!("sha256={}", crate::digest::to_lower_hex(&mac))
}

/// The Standard Webhooks `webhook-signature` value: `v1,<base64 HMAC>` of
/// `{id}.{timestamp}.{body}` under each key, space-separated, so a receiver
/// holding any one of the keys (old or new, during a rotation) verifies it.
pub fn standard_signature(keys: &[&[u8]], id: &str, unix_secs: u64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(id.len() + 24 + body.len());
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(unix_secs.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    keys.iter()
        .map(|key| format!("v1,{}", crate::base64::encode_padded(&hmac_sha256(key, &signed))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bytes of key in a secret `angos webhook secret` makes.
pub const NEW_SECRET_KEY_BYTES: usize = 32;

/// A fresh Standard Webhooks secret, `whsec_` and the base64 of
/// `NEW_SECRET_KEY_BYTES` bytes from the kernel.
pub fn new_signing_secret() -> String {
    let mut key = [0u8; NEW_SECRET_KEY_BYTES];
    crate::entropy::os_fill(&mut key);
    format!(
        "{}{}",
        crate::config::webhook::SIGNING_SECRET_PREFIX,
        crate::base64::encode_padded(&key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::digest::to_lower_hex as hex;

    #[test]
    fn matches_the_spec_vector() {
        assert_eq!(
            hex(&hmac_sha256(b"test-secret", b"hello world")),
            "046e2496e13e0bfd8dbef84244dd188311a48086646355161bc4ad0769a49cf4"
        );
        assert_eq!(
            signature_header("test-secret", b"hello world"),
            "sha256=046e2496e13e0bfd8dbef84244dd188311a48086646355161bc4ad0769a49cf4"
        );
    }

    /// The example of the Standard Webhooks specification (and of its
    /// libraries' tests): this secret, id, timestamp and body.
    #[test]
    fn standard_webhooks_example_signature() {
        let key = crate::base64::decode(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            crate::base64::Alphabet::Standard,
            crate::base64::Padding::Optional,
        )
        .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard_signature(&[&key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let two = standard_signature(&[&key, b"another key of some length"], "id", 1, b"x");
        assert_eq!(two.split(' ').count(), 2);
        assert!(two.starts_with(&standard_signature(&[&key], "id", 1, b"x")));
    }
}
