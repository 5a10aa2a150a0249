//! Randomness as an injected source, beside the `Clock`: the machines that
//! need random values (event ids) take an `Entropy`, the kernel's in
//! production and a seeded one in simulations, so a seeded run replays bit
//! for bit. The one place that asks the kernel for random bytes.

use std::io;

use crate::digest::to_lower_hex;

/// A source of random bytes.
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]);
}

/// The kernel's random source (`getrandom(2)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        os_fill(buf);
    }
}

/// Fills `buf` from `getrandom(2)`.
pub fn os_fill(buf: &mut [u8]) {
    let mut filled = 0;
    // Each pass fills at least one byte or is interrupted by a signal, so
    // the loop ends; requests over 256 bytes may legitimately come back short.
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let result = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if result < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Only ENOSYS (a pre-3.17 kernel) is possible here; ids must not
            // be guessable, so there is no weaker fallback.
            panic!("getrandom failed: {error}");
        }
        filled += result as usize;
    }
}

/// A seeded generator (SplitMix64) for simulations and tests: the same seed
/// gives the same bytes. Never for ids an attacker could guess.
#[derive(Debug, Clone)]
pub struct SeededEntropy {
    state: u64,
}

impl SeededEntropy {
    pub fn new(seed: u64) -> SeededEntropy {
        SeededEntropy { state: seed }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A version 4 (RFC 9562) UUID from `entropy`, hyphenated and lowercase.
pub fn uuid_v4(entropy: &mut dyn Entropy) -> String {
    let mut bytes = [0u8; 16];
    entropy.fill(&mut bytes);
    // RFC 9562 section 5.4: version 0b0100 in the high nibble of octet 6,
    // variant 0b10 in the top bits of octet 8.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = to_lower_hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_bytes_and_ids() {
        let (mut one, mut two) = (SeededEntropy::new(7), SeededEntropy::new(7));
        let (mut a, mut b) = ([0u8; 13], [0u8; 13]);
        one.fill(&mut a);
        two.fill(&mut b);
        assert_eq!(a, b);
        assert_eq!(uuid_v4(&mut one), uuid_v4(&mut two));
        assert_ne!(
            uuid_v4(&mut SeededEntropy::new(8)),
            uuid_v4(&mut SeededEntropy::new(7))
        );
        let id = uuid_v4(&mut SeededEntropy::new(1));
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "RFC variant: {id}");
    }

    #[test]
    fn the_kernel_source_fills_any_length() {
        let mut buf = [0u8; 300];
        OsEntropy.fill(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
        OsEntropy.fill(&mut []);
    }
}
