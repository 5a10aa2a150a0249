//! `[ui]`: the operator page the server itself serves (the `ui` module).
//! Upstream Angos's keys `enabled` and `name`, and ours, `path`.

use super::{ConfigError, Section};

/// Where the page is when `path` is not set.
pub const UI_PATH_DEFAULT: &str = "/ui/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    /// Off unless asked for: an appliance then serves no page at all, and
    /// the page adds nothing to what a scanner of the port can find.
    pub enabled: bool,
    /// Shown in the page's header and title.
    pub name: String,
    /// Where the page and its files are served: `/x/`, outside `/v2/`.
    pub path: String,
}

impl Default for UiConfig {
    fn default() -> UiConfig {
        UiConfig {
            enabled: false,
            name: "Angos".to_string(),
            path: UI_PATH_DEFAULT.to_string(),
        }
    }
}

/// Paths the server answers itself, which the page may not take.
const RESERVED: [&str; 5] = ["/v2/", "/metrics/", "/healthz/", "/readyz/", "/v2/token/"];

pub(super) fn parse_ui(section: &mut Section, ui: &mut UiConfig) -> Result<(), ConfigError> {
    if let Some(enabled) = section.boolean("enabled")? {
        ui.enabled = enabled;
    }
    if let Some(name) = section.string("name")? {
        if name.trim().is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(section.error("name", "must be 1 to 100 printable characters"));
        }
        ui.name = name.to_string();
    }
    if let Some(path) = section.string("path")? {
        let well_formed = path.len() > 2
            && path.starts_with('/')
            && path.ends_with('/')
            && !path.contains("//")
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
            && !path.split('/').any(|part| part == "." || part == "..");
        if !well_formed {
            return Err(section.error(
                "path",
                "must be an absolute path ending in / such as \"/ui/\" (letters, digits, - _ .)",
            ));
        }
        if RESERVED
            .iter()
            .any(|reserved| path.starts_with(reserved) || reserved.starts_with(path))
        {
            return Err(section.error(
                "path",
                "must not be or contain /v2/, /metrics, /healthz or /readyz",
            ));
        }
        ui.path = path.to_string();
    }
    Ok(())
}
