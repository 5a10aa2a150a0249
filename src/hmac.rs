//! HMAC-SHA256 (RFC 2104) over `sha2`: the keyed digest of webhook
//! signatures, registry tokens and AWS Signature Version 4. A pure function
//! of key and bytes.

use sha2::{Digest as _, Sha256};

/// SHA-256's block size in bytes: RFC 2104's `B`.
const BLOCK_BYTES: usize = 64;
/// RFC 2104 section 2: the inner and outer pad bytes.
const IPAD: u8 = 0x36;
const OPAD: u8 = 0x5c;

/// HMAC-SHA256 of `message` keyed by `key` (RFC 2104 section 2):
/// `H((K ^ opad) || H((K ^ ipad) || message))`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // Keys longer than a block are hashed first; shorter ones are zero-padded
    // (RFC 2104 section 3). Both end up in one block-sized buffer.
    let mut block = [0u8; BLOCK_BYTES];
    if key.len() > BLOCK_BYTES {
        let hashed = Sha256::digest(key);
        block[..hashed.len()].copy_from_slice(&hashed);
    } else {
        block[..key.len()].copy_from_slice(key);
    }

    let mut inner_pad = [0u8; BLOCK_BYTES];
    let mut outer_pad = [0u8; BLOCK_BYTES];
    for (at, &byte) in block.iter().enumerate() {
        inner_pad[at] = byte ^ IPAD;
        outer_pad[at] = byte ^ OPAD;
    }

    let mut inner = Sha256::new();
    inner.update(inner_pad);
    inner.update(message);
    let inner_digest = inner.finalize();

    let mut outer = Sha256::new();
    outer.update(outer_pad);
    outer.update(inner_digest);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::to_lower_hex as hex;

    #[test]
    fn rfc4231_case_1() {
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn rfc4231_case_2_short_key() {
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn rfc4231_case_6_key_longer_than_a_block() {
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn rfc4231_case_7_long_key_and_message() {
        let message = b"This is a test using a larger than block-size key and a larger than \
block-size data. The key needs to be hashed before being used by the HMAC algorithm.";
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], message)),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
        );
    }

    #[test]
    fn a_block_sized_key_is_used_as_is() {
        // 64 bytes is not "longer than a block": hashing it first would give a
        // different MAC, which verifiers would reject.
        let key = [0x42; BLOCK_BYTES];
        let hashed: [u8; 32] = Sha256::digest(key).into();
        assert_ne!(hmac_sha256(&key, b"m"), hmac_sha256(&hashed, b"m"));
        let long = [0x42; BLOCK_BYTES + 1];
        let long_hashed: [u8; 32] = Sha256::digest(long).into();
        assert_eq!(hmac_sha256(&long, b"m"), hmac_sha256(&long_hashed, b"m"));
    }
}
