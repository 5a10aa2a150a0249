//! Retention rules (`retention::rule`) and the configuration's regexes
//! (`pattern`): whatever the text, parsing never panics, a parse error points
//! inside the text (or just past it), and a parsed rule evaluates without
//! panicking on images at the edges (untagged, never pulled, extreme times
//! and ranks). A rule that gives a bool gives its negation under `!( )`.
#![no_main]

use angos::pattern::Pattern;
use angos::retention::rule::{Image, Rule};
use libfuzzer_sys::fuzz_target;

const TAGS: [Option<&str>; 4] = [None, Some(""), Some("v1.2.3"), Some("latest")];
const TIMES: [i64; 4] = [0, 1_750_000_000, i64::MAX, i64::MIN];
const RANKS: [Option<usize>; 3] = [None, Some(1), Some(usize::MAX)];

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };

    if let Ok(pattern) = Pattern::new(text) {
        assert_eq!(pattern.source(), text);
        for tag in TAGS.iter().flatten() {
            let _ = pattern.is_match(tag);
        }
    }

    let rule = match Rule::parse(text) {
        Ok(rule) => rule,
        Err(error) => {
            assert!(
                error.position >= 1 && error.position <= text.chars().count() + 1,
                "{error} for {text:?}"
            );
            return;
        }
    };
    assert_eq!(rule.source(), text);
    let negated = Rule::parse(&format!("!({text})")).ok();
    for (index, tag) in TAGS.iter().enumerate() {
        for time in TIMES {
            let image = Image {
                tag: *tag,
                pushed_at: time,
                last_pulled_at: TIMES[index % TIMES.len()],
                pushed_rank: tag.and(RANKS[index % RANKS.len()]),
                pulled_rank: tag.and(RANKS[(index + 1) % RANKS.len()]),
            };
            let kept = rule.keeps(&image, time);
            if let (Ok(keep), Some(negated)) = (&kept, &negated) {
                assert_eq!(negated.keeps(&image, time), Ok(!keep), "{text:?}");
            }
        }
    }
});
