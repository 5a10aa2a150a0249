//! Base64 (RFC 4648 section 4) in the spellings the server reads and
//! writes: the standard alphabet of HTTP Basic credentials, PHC hash
//! strings, Standard Webhooks secrets and signatures, and passlib's "ab64",
//! which writes '.' for '+'. One decoder, so every caller agrees on what is
//! malformed.

/// Which character stands for the value 62; the other 63 are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alphabet {
    Standard,
    Ab64,
}

/// Whether trailing '=' may appear. Where it may, it must be exactly what
/// RFC 4648 prescribes: a length that is a multiple of four, one or two '='.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    Forbidden,
    Optional,
}

impl Alphabet {
    fn symbol(self, value: u8) -> char {
        const SHARED: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        match (self, value) {
            (Alphabet::Ab64, 62) => '.',
            _ => char::from(SHARED[usize::from(value & 0x3f)]),
        }
    }

    fn value(self, symbol: u8) -> Option<u32> {
        let value = match symbol {
            b'A'..=b'Z' => symbol - b'A',
            b'a'..=b'z' => symbol - b'a' + 26,
            b'0'..=b'9' => symbol - b'0' + 52,
            b'+' if self == Alphabet::Standard => 62,
            b'.' if self == Alphabet::Ab64 => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(value))
    }
}

/// Encodes with the padding RFC 4648 prescribes (Standard Webhooks
/// signatures are compared as padded text).
pub fn encode_padded(bytes: &[u8]) -> String {
    let mut text = encode(bytes, Alphabet::Standard);
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

/// Encodes without padding: both PHC strings and passlib omit it.
pub fn encode(bytes: &[u8], alphabet: Alphabet) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let mut word = 0u32;
        for (at, &byte) in group.iter().enumerate() {
            word |= u32::from(byte) << (16 - 8 * at);
        }
        // n bytes carry 8n bits, which take n + 1 symbols of six bits.
        for at in 0..=group.len() {
            let value = (word >> (18 - 6 * at)) & 0x3f;
            out.push(alphabet.symbol(value as u8));
        }
    }
    out
}

/// Decodes `text`, or None if it is not base64 in this alphabet: a foreign
/// character, a length no encoding produces, wrong padding, or unused low
/// bits in the last symbol that are not zero. The last rule makes the
/// encoding of a byte string unique, so decode and encode round-trip exactly.
pub fn decode(text: &str, alphabet: Alphabet, padding: Padding) -> Option<Vec<u8>> {
    let mut symbols = text.as_bytes();
    let pads = symbols.iter().rev().take_while(|&&byte| byte == b'=').count();
    if pads > 0 {
        if padding == Padding::Forbidden || pads > 2 || !symbols.len().is_multiple_of(4) {
            return None;
        }
        symbols = &symbols[..symbols.len() - pads];
    }
    // One leftover symbol holds six bits, less than a byte: no input encodes to that.
    if symbols.len() % 4 == 1 {
        return None;
    }

    let mut out = Vec::with_capacity(symbols.len() / 4 * 3 + 2);
    for group in symbols.chunks(4) {
        let mut word = 0u32;
        for (at, &symbol) in group.iter().enumerate() {
            word |= alphabet.value(symbol)? << (18 - 6 * at);
        }
        // k symbols carry 6k bits: k - 1 whole bytes, the rest must be zero.
        let bytes = group.len() - 1;
        if word & (0x00ff_ffff >> (8 * bytes)) != 0 {
            return None;
        }
        for at in 0..bytes {
            out.push((word >> (16 - 8 * at)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard(text: &str) -> Option<Vec<u8>> {
        decode(text, Alphabet::Standard, Padding::Optional)
    }

    #[test]
    fn encodes_the_rfc_4648_vectors_without_padding() {
        let vectors: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (bytes, text) in vectors {
            assert_eq!(encode(bytes, Alphabet::Standard), text);
            assert_eq!(
                decode(text, Alphabet::Standard, Padding::Forbidden).as_deref(),
                Some(bytes)
            );
            assert_eq!(standard(text).as_deref(), Some(bytes));
        }
    }

    #[test]
    fn decodes_correct_padding_only_where_allowed() {
        assert_eq!(standard("Zg==").as_deref(), Some(&b"f"[..]));
        assert_eq!(standard("Zm8=").as_deref(), Some(&b"fo"[..]));
        assert_eq!(standard("Og==").as_deref(), Some(&b":"[..]));
        assert_eq!(decode("Zg==", Alphabet::Standard, Padding::Forbidden), None);
        assert_eq!(decode("Zg==", Alphabet::Ab64, Padding::Forbidden), None);
        for wrong in [
            "Zg=", "Zg===", "Zm8==", "Zm9v=", "Zm9v====", "=", "==", "A===", "Z=g=",
        ] {
            assert_eq!(standard(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn rejects_impossible_lengths_and_foreign_characters() {
        for wrong in ["Z", "Zm9vY", "Zm 9v", "Zm9v\n", "Zm-v", "Zm_v", "Zm9é", "Zm9v."] {
            assert_eq!(standard(wrong), None, "{wrong}");
        }
        assert_eq!(decode("Zm+v", Alphabet::Ab64, Padding::Forbidden), None);
    }

    #[test]
    fn rejects_unused_bits_that_are_not_zero() {
        // "Zh" and "Zm9" carry a set bit beyond the bytes they encode.
        assert_eq!(standard("Zh"), None);
        assert_eq!(standard("Zh=="), None);
        assert_eq!(standard("Zm9="), None);
        assert_eq!(standard("Zm8").as_deref(), Some(&b"fo"[..]));
    }

    #[test]
    fn ab64_swaps_plus_for_dot() {
        let bytes = [0xfb, 0xef, 0xbe, 0xff];
        assert_eq!(encode(&bytes, Alphabet::Standard), "++++/w");
        assert_eq!(encode(&bytes, Alphabet::Ab64), "..../w");
        assert_eq!(
            decode("..../w", Alphabet::Ab64, Padding::Forbidden).as_deref(),
            Some(&bytes[..])
        );
        assert_eq!(decode("..../w", Alphabet::Standard, Padding::Forbidden), None);
    }

    #[test]
    fn round_trips_every_length_and_byte() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        for length in 0..bytes.len() {
            let piece = &bytes[length..];
            for alphabet in [Alphabet::Standard, Alphabet::Ab64] {
                let text = encode(piece, alphabet);
                assert_eq!(
                    decode(&text, alphabet, Padding::Forbidden).as_deref(),
                    Some(piece)
                );
            }
        }
    }
}
