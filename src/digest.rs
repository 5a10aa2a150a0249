//! Content digests (`algorithm:hex`, OCI image-spec "Digests") and the
//! incremental SHA-256 used while bytes stream to disk.

use std::fmt;

/// A validated digest. Only `sha256` (64 lowercase hex) and `sha512`
/// (128 lowercase hex) are accepted as registered algorithms; other
/// grammatically valid algorithms are rejected as unsupported.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    // IMPLEMENT: algorithm and encoded parts.
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

impl Digest {
    /// Parses `sha256:<64 hex>` / `sha512:<128 hex>`.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        todo!()
    }
    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        todo!()
    }
    /// `sha256` or `sha512`.
    pub fn algorithm(&self) -> &str {
        todo!()
    }
    /// The hex part.
    pub fn hex(&self) -> &str {
        todo!()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// Incremental hasher for the algorithm of a digest a client announced,
/// or SHA-256 by default. Cloneable so an upload's state can be kept between
/// PATCH requests.
#[derive(Clone)]
pub struct Hasher {
    // IMPLEMENT: enum over sha2::Sha256 / sha2::Sha512.
}

impl Hasher {
    pub fn sha256() -> Hasher {
        todo!()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        todo!()
    }
    /// The digest of everything fed so far (does not consume the state).
    pub fn digest(&self) -> Digest {
        todo!()
    }
}
