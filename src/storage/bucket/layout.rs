//! Object keys of the bucket layout: the filesystem layout's paths under
//! `root_dir`, as keys under `key_prefix` (the client adds the prefix), so
//! an operator reads both the same way. Namespaces are validated by the
//! caller; their components cannot start with `_`, so the `_` names below
//! never collide with one.
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>                    content (blobs and manifests), written once verified
//! repositories/<ns>/_layers/<alg>/<hex>            the namespace may read that blob (empty)
//! repositories/<ns>/_manifests/revisions/<alg>/<hex> "<media type>\n<subject digest or empty>\n"
//! repositories/<ns>/_manifests/tags/<tag>          "<digest>\n"
//! repositories/<ns>/_manifests/pulls/<alg>/<hex>   "<unix seconds>\n"
//! repositories/<ns>/_referrers/<alg>/<subject hex>/<alg>-<referrer hex>  the descriptor JSON
//! _uploads/<id>/state                              an upload session (`session.rs`)
//! _uploads/<id>/tail                               bytes received past the last whole part
//! _uploads/<id>/data                               the multipart upload's object
//! _catalog/<ns>                                    the namespace exists (empty; bucket only:
//!                                                  one listing answers `_catalog`)
//! _leases/maintenance                              who runs collections (`lease.rs`)
//! ```

use crate::digest::Digest;

pub const REPOSITORIES: &str = "repositories/";
pub const UPLOADS: &str = "_uploads/";

pub fn blob(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("blobs/{}/{}/{hex}", digest.algorithm(), &hex[..2])
}

pub fn repository(namespace: &str) -> String {
    format!("{REPOSITORIES}{namespace}/")
}

pub fn layer_link(namespace: &str, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES}{namespace}/_layers/{}/{}",
        digest.algorithm(),
        digest.hex()
    )
}

pub fn revision(namespace: &str, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES}{namespace}/_manifests/revisions/{}/{}",
        digest.algorithm(),
        digest.hex()
    )
}

pub fn pull(namespace: &str, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES}{namespace}/_manifests/pulls/{}/{}",
        digest.algorithm(),
        digest.hex()
    )
}

pub fn tags(namespace: &str) -> String {
    format!("{REPOSITORIES}{namespace}/_manifests/tags/")
}

pub fn tag(namespace: &str, tag: &str) -> String {
    format!("{}{tag}", tags(namespace))
}

pub fn referrers(namespace: &str, subject: &Digest) -> String {
    format!(
        "{REPOSITORIES}{namespace}/_referrers/{}/{}/",
        subject.algorithm(),
        subject.hex()
    )
}

pub fn referrer(namespace: &str, subject: &Digest, referrer: &Digest) -> String {
    format!(
        "{}{}-{}",
        referrers(namespace, subject),
        referrer.algorithm(),
        referrer.hex()
    )
}

pub fn upload_state(id: &str) -> String {
    format!("{UPLOADS}{id}/state")
}

pub fn upload_tail(id: &str) -> String {
    format!("{UPLOADS}{id}/tail")
}

pub fn upload_data(id: &str) -> String {
    format!("{UPLOADS}{id}/data")
}

pub const CATALOG: &str = "_catalog/";

pub fn catalog_entry(namespace: &str) -> String {
    format!("{CATALOG}{namespace}")
}

pub fn namespace_of_catalog_entry(key: &str) -> Option<&str> {
    key.strip_prefix(CATALOG).filter(|name| !name.is_empty())
}

pub const MAINTENANCE_LEASE: &str = "_leases/maintenance";

/// The referrer digest of an entry under `referrers(..)` (`<alg>-<hex>`).
pub fn referrer_of_entry(entry: &str) -> Option<Digest> {
    let (algorithm, hex) = entry.split_once('-')?;
    Digest::parse(&format!("{algorithm}:{hex}")).ok()
}

/// The namespace a key under `repositories/` belongs to: everything before
/// its first `_` component.
pub fn namespace_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(REPOSITORIES)?;
    let end = rest.find("/_")?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: char) -> Digest {
        Digest::parse(&format!("sha256:{}", byte.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn keys_mirror_the_filesystem_layout() {
        let d = digest('a');
        assert_eq!(blob(&d), format!("blobs/sha256/aa/{}", "a".repeat(64)));
        assert_eq!(
            tag("library/alpine", "v1"),
            "repositories/library/alpine/_manifests/tags/v1"
        );
        assert_eq!(
            layer_link("x", &d),
            format!("repositories/x/_layers/sha256/{}", "a".repeat(64))
        );
        let entry = referrer("x", &d, &digest('b'));
        assert_eq!(
            entry,
            format!(
                "repositories/x/_referrers/sha256/{}/sha256-{}",
                "a".repeat(64),
                "b".repeat(64)
            )
        );
        let name = entry.rsplit('/').next().unwrap();
        assert_eq!(referrer_of_entry(name), Some(digest('b')));
    }

    #[test]
    fn the_namespace_of_a_key_ends_before_its_first_underscore_component() {
        assert_eq!(namespace_of(&tag("a/b/c", "t")), Some("a/b/c"));
        assert_eq!(namespace_of(&layer_link("a", &digest('c'))), Some("a"));
        assert_eq!(namespace_of("blobs/sha256/aa/aa"), None);
    }
}
