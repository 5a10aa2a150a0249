//! Content digests (`algorithm:hex`, OCI image-spec "Digests") and the
//! incremental SHA-256 used while bytes stream to disk.

use std::fmt;

use sha2::Digest as _;

/// The registered algorithms we implement (image-spec "Registered algorithms").
/// Declared in this order so that the derived `Ord` of `Digest` sorts like its
/// text: "sha256" < "sha512".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding: two characters per output byte.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest. Only `sha256` (64 lowercase hex) and `sha512`
/// (128 lowercase hex) are accepted as registered algorithms; other
/// grammatically valid algorithms are rejected as unsupported.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    /// Lowercase hex, exactly `algorithm.hex_len()` characters.
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Not `algorithm:encoded` per the grammar, or wrong length/charset for the algorithm.
    Invalid,
    /// Grammatically valid but an algorithm we do not implement.
    Unsupported,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::Invalid => f.write_str("invalid digest"),
            DigestError::Unsupported => f.write_str("unsupported digest algorithm"),
        }
    }
}

/// `algorithm := algorithm-component (algorithm-separator algorithm-component)*`
/// with `algorithm-component := [a-z0-9]+` and `algorithm-separator := [+._-]`:
/// separators never lead, trail or repeat.
fn is_valid_algorithm(text: &str) -> bool {
    let mut previous_was_separator = true; // forbids a leading separator
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'0'..=b'9' => previous_was_separator = false,
            b'+' | b'.' | b'_' | b'-' if !previous_was_separator => previous_was_separator = true,
            _ => return false,
        }
    }
    !previous_was_separator // forbids an empty algorithm and a trailing separator
}

/// `encoded := [a-zA-Z0-9=_-]+`
fn is_valid_encoded(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

/// Lowercase only: the registered algorithms define the encoding as lowercase
/// hex, so `sha256:ABC…` is a different (invalid) string, not the same digest.
fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Bytes as lowercase hex: digests, ids, signatures and tokens all use this.
pub fn to_lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

impl Digest {
    /// Parses `sha256:<64 hex>` / `sha512:<128 hex>`.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, encoded)) = text.split_once(':') else {
            return Err(DigestError::Invalid);
        };
        // The encoded part's charset has no ':', so a second one is a grammar error.
        if !is_valid_algorithm(algorithm) || !is_valid_encoded(encoded) {
            return Err(DigestError::Invalid);
        }
        let Some(algorithm) = Algorithm::from_name(algorithm) else {
            return Err(DigestError::Unsupported);
        };
        if encoded.len() != algorithm.hex_len() || !is_lower_hex(encoded) {
            return Err(DigestError::Invalid);
        }
        Ok(Digest {
            algorithm,
            hex: encoded.to_owned(),
        })
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::sha256();
        hasher.update(bytes);
        hasher.digest()
    }

    /// `sha256` or `sha512`.
    pub fn algorithm(&self) -> &str {
        self.algorithm.name()
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

#[derive(Clone)]
enum HasherState {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// Incremental hasher for the algorithm of a digest a client announced,
/// or SHA-256 by default. Cloneable so an upload's state can be kept between
/// PATCH requests.
#[derive(Clone)]
pub struct Hasher {
    state: HasherState,
}

impl Hasher {
    pub fn sha256() -> Hasher {
        Hasher {
            state: HasherState::Sha256(sha2::Sha256::new()),
        }
    }

    /// A hasher for the algorithm named `algorithm` (`sha256` or `sha512`, as
    /// returned by [`Digest::algorithm`]); `None` for any other name.
    pub fn for_algorithm(algorithm: &str) -> Option<Hasher> {
        Algorithm::from_name(algorithm).map(Hasher::with_algorithm)
    }

    /// A hasher whose result can be compared with `digest`.
    pub fn for_digest(digest: &Digest) -> Hasher {
        Hasher::with_algorithm(digest.algorithm)
    }

    fn with_algorithm(algorithm: Algorithm) -> Hasher {
        let state = match algorithm {
            Algorithm::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => HasherState::Sha512(sha2::Sha512::new()),
        };
        Hasher { state }
    }

    /// `sha256` or `sha512`.
    pub fn algorithm(&self) -> &str {
        match self.state {
            HasherState::Sha256(_) => Algorithm::Sha256.name(),
            HasherState::Sha512(_) => Algorithm::Sha512.name(),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            HasherState::Sha256(state) => state.update(bytes),
            HasherState::Sha512(state) => state.update(bytes),
        }
    }

    /// The digest of `bytes` fed after what was fed so far.
    pub fn digest_of(mut self, bytes: &[u8]) -> Digest {
        self.update(bytes);
        self.digest()
    }

    /// The digest of everything fed so far (does not consume the state).
    pub fn digest(&self) -> Digest {
        // `finalize` consumes the hasher; finalize a copy so an upload can
        // report its running digest and keep accepting chunks.
        match &self.state {
            HasherState::Sha256(state) => Digest {
                algorithm: Algorithm::Sha256,
                hex: to_lower_hex(&state.clone().finalize()),
            },
            HasherState::Sha512(state) => Digest {
                algorithm: Algorithm::Sha512,
                hex: to_lower_hex(&state.clone().finalize()),
            },
        }
    }
}

impl Hasher {
    /// The state as bytes, to carry on where it stopped in another process
    /// (an upload whose chunks reach different replicas): the algorithm's
    /// name, a NUL, then the hash's own serialized state.
    pub fn save(&self) -> Vec<u8> {
        use sha2::digest::common::hazmat::SerializableState;
        let mut bytes = self.algorithm().as_bytes().to_vec();
        bytes.push(0);
        match &self.state {
            HasherState::Sha256(state) => bytes.extend_from_slice(&state.serialize()),
            HasherState::Sha512(state) => bytes.extend_from_slice(&state.serialize()),
        }
        bytes
    }

    /// A hasher from `save`'s bytes; `None` when they are not one.
    pub fn restore(bytes: &[u8]) -> Option<Hasher> {
        use sha2::digest::common::hazmat::SerializableState;
        let split = bytes.iter().position(|&b| b == 0)?;
        let (name, serialized) = (&bytes[..split], &bytes[split + 1..]);
        let state = match Algorithm::from_name(std::str::from_utf8(name).ok()?)? {
            Algorithm::Sha256 => {
                HasherState::Sha256(sha2::Sha256::deserialize(serialized.try_into().ok()?).ok()?)
            }
            Algorithm::Sha512 => {
                HasherState::Sha512(sha2::Sha512::deserialize(serialized.try_into().ok()?).ok()?)
            }
        };
        Some(Hasher { state })
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC_SHA256: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_SHA512: &str = "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY_SHA256);
        assert_eq!(Digest::sha256_of(b"abc").to_string(), ABC_SHA256);
    }

    #[test]
    fn a_saved_state_carries_on_where_it_stopped() {
        for algorithm in ["sha256", "sha512"] {
            let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
            for split in [0, 1, 63, 64, 65, 127, 128, 129, 999, 1000] {
                let mut whole = Hasher::for_algorithm(algorithm).unwrap();
                whole.update(&data);
                let mut first = Hasher::for_algorithm(algorithm).unwrap();
                first.update(&data[..split]);
                let mut resumed = Hasher::restore(&first.save()).unwrap();
                resumed.update(&data[split..]);
                assert_eq!(resumed.digest(), whole.digest(), "{algorithm} split at {split}");
            }
        }
        assert!(Hasher::restore(b"sha256\0short").is_none());
        assert!(Hasher::restore(b"md5\0").is_none());
        assert!(Hasher::restore(b"").is_none());
    }

    #[test]
    fn sha512_known_vector() {
        let mut hasher = Hasher::for_algorithm("sha512").unwrap();
        hasher.update(b"abc");
        assert_eq!(hasher.digest().to_string(), ABC_SHA512);
        assert_eq!(hasher.algorithm(), "sha512");
    }

    #[test]
    fn incremental_digest_does_not_consume_state() {
        let mut hasher = Hasher::sha256();
        hasher.update(b"a");
        let partial = hasher.digest();
        assert_eq!(partial, Digest::sha256_of(b"a"));
        hasher.update(b"bc");
        assert_eq!(hasher.digest().to_string(), ABC_SHA256);
        // A clone carries the state: chunks fed to it continue the same stream.
        let mut copy = hasher.clone();
        copy.update(b"d");
        assert_eq!(copy.digest(), Digest::sha256_of(b"abcd"));
        assert_eq!(hasher.digest().to_string(), ABC_SHA256);
    }

    #[test]
    fn for_algorithm_and_for_digest() {
        assert!(Hasher::for_algorithm("sha256").is_some());
        assert!(Hasher::for_algorithm("sha384").is_none());
        assert!(Hasher::for_algorithm("SHA256").is_none());
        let expected = Digest::parse(ABC_SHA512).unwrap();
        let mut hasher = Hasher::for_digest(&expected);
        hasher.update(b"abc");
        assert_eq!(hasher.digest(), expected);
    }

    #[test]
    fn parse_round_trips() {
        for text in [EMPTY_SHA256, ABC_SHA256, ABC_SHA512] {
            let digest = Digest::parse(text).unwrap();
            assert_eq!(digest.to_string(), text);
            let (algorithm, hex) = text.split_once(':').unwrap();
            assert_eq!(digest.algorithm(), algorithm);
            assert_eq!(digest.hex(), hex);
        }
    }

    #[test]
    fn parse_rejects_invalid() {
        let hex64 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            String::new(),
            ":".to_owned(),
            hex64.to_owned(),
            format!(":{hex64}"),
            "sha256:".to_owned(),
            format!("sha256:{}", hex64.to_uppercase()),
            format!("sha256:{}", &hex64[..63]),
            format!("sha256:{hex64}0"),
            format!("sha256:{}g", &hex64[..63]),
            format!("SHA256:{hex64}"),
            format!("sha256:{hex64}:"),
            format!("sha256 :{hex64}"),
            format!("sha512:{hex64}"),
            format!("-sha256:{hex64}"),
            format!("sha256-:{hex64}"),
            format!("sha+-256:{hex64}"),
            "multihash+base58:Qm/RZ".to_owned(),
        ];
        for text in &cases {
            assert_eq!(Digest::parse(text), Err(DigestError::Invalid), "{text:?}");
        }
    }

    #[test]
    fn parse_flags_unsupported_algorithms() {
        let cases = [
            "sha384:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        ];
        for text in cases {
            assert_eq!(Digest::parse(text), Err(DigestError::Unsupported), "{text:?}");
        }
    }

    #[test]
    fn ordering_matches_text() {
        let a = Digest::parse(ABC_SHA256).unwrap();
        let b = Digest::parse(EMPTY_SHA256).unwrap();
        let c = Digest::parse(ABC_SHA512).unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string() < b.to_string(), a < b);
    }
}
