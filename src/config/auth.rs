//! `[auth]`, `[auth.identity.NAME]`, and the `pull` / `push` / `delete`
//! lists of `[global]` and `[repository."X"]`: who exists and who may do what.

use std::collections::BTreeMap;

use super::webhook::Origin;
use super::{ConfigError, Section};
use crate::auth::password::PasswordHash;

/// In an access list: anyone, including clients that sent no credentials.
pub const EVERYONE: &str = "*";
/// In an access list: any configured identity that logged in.
pub const AUTHENTICATED: &str = "authenticated";

/// `[auth]`. With no identities, authentication is off and the registry is
/// open to anyone the access lists allow (by default: everything).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// The realm of the `WWW-Authenticate: Basic` challenge.
    pub realm: String,
    /// `[auth.identity.NAME]` by name; the name is the `actor.id` of events.
    pub identities: BTreeMap<String, IdentityConfig>,
    /// Identities allowed to use the administration API (`/v2/_angos/`).
    pub administrators: Vec<String>,
    /// The token endpoint's URL in bearer challenges. By default it is made
    /// from the request's `Host` and scheme; set it when a proxy rewrites those.
    pub token_realm: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            realm: "Angos".to_string(),
            identities: BTreeMap::new(),
            administrators: Vec::new(),
            token_realm: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    pub username: String,
    pub password: PasswordHash,
}

/// Who may pull, push and delete; `None` falls back to the next level
/// (repository, then `[global]`, then the built-in default).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessLists {
    pub pull: Option<Vec<String>>,
    pub push: Option<Vec<String>>,
    pub delete: Option<Vec<String>>,
}

/// Where names were set, so that what only the merged configuration can
/// check (every listed identity exists) still names the file and key.
#[derive(Debug, Default)]
pub(super) struct AuthOrigins {
    /// Each access list as set, with its origin.
    pub access: Vec<(Origin, Vec<String>)>,
    pub administrators: Option<Origin>,
    /// The file that last defined each identity.
    pub identity_files: BTreeMap<String, String>,
}

/// Reads the access lists of a `[global]` or `[repository."X"]` section,
/// remembering where each was set so names can be checked after merging.
pub(super) fn parse_access_lists(
    section: &mut Section,
    into: &mut AccessLists,
    origins: &mut AuthOrigins,
) -> Result<(), ConfigError> {
    for (key, slot) in [
        ("pull", &mut into.pull),
        ("push", &mut into.push),
        ("delete", &mut into.delete),
    ] {
        if let Some(names) = identity_list(section, key)? {
            origins.access.push((
                Origin {
                    file: section.file.to_string(),
                    key: section.key_path(key),
                },
                names.clone(),
            ));
            *slot = Some(names);
        }
    }
    Ok(())
}

fn identity_list(section: &mut Section, key: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
    section.string_list(
        key,
        "must be a list of identity names, \"authenticated\" or \"*\"",
    )
}

/// Applies one file's `[auth]` table over what earlier files set.
pub(super) fn parse_auth(
    file: &str,
    table: &toml::Table,
    auth: &mut AuthConfig,
    origins: &mut AuthOrigins,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let mut section = Section::new(file, "auth", table);
    if let Some(realm) = section.string("realm")? {
        // The realm goes into a quoted header parameter.
        if realm.is_empty() || realm.len() > 100 || !realm.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(section.error("realm", "must be 1 to 100 printable ASCII characters"));
        }
        if realm.contains(['"', '\\']) {
            return Err(section.error("realm", "must not contain '\"' or '\\'"));
        }
        auth.realm = realm.to_string();
    }
    if let Some(url) = section.string("token_realm")? {
        let well_formed = (url.starts_with("https://") || url.starts_with("http://"))
            && url.len() <= 1024
            && url
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !well_formed {
            return Err(section.error(
                "token_realm",
                "must be an http:// or https:// URL (for example \"https://registry.example.com/v2/token\")",
            ));
        }
        auth.token_realm = Some(url.to_string());
    }
    if let Some(names) = identity_list(&mut section, "administrators")? {
        origins.administrators = Some(Origin {
            file: file.to_string(),
            key: "auth.administrators".into(),
        });
        auth.administrators = names;
    }
    if let Some(identities) = section.table("identity")? {
        for (name, value) in identities {
            let path = format!("auth.identity.{name}");
            let toml::Value::Table(table) = value else {
                return Err(ConfigError {
                    file: file.to_string(),
                    key: path,
                    message: "expected a table".into(),
                });
            };
            let mut identity = Section::new(file, &path, table);
            if !is_identity_name(name) {
                return Err(identity.error(
                    "",
                    "identity names use letters, digits, '-', '_' and '.', and cannot be \"authenticated\"",
                ));
            }
            let Some(username) = identity.string("username")? else {
                return Err(identity.error("username", "is required"));
            };
            if username.is_empty()
                || username.len() > 256
                || username.contains(':')
                || username.chars().any(char::is_control)
            {
                return Err(identity.error(
                    "username",
                    "must be 1 to 256 characters without ':' or control characters",
                ));
            }
            let Some(password) = identity.string("password")? else {
                return Err(identity.error(
                    "password",
                    "is required (a hash from `angos hash-password`, never the password itself)",
                ));
            };
            let password = PasswordHash::parse(password).map_err(|why| {
                identity.error(
                    "password",
                    format!("{why}; generate one with `angos hash-password`"),
                )
            })?;
            identity.finish(warnings);
            origins.identity_files.insert(name.clone(), file.to_string());
            auth.identities.insert(
                name.clone(),
                IdentityConfig {
                    username: username.to_string(),
                    password,
                },
            );
        }
    }
    section.finish(warnings);
    Ok(())
}

fn is_identity_name(name: &str) -> bool {
    name != AUTHENTICATED && super::is_plain_name(name)
}

/// Checks what only the merged configuration can tell: every listed name is
/// an identity (or a special entry), and no two identities share a user name.
pub(super) fn check_auth(auth: &AuthConfig, origins: &AuthOrigins) -> Result<(), ConfigError> {
    let mut usernames: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, identity) in &auth.identities {
        if let Some(other) = usernames.insert(&identity.username, name) {
            return Err(ConfigError {
                file: origins.identity_files.get(name).cloned().unwrap_or_default(),
                key: format!("auth.identity.{name}.username"),
                message: format!(
                    "user name {:?} is already used by [auth.identity.{other}]",
                    identity.username
                ),
            });
        }
    }
    let administrators = origins
        .administrators
        .as_ref()
        .map(|origin| (origin.clone(), auth.administrators.clone()));
    for (origin, names) in origins.access.iter().cloned().chain(administrators) {
        for name in &names {
            let special = name == EVERYONE || name == AUTHENTICATED;
            let is_admin_list = origin.key == "auth.administrators";
            if (special && is_admin_list) || (!special && !auth.identities.contains_key(name)) {
                let message = if is_admin_list && special {
                    format!("{name:?} cannot be an administrator; list identity names")
                } else {
                    format!("identity {name:?} is not defined (no [auth.identity.{name}])")
                };
                return Err(ConfigError {
                    file: origin.file.clone(),
                    key: origin.key.clone(),
                    message,
                });
            }
        }
    }
    Ok(())
}
