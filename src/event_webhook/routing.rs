//! Which webhooks see an event (SPEC section 3): the owning repository's
//! `event_webhooks` when set, else `global.event_webhooks`; then the
//! webhook's `events`, `repository_filter` and `tag_filter`. Built once per configuration.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::event::EventKind;
use crate::config::{Config, WebhookConfig};

pub struct Routing {
    webhooks: BTreeMap<String, Rc<WebhookConfig>>,
    global: Vec<Rc<WebhookConfig>>,
    /// Repository keys with their list (None: inherits the global list).
    repositories: Vec<(String, Option<Vec<Rc<WebhookConfig>>>)>,
    interest: u8,
}

impl Routing {
    pub fn new(config: &Config) -> Routing {
        let webhooks: BTreeMap<String, Rc<WebhookConfig>> = config
            .webhooks
            .iter()
            .map(|(name, webhook)| (name.clone(), Rc::new(webhook.clone())))
            .collect();
        // Names were checked at load; a missing one cannot happen, and is skipped.
        let resolve = |names: &[String]| -> Vec<Rc<WebhookConfig>> {
            let mut list: Vec<Rc<WebhookConfig>> = Vec::new();
            for name in names {
                if let Some(webhook) = webhooks.get(name)
                    && !list.iter().any(|known| known.name == *name)
                {
                    list.push(webhook.clone());
                }
            }
            list
        };
        let global = resolve(&config.global.event_webhooks);
        let repositories: Vec<(String, Option<Vec<Rc<WebhookConfig>>>)> = config
            .repositories
            .iter()
            .map(|(key, repository)| (key.clone(), repository.event_webhooks.as_deref().map(resolve)))
            .collect();
        let mut interest = 0;
        let listed = global
            .iter()
            .chain(repositories.iter().flat_map(|(_, list)| list.iter().flatten()));
        for webhook in listed {
            for kind in &webhook.events {
                interest |= kind.bit();
            }
        }
        Routing {
            webhooks,
            global,
            repositories,
            interest,
        }
    }

    /// Every configured webhook by name (for reconfiguring queues).
    pub fn webhooks(&self) -> &BTreeMap<String, Rc<WebhookConfig>> {
        &self.webhooks
    }

    /// A mask of the event kinds at least one listed webhook wants; the
    /// registry builds no event of other kinds (pulls are hot paths).
    pub fn interest(&self) -> u8 {
        self.interest
    }

    /// The `[repository."X"]` key that owns `namespace`: equal to it or a
    /// path prefix of it (`production` owns `production/api`, not `productionx`).
    fn owner(&self, namespace: &str) -> Option<&(String, Option<Vec<Rc<WebhookConfig>>>)> {
        self.repositories
            .iter()
            .filter(|(key, _)| {
                namespace == key
                    || (namespace.starts_with(key.as_str())
                        && namespace.as_bytes().get(key.len()) == Some(&b'/'))
            })
            .max_by_key(|(key, _)| key.len())
    }

    /// The payload's `repository`: the owning key, else the first component.
    pub fn repository_of(&self, namespace: &str) -> String {
        match self.owner(namespace) {
            Some((key, _)) => key.clone(),
            None => namespace.split('/').next().unwrap_or(namespace).to_string(),
        }
    }

    /// The webhooks an event of `kind` in `namespace` (about `tag`, if
    /// any) goes to, in list order.
    pub fn webhooks_for(
        &self,
        kind: EventKind,
        namespace: &str,
        tag: Option<&str>,
    ) -> Vec<Rc<WebhookConfig>> {
        let list = match self.owner(namespace) {
            Some((_, Some(list))) => list,
            _ => &self.global,
        };
        list.iter()
            .filter(|webhook| webhook.wants(kind, namespace, tag))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_sources;

    /// The seed's "Multiple Webhooks" example, verbatim.
    const MULTIPLE: &str = r#"
# Audit log -- must succeed
[event_webhook.audit]
url = "https://audit.example.com/events"
policy = "required"
token = "audit-secret"
events = ["manifest.push", "manifest.delete"]
max_retries = 3

# Slack notifications -- best effort
[event_webhook.slack]
url = "https://hooks.slack.com/services/T.../B.../xxx"
policy = "optional"
events = ["manifest.push", "tag.create"]
timeout_ms = 3000

# Analytics -- fire and forget
[event_webhook.analytics]
url = "https://analytics.internal/ingest"
policy = "async"
events = ["manifest.push", "manifest.delete", "blob.push", "tag.create", "tag.delete"]

# Enable all globally
[global]
event_webhooks = ["audit", "slack", "analytics"]

# Production repos get audit only
[repository."production"]
event_webhooks = ["audit"]
"#;

    fn names(list: Vec<Rc<WebhookConfig>>) -> Vec<String> {
        list.iter().map(|webhook| webhook.name.clone()).collect()
    }

    #[test]
    fn production_repositories_get_audit_only() {
        let config = load_sources(&[("seed.toml".into(), MULTIPLE.into())])
            .unwrap()
            .config;
        let routing = Routing::new(&config);
        assert_eq!(
            names(routing.webhooks_for(EventKind::ManifestPush, "production/api", None)),
            ["audit"]
        );
        assert_eq!(
            names(routing.webhooks_for(EventKind::ManifestPush, "production", None)),
            ["audit"]
        );
        assert_eq!(
            names(routing.webhooks_for(EventKind::ManifestPush, "productionx/api", None)),
            ["audit", "slack", "analytics"]
        );
        assert_eq!(
            names(routing.webhooks_for(EventKind::TagCreate, "staging/web", None)),
            ["slack", "analytics"]
        );
        assert!(
            routing
                .webhooks_for(EventKind::ManifestPull, "staging/web", None)
                .is_empty()
        );
        assert_eq!(routing.repository_of("production/api"), "production");
        assert_eq!(routing.repository_of("staging/web/x"), "staging");
        assert_eq!(routing.interest() & EventKind::ManifestPull.bit(), 0);
        assert_ne!(routing.interest() & EventKind::BlobPush.bit(), 0);
    }

    #[test]
    fn repository_filter_is_or_matched() {
        let config = load_sources(&[(
            "f.toml".into(),
            r#"
[event_webhook.important-repos]
url = "https://hooks.example.com/important"
policy = "optional"
events = ["manifest.push"]
repository_filter = ["^production/.*", "^staging/.*", "^library/.*"]
[global]
event_webhooks = ["important-repos"]
"#
            .into(),
        )])
        .unwrap()
        .config;
        let routing = Routing::new(&config);
        for namespace in ["production/a", "staging/b", "library/c"] {
            assert_eq!(
                names(routing.webhooks_for(EventKind::ManifestPush, namespace, None)).len(),
                1
            );
        }
        assert!(
            routing
                .webhooks_for(EventKind::ManifestPush, "dev/a", None)
                .is_empty()
        );
        assert!(
            routing
                .webhooks_for(EventKind::ManifestPush, "production", None)
                .is_empty()
        );
    }
}
