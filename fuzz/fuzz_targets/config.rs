//! Configuration loading (`config::load_sources`, what `load_files` calls after
//! reading): TOML text into the validated `Config`. A NUL byte in the input
//! separates files, so merging across files is fuzzed too.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Files per load: `-c` may be given a few times.
const FILES_MAX: usize = 4;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let sources: Vec<(String, String)> = text
        .splitn(FILES_MAX, '\0')
        .enumerate()
        .map(|(index, part)| (format!("fuzz-{index}.toml"), part.to_string()))
        .collect();
    match angos::config::load_sources(&sources) {
        Ok(loaded) => {
            let config = &loaded.config;
            // Every limit the reactor sizes buffers or loops with is positive.
            assert!(config.server.max_header_size > 0);
            assert!(config.global.max_manifest_size > 0);
            assert!(config.global.max_blob_size > 0);
            assert!(config.global.event_webhook_queue_length > 0);
            for name in &config.global.event_webhooks {
                assert!(
                    config.webhooks.contains_key(name),
                    "undefined webhook {name:?} accepted"
                );
            }
            // Loading is deterministic: a reload of the same text yields the same result.
            let again = angos::config::load_sources(&sources).expect("second load failed");
            assert!(again.config == *config, "a second load of the same text differs");
            assert_eq!(again.warnings, loaded.warnings);
        }
        Err(error) => {
            // Every error names its file.
            assert!(error.file.starts_with("fuzz-"), "{error}");
            let _ = error.to_string();
        }
    }
});
