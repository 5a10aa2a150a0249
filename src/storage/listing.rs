//! Sorted in-memory indexes of tag names per namespace and of namespaces,
//! so a page of `tags/list` or `_catalog` costs time in proportion to the
//! page, not to the repository: an index is filled by one directory scan on
//! first use and then kept current by the writes themselves (this process
//! is the only writer). Bounded: past its budget the index starts over, and
//! a set larger than the whole budget is never kept (listings then scan).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

/// Roughly what a name costs in a `BTreeSet<String>` beyond its bytes.
const ENTRY_OVERHEAD_BYTES: usize = 48;

#[derive(Debug)]
pub struct ListingIndex {
    budget_bytes: usize,
    used_bytes: usize,
    tags: HashMap<String, BTreeSet<String>>,
    namespaces: Option<BTreeSet<String>>,
    /// Referrer entry names per "namespace\nsubject digest".
    referrers: HashMap<String, BTreeSet<String>>,
}

/// One page of a sorted listing: the names after a point, and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

impl Page {
    /// The names of `set` after `after` that `accept` takes, at most `limit`.
    pub fn of(
        set: &BTreeSet<String>,
        after: Option<&str>,
        limit: Option<usize>,
        accept: &dyn Fn(&str) -> bool,
    ) -> Page {
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut names = set
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|name| accept(name));
        let limit = limit.unwrap_or(usize::MAX);
        let items: Vec<String> = names.by_ref().take(limit).cloned().collect();
        let more = items.len() == limit && names.next().is_some();
        Page { items, more }
    }
}

fn cost(name: &str) -> usize {
    name.len() + ENTRY_OVERHEAD_BYTES
}

impl ListingIndex {
    /// An index of at most about `budget_bytes`; 0 disables it.
    pub fn new(budget_bytes: usize) -> ListingIndex {
        ListingIndex {
            budget_bytes,
            used_bytes: 0,
            tags: HashMap::new(),
            namespaces: None,
            referrers: HashMap::new(),
        }
    }

    pub fn tags(&self, namespace: &str) -> Option<&BTreeSet<String>> {
        self.tags.get(namespace)
    }

    pub fn namespaces(&self) -> Option<&BTreeSet<String>> {
        self.namespaces.as_ref()
    }

    /// Keeps a namespace's scanned tags, if they fit.
    pub fn fill_tags(&mut self, namespace: &str, tags: BTreeSet<String>) {
        let size: usize = tags.iter().map(|tag| cost(tag)).sum::<usize>() + cost(namespace);
        if self.make_room(size) {
            self.tags.insert(namespace.to_string(), tags);
        }
    }

    /// Keeps the scanned namespaces, if they fit.
    pub fn fill_namespaces(&mut self, namespaces: BTreeSet<String>) {
        let size: usize = namespaces.iter().map(|name| cost(name)).sum();
        if self.make_room(size) {
            self.namespaces = Some(namespaces);
        }
    }

    /// A tag written in `namespace`: indexed if the namespace is.
    pub fn add_tag(&mut self, namespace: &str, tag: &str) {
        let known = self.tags.get(namespace).is_some_and(|tags| tags.contains(tag));
        if known || !self.tags.contains_key(namespace) {
            return;
        }
        if !self.make_room(cost(tag)) {
            return;
        }
        // `make_room` may have started over, dropping the namespace's set.
        if let Some(tags) = self.tags.get_mut(namespace) {
            tags.insert(tag.to_string());
        }
    }

    pub fn remove_tag(&mut self, namespace: &str, tag: &str) {
        if let Some(tags) = self.tags.get_mut(namespace)
            && tags.remove(tag)
        {
            self.used_bytes = self.used_bytes.saturating_sub(cost(tag));
        }
    }

    /// A namespace came into being (its first blob link or manifest).
    pub fn add_namespace(&mut self, namespace: &str) {
        let known = self
            .namespaces
            .as_ref()
            .is_none_or(|namespaces| namespaces.contains(namespace));
        if known || !self.make_room(cost(namespace)) {
            return;
        }
        if let Some(namespaces) = self.namespaces.as_mut() {
            namespaces.insert(namespace.to_string());
        }
    }

    pub fn referrers(&self, key: &str) -> Option<&BTreeSet<String>> {
        self.referrers.get(key)
    }

    /// Keeps a subject's scanned referrer entries, if they fit.
    pub fn fill_referrers(&mut self, key: &str, entries: BTreeSet<String>) {
        let size: usize = entries.iter().map(|entry| cost(entry)).sum::<usize>() + cost(key);
        if self.make_room(size) {
            self.referrers.insert(key.to_string(), entries);
        }
    }

    /// A referrer stored under a subject: indexed if the subject is.
    pub fn add_referrer(&mut self, key: &str, entry: &str) {
        if !self.referrers.contains_key(key) || !self.make_room(cost(entry)) {
            return;
        }
        if let Some(entries) = self.referrers.get_mut(key) {
            entries.insert(entry.to_string());
        }
    }

    pub fn remove_referrer(&mut self, key: &str, entry: &str) {
        if let Some(entries) = self.referrers.get_mut(key)
            && entries.remove(entry)
        {
            self.used_bytes = self.used_bytes.saturating_sub(cost(entry));
        }
    }

    /// Accounts for `size` more bytes; over the budget the index starts over.
    fn make_room(&mut self, size: usize) -> bool {
        if size > self.budget_bytes {
            return false;
        }
        if self.used_bytes + size > self.budget_bytes {
            self.tags.clear();
            self.namespaces = None;
            self.referrers.clear();
            self.used_bytes = 0;
        }
        self.used_bytes += size;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn pages_start_after_the_last_name_and_say_whether_more_follow() {
        let names = set(&["a", "b", "c", "d"]);
        let all = |_: &str| true;
        assert_eq!(Page::of(&names, None, Some(2), &all).items, ["a", "b"]);
        assert!(Page::of(&names, None, Some(2), &all).more);
        let last = Page::of(&names, Some("b"), Some(2), &all);
        assert_eq!(
            (last.items.as_slice(), last.more),
            (&["c".to_string(), "d".to_string()][..], false)
        );
        assert_eq!(Page::of(&names, Some("bb"), None, &all).items, ["c", "d"]);
        assert_eq!(Page::of(&names, None, Some(0), &all).items, Vec::<String>::new());
        let not_b = |name: &str| name != "b";
        assert_eq!(Page::of(&names, None, Some(2), &not_b).items, ["a", "c"]);
    }

    #[test]
    fn writes_keep_an_indexed_namespace_current() {
        let mut index = ListingIndex::new(1 << 20);
        index.add_tag("ns", "v1");
        assert!(
            index.tags("ns").is_none(),
            "an unindexed namespace stays unindexed"
        );
        index.fill_tags("ns", set(&["v1"]));
        index.add_tag("ns", "v2");
        index.remove_tag("ns", "v1");
        assert_eq!(index.tags("ns"), Some(&set(&["v2"])));
        index.add_namespace("x");
        assert!(index.namespaces().is_none());
        index.fill_namespaces(set(&["a"]));
        index.add_namespace("b");
        assert_eq!(index.namespaces(), Some(&set(&["a", "b"])));
    }

    #[test]
    fn the_budget_is_held() {
        let mut index = ListingIndex::new(200);
        index.fill_tags("small", set(&["a"]));
        let many: BTreeSet<String> = (0..100).map(|n| format!("tag{n}")).collect();
        index.fill_tags("huge", many);
        assert!(index.tags("huge").is_none(), "larger than the budget: not kept");
        for n in 0..10 {
            index.fill_tags(&format!("ns{n}"), set(&["t"]));
        }
        assert!(index.used_bytes <= 200);
        assert!(ListingIndex::new(0).tags("x").is_none());
    }
}
