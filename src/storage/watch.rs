//! What the registry touched while a collection runs: the write barrier that
//! keeps garbage collection safe beside live traffic. A collection marks a
//! namespace, then sweeps it some slices later; a blob linked, uploaded or
//! checked in between is recorded here and kept by that sweep, whatever the
//! interleaving. Each manifest write also bumps its namespace's epoch, so a
//! decision taken before it (a manifest found unreachable, a tag to prune) is
//! recognised as stale and dropped.
//!
//! Keys are 64-bit hashes: a collision only keeps something one collection
//! longer, never removes anything.

use std::collections::{HashMap, HashSet};

use crate::digest::Digest;

#[derive(Debug, Default)]
pub struct Watch {
    /// Namespace links written or read (`link_key`).
    links: HashSet<u64>,
    /// Content written, linked or read (`content_key`).
    contents: HashSet<u64>,
}

impl Watch {
    pub fn touch_link(&mut self, namespace: &str, digest: &Digest) {
        self.links.insert(link_key(namespace, digest));
        self.contents.insert(content_key(digest));
    }

    pub fn touch_content(&mut self, digest: &Digest) {
        self.contents.insert(content_key(digest));
    }

    pub fn link_touched(&self, namespace: &str, digest: &Digest) -> bool {
        self.links.contains(&link_key(namespace, digest))
    }

    pub fn content_touched(&self, digest: &Digest) -> bool {
        self.contents.contains(&content_key(digest))
    }

    /// Entries held, for the collection's report and memory bound.
    pub fn len(&self) -> usize {
        self.links.len() + self.contents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Manifest writes per namespace since the process started.
#[derive(Debug, Default)]
pub struct Epochs {
    by_namespace: HashMap<String, u64>,
}

impl Epochs {
    pub fn get(&self, namespace: &str) -> u64 {
        self.by_namespace.get(namespace).copied().unwrap_or(0)
    }

    pub fn bump(&mut self, namespace: &str) {
        match self.by_namespace.get_mut(namespace) {
            Some(epoch) => *epoch += 1,
            None => {
                self.by_namespace.insert(namespace.to_owned(), 1);
            }
        }
    }
}

/// FNV-1a: stable, dependency-free, and good enough to spread digests
/// (already uniform) and namespace names.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub fn content_key(digest: &Digest) -> u64 {
    fnv1a(&[digest.algorithm().as_bytes(), digest.hex().as_bytes()])
}

fn link_key(namespace: &str, digest: &Digest) -> u64 {
    fnv1a(&[
        namespace.as_bytes(),
        digest.algorithm().as_bytes(),
        digest.hex().as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_are_per_namespace_for_links_and_global_for_content() {
        let digest = Digest::sha256_of(b"x");
        let mut watch = Watch::default();
        watch.touch_link("a", &digest);
        assert!(watch.link_touched("a", &digest));
        assert!(!watch.link_touched("b", &digest));
        assert!(watch.content_touched(&digest));
        assert!(!watch.content_touched(&Digest::sha256_of(b"y")));
    }

    #[test]
    fn epochs_count_writes_per_namespace() {
        let mut epochs = Epochs::default();
        assert_eq!(epochs.get("a"), 0);
        epochs.bump("a");
        epochs.bump("a");
        assert_eq!((epochs.get("a"), epochs.get("b")), (2, 0));
    }
}
