//! The keys for what happens to stored images over time, under upstream
//! Angos's names so its configurations load unchanged: `immutable_tags`,
//! `immutable_tags_exclusions` and `retention_policy.rules`, in `[global]`
//! and `[repository."X"]`, and `[global] update_pull_time`. Parsing, and the
//! answers the registry (may this tag move?) and the pruner (which rules
//! apply here?) ask for. Enforcing them is theirs.
//!
//! How a repository's immutability settings combine with the global ones.
//! Upstream's documents (doc/how-to/protect-tags-immutability.md, and
//! doc/reference/configuration.md: both repository keys "inherit" and
//! "override global") say a repository's settings take precedence:
//! - `immutable_tags`, when the repository sets it, replaces the global flag
//!   either way: `[repository."dev"] immutable_tags = false` makes every tag
//!   of `dev` mutable under a global `true` (the how-to's "Development: all
//!   tags mutable"). Upstream's code ORs the two flags instead, which cannot
//!   express that example; we follow the documents, as the issue asks.
//! - `immutable_tags_exclusions`, when the repository gives a non-empty list,
//!   replaces the global list ("only those patterns apply, global exclusions
//!   are not merged"). Absent or empty, the global list applies: an empty
//!   list is how upstream reads "not set", so `[]` cannot cancel the global
//!   exclusions; to make more tags immutable there, list a pattern that
//!   matches nothing (`"^$"`).
//! - A namespace belongs to the `[repository."X"]` key equal to it or a
//!   path prefix of it (`Config::repository_for`), as everywhere else.

use super::{Config, ConfigError, Section};
use crate::pattern::Pattern;
use crate::retention::rule::Rule;

/// `immutable_tags` and `immutable_tags_exclusions` as one level sets them;
/// `None` where that level does not say.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImmutableTags {
    pub enabled: Option<bool>,
    pub exclusions: Option<Vec<Pattern>>,
}

impl ImmutableTags {
    /// Whether `tag` may not move, under `repository`'s settings (when the
    /// namespace has a `[repository."X"]`) over the global ones; see the
    /// module's comment for the precedence.
    pub fn resolve(global: &ImmutableTags, repository: Option<&ImmutableTags>, tag: &str) -> bool {
        let enabled = repository
            .and_then(|repository| repository.enabled)
            .or(global.enabled)
            .unwrap_or(false);
        if !enabled {
            return false;
        }
        let exclusions = repository
            .and_then(|repository| repository.exclusions.as_deref())
            .filter(|list| !list.is_empty())
            .or(global.exclusions.as_deref())
            .unwrap_or_default();
        !exclusions.iter().any(|pattern| pattern.is_match(tag))
    }

    /// Takes the keys `other` sets (a later file overrides key by key).
    pub(super) fn merge(&mut self, other: ImmutableTags) {
        if other.enabled.is_some() {
            self.enabled = other.enabled;
        }
        if other.exclusions.is_some() {
            self.exclusions = other.exclusions;
        }
    }
}

/// Every level's immutability settings, what the registry checks a push
/// against; rebuilt from the configuration at start and on reload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TagImmutability {
    global: ImmutableTags,
    /// `[repository."X"]` keys with their settings.
    repositories: Vec<(String, ImmutableTags)>,
}

impl TagImmutability {
    pub fn of(config: &Config) -> TagImmutability {
        TagImmutability {
            global: config.global.immutable_tags.clone(),
            repositories: config
                .repositories
                .iter()
                .map(|(key, repository)| (key.clone(), repository.immutable_tags.clone()))
                .collect(),
        }
    }

    /// `Config::tag_is_immutable`, from this copy.
    pub fn tag_is_immutable(&self, namespace: &str, tag: &str) -> bool {
        let repository = self
            .repositories
            .iter()
            .filter(|(key, _)| super::owns(key, namespace))
            .max_by_key(|(key, _)| key.len())
            .map(|(_, settings)| settings);
        ImmutableTags::resolve(&self.global, repository, tag)
    }

    /// Whether any level turns immutability on; when none does, a push
    /// needs no tag lookups.
    pub fn is_enabled_anywhere(&self) -> bool {
        self.global.enabled == Some(true)
            || self
                .repositories
                .iter()
                .any(|(_, settings)| settings.enabled == Some(true))
    }
}

/// `immutable_tags` and `immutable_tags_exclusions` of one section.
pub(super) fn parse_immutable_tags(section: &mut Section) -> Result<ImmutableTags, ConfigError> {
    let enabled = section.boolean("immutable_tags")?;
    let key = "immutable_tags_exclusions";
    let exclusions = section
        .string_list(key, "must be a list of regex strings")?
        .map(|sources| {
            sources
                .iter()
                .enumerate()
                .map(|(index, source)| {
                    Pattern::new(source).map_err(|why| section.error(&format!("{key}[{index}]"), why))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(ImmutableTags { enabled, exclusions })
}

/// `[<section>.retention_policy]`: its `rules`, each parsed now so a rule
/// outside the subset fails the load naming its index and position. `None`
/// when the table or its `rules` is absent (an earlier file's stay).
pub(super) fn parse_retention_policy(
    section: &mut Section,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<Rule>>, ConfigError> {
    let Some(table) = section.table("retention_policy")? else {
        return Ok(None);
    };
    let path = section.key_path("retention_policy");
    let mut policy = Section::new(section.file, &path, table);
    let rules = policy
        .string_list("rules", "must be a list of rule strings")?
        .map(|sources| {
            sources
                .iter()
                .enumerate()
                .map(|(index, source)| {
                    Rule::parse(source)
                        .map_err(|error| policy.error(&format!("rules[{index}]"), error.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    policy.finish(warnings);
    Ok(rules)
}

/// Warnings for rules that read pull times while none are recorded
/// (upstream's `angos prune` refuses to start then; a warning at load says
/// so early). Checked on the merged configuration.
pub(super) fn pull_time_warnings(config: &Config) -> Vec<String> {
    if config.global.update_pull_time {
        return Vec::new();
    }
    let global = std::iter::once(("global".to_string(), &config.global.retention_rules));
    let repositories = config
        .repositories
        .iter()
        .map(|(key, repository)| (format!("repository.\"{key}\""), &repository.retention_rules));
    let mut warnings = Vec::new();
    for (path, rules) in global.chain(repositories) {
        for (index, rule) in rules.iter().enumerate() {
            if rule.uses_pull_time() {
                warnings.push(format!(
                    "{path}.retention_policy.rules[{index}] reads pull times, which are recorded \
                     only with [global] update_pull_time = true"
                ));
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::super::{Loaded, load_sources};
    use super::*;

    fn load(text: &str) -> Loaded {
        load_sources(&[("config.toml".to_string(), text.to_string())])
            .unwrap_or_else(|error| panic!("{error}"))
    }

    fn load_error(text: &str) -> String {
        load_sources(&[("config.toml".to_string(), text.to_string())])
            .unwrap_err()
            .to_string()
    }

    /// doc/how-to/protect-tags-immutability.md, "Repository-Specific Settings", verbatim.
    const REPOSITORY_SPECIFIC: &str = r#"
# Global default
[global]
immutable_tags = true
immutable_tags_exclusions = ["^latest$"]

# Development: all tags mutable
[repository."dev"]
immutable_tags = false

# Production: stricter exclusions
[repository."production"]
immutable_tags = true
immutable_tags_exclusions = ["^latest$"]

# Staging: allow more mutable tags
[repository."staging"]
immutable_tags = true
immutable_tags_exclusions = [
  "^latest$",
  "^staging-.*$",
  "^rc-.*$"
]
"#;

    #[test]
    fn the_how_to_repository_settings_behave_as_it_says() {
        let loaded = load(REPOSITORY_SPECIFIC);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let config = loaded.config;
        let copy = TagImmutability::of(&config);
        let cases = [
            ("other", "v1.0", true),
            ("other", "latest", false),
            ("dev", "v1.0", false),
            ("dev/team/app", "v1.0", false),
            ("devx", "v1.0", true),
            ("production", "v1.0", true),
            ("production/api", "latest", false),
            ("staging", "staging-42", false),
            ("staging", "rc-1", false),
            ("staging", "latest", false),
            ("staging", "v1.0", true),
        ];
        for (namespace, tag, immutable) in cases {
            assert_eq!(
                config.tag_is_immutable(namespace, tag),
                immutable,
                "{namespace}:{tag}"
            );
            assert_eq!(
                copy.tag_is_immutable(namespace, tag),
                immutable,
                "{namespace}:{tag}"
            );
        }
        assert!(copy.is_enabled_anywhere());
    }

    #[test]
    fn the_how_to_global_patterns() {
        // "Allow Specific Tags to Change", verbatim.
        let config = load(
            r#"
[global]
immutable_tags = true
immutable_tags_exclusions = [
  "^latest$",      # Allow 'latest' to be updated
  "^develop$",     # Allow 'develop' branch tag
  "^main$"         # Allow 'main' branch tag
]
"#,
        )
        .config;
        for (tag, immutable) in [
            ("latest", false),
            ("develop", false),
            ("main", false),
            ("v1", true),
        ] {
            assert_eq!(config.tag_is_immutable("any/where", tag), immutable, "{tag}");
        }
        // "Protect Release Tags Only": everything except vX.Y.Z is excluded.
        let config = load(
            r#"
[global]
immutable_tags = true
immutable_tags_exclusions = [
  "^(?!v[0-9]+\\.[0-9]+\\.[0-9]+$).*$"  # Everything except vX.Y.Z
]
"#,
        )
        .config;
        for (tag, immutable) in [
            ("v1.2.3", true),
            ("latest", false),
            ("v1.2", false),
            ("v1.2.3-rc1", false),
        ] {
            assert_eq!(config.tag_is_immutable("app", tag), immutable, "{tag}");
        }
        // "Protect Semver, Allow Pre-release" and "CI/CD Friendly".
        let config = load(
            r#"
[global]
immutable_tags = true
immutable_tags_exclusions = [
  "^latest$",
  "^.*-alpha.*$",
  "^.*-beta.*$",
  "^.*-rc.*$",
  "^.*-SNAPSHOT$"
]
[repository."ci"]
immutable_tags = true
immutable_tags_exclusions = [
  "^latest$",
  "^main$",
  "^develop$",
  "^pr-\\d+$",
  "^sha-[a-f0-9]+$"
]
"#,
        )
        .config;
        for (tag, immutable) in [("1.0.0-beta.1", false), ("1.0-SNAPSHOT", false), ("1.0.0", true)] {
            assert_eq!(config.tag_is_immutable("app", tag), immutable, "{tag}");
        }
        for (tag, immutable) in [("pr-12", false), ("sha-abc123", false), ("1.0.0-beta.1", true)] {
            assert_eq!(config.tag_is_immutable("ci", tag), immutable, "{tag}");
        }
    }

    #[test]
    fn precedence_between_levels() {
        // Off by default; a repository alone can turn it on, keeping the global exclusions.
        let config = load("").config;
        assert!(!config.tag_is_immutable("a", "v1"));
        assert!(!TagImmutability::of(&config).is_enabled_anywhere());
        let config = load(
            "[global]\nimmutable_tags_exclusions = [\"^latest$\"]\n\
             [repository.\"a\"]\nimmutable_tags = true\n\
             [repository.\"b\"]\nimmutable_tags = true\nimmutable_tags_exclusions = []\n\
             [repository.\"c\"]\nimmutable_tags_exclusions = [\"^v\"]\n",
        )
        .config;
        assert!(config.tag_is_immutable("a", "v1"));
        assert!(
            !config.tag_is_immutable("a", "latest"),
            "the global exclusions are inherited"
        );
        assert!(
            !config.tag_is_immutable("b", "latest"),
            "an empty list inherits too"
        );
        assert!(
            !config.tag_is_immutable("c", "v1"),
            "exclusions alone do not turn it on"
        );
        assert!(!config.tag_is_immutable("z", "v1"));
        // Keys may not nest (load refuses it), so one key at most owns a namespace.
        let config = load("[repository.\"a/b\"]\nimmutable_tags = true\n").config;
        assert!(config.tag_is_immutable("a/b/c", "v1"));
        assert!(!config.tag_is_immutable("a/bc", "v1"));
        assert_eq!(config.repository_for("a/b/c").map(|(key, _)| key), Some("a/b"));
        assert_eq!(config.repository_for("a/b").map(|(key, _)| key), Some("a/b"));
        assert_eq!(config.repository_for("a/bc"), None);
        assert_eq!(config.repository_for("a"), None);
    }

    #[test]
    fn later_files_override_key_by_key() {
        let loaded = load_sources(&[
            (
                "a.toml".into(),
                "[global]\nimmutable_tags = true\nimmutable_tags_exclusions = [\"^latest$\"]\n\
                 [global.retention_policy]\nrules = ['top_pushed(1)']\n"
                    .into(),
            ),
            (
                "b.toml".into(),
                "[global]\nimmutable_tags_exclusions = [\"^main$\"]\n".into(),
            ),
        ])
        .unwrap();
        let config = loaded.config;
        assert!(config.tag_is_immutable("x", "latest"));
        assert!(!config.tag_is_immutable("x", "main"));
        assert_eq!(
            config.global.retention_rules.len(),
            1,
            "b.toml says nothing of rules"
        );
    }

    /// doc/how-to/configure-retention-policies.md: its TOML blocks, verbatim.
    const RETENTION_HOW_TO: &str = r#"
[global]
update_pull_time = true  # Required for pull-based retention

[global.retention_policy]
rules = [
  'image.tag == "latest"',
  'image.pushed_at > now() - days(30)'
]

[repository."production".retention_policy]
rules = [
  'image.tag == "latest"',
  'image.pushed_at > now() - days(90)',
  'image.tag != null && image.tag.matches("^v[0-9]+\\.")',
  'top_pushed(50)'
]

[repository."combined".retention_policy]
rules = [
  # Always keep latest
  'image.tag == "latest"',

  # Keep release tags forever
  'image.tag != null && image.tag.matches("^v[0-9]+\\.[0-9]+\\.[0-9]+$")',

  # Keep other tags for 30 days
  'image.tag != null && image.pushed_at > now() - days(30)',

  # Keep untagged for 7 days
  'image.pushed_at > now() - days(7)',

  # Keep top 10 most pulled
  'top_pulled(10)'
]

[repository."time".retention_policy]
rules = [
  'image.pushed_at > now() - days(30)',   # Keep 30 days
  'image.last_pulled_at > now() - days(7)' # Or pulled within 7 days
]

[repository."semver".retention_policy]
rules = [
  'image.tag != null && image.tag.matches("^v?[0-9]+\\.[0-9]+\\.[0-9]+$")'
]
"#;

    #[test]
    fn the_retention_how_to_loads_unchanged() {
        let loaded = load(RETENTION_HOW_TO);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let config = loaded.config;
        assert!(config.global.update_pull_time);
        let rules = config.retention_rules("production/api");
        assert_eq!(rules.global.len(), 2);
        assert_eq!(rules.repository.len(), 4);
        assert_eq!(rules.iter().count(), 6);
        assert_eq!(
            rules.repository[2].source(),
            r#"image.tag != null && image.tag.matches("^v[0-9]+\\.")"#
        );
        let elsewhere = config.retention_rules("other");
        assert_eq!((elsewhere.global.len(), elsewhere.repository.len()), (2, 0));
        assert_eq!(config.retention_rules("combined").repository.len(), 5);
        // The semver rule's regex reached Pattern with one backslash.
        let semver = &config.retention_rules("semver").repository[0];
        let image = |tag| crate::retention::rule::Image {
            tag: Some(tag),
            pushed_at: 0,
            last_pulled_at: 0,
            pushed_rank: Some(1),
            pulled_rank: None,
        };
        assert_eq!(semver.keeps(&image("v1.2.3"), 0), Ok(true));
        assert_eq!(semver.keeps(&image("v1x2x3"), 0), Ok(false));
        assert!(load("").config.retention_rules("x").is_empty());
    }

    #[test]
    fn a_bad_rule_names_file_key_index_and_position() {
        let error = load_error(
            "[global.retention_policy]\nrules = [\n  'image.tag == \"latest\"',\n  'image.pushed_at > now() - dayz(30)'\n]\n",
        );
        assert_eq!(
            error,
            "config.toml: global.retention_policy.rules[1]: at position 27: unknown function 'dayz' \
             (known: now, days, hours, minutes, top_pushed, top_pulled)"
        );
        let error = load_error("[repository.\"prod\".retention_policy]\nrules = ['image.tag == \"x']\n");
        assert_eq!(
            error,
            "config.toml: repository.\"prod\".retention_policy.rules[0]: at position 14: unterminated string"
        );
        let error = load_error("[global.retention_policy]\nrules = 'top_pushed(1)'\n");
        assert_eq!(
            error,
            "config.toml: global.retention_policy.rules: must be a list of rule strings"
        );
        let error = load_error("[global]\nretention_policy = 1\n");
        assert_eq!(error, "config.toml: global.retention_policy: expected a table");
    }

    #[test]
    fn bad_immutability_keys_name_their_key() {
        let error = load_error("[global]\nimmutable_tags_exclusions = [\"^a$\", \"(?<=v)1\"]\n");
        assert!(
            error.starts_with("config.toml: global.immutable_tags_exclusions[1]: \"(?<=v)1\": lookbehind"),
            "{error}"
        );
        let error = load_error("[repository.\"r\"]\nimmutable_tags_exclusions = [\"[\"]\n");
        assert!(
            error.starts_with("config.toml: repository.\"r\".immutable_tags_exclusions[0]: invalid regex"),
            "{error}"
        );
        let error = load_error("[global]\nimmutable_tags = \"yes\"\n");
        assert_eq!(
            error,
            "config.toml: global.immutable_tags: expected true or false"
        );
        let error = load_error("[global]\nupdate_pull_time = 1\n");
        assert_eq!(
            error,
            "config.toml: global.update_pull_time: expected true or false"
        );
        let error = load_error("[global]\nimmutable_tags_exclusions = \"^a$\"\n");
        assert_eq!(
            error,
            "config.toml: global.immutable_tags_exclusions: must be a list of regex strings"
        );
    }

    #[test]
    fn warnings_for_unknown_policy_keys_and_unrecorded_pull_times() {
        let loaded = load(
            "[global.retention_policy]\nrules = ['top_pulled(5)']\nkeep = 3\n\
             [repository.\"r\".retention_policy]\nrules = ['top_pushed(1)', 'image.last_pulled_at > 0']\n",
        );
        assert_eq!(
            loaded.warnings,
            vec![
                "config.toml: unknown key global.retention_policy.keep ignored".to_string(),
                "global.retention_policy.rules[0] reads pull times, which are recorded only with \
                 [global] update_pull_time = true"
                    .to_string(),
                "repository.\"r\".retention_policy.rules[1] reads pull times, which are recorded only \
                 with [global] update_pull_time = true"
                    .to_string(),
            ]
        );
        let loaded =
            load("[global]\nupdate_pull_time = true\n[global.retention_policy]\nrules = ['top_pulled(5)']\n");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }
}
