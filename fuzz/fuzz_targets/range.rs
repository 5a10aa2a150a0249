//! The `Range` header of a blob GET and the `Content-Range` of an upload PATCH
//! (`registry::range`). Input: eight bytes of blob size, then the header value.
#![no_main]

use angos::registry::range::{RangeError, parse_content_range, parse_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((size, value)) = input.split_first_chunk::<8>() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    // Mostly small blobs, where clamping happens; sometimes the full u64 range.
    let size = u64::from_le_bytes(*size);
    let size = if size & 1 == 0 { (size >> 1) % 4096 } else { size };

    match parse_range(value, size) {
        // What the server slices from the blob must lie inside it.
        Ok(range) => assert!(
            range.start <= range.end && range.end < size,
            "{range:?} of {size}"
        ),
        Err(RangeError::Unsatisfiable) | Err(RangeError::Unsupported) => {}
    }
    if let Some(range) = parse_content_range(value) {
        assert!(range.start <= range.end);
        // The length of the chunk the client announces fits a u64.
        assert!((range.end - range.start).checked_add(1).is_some());
    }
});
