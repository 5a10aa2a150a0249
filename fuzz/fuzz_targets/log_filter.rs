//! The `RUST_LOG` filter (`logger::Filter::parse`) and the lookups the logger
//! makes with it on every record.
#![no_main]

use angos::logger::Filter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(spec) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(filter) = Filter::parse(spec) else {
        return;
    };
    assert_eq!(Filter::parse(spec).as_ref(), Ok(&filter));
    let max = filter.max_level();
    // Targets the spec itself names, a module below each, and a few fixed ones.
    let named = spec.split([',', '=']).map(str::trim);
    for target in named.chain(["angos", "angos::http", "angos::http::request", "", "rustls"]) {
        let level = filter.level_for(target);
        assert!(level <= max, "{target:?} logs at {level} above the maximum {max}");
        let below = format!("{target}::below");
        assert!(filter.level_for(&below) <= max);
    }
});
