//! The `log` backend: writes one line per record to stderr, filtered by a
//! `RUST_LOG`-style specification (`angos=info,angos::http=debug`).

use log::{Level, LevelFilter};

/// A parsed `RUST_LOG` specification. Directives are comma-separated,
/// `path=level` or a bare `level` (the default). The longest path that is a
/// module-path prefix of the record's target wins (`angos::http` matches
/// `angos::http` and `angos::http::server`, not `angos::httpx`). Levels:
/// off, error, warn, info, debug, trace (case-insensitive).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    // IMPLEMENT
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

impl Filter {
    /// Parses a specification. Empty directives (`a=info,,`) are ignored.
    /// Without a bare level, targets no directive matches log at `error`.
    pub fn parse(spec: &str) -> Result<Filter, FilterError> {
        todo!()
    }

    /// The filter used when `RUST_LOG` is unset: `info` for everything.
    pub fn default_filter() -> Filter {
        todo!()
    }

    pub fn enabled(&self, target: &str, level: Level) -> bool {
        todo!()
    }

    /// The most verbose level any directive allows (for `log::set_max_level`).
    pub fn max_level(&self) -> LevelFilter {
        todo!()
    }
}

/// Installs the logger with the filter from `RUST_LOG` (or the default). An
/// invalid `RUST_LOG` falls back to the default and says so on stderr.
/// Lines look like `2026-01-15T10:30:00.123456Z INFO  angos::http: message`.
pub fn init() {
    todo!()
}
