//! Manifest endpoints (HEAD/GET/PUT/DELETE by tag or digest), tag listing,
//! the `_catalog`, and the referrers API; a PUT never moves an immutable tag.

use super::error::{ErrorCode, RegistryError};
use super::manifest::{self, OCI_INDEX};
use super::outcome::Referenced;
use super::reference::{self, Reference};
use super::{Commit, EventDraft, ExchangeState, Outcome, Registry, Result};
use crate::digest::{Digest, Hasher};
use crate::event_webhook::event::EventKind;
use crate::http::{Body, Method, RequestHead, Response};
use crate::storage::ManifestBytes;
use crate::storage::listing::Page;

/// Tags one manifest PUT may set (its reference and `?tag=` parameters).
/// Real pushes set a handful. Each new tag is a directory entry the file
/// system must journal; with `sync_to_disk` a push of 100 new tags held the
/// loop about 30 ms, one of 32 under 5 ms (`cargo bench --bench hostile`).
pub const TAGS_PER_PUSH_MAX: usize = 32;

impl Registry {
    fn resolve(&self, name: &str, reference: &Reference) -> Result<Option<Digest>> {
        match reference {
            Reference::Digest(digest) => Ok(Some(digest.clone())),
            Reference::Tag(tag) => self.storage.tag(name, tag).map_err(RegistryError::storage),
        }
    }

    pub(super) fn get_manifest(
        &mut self,
        head: &RequestHead,
        name: &str,
        reference: &Reference,
    ) -> Result<Outcome> {
        let unknown = || {
            RegistryError::new(ErrorCode::ManifestUnknown, "manifest unknown to registry")
                .detail(serde_json::json!({ "reference": reference.to_string() }))
        };
        let digest = self.resolve(name, reference)?.ok_or_else(unknown)?;
        let (media_type, bytes) = self
            .storage
            .manifest_for_download(name, &digest)
            .map_err(RegistryError::storage)?
            .ok_or_else(unknown)?;
        let head_only = head.method == Method::Head;
        let body = match bytes {
            ManifestBytes::Shared(bytes) if head_only => Body::Length(bytes.len() as u64),
            ManifestBytes::File { len, .. } if head_only => Body::Length(len),
            ManifestBytes::Shared(bytes) => Body::Shared(bytes),
            ManifestBytes::File { file, len } => Body::File { file, offset: 0, len },
        };
        let response = Response::new(200)
            .header("Content-Type", media_type)
            .header("Docker-Content-Digest", digest.to_string())
            .header("ETag", format!("\"{digest}\""))
            .body(body);
        // A GET (not a HEAD) is a pull.
        if !head_only && self.limits.update_pull_time {
            // A pull must not fail for want of its record (a full disk, say).
            // (On a bucket the record's write may wait: the request runs
            // again once it is made, which is no failure.)
            if let Err(error) = self.storage.record_pull(name, &digest, self.now_secs)
                && error.kind() != std::io::ErrorKind::WouldBlock
            {
                log::warn!("recording a pull of {name}@{digest}: {error}");
            }
        }
        let mut events = Vec::new();
        if !head_only && self.wants(EventKind::ManifestPull) {
            let mut draft = EventDraft::new(EventKind::ManifestPull, name)
                .digest(&digest)
                .reference(reference.to_string());
            if let Reference::Tag(tag) = reference {
                draft = draft.tag(tag.clone());
            }
            events.push(draft);
        }
        self.outcome(response, events, Commit::Nothing)
    }

    pub(super) fn begin_manifest_put(
        &mut self,
        head: &RequestHead,
        name: String,
        reference: Reference,
    ) -> Result<ExchangeState> {
        let limit = self.limits.max_manifest_size;
        if head.content_length().is_some_and(|length| length > limit) {
            return Err(super::manifest_too_large(limit));
        }
        self.storage
            .check_space_to_start(head.content_length())
            .map_err(super::storage_full)?;
        // OCI 1.1 lets a PUT by digest carry `?tag=` parameters to tag it too.
        let mut tags = Vec::new();
        if let Reference::Tag(tag) = &reference {
            tags.push(tag.clone());
        }
        for tag in head.query_values("tag") {
            if !reference::is_valid_tag(&tag) {
                return Err(RegistryError::new(ErrorCode::TagInvalid, "invalid tag")
                    .detail(serde_json::json!({ "tag": tag })));
            }
            if !tags.contains(&tag) {
                if tags.len() == TAGS_PER_PUSH_MAX {
                    return Err(RegistryError::new(
                        ErrorCode::TagInvalid,
                        format!("at most {TAGS_PER_PUSH_MAX} tags per manifest push"),
                    ));
                }
                tags.push(tag);
            }
        }
        let content_type = head.header("content-type").unwrap_or_default().to_string();
        // What the client announces is not reserved up front: the bytes it
        // actually sends are what count (and what the in-flight cap sees).
        Ok(ExchangeState::Manifest {
            name,
            reference,
            content_type,
            tags,
            body: super::ManifestBody {
                bytes: Vec::new(),
                in_flight: self.manifest_bytes_in_flight.clone(),
            },
        })
    }

    pub(super) fn put_manifest(
        &mut self,
        name: &str,
        reference: &Reference,
        content_type: &str,
        tags: &[String],
        body: Vec<u8>,
        cache_fill: bool,
    ) -> Result<Outcome> {
        let digest = match reference {
            Reference::Digest(expected) => {
                let mut hasher = Hasher::for_digest(expected);
                hasher.update(&body);
                let actual = hasher.digest();
                if &actual != expected {
                    return Err(RegistryError::new(
                        ErrorCode::DigestInvalid,
                        "manifest digest does not match",
                    )
                    .detail(serde_json::json!({ "digest": expected.to_string() })));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        if !cache_fill {
            self.refuse_moving_immutable_tags(name, tags, &digest)?;
        }
        let parsed = manifest::parse(content_type, &body)
            .map_err(|error| RegistryError::new(ErrorCode::ManifestInvalid, error.to_string()))?;
        let media_type = match (content_type.split(';').next().map(str::trim), &parsed.media_type) {
            (Some(from_header), _) if !from_header.is_empty() => from_header.to_string(),
            (_, Some(from_body)) => from_body.clone(),
            _ => manifest::OCI_MANIFEST.to_string(),
        };
        let references: Vec<Referenced> = parsed
            .blobs
            .iter()
            .map(|blob| Referenced::Blob(blob.digest.clone()))
            .chain(
                parsed
                    .manifests
                    .iter()
                    .map(|child| Referenced::Manifest(child.digest.clone())),
            )
            .collect();
        // Missing content is allowed by default (a sparse index, foreign or
        // non-distributable layers, a mirror holding one platform); it stays
        // unreadable from this namespace until it is pushed or mounted. A
        // `subject` is never checked (spec "Pushing Manifests with Subject").
        // A mirror holds what was pulled: the platforms, not every one.
        let recheck = if self.limits.allow_missing_manifest_references || cache_fill {
            Vec::new()
        } else {
            self.missing_references(name, &references)?;
            references
        };
        let descriptor = parsed
            .subject
            .as_ref()
            .map(|_| manifest::referrer_descriptor(&parsed, &media_type, &digest, body.len() as u64));
        let referrer = parsed
            .subject
            .as_ref()
            .zip(descriptor)
            .map(|(subject, descriptor)| (subject.digest.clone(), descriptor));
        let mut events = Vec::new();
        if self.wants(EventKind::ManifestPush) {
            let mut draft = EventDraft::new(EventKind::ManifestPush, name)
                .digest(&digest)
                .reference(reference.to_string());
            if let Reference::Tag(tag) = reference {
                draft = draft.tag(tag.clone());
            }
            events.push(draft);
        }
        if self.wants(EventKind::TagCreate) {
            for tag in tags {
                events.push(
                    EventDraft::new(EventKind::TagCreate, name)
                        .digest(&digest)
                        .reference(tag.clone())
                        .tag(tag.clone()),
                );
            }
        }
        let mut response = Response::new(201)
            .header("Location", format!("/v2/{name}/manifests/{digest}"))
            .header("Docker-Content-Digest", digest.to_string());
        if let Reference::Digest(_) = reference {
            // distribution-spec (development): each `?tag=` applied is named
            // back, so a client knows the registry understood the parameter.
            for tag in tags {
                response = response.header("OCI-Tag", tag.clone());
            }
        }
        if let Some(subject) = &parsed.subject {
            response = response.header("OCI-Subject", subject.digest.to_string());
        }
        let children = parsed
            .manifests
            .iter()
            .map(|child| child.digest.clone())
            .collect();
        let commit = Commit::PutManifest {
            name: name.to_string(),
            digest,
            media_type,
            body,
            tags: tags.to_vec(),
            referrer,
            recheck,
            children,
        };
        self.outcome(response, events, commit)
    }

    /// `409 CONFLICT` when setting `tags` to `digest` would move an immutable
    /// tag (upstream's doc/how-to/protect-tags-immutability.md, with its
    /// message). A tag that does not exist yet, or already names `digest`,
    /// does not move: creating tags and pushing the same content again pass.
    pub(super) fn refuse_moving_immutable_tags(
        &self,
        name: &str,
        tags: &[String],
        digest: &Digest,
    ) -> Result<()> {
        if !self.immutability.is_enabled_anywhere() {
            return Ok(());
        }
        for tag in tags {
            if !self.immutability.tag_is_immutable(name, tag) {
                continue;
            }
            let current = self.storage.tag(name, tag).map_err(RegistryError::storage)?;
            if current.is_some_and(|current| current != *digest) {
                return Err(RegistryError::new(
                    ErrorCode::Conflict,
                    format!("Tag '{tag}' is immutable and cannot be overwritten"),
                )
                .detail(serde_json::json!({ "tag": tag })));
            }
        }
        Ok(())
    }

    /// `Ok` when every reference is readable from `name`, else
    /// `MANIFEST_BLOB_UNKNOWN` listing what is not.
    pub(super) fn missing_references(&self, name: &str, references: &[Referenced]) -> Result<()> {
        let mut missing = Vec::new();
        for referenced in references {
            let present = match referenced {
                Referenced::Blob(digest) => self
                    .storage
                    .blob_size(name, digest)
                    .map_err(RegistryError::storage)?
                    .is_some(),
                Referenced::Manifest(digest) => self
                    .storage
                    .manifest(name, digest)
                    .map_err(RegistryError::storage)?
                    .is_some(),
            };
            if !present {
                let (Referenced::Blob(digest) | Referenced::Manifest(digest)) = referenced;
                missing.push(digest.to_string());
            }
        }
        match missing.first() {
            None => Ok(()),
            Some(first) => Err(RegistryError::new(
                ErrorCode::ManifestBlobUnknown,
                "manifest references unknown content",
            )
            .detail(serde_json::json!({ "digest": first, "missing": missing }))),
        }
    }

    pub(super) fn delete_manifest(&mut self, name: &str, reference: &Reference) -> Result<Outcome> {
        let unknown = || {
            RegistryError::new(ErrorCode::ManifestUnknown, "manifest unknown to registry")
                .detail(serde_json::json!({ "reference": reference.to_string() }))
        };
        // Checked before staging, so a required webhook is only asked about a
        // delete that will happen.
        let digest = self.resolve(name, reference)?.ok_or_else(unknown)?;
        if matches!(reference, Reference::Digest(_))
            && self
                .storage
                .manifest(name, &digest)
                .map_err(RegistryError::storage)?
                .is_none()
        {
            return Err(unknown());
        }
        let mut events = Vec::new();
        if self.wants(EventKind::ManifestDelete) {
            let mut draft = EventDraft::new(EventKind::ManifestDelete, name)
                .digest(&digest)
                .reference(reference.to_string());
            if let Reference::Tag(tag) = reference {
                draft = draft.tag(tag.clone());
            }
            events.push(draft);
        }
        let commit = match reference {
            Reference::Digest(_) => Commit::DeleteManifest {
                name: name.to_string(),
                digest,
            },
            Reference::Tag(tag) => {
                if self.wants(EventKind::TagDelete) {
                    events.push(
                        EventDraft::new(EventKind::TagDelete, name)
                            .digest(&digest)
                            .reference(tag.clone())
                            .tag(tag.clone()),
                    );
                }
                Commit::DeleteTag {
                    name: name.to_string(),
                    tag: tag.clone(),
                }
            }
        };
        self.outcome(Response::new(202), events, commit)
    }

    /// A page of `name`'s tags, or `NAME_UNKNOWN`.
    fn tags_page(&self, name: &str, last: Option<&str>, limit: Option<usize>) -> Result<Page> {
        self.storage
            .tags_page(name, last, limit)
            .map_err(RegistryError::storage)?
            .ok_or_else(|| {
                RegistryError::new(ErrorCode::NameUnknown, "repository name not known to registry")
                    .detail(serde_json::json!({ "name": name }))
            })
    }

    pub(super) fn list_tags(&self, head: &RequestHead, name: String) -> Result<Response> {
        let (limit, last) = page_request(head)?;
        let page = self.tags_page(&name, last.as_deref(), limit)?;
        let mut response = Response::json(200, &serde_json::json!({ "name": name, "tags": page.items }));
        if let Some(link) = next_link(&page, limit, &format!("/v2/{name}/tags/list")) {
            response = response.header("Link", link);
        }
        Ok(response)
    }

    /// `GET /v2/<name>/_angos/tags` (ours, for the operator page): a page
    /// of tags, each with its manifest's digest, media type, size, push
    /// time and, for an index, its platforms. At most
    /// `TAG_DETAILS_PAGE_MAX` tags, since each costs reads; `n` and `last`
    /// as in `tags/list`. On a bucket every read of a run goes out at once.
    pub(super) fn tag_details(&self, head: &RequestHead, name: String) -> Result<Response> {
        let (limit, last) = page_request(head)?;
        let limit = limit.map(|limit| limit.min(TAG_DETAILS_PAGE_MAX));
        let page = self.tags_page(&name, last.as_deref(), limit)?;
        let mut digests = Vec::with_capacity(page.items.len());
        for tag in &page.items {
            digests.push(unless_waiting(self.storage.tag(&name, tag))?.flatten());
        }
        let mut details = Vec::with_capacity(page.items.len());
        for (tag, digest) in page.items.iter().zip(&digests) {
            let Some(digest) = digest else {
                continue;
            };
            let manifest = unless_waiting(self.storage.manifest(&name, digest))?.flatten();
            let pushed = unless_waiting(self.storage.pushed_at(&name, digest))?.flatten();
            let Some(manifest) = manifest else {
                continue;
            };
            details.push(serde_json::json!({
                "tag": tag,
                "digest": digest.to_string(),
                "mediaType": manifest.media_type,
                "size": manifest.body.len(),
                "pushed": pushed.map(|secs| crate::clock::rfc3339_utc(secs.saturating_mul(1_000_000))),
                "platforms": platforms_of(&manifest.body),
            }));
        }
        let body = serde_json::json!({ "name": name, "tags": details });
        let mut response = Response::json(200, &body);
        if let Some(link) = next_link(&page, limit, &format!("/v2/{name}/_angos/tags")) {
            response = response.header("Link", link);
        }
        Ok(response)
    }

    pub(super) fn catalog(&self, head: &RequestHead, readable: &dyn Fn(&str) -> bool) -> Result<Response> {
        let (limit, last) = page_request(head)?;
        let page = self
            .storage
            .catalog_page(last.as_deref(), limit, readable)
            .map_err(RegistryError::storage)?;
        let mut response = Response::json(200, &serde_json::json!({ "repositories": page.items }));
        if let Some(link) = next_link(&page, limit, "/v2/_catalog") {
            response = response.header("Link", link);
        }
        Ok(response)
    }

    pub(super) fn referrers(&self, head: &RequestHead, name: &str, subject: &Digest) -> Result<Response> {
        // At most a page of descriptors per answer; `Link` continues after
        // the last entry (spec "Listing Referrers": a registry may paginate).
        let after = head.query_value("last");
        let (mut descriptors, next) = self
            .storage
            .referrers_page(name, subject, after.as_deref(), Some(LISTING_PAGE_MAX))
            .map_err(RegistryError::storage)?;
        let filter = head.query_value("artifactType");
        if let Some(wanted) = &filter {
            descriptors.retain(|descriptor| descriptor["artifactType"].as_str() == Some(wanted.as_str()));
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": descriptors,
        });
        let mut response = Response::json(200, &index);
        response.headers[0].1 = OCI_INDEX.to_string();
        if let Some(wanted) = &filter {
            response = response.header("OCI-Filters-Applied", "artifactType");
            if let Some(last) = &next {
                let link = format!(
                    "</v2/{name}/referrers/{subject}?last={last}&artifactType={}>; rel=\"next\"",
                    query_escape(wanted)
                );
                return Ok(response.header("Link", link));
            }
        }
        if let Some(last) = next {
            response = response.header(
                "Link",
                format!("</v2/{name}/referrers/{subject}?last={last}>; rel=\"next\""),
            );
        }
        Ok(response)
    }
}

/// Names one tag list or catalog answer carries at most; a client asking
/// for more (or for all) gets this many and a `Link` to the rest (spec
/// "Listing Tags": a registry may return fewer than `n`). Bounds the bytes
/// one answer holds in memory (about 130 KiB at the longest names).
pub const LISTING_PAGE_MAX: usize = 1000;

/// The `n` and `last` parameters of a listing (spec "Listing Tags"), `n`
/// capped at `LISTING_PAGE_MAX`.
fn page_request(head: &RequestHead) -> Result<(Option<usize>, Option<String>)> {
    let limit = match head.query_value("n") {
        Some(text) => text.parse::<usize>().map_err(|_| {
            RegistryError::new(
                ErrorCode::Unsupported,
                "the n parameter must be a non-negative integer",
            )
            .status(400)
        })?,
        None => LISTING_PAGE_MAX,
    };
    Ok((Some(limit.min(LISTING_PAGE_MAX)), head.query_value("last")))
}

/// Tags one `_angos/tags` answer describes at most.
pub const TAG_DETAILS_PAGE_MAX: usize = 100;

/// A read's value, or `None` when it waits on the bucket (the request runs
/// again once it is answered): the other reads of the run go out meanwhile.
fn unless_waiting<T>(result: std::io::Result<T>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error)
            if matches!(
                crate::storage::bucket::BucketError::of_io(&error),
                Some(crate::storage::bucket::BucketError::Pending)
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(RegistryError::storage(error)),
    }
}

/// The platforms an index lists (`os/architecture[/variant]`); none for
/// anything else.
fn platforms_of(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(manifests) = value.get("manifests").and_then(|list| list.as_array()) else {
        return Vec::new();
    };
    manifests
        .iter()
        .filter_map(|child| {
            let platform = child.get("platform")?;
            let os = platform.get("os")?.as_str()?;
            let architecture = platform.get("architecture")?.as_str()?;
            Some(
                match platform.get("variant").and_then(|variant| variant.as_str()) {
                    Some(variant) => format!("{os}/{architecture}/{variant}"),
                    None => format!("{os}/{architecture}"),
                },
            )
        })
        .collect()
}

/// The `Link` to the page after `page`, when more follow.
fn next_link(page: &Page, limit: Option<usize>, path: &str) -> Option<String> {
    let (limit, last) = (limit?, page.items.last()?);
    page.more
        .then(|| format!("<{path}?n={limit}&last={}>; rel=\"next\"", query_escape(last)))
}

/// Escapes a name or tag for a query string (names carry `/`).
fn query_escape(text: &str) -> String {
    text.replace('%', "%25")
        .replace('/', "%2F")
        .replace('&', "%26")
        .replace('+', "%2B")
        .replace('=', "%3D")
        .replace('#', "%23")
        .replace(' ', "%20")
}
