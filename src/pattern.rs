//! `Pattern`: a regex-lite regex, plus the one construct regex-lite lacks
//! that upstream Angos's documents use: a negative lookahead right after a
//! leading `^` (`^(?!v[0-9]+\.[0-9]+\.[0-9]+$).*$`, "every tag but vX.Y.Z").
//! A leaf: it knows regexes and text, nothing of configuration or HTTP.
//!
//! Why that one is exact without a backtracking engine: at position 0 a
//! lookahead only asks whether its body matches there. So `^(?!P)R` matches
//! a text iff `^(?:P)` does not and `^(?:R)` does. Any other look-around
//! would need the engine's positions, so it is refused with a message naming it.

use std::fmt;

/// A compiled pattern that keeps its source (configuration is compared and
/// printed by source).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    /// `^(?:P)` for a leading `^(?!P)`: a text it matches is refused.
    excluded: Option<regex_lite::Regex>,
    /// The whole pattern, or `^(?:R)` after a leading lookahead.
    regex: regex_lite::Regex,
}

/// Look-around openers and their names for messages, longest first so that
/// `(?<=` is not taken for something shorter.
const LOOK_AROUNDS: [(&str, &str); 4] = [
    ("(?<=", "lookbehind (?<=...)"),
    ("(?<!", "negative lookbehind (?<!...)"),
    ("(?=", "lookahead (?=...)"),
    ("(?!", "negative lookahead (?!...)"),
];

const LEADING_LOOKAHEAD: &str = "^(?!";

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        let compile = |text: &str| {
            regex_lite::Regex::new(text).map_err(|error| format!("invalid regex {source:?}: {error}"))
        };
        let Some(after) = source.strip_prefix(LEADING_LOOKAHEAD) else {
            refuse_look_around(source, source, 0)?;
            return Ok(Pattern {
                source: source.to_string(),
                excluded: None,
                regex: compile(source)?,
            });
        };
        let Some(close) = group_end(after) else {
            return Err(format!(
                "invalid regex {source:?}: the lookahead (?! is never closed"
            ));
        };
        let (body, rest) = (&after[..close], &after[close + 1..]);
        refuse_look_around(source, body, LEADING_LOOKAHEAD.len())?;
        refuse_look_around(source, rest, LEADING_LOOKAHEAD.len() + close + 1)?;
        // `^(?!P)a|b` means `(^(?!P)a)|b`: the lookahead would guard the first
        // branch only. Rare and easy to misread, so the user adds a group.
        if has_top_level_alternation(rest) {
            return Err(format!(
                "{source:?}: '|' after a leading (?!...) applies to its first branch only; \
                 group the rest, as in ^(?!P)(?:a|b)"
            ));
        }
        Ok(Pattern {
            source: source.to_string(),
            excluded: Some(compile(&format!("^(?:{body})"))?),
            regex: compile(&format!("^(?:{rest})"))?,
        })
    }

    /// Whether the pattern matches somewhere in `text` (as `Regex::is_match`;
    /// anchor with `^...$` to match the whole text).
    pub fn is_match(&self, text: &str) -> bool {
        !self
            .excluded
            .as_ref()
            .is_some_and(|excluded| excluded.is_match(text))
            && self.regex.is_match(text)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Where the syntax scanner stands at one byte of a pattern.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// Outside any class: `(`, `)` and `|` are syntax.
    Open,
    /// Inside a bracket class (at this nesting depth): everything is literal
    /// but `\` escapes and nested classes.
    Class(usize),
}

/// Calls `visit(offset, place)` for every byte offset of `text` that is not
/// escaped by a backslash, tracking bracket classes (`[]a]`, `[^]a]` and
/// nested classes such as `[[:alpha:]]` or `[a-z&&[^x]]`).
fn scan(text: &str, mut visit: impl FnMut(usize, Place) -> bool) {
    let bytes = text.as_bytes();
    let mut place = Place::Open;
    let mut index = 0;
    while index < bytes.len() {
        if !visit(index, place) {
            return;
        }
        match (bytes[index], place) {
            (b'\\', _) => index += 1,
            (b'[', Place::Open) => {
                place = Place::Class(1);
                index = skip_leading_bracket(bytes, index + 1) - 1;
            }
            (b'[', Place::Class(depth)) => {
                place = Place::Class(depth + 1);
                index = skip_leading_bracket(bytes, index + 1) - 1;
            }
            (b']', Place::Class(1)) => place = Place::Open,
            (b']', Place::Class(depth)) => place = Place::Class(depth - 1),
            _ => {}
        }
        index += 1;
    }
}

/// After a class's `[`: a `^` and then a `]` are literal, not the end.
fn skip_leading_bracket(bytes: &[u8], mut index: usize) -> usize {
    if bytes.get(index) == Some(&b'^') {
        index += 1;
    }
    if bytes.get(index) == Some(&b']') {
        index += 1;
    }
    index
}

/// The offset of the `)` closing a group whose `(` came just before `text`.
fn group_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 1usize;
    let mut end = None;
    scan(text, |index, place| {
        if place == Place::Open {
            match bytes[index] {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(index);
                        return false;
                    }
                }
                _ => {}
            }
        }
        true
    });
    end
}

/// An error naming the first look-around in `text` (a part of `source`
/// starting at byte `offset`), if there is one.
fn refuse_look_around(source: &str, text: &str, offset: usize) -> Result<(), String> {
    let mut found = None;
    scan(text, |index, place| {
        if place == Place::Open {
            found = LOOK_AROUNDS
                .iter()
                .find(|(opener, _)| text.as_bytes()[index..].starts_with(opener.as_bytes()))
                .map(|(_, name)| (index, *name));
        }
        found.is_none()
    });
    match found {
        None => Ok(()),
        Some((index, name)) => Err(format!(
            "{source:?}: {name} at byte {} is not supported; only a negative lookahead \
             right after a leading ^ is, as in ^(?!v[0-9]+$).*$",
            offset + index + 1
        )),
    }
}

/// Whether `text` has a `|` outside every group and class.
fn has_top_level_alternation(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut found = false;
    scan(text, |index, place| {
        if place == Place::Open {
            match bytes[index] {
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b'|' if depth == 0 => found = true,
                _ => {}
            }
        }
        !found
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(source: &str, text: &str) -> bool {
        Pattern::new(source).unwrap().is_match(text)
    }

    #[test]
    fn plain_regexes_behave_as_regex_lite() {
        assert!(matches("^latest$", "latest"));
        assert!(!matches("^latest$", "latest2"));
        assert!(
            matches("nightly", "x-nightly-1"),
            "unanchored, as Regex::is_match"
        );
        assert!(matches(r"^v\d+\.\d+$", "v1.0"));
        assert!(!matches(r"^v\d+\.\d+$", "v1.0.1"));
        assert!(matches("^pr-\\d+$", "pr-123"));
        assert!(matches("^.*-SNAPSHOT$", "1.0-SNAPSHOT"));
        assert!(matches("(?<name>a)b", "ab"), "named groups are not lookbehinds");
        assert!(matches("(?P<name>a)b", "ab"));
        assert!(matches(r"^\(\?!x$", "(?!x"), "an escaped opener is literal");
        assert!(matches("^[(?!]+$", "(?!"), "inside a class too");
    }

    #[test]
    fn the_upstream_everything_except_release_tags_pattern() {
        // doc/how-to/protect-tags-immutability.md, "Protect Release Tags Only".
        let pattern = Pattern::new("^(?!v[0-9]+\\.[0-9]+\\.[0-9]+$).*$").unwrap();
        for excluded in ["latest", "v1.0", "v1.2.3-rc1", "1.2.3", "v1.2.3.4", "", "main"] {
            assert!(pattern.is_match(excluded), "{excluded:?} is not vX.Y.Z");
        }
        for release in ["v1.2.3", "v10.20.30", "v0.0.0"] {
            assert!(!pattern.is_match(release), "{release:?} is vX.Y.Z");
        }
        assert_eq!(pattern.source(), "^(?!v[0-9]+\\.[0-9]+\\.[0-9]+$).*$");
    }

    #[test]
    fn a_leading_lookahead_guards_the_rest_at_position_zero() {
        // The rest must still match from the start: `^(?!a)b` needs a leading b.
        assert!(matches("^(?!a)b", "bc"));
        assert!(!matches("^(?!a)b", "cb"));
        assert!(!matches("^(?!a)b", "ab"));
        // An empty rest matches anything the lookahead lets through.
        assert!(matches("^(?!dev-)", "prod-1"));
        assert!(!matches("^(?!dev-)", "dev-1"));
        // Groups, alternations and classes with parentheses inside the lookahead.
        let pattern = Pattern::new("^(?!(?:main|develop)$|[(]x)[a-z(]+$").unwrap();
        assert!(pattern.is_match("feature"));
        assert!(pattern.is_match("mainline"));
        assert!(!pattern.is_match("main"));
        assert!(!pattern.is_match("develop"));
        assert!(!pattern.is_match("(xy"));
        assert!(pattern.is_match("(y"));
        // Grouped alternation after the lookahead is exact.
        let pattern = Pattern::new("^(?!a)(?:b|ab)").unwrap();
        assert!(pattern.is_match("b"));
        assert!(!pattern.is_match("ab"));
    }

    #[test]
    fn other_look_arounds_are_refused_by_name() {
        let cases = [
            ("foo(?=bar)", "lookahead (?=...)"),
            ("(?<=v)1", "lookbehind (?<=...)"),
            ("(?<!v)1", "negative lookbehind (?<!...)"),
            ("a(?!b)", "negative lookahead (?!...)"),
            ("(?!a)b", "negative lookahead (?!...)"),
            ("^(?!a(?=b))c", "lookahead (?=...)"),
            ("^(?!a)(?!b)c", "negative lookahead (?!...)"),
        ];
        for (source, name) in cases {
            let error = Pattern::new(source).unwrap_err();
            assert!(error.contains(name), "{source}: {error}");
            assert!(error.contains("not supported"), "{source}: {error}");
        }
        let error = Pattern::new("a(?=b)").unwrap_err();
        assert!(error.contains("at byte 2"), "{error}");
        // Offsets are bytes; text beyond ASCII is scanned without slicing a character.
        let error = Pattern::new("é(?=x)").unwrap_err();
        assert!(error.contains("at byte 3"), "{error}");
        assert!(matches("^(?!é)..$", "ab"));
        assert!(!matches("^(?!é)..$", "éb"));
    }

    #[test]
    fn malformed_patterns_are_errors() {
        assert!(Pattern::new("^(?!abc").unwrap_err().contains("never closed"));
        assert!(Pattern::new("^(?!a)b|c").unwrap_err().contains("group the rest"));
        let error = Pattern::new("^(?!a)(b").unwrap_err();
        assert!(error.starts_with("invalid regex \"^(?!a)(b\""), "{error}");
        let error = Pattern::new("[unclosed").unwrap_err();
        assert!(error.starts_with("invalid regex \"[unclosed\":"), "{error}");
    }

    #[test]
    fn patterns_compare_and_print_by_source() {
        assert_eq!(Pattern::new("^a$").unwrap(), Pattern::new("^a$").unwrap());
        assert_ne!(Pattern::new("^a$").unwrap(), Pattern::new("^a").unwrap());
        assert_eq!(format!("{:?}", Pattern::new("^a$").unwrap()), "Pattern(\"^a$\")");
        assert_eq!(Pattern::new("^(?!a)").unwrap().to_string(), "^(?!a)");
    }
}
