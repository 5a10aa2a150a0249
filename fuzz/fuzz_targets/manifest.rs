//! Manifest and index JSON as a PUT delivers it (`registry::manifest::parse`),
//! and on success the referrer descriptor the referrers API would list.
//! Input: the Content-Type header value, a NUL byte, then the body.
#![no_main]

use angos::digest::Digest;
use angos::registry::manifest::{parse, referrer_descriptor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // No NUL: the PUT had no Content-Type, and the whole input is the body.
    let (content_type, body) = match input.iter().position(|&b| b == 0) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (&b""[..], input),
    };
    let Ok(content_type) = std::str::from_utf8(content_type) else {
        return;
    };
    let Ok(parsed) = parse(content_type, body) else {
        return;
    };
    assert!(parsed.is_index || parsed.manifests.is_empty());
    assert!(!parsed.is_index || parsed.blobs.is_empty());
    if let Some(annotations) = &parsed.annotations {
        assert!(annotations.values().all(|value| value.is_string()));
    }
    let digest = Digest::sha256_of(body);
    let media_type = parsed.media_type.as_deref().unwrap_or(content_type);
    let descriptor = referrer_descriptor(&parsed, media_type, &digest, body.len() as u64);
    assert_eq!(descriptor["digest"], digest.to_string());
    assert_eq!(descriptor["size"], body.len() as u64);
    // What the referrers API serves must read back as JSON.
    let text = serde_json::to_string(&descriptor).expect("descriptor serializes");
    let back: serde_json::Value = serde_json::from_str(&text).expect("descriptor reads back");
    assert_eq!(back, descriptor);
});
