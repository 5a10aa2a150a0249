//! Who may do what: the configuration's identities and access lists turned
//! into decisions, and each request turned into the permission it needs.

use crate::config::auth::{AUTHENTICATED, EVERYONE};
use crate::config::{AccessLists, Config};
use crate::http::{Method, RequestHead};
use crate::registry::route::Route;

/// Where clients fetch bearer tokens (`Bearer realm=".../v2/token"`).
pub use crate::registry::route::TOKEN_PATH;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

/// Who is asking: an index into the policy's identities, or nobody known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    Identity(usize),
}

/// What a request needs before the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Health checks, metrics and unknown paths: no credentials involved.
    Nothing,
    /// `GET /v2/`: the client asks whether it is welcome (and learns the challenge).
    Base,
    /// `GET /v2/token`: a bearer token for whoever the credentials say.
    Token,
    /// `GET /v2/_catalog`: answered with the repositories the client may pull.
    Catalog,
    /// The administration API.
    Administrator,
    Repository {
        namespace: String,
        action: Action,
    },
}

impl Need {
    /// `route` is `head`'s path, routed (the caller routes once for both uses).
    pub fn of(head: &RequestHead, route: &Route) -> Need {
        let (namespace, action) = match route {
            Route::Admin => return Need::Administrator,
            Route::Token if matches!(head.method, Method::Get | Method::Head) => return Need::Token,
            Route::Base => return Need::Base,
            Route::Catalog => return Need::Catalog,
            // The page's files hold no data: what it shows comes through
            // the API, with the visitor's credentials.
            Route::Healthz | Route::Readyz | Route::Metrics | Route::Token | Route::Ui | Route::NotFound => {
                return Need::Nothing;
            }
            Route::Tags { name } | Route::Referrers { name, .. } | Route::TagDetails { name } => {
                (name, Action::Pull)
            }
            // Cancelling or querying one's own upload is part of pushing.
            Route::UploadStart { name } | Route::Upload { name, .. } => (name, Action::Push),
            Route::Manifest { name, .. } | Route::Blob { name, .. } => {
                let action = match head.method {
                    Method::Get | Method::Head => Action::Pull,
                    Method::Delete => Action::Delete,
                    _ => Action::Push,
                };
                (name, action)
            }
        };
        Need::Repository {
            namespace: namespace.clone(),
            action,
        }
    }
}

/// One resolved access list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    everyone: bool,
    authenticated: bool,
    identities: Vec<usize>,
}

impl Grant {
    fn resolve(names: &[String], ids: &[String]) -> Grant {
        Grant {
            everyone: names.iter().any(|name| name == EVERYONE),
            authenticated: names.iter().any(|name| name == AUTHENTICATED),
            identities: names
                .iter()
                .filter_map(|name| ids.iter().position(|id| id == name))
                .collect(),
        }
    }

    fn allows(&self, principal: Principal) -> bool {
        match principal {
            Principal::Anonymous => self.everyone,
            Principal::Identity(index) => {
                self.everyone || self.authenticated || self.identities.contains(&index)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rules {
    pull: Grant,
    push: Grant,
    delete: Grant,
}

impl Rules {
    fn resolve(lists: &AccessLists, fallback: &Rules, ids: &[String]) -> Rules {
        let pick = |list: &Option<Vec<String>>, fallback: &Grant| match list {
            Some(names) => Grant::resolve(names, ids),
            None => fallback.clone(),
        };
        Rules {
            pull: pick(&lists.pull, &fallback.pull),
            push: pick(&lists.push, &fallback.push),
            delete: pick(&lists.delete, &fallback.delete),
        }
    }

    fn grant(&self, action: Action) -> &Grant {
        match action {
            Action::Pull => &self.pull,
            Action::Push => &self.push,
            Action::Delete => &self.delete,
        }
    }
}

pub struct Identity {
    /// The configuration name: `actor.id`.
    pub id: String,
    pub username: String,
    pub password: crate::auth::password::PasswordHash,
    /// What a bearer token issued to this identity is bound to: its user
    /// name and password hash, so changing either voids its tokens. Built
    /// once per configuration: every request with a token checks it.
    pub credential: String,
}

/// The decisions of one configuration.
pub struct AccessPolicy {
    identities: Vec<Identity>,
    global: Rules,
    /// `[repository."X"]` keys with their rules; a key owns its namespace and
    /// everything below it (keys never nest, configuration checks that).
    repositories: Vec<(String, Rules)>,
    administrators: Vec<usize>,
}

impl AccessPolicy {
    pub fn new(config: &Config) -> AccessPolicy {
        let identities: Vec<Identity> = config
            .auth
            .identities
            .iter()
            .map(|(id, identity)| Identity {
                id: id.clone(),
                username: identity.username.clone(),
                password: identity.password.clone(),
                credential: format!("{}\n{}", identity.username, identity.password),
            })
            .collect();
        let ids: Vec<String> = identities.iter().map(|identity| identity.id.clone()).collect();
        // With identities configured, anonymous clients get nothing unless a
        // list says "*"; without, the registry stays as open as it always was.
        let default_names = if identities.is_empty() {
            EVERYONE
        } else {
            AUTHENTICATED
        };
        let default_grant = Grant::resolve(&[default_names.to_string()], &ids);
        let defaults = Rules {
            pull: default_grant.clone(),
            push: default_grant.clone(),
            delete: default_grant,
        };
        let global = Rules::resolve(&config.global.access, &defaults, &ids);
        let repositories = config
            .repositories
            .iter()
            .map(|(key, repository)| (key.clone(), Rules::resolve(&repository.access, &global, &ids)))
            .collect();
        let administrators = Grant::resolve(&config.auth.administrators, &ids).identities;
        AccessPolicy {
            identities,
            global,
            repositories,
            administrators,
        }
    }

    /// `true` when identities are configured: credentials are then checked.
    pub fn authentication_enabled(&self) -> bool {
        !self.identities.is_empty()
    }

    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    pub fn find_username(&self, username: &str) -> Option<usize> {
        self.identities
            .iter()
            .position(|identity| identity.username == username)
    }

    /// The identity named `id` in the configuration.
    pub fn find_id(&self, id: &str) -> Option<usize> {
        self.identities.iter().position(|identity| identity.id == id)
    }

    pub fn identity(&self, principal: Principal) -> Option<&Identity> {
        match principal {
            Principal::Anonymous => None,
            Principal::Identity(index) => self.identities.get(index),
        }
    }

    pub fn allows(&self, principal: Principal, action: Action, namespace: &str) -> bool {
        self.rules_for(namespace).grant(action).allows(principal)
    }

    /// The administration API: open while authentication is off (as it was
    /// before identities existed), else for `auth.administrators` only.
    pub fn is_administrator(&self, principal: Principal) -> bool {
        match principal {
            _ if !self.authentication_enabled() => true,
            Principal::Anonymous => false,
            Principal::Identity(index) => self.administrators.contains(&index),
        }
    }

    /// Whether `principal` may pull from at least one namespace: decides
    /// whether `GET /v2/` and the catalog welcome it.
    pub fn may_pull_somewhere(&self, principal: Principal) -> bool {
        self.global.pull.allows(principal)
            || self
                .repositories
                .iter()
                .any(|(_, rules)| rules.pull.allows(principal))
    }

    pub fn decide(&self, principal: Principal, need: &Need) -> Decision {
        let allowed = match need {
            // Anyone gets a token; what it may do is decided per request.
            Need::Nothing | Need::Token => true,
            // With identities, an anonymous ping is challenged, so clients
            // learn how to log in; the token they then fetch (even an
            // anonymous one) is what `Connection` lets through.
            Need::Base => !self.authentication_enabled() || principal != Principal::Anonymous,
            Need::Catalog => self.may_pull_somewhere(principal),
            Need::Administrator => self.is_administrator(principal),
            Need::Repository { namespace, action } => self.allows(principal, *action, namespace),
        };
        match (allowed, principal) {
            (true, _) => Decision::Allow,
            // Credentials might help: challenge. Known but not allowed, or
            // nobody to log in as: refuse.
            (false, Principal::Anonymous) if self.authentication_enabled() => Decision::Challenge,
            (false, _) => Decision::Deny,
        }
    }

    fn rules_for(&self, namespace: &str) -> &Rules {
        self.repositories
            .iter()
            .find(|(key, _)| {
                namespace == key
                    || (namespace.starts_with(key.as_str())
                        && namespace.as_bytes().get(key.len()) == Some(&b'/'))
            })
            .map(|(_, rules)| rules)
            .unwrap_or(&self.global)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401 with the Basic challenge.
    Challenge,
    /// 403: the identity is known and lacks the permission.
    Deny,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_head;

    const HASH: &str = "$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHRzYWx0$\
        AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn policy(text: &str) -> AccessPolicy {
        let loaded = crate::config::load_sources(&[("test.toml".into(), text.to_string())]).unwrap();
        AccessPolicy::new(&loaded.config)
    }

    fn identities() -> String {
        ["alice", "ci", "admin"]
            .iter()
            .map(|name| format!("[auth.identity.{name}]\nusername = \"{name}\"\npassword = \"{HASH}\"\n"))
            .collect()
    }

    fn principal(policy: &AccessPolicy, username: &str) -> Principal {
        Principal::Identity(policy.find_username(username).unwrap())
    }

    #[test]
    fn without_identities_everything_stays_open() {
        let policy = policy("");
        assert!(!policy.authentication_enabled());
        for action in [Action::Pull, Action::Push, Action::Delete] {
            assert!(policy.allows(Principal::Anonymous, action, "any/thing"));
        }
        assert!(policy.is_administrator(Principal::Anonymous));
    }

    #[test]
    fn lists_can_close_an_open_registry() {
        // A read-only mirror: no identities, nobody may push or delete.
        let policy = policy("[global]\npush = []\ndelete = []\n");
        assert!(policy.allows(Principal::Anonymous, Action::Pull, "x"));
        assert!(!policy.allows(Principal::Anonymous, Action::Push, "x"));
        assert_eq!(
            policy.decide(
                Principal::Anonymous,
                &Need::Repository {
                    namespace: "x".into(),
                    action: Action::Delete
                }
            ),
            Decision::Deny,
            "no identity could do better: no challenge"
        );
    }

    #[test]
    fn with_identities_the_default_is_authenticated_only() {
        let policy = policy(&identities());
        assert!(policy.authentication_enabled());
        let alice = principal(&policy, "alice");
        assert!(!policy.allows(Principal::Anonymous, Action::Pull, "x"));
        assert!(policy.allows(alice, Action::Push, "x"));
        assert!(!policy.is_administrator(alice), "administrators must be listed");
        assert_eq!(
            policy.decide(Principal::Anonymous, &Need::Base),
            Decision::Challenge
        );
        assert_eq!(policy.decide(alice, &Need::Base), Decision::Allow);
    }

    #[test]
    fn repository_lists_override_global_ones_per_action() {
        let text = format!(
            "{}[auth]\nadministrators = [\"admin\"]\n[global]\npull = [\"*\"]\npush = [\"authenticated\"]\n\
             [repository.\"production\"]\npush = [\"ci\"]\ndelete = [\"admin\"]\n",
            identities()
        );
        let policy = policy(&text);
        let (alice, ci, admin) = (
            principal(&policy, "alice"),
            principal(&policy, "ci"),
            principal(&policy, "admin"),
        );
        // Pull falls through to the global "*".
        assert!(policy.allows(Principal::Anonymous, Action::Pull, "production/api"));
        assert!(policy.allows(alice, Action::Push, "staging/api"));
        assert!(!policy.allows(alice, Action::Push, "production/api"));
        assert!(policy.allows(ci, Action::Push, "production/api"));
        assert!(policy.allows(ci, Action::Push, "production"));
        // "productionx" is not below "production".
        assert!(policy.allows(alice, Action::Push, "productionx"));
        assert!(!policy.allows(ci, Action::Delete, "production/api"));
        assert!(policy.allows(admin, Action::Delete, "production/api"));
        // Delete elsewhere: the built-in default (authenticated).
        assert!(policy.allows(alice, Action::Delete, "staging/api"));
        assert!(policy.is_administrator(admin));
        assert!(!policy.is_administrator(ci));
        assert_eq!(policy.decide(alice, &Need::Administrator), Decision::Deny);
        assert_eq!(
            policy.decide(Principal::Anonymous, &Need::Base),
            Decision::Challenge,
            "the ping challenges anonymous clients even where they may pull"
        );
        assert_eq!(
            policy.decide(Principal::Anonymous, &Need::Catalog),
            Decision::Allow
        );
        assert_eq!(policy.decide(Principal::Anonymous, &Need::Token), Decision::Allow);
    }

    #[test]
    fn requests_map_to_the_permission_they_need() {
        let need = |request: &str| {
            let (_, head) = parse_head(request.as_bytes(), 8192).unwrap().unwrap();
            Need::of(&head, &crate::registry::route::route(&head.path))
        };
        let repo = |namespace: &str, action| Need::Repository {
            namespace: namespace.into(),
            action,
        };
        let host = "\r\nHost: x\r\n\r\n";
        assert_eq!(need(&format!("GET /v2/ HTTP/1.1{host}")), Need::Base);
        assert_eq!(need(&format!("GET /v2/_catalog HTTP/1.1{host}")), Need::Catalog);
        assert_eq!(need(&format!("GET /healthz HTTP/1.1{host}")), Need::Nothing);
        assert_eq!(
            need(&format!("GET /v2/_angos/webhooks HTTP/1.1{host}")),
            Need::Administrator
        );
        assert_eq!(
            need(&format!("HEAD /v2/a/b/manifests/v1 HTTP/1.1{host}")),
            repo("a/b", Action::Pull)
        );
        assert_eq!(
            need(&format!("PUT /v2/a/manifests/v1 HTTP/1.1{host}")),
            repo("a", Action::Push)
        );
        assert_eq!(
            need(&format!("DELETE /v2/a/manifests/v1 HTTP/1.1{host}")),
            repo("a", Action::Delete)
        );
        assert_eq!(
            need(&format!("DELETE /v2/a/blobs/uploads/0123 HTTP/1.1{host}")),
            repo("a", Action::Push)
        );
        assert_eq!(
            need(&format!("POST /v2/a/blobs/uploads/ HTTP/1.1{host}")),
            repo("a", Action::Push)
        );
        assert_eq!(
            need(&format!("GET /v2/a/tags/list HTTP/1.1{host}")),
            repo("a", Action::Pull)
        );
    }
}
