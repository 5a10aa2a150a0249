//! The `log` backend: writes one line per record to stderr, filtered by a
//! `RUST_LOG`-style specification (`angos=info,angos::http=debug`).

use std::io::Write;
use std::str::FromStr;
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::clock;

/// A parsed `RUST_LOG` specification. Directives are comma-separated,
/// `path=level` or a bare `level` (the default). The longest path that is a
/// module-path prefix of the record's target wins (`angos::http` matches
/// `angos::http` and `angos::http::server`, not `angos::httpx`). Levels:
/// off, error, warn, info, debug, trace (case-insensitive).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Level for targets no directive matches.
    default: LevelFilter,
    /// One per distinct path (a later duplicate replaces an earlier one),
    /// longest path first so the first match is the longest; equal lengths in
    /// byte order so equal specifications compare equal.
    directives: Vec<Directive>,
}

#[derive(Debug, Clone, PartialEq)]
struct Directive {
    path: String,
    level: LevelFilter,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilterError {
    pub directive: String,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid RUST_LOG directive {:?}", self.directive)
    }
}

impl std::error::Error for FilterError {}

impl Filter {
    /// Parses a specification. Empty directives (`a=info,,`) are ignored.
    /// Without a bare level, targets no directive matches log at `error`.
    ///
    /// Stricter than env_logger on purpose: a bare word that is not a level
    /// (`RUST_LOG=angos`, or the typo `RUST_LOG=inof`) is an error rather than
    /// "trace for that module", so a typo falls back to the default filter
    /// loudly instead of silently muting everything else. Paths are `::`
    /// separated segments of `[A-Za-z0-9_-]`, which also rejects the
    /// single-colon typo `angos:http`.
    pub fn parse(spec: &str) -> Result<Filter, FilterError> {
        let mut default = None;
        let mut directives: Vec<Directive> = Vec::new();
        for raw in spec.split(',') {
            let directive = raw.trim();
            if directive.is_empty() {
                continue;
            }
            let invalid = || FilterError {
                directive: directive.to_string(),
            };
            match directive.split_once('=') {
                None => default = Some(parse_level(directive).ok_or_else(invalid)?),
                Some((path, level)) => {
                    let path = path.trim();
                    let level = parse_level(level.trim()).ok_or_else(invalid)?;
                    if !is_module_path(path) {
                        return Err(invalid());
                    }
                    // env_logger semantics: the last directive for a path wins.
                    match directives.iter_mut().find(|d| d.path == path) {
                        Some(existing) => existing.level = level,
                        None => directives.push(Directive {
                            path: path.to_string(),
                            level,
                        }),
                    }
                }
            }
        }
        directives.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then_with(|| a.path.cmp(&b.path)));
        Ok(Filter {
            default: default.unwrap_or(LevelFilter::Error),
            directives,
        })
    }

    /// The filter used when `RUST_LOG` is unset: `info` for everything.
    pub fn default_filter() -> Filter {
        Filter {
            default: LevelFilter::Info,
            directives: Vec::new(),
        }
    }

    /// The filter `init` installs: `RUST_LOG` when set and valid, otherwise
    /// the default (an unset or blank `RUST_LOG` is not an error). The error,
    /// if any, is returned alongside so the caller decides how to report it.
    pub fn from_env() -> (Filter, Option<FilterError>) {
        match std::env::var("RUST_LOG") {
            Ok(spec) if !spec.trim().is_empty() => match Filter::parse(&spec) {
                Ok(filter) => (filter, None),
                Err(e) => (Filter::default_filter(), Some(e)),
            },
            Ok(_) => (Filter::default_filter(), None),
            Err(std::env::VarError::NotPresent) => (Filter::default_filter(), None),
            Err(std::env::VarError::NotUnicode(raw)) => (
                Filter::default_filter(),
                Some(FilterError {
                    directive: raw.to_string_lossy().into_owned(),
                }),
            ),
        }
    }

    pub fn enabled(&self, target: &str, level: Level) -> bool {
        level <= self.level_for(target)
    }

    /// The level that applies to `target`: the longest matching directive's,
    /// else the default.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.directives
            .iter()
            .find(|d| is_module_prefix(&d.path, target))
            .map_or(self.default, |d| d.level)
    }

    /// The most verbose level any directive allows (for `log::set_max_level`).
    pub fn max_level(&self) -> LevelFilter {
        self.directives
            .iter()
            .map(|d| d.level)
            .fold(self.default, Ord::max)
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(spec: &str) -> Result<Filter, FilterError> {
        Filter::parse(spec)
    }
}

/// Level names, case-insensitively (`log`'s own parser does exactly that and
/// accepts nothing else, e.g. no numbers).
fn parse_level(s: &str) -> Option<LevelFilter> {
    LevelFilter::from_str(s).ok()
}

fn is_module_path(path: &str) -> bool {
    !path.is_empty()
        && path.split("::").all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// `prefix` equals `target` or is followed in it by `::`, so `angos::http`
/// covers `angos::http::server` but not `angos::httpx`.
fn is_module_prefix(prefix: &str, target: &str) -> bool {
    match target.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with("::"),
        None => false,
    }
}

struct StderrLogger {
    filter: Filter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata.target(), metadata.level())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(clock::unix_micros_now(), record);
        // One write_all of the whole line under the lock keeps lines whole.
        // A failed write to stderr has nowhere to be reported; dropping the
        // line is the only option that does not take the server down.
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().lock().flush();
    }
}

/// `2026-01-15T10:30:00.123456Z INFO  angos::http: message\n`. Line breaks in
/// the message are escaped: messages carry client-supplied text (paths,
/// headers), which must not be able to forge extra log lines.
fn format_line(unix_micros: u64, record: &Record<'_>) -> String {
    let mut line = format!(
        "{} {:<5} {}: ",
        clock::rfc3339_utc(unix_micros),
        record.level(),
        record.target()
    );
    let start = line.len();
    // Writing to a String cannot fail.
    let _ = std::fmt::write(&mut line, *record.args());
    if line[start..].contains(['\n', '\r']) {
        let message = line.split_off(start);
        for c in message.chars() {
            match c {
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                c => line.push(c),
            }
        }
    }
    line.push('\n');
    line
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

/// Installs the logger with the filter from `RUST_LOG` (or the default). An
/// invalid `RUST_LOG` falls back to the default and says so on stderr.
/// Lines look like `2026-01-15T10:30:00.123456Z INFO  angos::http: message`.
pub fn init() {
    let (filter, error) = Filter::from_env();
    if let Some(error) = error {
        eprintln!("{error}; using the default filter (info)");
    }
    init_with(filter);
}

/// Installs the logger with an explicit filter. Only the first installation
/// in a process takes effect (`log` allows one logger); later calls are no-ops.
pub fn init_with(filter: Filter) {
    let max_level = filter.max_level();
    let logger = LOGGER.get_or_init(|| StderrLogger { filter });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max_level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Filter {
        Filter::parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"))
    }

    #[test]
    fn crate_level_with_module_override() {
        let f = parse("angos=info,angos::http=debug");
        assert!(f.enabled("angos", Level::Info));
        assert!(!f.enabled("angos", Level::Debug));
        assert!(f.enabled("angos::registry", Level::Info));
        assert!(!f.enabled("angos::registry", Level::Debug));
        assert!(f.enabled("angos::http", Level::Debug));
        assert!(f.enabled("angos::http::server", Level::Debug));
        assert!(!f.enabled("angos::http::server", Level::Trace));
        // No bare level: everything else logs errors only.
        assert!(f.enabled("mio::poll", Level::Error));
        assert!(!f.enabled("mio::poll", Level::Warn));
        assert_eq!(f.max_level(), LevelFilter::Debug);
    }

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        let a = parse("angos::http=debug,angos=warn");
        let b = parse("angos=warn,angos::http=debug");
        assert_eq!(a, b);
        assert!(a.enabled("angos::http::client", Level::Debug));
        assert!(!a.enabled("angos::storage", Level::Info));
        let c = parse("angos::http::server=off,angos::http=trace,angos=info");
        assert!(!c.enabled("angos::http::server", Level::Error));
        assert!(c.enabled("angos::http::client", Level::Trace));
        assert!(c.enabled("angos::main", Level::Info));
    }

    #[test]
    fn deep_module_directive() {
        let f = parse("angos::event_webhook=debug");
        assert!(f.enabled("angos::event_webhook", Level::Debug));
        assert!(f.enabled("angos::event_webhook::dispatcher", Level::Debug));
        assert!(!f.enabled("angos::event_webhook", Level::Trace));
        assert!(!f.enabled("angos::registry", Level::Warn));
        assert!(f.enabled("angos::registry", Level::Error));
    }

    #[test]
    fn prefix_must_end_on_a_path_boundary() {
        let f = parse("info,angos::http=trace");
        assert!(f.enabled("angos::http", Level::Trace));
        assert!(f.enabled("angos::http::server", Level::Trace));
        assert!(!f.enabled("angos::httpx", Level::Debug));
        assert!(!f.enabled("angos::http_client", Level::Debug));
        assert!(f.enabled("angos::httpx", Level::Info));
        // A shorter target than the directive is not covered either.
        assert!(!f.enabled("angos", Level::Debug));
        assert!(!parse("ango=trace").enabled("angos", Level::Trace));
    }

    #[test]
    fn bare_level_sets_the_default() {
        let f = parse("warn");
        assert!(f.enabled("anything", Level::Warn));
        assert!(!f.enabled("anything", Level::Info));
        assert_eq!(f.max_level(), LevelFilter::Warn);

        let f = parse("debug,mio=off");
        assert!(f.enabled("angos::http", Level::Debug));
        assert!(!f.enabled("mio", Level::Error));
        assert!(!f.enabled("mio::net", Level::Error));
        assert_eq!(f.max_level(), LevelFilter::Debug);

        // The last bare level wins.
        assert_eq!(parse("trace,error").max_level(), LevelFilter::Error);
        assert_eq!(parse("off").max_level(), LevelFilter::Off);
        assert!(!parse("off").enabled("angos", Level::Error));
    }

    #[test]
    fn levels_are_case_insensitive() {
        assert_eq!(parse("INFO"), parse("info"));
        assert_eq!(parse("angos=DeBuG"), parse("angos=debug"));
        assert_eq!(parse("Off,angos=TRACE"), parse("off,angos=trace"));
        assert!(parse("angos=WARN").enabled("angos", Level::Warn));
    }

    #[test]
    fn empty_directives_and_whitespace_are_ignored() {
        assert_eq!(parse("angos=info,,"), parse(" angos = info "));
        assert_eq!(parse(",,"), parse(""));
        let f = parse("");
        assert!(f.enabled("angos", Level::Error));
        assert!(!f.enabled("angos", Level::Warn));
        assert_eq!(f.max_level(), LevelFilter::Error);
    }

    #[test]
    fn later_duplicate_path_wins() {
        let f = parse("angos=trace,angos=warn");
        assert!(!f.enabled("angos", Level::Info));
        assert_eq!(f, parse("angos=warn"));
    }

    #[test]
    fn invalid_directives_are_rejected() {
        for (spec, bad) in [
            ("angos=verbose", "angos=verbose"),
            ("info,angos=", "angos="),
            ("=info", "=info"),
            ("inof", "inof"),
            ("angos", "angos"),
            ("angos=info=debug", "angos=info=debug"),
            ("angos:http=debug", "angos:http=debug"),
            ("angos::=debug", "angos::=debug"),
            ("::angos=debug", "::angos=debug"),
            ("angos http=debug", "angos http=debug"),
            ("angos/foo=debug", "angos/foo=debug"),
            ("angos=3", "angos=3"),
            ("info, angos=loud ,", "angos=loud"),
        ] {
            assert_eq!(
                Filter::parse(spec),
                Err(FilterError {
                    directive: bad.to_string()
                }),
                "{spec:?}"
            );
        }
        let message = Filter::parse("angos=loud").unwrap_err().to_string();
        assert_eq!(message, "invalid RUST_LOG directive \"angos=loud\"");
    }

    #[test]
    fn default_filter_is_info_everywhere() {
        let f = Filter::default_filter();
        assert!(f.enabled("angos::http", Level::Info));
        assert!(!f.enabled("angos::http", Level::Debug));
        assert!(f.enabled("mio", Level::Info));
        assert_eq!(f.max_level(), LevelFilter::Info);
        assert_eq!(f, parse("info"));
    }

    #[test]
    fn hyphenated_targets_are_paths() {
        let f = parse("my-crate=debug");
        assert!(f.enabled("my-crate::x", Level::Debug));
    }

    #[test]
    fn line_format() {
        let line = format_line(
            1_768_473_000_123_456,
            &Record::builder()
                .level(Level::Info)
                .target("angos::http")
                .args(format_args!("listening on {}", 5000))
                .build(),
        );
        assert_eq!(
            line,
            "2026-01-15T10:30:00.123456Z INFO  angos::http: listening on 5000\n"
        );
        let line = format_line(
            0,
            &Record::builder()
                .level(Level::Error)
                .target("angos")
                .args(format_args!("bad path {:?}", "a\nb"))
                .build(),
        );
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000000Z ERROR angos: bad path \"a\\nb\"\n"
        );
        let line = format_line(
            0,
            &Record::builder()
                .level(Level::Warn)
                .target("angos")
                .args(format_args!("forged\r\n1970-01-01T00:00:00.000000Z INFO  x: y"))
                .build(),
        );
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.starts_with("1970-01-01T00:00:00.000000Z WARN  angos: forged\\r\\n"));
    }
}
