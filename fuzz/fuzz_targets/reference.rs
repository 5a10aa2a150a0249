//! The distribution-spec grammars a request path carries: repository names,
//! tags, manifest references and digests (`registry::reference`, `digest`).
#![no_main]

use angos::digest::{Digest, DigestError};
use angos::registry::reference::{NAME_LENGTH_MAX, Reference, ReferenceError, is_valid_name, is_valid_tag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };

    if is_valid_name(text) {
        // The alphabet is `[a-z0-9._/-]`, so a name is safe in a path and a file name.
        assert!(!text.is_empty() && text.len() <= NAME_LENGTH_MAX);
        assert!(
            text.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/'))
        );
        assert!(!text.starts_with('/') && !text.ends_with('/') && !text.contains("//"));
        assert!(!text.split('/').any(|part| part == "." || part == ".."));
    }

    let tag = is_valid_tag(text);
    if tag {
        assert!(!text.is_empty() && text.len() <= 128);
        assert!(!text.starts_with(['.', '-']));
    }

    let digest = Digest::parse(text);
    if let Ok(digest) = &digest {
        // A digest prints exactly as it was written (lowercase hex, no normalising).
        assert_eq!(digest.to_string(), text);
        assert_eq!(Digest::parse(&digest.to_string()).as_ref(), Ok(digest));
        assert_eq!(format!("{}:{}", digest.algorithm(), digest.hex()), text);
    }

    match Reference::parse(text) {
        Ok(Reference::Tag(parsed)) => {
            assert!(tag);
            assert_eq!(parsed, text);
        }
        Ok(Reference::Digest(parsed)) => {
            assert_eq!(digest.as_ref(), Ok(&parsed));
            assert_eq!(Reference::Digest(parsed).to_string(), text);
        }
        Err(ReferenceError::InvalidTag) => assert!(!tag && !text.contains(':')),
        Err(ReferenceError::Digest(error)) => {
            assert_eq!(digest.as_ref().err(), Some(&error));
            assert!(matches!(error, DigestError::Invalid | DigestError::Unsupported));
        }
    }
});
