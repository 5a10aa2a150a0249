//! The OCI distribution-spec grammars for repository names and tags, and the
//! manifest reference (tag or digest) of a URL path.

use crate::digest::{Digest, DigestError};

/// Maximum length of a repository name we accept (the spec suggests clients
/// keep name + hostname under 255 characters).
pub const NAME_LENGTH_MAX: usize = 255;

/// `true` when `name` matches
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
/// and is at most `NAME_LENGTH_MAX` bytes. Hand-written, no regex.
pub fn is_valid_name(name: &str) -> bool {
    todo!()
}

/// `true` when `tag` matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    todo!()
}

/// What a `/manifests/<reference>` path segment names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    InvalidTag,
    Digest(DigestError),
}

impl Reference {
    /// A reference containing ':' is parsed as a digest, otherwise as a tag.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        todo!()
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(tag) => f.write_str(tag),
            Reference::Digest(digest) => write!(f, "{digest}"),
        }
    }
}
