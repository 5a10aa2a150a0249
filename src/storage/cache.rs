//! A bounded in-memory cache of manifests and tags, so the hot read path
//! (manifest GET by tag) touches no file. Coherent because this process is
//! the only writer: every write to a namespace drops that namespace's
//! entries, and entries are filled only by reads of committed files.

use std::collections::HashMap;

use super::StoredManifest;
use crate::digest::Digest;

/// Roughly what an entry costs beyond its body (keys, map slots).
const ENTRY_OVERHEAD_BYTES: usize = 128;

#[derive(Debug, Default)]
struct NamespaceEntries {
    tags: HashMap<String, Digest>,
    manifests: HashMap<Digest, StoredManifest>,
}

#[derive(Debug)]
pub struct ManifestCache {
    budget_bytes: usize,
    used_bytes: usize,
    namespaces: HashMap<String, NamespaceEntries>,
}

impl ManifestCache {
    /// A cache holding at most about `budget_bytes`; 0 disables it.
    pub fn new(budget_bytes: usize) -> ManifestCache {
        ManifestCache {
            budget_bytes,
            used_bytes: 0,
            namespaces: HashMap::new(),
        }
    }

    pub fn tag(&self, namespace: &str, tag: &str) -> Option<&Digest> {
        self.namespaces.get(namespace)?.tags.get(tag)
    }

    pub fn manifest(&self, namespace: &str, digest: &Digest) -> Option<&StoredManifest> {
        self.namespaces.get(namespace)?.manifests.get(digest)
    }

    pub fn insert_tag(&mut self, namespace: &str, tag: &str, digest: &Digest) {
        if self.make_room(ENTRY_OVERHEAD_BYTES) {
            self.entries(namespace)
                .tags
                .insert(tag.to_string(), digest.clone());
        }
    }

    pub fn insert_manifest(&mut self, namespace: &str, digest: &Digest, manifest: &StoredManifest) {
        let cost = ENTRY_OVERHEAD_BYTES + manifest.body.len() + manifest.media_type.len();
        if self.make_room(cost) {
            self.entries(namespace)
                .manifests
                .insert(digest.clone(), manifest.clone());
        }
    }

    /// Drops everything known about `namespace` (called on every write to it).
    pub fn invalidate(&mut self, namespace: &str) {
        if let Some(entries) = self.namespaces.remove(namespace) {
            let freed = entries.tags.len() * ENTRY_OVERHEAD_BYTES
                + entries
                    .manifests
                    .values()
                    .map(|manifest| ENTRY_OVERHEAD_BYTES + manifest.body.len() + manifest.media_type.len())
                    .sum::<usize>();
            self.used_bytes = self.used_bytes.saturating_sub(freed);
        }
    }

    /// Drops everything (content was quarantined: which namespaces hold it
    /// is not known here, and quarantines are rare).
    pub fn clear(&mut self) {
        self.namespaces.clear();
        self.used_bytes = 0;
    }

    fn entries(&mut self, namespace: &str) -> &mut NamespaceEntries {
        self.namespaces.entry(namespace.to_string()).or_default()
    }

    /// Accounts for `cost` bytes; when the budget would be exceeded the cache
    /// starts over (simple, and bounded: no eviction bookkeeping on the hot path).
    fn make_room(&mut self, cost: usize) -> bool {
        if cost > self.budget_bytes {
            return false;
        }
        if self.used_bytes + cost > self.budget_bytes {
            self.namespaces.clear();
            self.used_bytes = 0;
        }
        self.used_bytes += cost;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(size: usize) -> StoredManifest {
        StoredManifest {
            media_type: "m".into(),
            body: vec![b'x'; size].into(),
        }
    }

    #[test]
    fn invalidation_is_per_namespace() {
        let mut cache = ManifestCache::new(1 << 20);
        let digest = Digest::sha256_of(b"a");
        cache.insert_tag("a", "v1", &digest);
        cache.insert_tag("b", "v1", &digest);
        cache.insert_manifest("a", &digest, &manifest(10));
        cache.invalidate("a");
        assert!(cache.tag("a", "v1").is_none());
        assert!(cache.manifest("a", &digest).is_none());
        assert_eq!(cache.tag("b", "v1"), Some(&digest));
    }

    #[test]
    fn the_budget_is_held() {
        let mut cache = ManifestCache::new(1000);
        let digest = Digest::sha256_of(b"a");
        cache.insert_manifest("a", &digest, &manifest(2000));
        assert!(cache.manifest("a", &digest).is_none(), "larger than the budget");
        for i in 0..100 {
            cache.insert_manifest(&format!("n{i}"), &digest, &manifest(100));
            assert!(cache.used_bytes <= 1000);
        }
        let disabled = ManifestCache::new(0);
        assert!(disabled.tag("a", "b").is_none());
    }
}
