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
    // `split` yields an empty component for "", "/a", "a/" and "a//b", and
    // `is_valid_component` rejects empty ones, so those need no special case.
    name.len() <= NAME_LENGTH_MAX && name.split('/').all(is_valid_component)
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`. Scans runs of
/// separator bytes between alphanumeric runs; each run must be exactly ".",
/// "_", "__" or any number of "-".
fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let mut index = 0;
    loop {
        // An alphanumeric run: required at the start and after every separator,
        // which also forbids a leading or trailing separator.
        let run_start = index;
        while index < bytes.len() && matches!(bytes[index], b'a'..=b'z' | b'0'..=b'9') {
            index += 1;
        }
        if index == run_start {
            return false;
        }
        if index == bytes.len() {
            return true;
        }
        let separator_start = index;
        while index < bytes.len() && matches!(bytes[index], b'.' | b'_' | b'-') {
            index += 1;
        }
        match &bytes[separator_start..index] {
            b"." | b"_" | b"__" => {}
            run if !run.is_empty() && run.iter().all(|&b| b == b'-') => {}
            // Empty: a byte outside the alphabet (uppercase, '/', ...).
            _ => return false,
        }
    }
}

/// `true` when `tag` matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    const TAG_LENGTH_MAX: usize = 128;
    let bytes = tag.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= TAG_LENGTH_MAX
        && (first.is_ascii_alphanumeric() || first == b'_')
        && rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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

impl std::fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReferenceError::InvalidTag => f.write_str("invalid tag"),
            ReferenceError::Digest(error) => write!(f, "{error}"),
        }
    }
}

impl Reference {
    /// A reference containing ':' is parsed as a digest, otherwise as a tag.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        // ':' is outside the tag alphabet, so the split is unambiguous.
        if text.contains(':') {
            Digest::parse(text)
                .map(Reference::Digest)
                .map_err(ReferenceError::Digest)
        } else if is_valid_tag(text) {
            Ok(Reference::Tag(text.to_owned()))
        } else {
            Err(ReferenceError::InvalidTag)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        let cases = [
            "a",
            "0",
            "a/b",
            "a/b/c",
            "library/ubuntu",
            "a__b",
            "a_b",
            "a.b",
            "a-b",
            "a---b",
            "a-b-c.d_e__f",
            "a0/b1-c2/d3.e4",
            "my-org/my.repo/sub__path",
        ];
        for name in cases {
            assert!(is_valid_name(name), "{name:?}");
        }
    }

    #[test]
    fn invalid_names() {
        let cases = [
            "", "A", "aB", "a_", "_a", "-a", "a-", ".a", "a.", "a//b", "a/", "/a", "/", "a___b", "a.-b",
            "a-.b", "a..b", "a._b", "a_.b", "a_-b", "a b", "a:b", "a@b", "a\\b", "é",
        ];
        for name in cases {
            assert!(!is_valid_name(name), "{name:?}");
        }
    }

    #[test]
    fn name_length_limit() {
        let longest = "a".repeat(NAME_LENGTH_MAX);
        assert!(is_valid_name(&longest));
        let too_long = "a".repeat(NAME_LENGTH_MAX + 1);
        assert!(!is_valid_name(&too_long));
        let components = ["ab"; 85].join("/"); // 85 * 3 - 1 = 254 bytes
        assert!(is_valid_name(&components));
    }

    #[test]
    fn valid_tags() {
        let longest = "a".repeat(128);
        let cases = [
            "a",
            "A",
            "0",
            "_x",
            "_",
            "latest",
            "v1.2.3",
            "v1.2.3-rc.1_build",
            "X--Y..Z",
            &longest,
        ];
        for tag in cases {
            assert!(is_valid_tag(tag), "{tag:?}");
        }
    }

    #[test]
    fn invalid_tags() {
        let too_long = "a".repeat(129);
        let cases = ["", "-x", ".x", "a:b", "a/b", "a b", "a+b", "é", &too_long];
        for tag in cases {
            assert!(!is_valid_tag(tag), "{tag:?}");
        }
    }

    #[test]
    fn parse_reference() {
        assert_eq!(
            Reference::parse("latest"),
            Ok(Reference::Tag("latest".to_owned()))
        );
        let text = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let parsed = Reference::parse(text).unwrap();
        assert_eq!(parsed, Reference::Digest(Digest::parse(text).unwrap()));
        assert_eq!(parsed.to_string(), text);
        assert_eq!(Reference::parse("-x"), Err(ReferenceError::InvalidTag));
        assert_eq!(Reference::parse(""), Err(ReferenceError::InvalidTag));
        assert_eq!(
            Reference::parse("sha256:abc"),
            Err(ReferenceError::Digest(DigestError::Invalid))
        );
        assert_eq!(
            Reference::parse("sha384:abc"),
            Err(ReferenceError::Digest(DigestError::Unsupported))
        );
    }
}
