//! Webhook configuration for the end-to-end tests, and a registry started with it.
//! The server is `common::Server`; its generated file ends with `[global]`, so the
//! webhook lines go there, followed by the `[repository."X"]` and
//! `[event_webhook.NAME]` tables. Rewrites for hot-reload tests replace everything
//! after `[global]` atomically (write, then rename), keeping common's head intact.

use crate::common::{Options, Server, TempDir, json_str};
use std::fmt::Write as _;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// One `[event_webhook.NAME]` table.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    pub policy: String,
    pub events: Vec<String>,
    pub token: Option<String>,
    pub timeout_ms: Option<u64>,
    pub max_retries: Option<u32>,
    pub repository_filter: Vec<String>,
    pub ca_bundle: Option<PathBuf>,
    /// `client_certificate` and `client_private_key`, for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Raw `key = value` lines (for invalid edits).
    pub extra: Vec<String>,
}

impl Webhook {
    pub fn new(name: &str, url: &str, policy: &str, events: &[&str]) -> Webhook {
        Webhook {
            name: name.to_string(),
            url: url.to_string(),
            policy: policy.to_string(),
            events: events.iter().map(|e| e.to_string()).collect(),
            token: None,
            timeout_ms: None,
            max_retries: None,
            repository_filter: Vec::new(),
            ca_bundle: None,
            client_identity: None,
            extra: Vec::new(),
        }
    }

    pub fn token(mut self, token: &str) -> Webhook {
        self.token = Some(token.to_string());
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Webhook {
        self.timeout_ms = Some(ms);
        self
    }

    pub fn max_retries(mut self, n: u32) -> Webhook {
        self.max_retries = Some(n);
        self
    }

    pub fn filter(mut self, patterns: &[&str]) -> Webhook {
        self.repository_filter = patterns.iter().map(|p| p.to_string()).collect();
        self
    }

    pub fn ca_bundle(mut self, path: &Path) -> Webhook {
        self.ca_bundle = Some(path.to_path_buf());
        self
    }

    pub fn client_identity(mut self, certificate: &Path, private_key: &Path) -> Webhook {
        self.client_identity = Some((certificate.to_path_buf(), private_key.to_path_buf()));
        self
    }

    /// A raw `key = value` line (format, signing_secrets, tag_filter, headers...).
    pub fn line(mut self, line: &str) -> Webhook {
        self.extra.push(line.to_string());
        self
    }

    fn write_toml(&self, out: &mut String) {
        let _ = writeln!(out, "\n[event_webhook.{}]", json_str(&self.name));
        let _ = writeln!(out, "url = {}", json_str(&self.url));
        let _ = writeln!(out, "policy = {}", json_str(&self.policy));
        let _ = writeln!(out, "events = {}", toml_list(&self.events));
        if let Some(token) = &self.token {
            let _ = writeln!(out, "token = {}", json_str(token));
        }
        if let Some(ms) = self.timeout_ms {
            let _ = writeln!(out, "timeout_ms = {ms}");
        }
        if let Some(n) = self.max_retries {
            let _ = writeln!(out, "max_retries = {n}");
        }
        if !self.repository_filter.is_empty() {
            let _ = writeln!(out, "repository_filter = {}", toml_list(&self.repository_filter));
        }
        if let Some(path) = &self.ca_bundle {
            let _ = writeln!(out, "ca_bundle = {}", json_str(&path.display().to_string()));
        }
        if let Some((certificate, private_key)) = &self.client_identity {
            let _ = writeln!(
                out,
                "client_certificate = {}",
                json_str(&certificate.display().to_string())
            );
            let _ = writeln!(
                out,
                "client_private_key = {}",
                json_str(&private_key.display().to_string())
            );
        }
        for line in &self.extra {
            let _ = writeln!(out, "{line}");
        }
    }
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| json_str(i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The webhook part of a configuration.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// `global.event_webhooks`.
    pub global_webhooks: Vec<String>,
    /// Other `[global]` lines (queue length, drain time...).
    pub global: Vec<String>,
    /// `[repository."X"] event_webhooks = [...]`.
    pub repositories: Vec<(String, Vec<String>)>,
    pub webhooks: Vec<Webhook>,
}

impl Setup {
    pub fn new() -> Setup {
        Setup::default()
    }

    /// Defines the webhook and lists it in `global.event_webhooks`.
    pub fn hook(mut self, webhook: Webhook) -> Setup {
        self.global_webhooks.push(webhook.name.clone());
        self.webhooks.push(webhook);
        self
    }

    /// Defines the webhook without listing it globally.
    pub fn define(mut self, webhook: Webhook) -> Setup {
        self.webhooks.push(webhook);
        self
    }

    pub fn global_line(mut self, line: &str) -> Setup {
        self.global.push(line.to_string());
        self
    }

    pub fn repository(mut self, key: &str, webhooks: &[&str]) -> Setup {
        self.repositories
            .push((key.to_string(), webhooks.iter().map(|w| w.to_string()).collect()));
        self
    }

    /// The webhook named `name`, for edits.
    pub fn webhook_mut(&mut self, name: &str) -> &mut Webhook {
        self.webhooks
            .iter_mut()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no webhook {name:?} in the setup"))
    }

    /// The lines that follow `[global]`.
    pub fn global_tail(&self) -> String {
        let mut out = String::new();
        if !self.global_webhooks.is_empty() {
            let _ = writeln!(out, "event_webhooks = {}", toml_list(&self.global_webhooks));
        }
        for line in &self.global {
            let _ = writeln!(out, "{line}");
        }
        for (key, webhooks) in &self.repositories {
            let _ = writeln!(
                out,
                "\n[repository.{}]\nevent_webhooks = {}",
                json_str(key),
                toml_list(webhooks)
            );
        }
        for webhook in &self.webhooks {
            webhook.write_toml(&mut out);
        }
        out
    }

    pub fn options(&self) -> Options {
        let mut options = Options::default();
        for line in self.global_tail().lines() {
            options = options.global_line(line);
        }
        options
    }
}

/// A server started with a webhook setup, in a directory the test owns (so the
/// configuration file can be edited). Derefs to `common::Server`.
pub struct Registry {
    // Field order matters: the server is killed before its directory goes.
    pub server: Server,
    pub dir: TempDir,
}

impl Registry {
    pub fn start(setup: &Setup) -> Registry {
        let dir = TempDir::new("webhooks");
        let server = Server::start_in(dir.path(), &setup.options());
        Registry { server, dir }
    }

    /// The file `common::Server::start_in` wrote and the server watches.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Replaces the webhook part of the configuration file with `setup`, atomically.
    /// `revision` pads a trailing comment so the file's size changes too, whatever
    /// mtime granularity the filesystem has.
    pub fn rewrite(&self, setup: &Setup, revision: usize) {
        self.rewrite_tail(&setup.global_tail(), revision);
    }

    /// `rewrite`, then waits until the server logs that it reloaded.
    #[track_caller]
    pub fn rewrite_and_wait_reload(&self, setup: &Setup, revision: usize) {
        use super::observe::{count_logs, is_reloaded, wait_for_new_log};
        let reloads = count_logs(self, is_reloaded);
        self.rewrite(setup, revision);
        wait_for_new_log(
            self,
            reloads,
            super::RELOAD_WAIT,
            "'configuration reloaded'",
            is_reloaded,
        );
    }

    /// Like `rewrite`, with raw text after `[global]`.
    pub fn rewrite_tail(&self, tail: &str, revision: usize) {
        let path = self.config_path();
        let current = std::fs::read_to_string(&path).expect("read the configuration file");
        let marker = "[global]\n";
        let at = current
            .find(marker)
            .unwrap_or_else(|| panic!("no [global] table in the generated configuration:\n{current}"));
        let mut text = current[..at + marker.len()].to_string();
        text.push_str(tail);
        let _ = writeln!(text, "\n# revision {revision} {}", "#".repeat(revision * 7));
        let tmp = self.dir.path().join("config.toml.tmp");
        std::fs::write(&tmp, text).expect("write the new configuration");
        std::fs::rename(&tmp, &path).expect("replace the configuration file");
    }
}

impl Deref for Registry {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}
