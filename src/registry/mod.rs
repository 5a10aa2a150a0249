//! The OCI Distribution registry (spec v1.1) over `storage`: routes requests,
//! validates names, tags and digests, and answers with the spec's statuses,
//! headers and error codes. Sans-IO apart from local file I/O: it takes
//! request heads and body bytes and returns responses; sockets are the
//! reactor's business.

pub mod error;
pub mod manifest;
pub mod range;
pub mod reference;
pub mod route;

pub mod outcome;

mod blobs;
mod cached;
mod manifests;

use std::cell::Cell;
use std::rc::Rc;

use crate::config::TagImmutability;
use crate::event_webhook::event::EventKind;
use crate::http::{Method, RequestHead, Response};
use crate::storage::{Storage, UploadWriter};
use error::{ErrorCode, RegistryError};
pub use manifests::{LISTING_PAGE_MAX, TAGS_PER_PUSH_MAX};
pub use outcome::{Commit, EventDraft, Outcome, Removal, Staged};
use reference::Reference;
use route::Route;

/// Limits the registry enforces on request bodies, and what it asks of the
/// content a manifest refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_manifest_size: u64,
    pub max_blob_size: u64,
    /// Accept a manifest whose blobs or child manifests this namespace does
    /// not have (`[global] allow_missing_manifest_references`).
    pub allow_missing_manifest_references: bool,
    /// Record when each manifest was last pulled (`[global] update_pull_time`),
    /// for retention rules that read it.
    pub update_pull_time: bool,
}

impl Limits {
    pub fn of(global: &crate::config::GlobalConfig) -> Limits {
        Limits {
            max_manifest_size: global.max_manifest_size,
            max_blob_size: global.max_blob_size,
            allow_missing_manifest_references: global.allow_missing_manifest_references,
            update_pull_time: global.update_pull_time,
        }
    }
}

pub struct Registry {
    storage: Storage,
    limits: Limits,
    /// Tags a push may not move (`immutable_tags`), checked when a manifest
    /// PUT is verified and again when its change is made.
    immutability: TagImmutability,
    /// Event kinds some webhook wants (`EventKind::bit`); no other events are built.
    interest: u8,
    /// Manifest body bytes held by all PUTs in progress.
    manifest_bytes_in_flight: Rc<Cell<u64>>,
    /// The current request's wall-clock second (`set_time`): when a pull is.
    now_secs: u64,
}

/// Manifest body bytes all PUTs in progress may hold together: a manifest
/// is collected in memory, and thousands of clients each sending a 5 MiB
/// manifest slowly would otherwise hold gigabytes.
pub const MANIFEST_BYTES_IN_FLIGHT_MAX: u64 = 64 << 20;

/// A manifest body being received, counted in the registry's total for as
/// long as it lives, however the exchange ends (`Drop` gives the bytes back).
struct ManifestBody {
    bytes: Vec<u8>,
    in_flight: Rc<Cell<u64>>,
}

impl ManifestBody {
    /// Appends `data`, unless the memory it takes would pass the total.
    /// What counts is the buffer's capacity (what is really held), grown by
    /// doubling as a `Vec` would.
    fn append(&mut self, data: &[u8]) -> bool {
        let needed = self.bytes.len() + data.len();
        if needed > self.bytes.capacity() {
            let grown = needed.max(self.bytes.capacity() * 2);
            let more = (grown - self.bytes.capacity()) as u64;
            if self.in_flight.get() + more > MANIFEST_BYTES_IN_FLIGHT_MAX {
                return false;
            }
            let before = self.bytes.capacity();
            self.bytes.reserve_exact(grown - self.bytes.len());
            self.in_flight
                .set(self.in_flight.get() + (self.bytes.capacity() - before) as u64);
        }
        self.bytes.extend_from_slice(data);
        true
    }

    /// Gives the buffer's memory back to the total.
    fn release(&mut self) -> Vec<u8> {
        let bytes = std::mem::take(&mut self.bytes);
        self.in_flight
            .set(self.in_flight.get().saturating_sub(bytes.capacity() as u64));
        bytes
    }

    /// The body, no longer counted as in flight.
    fn into_bytes(mut self) -> Vec<u8> {
        self.release()
    }
}

impl Drop for ManifestBody {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request that runs on the bucket (`storage::bucket`): the caller's
/// numbering of it (a connection's slot and generation).
pub type Holder = crate::storage::bucket::objects::Holder;

/// What `finish` made of a request whose body is in.
pub enum Finished {
    Answer(Outcome),
    /// The object storage is being waited on: `finish` it again once the
    /// request's holder is woken.
    Wait(Exchange),
}

/// What to do with a request once its head is known.
pub enum Begin {
    /// Answer now; any body the request carries is not wanted (the caller
    /// closes the connection after the answer rather than read it).
    Answer(Outcome),
    /// Read the body into the exchange (`Registry::body`), then `finish`.
    ReadBody(Exchange),
}

/// A request whose body is being received.
pub struct Exchange {
    route_label: &'static str,
    state: ExchangeState,
}

enum ExchangeState {
    /// The answer is known and the route takes no body.
    Ready(Outcome),
    /// A manifest PUT collecting its body, at most `limit` bytes.
    Manifest {
        name: String,
        reference: Reference,
        content_type: String,
        tags: Vec<String>,
        body: ManifestBody,
    },
    /// On a bucket: an upload body whose session is saved
    /// (`UploadWriter::settle`), finishing (it may wait and run again).
    Settled {
        name: String,
        id: String,
        then: AfterUpload,
        size: u64,
    },
    /// Bytes streaming into an upload session.
    Upload {
        name: String,
        id: String,
        writer: Box<UploadWriter>,
        then: AfterUpload,
        /// For a chunk with `Content-Range`: the byte count it announced.
        expected_bytes: Option<u64>,
        received: u64,
    },
}

/// What completes an upload body.
enum AfterUpload {
    /// PATCH: report progress.
    Progress,
    /// PUT `?digest=` or POST `?digest=`: verify and commit.
    Commit(crate::digest::Digest),
}

impl Exchange {
    pub fn route_label(&self) -> &'static str {
        self.route_label
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl Registry {
    pub fn new(storage: Storage, limits: Limits) -> Registry {
        Registry {
            storage,
            limits,
            immutability: TagImmutability::default(),
            interest: 0,
            manifest_bytes_in_flight: Rc::new(Cell::new(0)),
            now_secs: 0,
        }
    }

    /// Applies reloaded body limits.
    /// The wall-clock second of the requests that follow (the registry reads
    /// no clock itself).
    pub fn set_time(&mut self, unix_secs: u64) {
        self.now_secs = unix_secs;
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Sets which tags are immutable (at start and on reload).
    pub fn set_tag_immutability(&mut self, immutability: TagImmutability) {
        self.immutability = immutability;
    }

    /// Sets which event kinds to build (from the webhook routing).
    pub fn set_interest(&mut self, mask: u8) {
        self.interest = mask;
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.interest & kind.bit() != 0
    }

    /// The answer for a change: made now when no event is due, else staged
    /// so webhooks can be asked first.
    fn outcome(&mut self, response: Response, events: Vec<EventDraft>, commit: Commit) -> Result<Outcome> {
        if events.is_empty() {
            // Applied in the same turn as it was checked: nothing to look at again.
            if let Err(response) = self.apply(commit.checked_now()) {
                return Ok(response.into());
            }
            return Ok(response.into());
        }
        Ok(Outcome {
            response,
            staged: Some(Staged { events, commit }),
        })
    }

    /// Makes a staged change visible.
    pub fn apply(&mut self, commit: Commit) -> std::result::Result<(), Response> {
        let result = match commit {
            Commit::Nothing => Ok(()),
            Commit::PutManifest {
                name,
                digest,
                media_type,
                body,
                tags,
                referrer,
                recheck,
                children,
            } => self
                // Again here: a required webhook's wait can last seconds, and
                // another push may have set the tag in between (or a reload
                // made it immutable).
                .refuse_moving_immutable_tags(&name, &tags, &digest)
                .and_then(|()| self.missing_references(&name, &recheck))
                .and_then(|()| {
                    self.storage
                        .put_manifest(
                            &name,
                            &digest,
                            &media_type,
                            &body,
                            &tags,
                            referrer
                                .as_ref()
                                .map(|(subject, descriptor)| (subject, descriptor)),
                        )
                        .map_err(RegistryError::storage)
                })
                .and_then(|()| self.confirm_children(&name, &digest, &children)),
            Commit::Upload { name, id, digest } => self
                .storage
                .commit_upload(&name, &id, &digest)
                .map_err(blobs::upload_error),
            Commit::Mount { name, digest } => match self.storage.link_blob(&name, &digest) {
                Ok(true) => Ok(()),
                Ok(false) => Err(RegistryError::new(
                    ErrorCode::BlobUnknown,
                    "blob unknown to registry",
                )),
                Err(error) => Err(RegistryError::storage(error)),
            },
            Commit::DeleteManifest { name, digest } => match self.storage.delete_manifest(&name, &digest) {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(RegistryError::new(
                    ErrorCode::ManifestUnknown,
                    "manifest unknown to registry",
                )),
                Err(error) => Err(RegistryError::storage(error)),
            },
            Commit::Remove { name, target, epoch } => self.remove(&name, target, epoch),
            Commit::DeleteTag { name, tag } => match self.storage.delete_tag(&name, &tag) {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(RegistryError::new(
                    ErrorCode::ManifestUnknown,
                    "manifest unknown to registry",
                )),
                Err(error) => Err(RegistryError::storage(error)),
            },
        };
        result.map_err(RegistryError::into_response)
    }

    /// On a bucket, after an index is written: its children read anew. A
    /// removal on another replica may have taken one between this push's
    /// check and its write (`bucket/scan.rs`); the index then goes again
    /// and the push fails as if the child had never been there.
    fn confirm_children(
        &mut self,
        name: &str,
        digest: &crate::digest::Digest,
        children: &[crate::digest::Digest],
    ) -> Result<()> {
        let Some(bucket) = self.storage.bucket() else {
            return Ok(());
        };
        if children.is_empty() {
            return Ok(());
        }
        let missing = bucket
            .confirm_manifests(name, children)
            .map_err(|error| RegistryError::storage(error.into_io()))?;
        let Some(first) = missing.first() else {
            return Ok(());
        };
        self.storage
            .delete_manifest(name, digest)
            .map_err(RegistryError::storage)?;
        Err(RegistryError::new(
            ErrorCode::ManifestBlobUnknown,
            "a child manifest was removed while this index was pushed",
        )
        .detail(serde_json::json!({ "digest": first.to_string() })))
    }

    /// A registry-decided removal, unless `name` changed since it was decided.
    fn remove(&mut self, name: &str, target: Removal, epoch: u64) -> Result<()> {
        if self.storage.manifest_epoch(name) != epoch {
            return Err(stale_removal());
        }
        let removed = match target {
            Removal::Tag { tag, digest } => match self.storage.tag(name, &tag) {
                Ok(Some(current)) if current == digest => {
                    self.storage.delete_tag(name, &tag).map(|gone| gone.is_some())
                }
                Ok(_) => Ok(false),
                Err(error) => Err(error),
            },
            Removal::Manifest { digest, .. } if self.storage.bucket().is_some() => {
                // Another replica's writes move no epoch: the bucket looks for
                // references itself, before and after (`bucket/scan.rs`).
                let bucket = self.storage.bucket().expect("on a bucket");
                bucket
                    .remove_unreferenced_manifest(name, &digest)
                    .map_err(crate::storage::bucket::BucketError::into_io)
            }
            Removal::Manifest {
                digest,
                parents,
                former_tags,
            } => {
                // Tags were removed first: one a webhook kept keeps its
                // manifest too. (No other tag can point to it: adding one
                // is a manifest write, which made the removal stale.)
                for tag in &former_tags {
                    match self.storage.tag(name, tag) {
                        Ok(Some(target)) if target == digest => return Err(stale_removal()),
                        Ok(_) => {}
                        Err(error) => return Err(RegistryError::storage(error)),
                    }
                }
                for parent in &parents {
                    match self.storage.has_manifest(name, parent) {
                        Ok(false) => {}
                        Ok(true) => return Err(stale_removal()),
                        Err(error) => return Err(RegistryError::storage(error)),
                    }
                }
                self.storage
                    .delete_manifest(name, &digest)
                    .map(|gone| gone.is_some())
            }
        };
        match removed {
            Ok(true) => Ok(()),
            Ok(false) => Err(stale_removal()),
            Err(error) => Err(RegistryError::storage(error)),
        }
    }

    /// Drops a staged change a required webhook refused: nothing becomes
    /// visible, and a verified upload session is released.
    pub fn discard(&mut self, commit: Commit) {
        if let Commit::Upload { name, id, .. } = commit {
            let _ = self.storage.cancel_upload(&name, &id);
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    // ---- requests that wait on object storage ----------------------------
    //
    // On a bucket, a request's reads and writes may have to wait. Such a
    // request is run again, whole, once what it waited for is in: the
    // caller brackets each run with `enter` and `leave`, holds the request
    // when `leave` says it waits, runs it again when `take_woken` names it,
    // and `release`s it once answered. On the filesystem nothing waits.

    /// The clock of the runs that follow (for the bucket's requests).
    pub fn set_clock(&self, now_ms: u64, unix_secs: u64) {
        if let Some(bucket) = self.storage.bucket() {
            bucket.objects().set_time(now_ms, unix_secs);
        }
    }

    pub fn enter(&self, holder: Holder, arrived_ms: u64) {
        if let Some(bucket) = self.storage.bucket() {
            bucket.objects().enter(holder, arrived_ms);
        }
    }

    /// The run is over: `true` when the request waits (discard its answer).
    pub fn leave(&self) -> bool {
        self.storage
            .bucket()
            .is_some_and(|bucket| bucket.objects().leave())
    }

    /// Whether the running request already waits on something.
    pub(super) fn waits(&self) -> bool {
        self.storage
            .bucket()
            .is_some_and(|bucket| bucket.objects().waits())
    }

    pub fn release(&self, holder: Holder) {
        if let Some(bucket) = self.storage.bucket() {
            bucket.objects().release(holder);
        }
    }

    /// One run of `operation` on the bucket as request `holder` (a job of
    /// the registry's own): its answer, or `None` while it waits (run it
    /// again when `take_woken` names it). `None` without a bucket too.
    pub fn run_on_bucket<T>(
        &self,
        holder: Holder,
        arrived_ms: u64,
        operation: impl FnOnce(
            &crate::storage::bucket::BucketStore,
        ) -> std::result::Result<T, crate::storage::bucket::BucketError>,
    ) -> Option<std::result::Result<T, crate::storage::bucket::BucketError>> {
        let bucket = self.storage.bucket()?;
        bucket.objects().enter(holder, arrived_ms);
        let result = operation(bucket);
        if bucket.objects().leave() {
            return None;
        }
        bucket.objects().release(holder);
        Some(result)
    }

    /// Requests whose waits are over: run them again.
    pub fn take_woken(&self) -> Vec<Holder> {
        self.storage
            .bucket()
            .map(|bucket| bucket.objects().take_woken())
            .unwrap_or_default()
    }

    /// For the maintenance jobs, which walk and trim the store.
    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// The file to sync off the loop before `finish`, when `sync_to_disk` is
    /// on and the exchange is an upload body (a PATCH or a committing PUT or
    /// POST): syncing a large file holds everyone for as long as it takes.
    pub fn file_to_sync(&self, exchange: &Exchange) -> Option<std::path::PathBuf> {
        match &exchange.state {
            ExchangeState::Upload { id, then, .. } => {
                let digest = match then {
                    AfterUpload::Commit(digest) => Some(digest),
                    AfterUpload::Progress => None,
                };
                self.storage.upload_to_sync(id, digest)
            }
            _ => None,
        }
    }

    /// `Storage::take_discarded`: what the caller must remove off the loop.
    pub fn take_discarded(&mut self) -> Vec<std::path::PathBuf> {
        self.storage.take_discarded()
    }

    /// Drops upload sessions idle since the last call; see
    /// `Storage::expire_idle_uploads`.
    pub fn expire_idle_uploads(&mut self) -> usize {
        self.storage.expire_idle_uploads()
    }

    /// Routes a request head: answers at once, or prepares to read its body.
    pub fn begin(&mut self, head: &RequestHead) -> Begin {
        self.begin_routed(head, route::route(&head.path), &|_| true)
    }

    /// Like `begin`, for a head the caller already routed, and a client that
    /// may pull only from the namespaces `readable` accepts: what it may see
    /// beyond the request's own repository (the catalog, a mount's source)
    /// is limited to those. The request's own permission was checked before.
    pub fn begin_routed(
        &mut self,
        head: &RequestHead,
        route: Route,
        readable: &dyn Fn(&str) -> bool,
    ) -> Begin {
        let label = route.label();
        match self.dispatch(head, route, readable) {
            Ok(state) => match state {
                // A route that takes no body answers at once: reading a body
                // nobody wants would let a client hold the connection (and
                // its slot) by trickling one.
                ExchangeState::Ready(outcome) => Begin::Answer(outcome),
                state => Begin::ReadBody(Exchange {
                    route_label: label,
                    state,
                }),
            },
            Err(error) => Begin::Answer(error.into_response().into()),
        }
    }

    /// Feeds body bytes of a request in progress. An error answer ends the
    /// exchange: the caller sends it and closes the connection.
    pub fn body(&mut self, exchange: &mut Exchange, data: &[u8]) -> Result<(), Response> {
        let limits = self.limits;
        match &mut exchange.state {
            ExchangeState::Ready(_) | ExchangeState::Settled { .. } => Ok(()),
            ExchangeState::Manifest { body, .. } => {
                if (body.bytes.len() + data.len()) as u64 > limits.max_manifest_size {
                    return Err(manifest_too_large(limits.max_manifest_size).into_response());
                }
                if !body.append(data) {
                    return Err(RegistryError::new(
                        ErrorCode::TooManyRequests,
                        "too many manifest uploads in progress; retry later",
                    )
                    .into_response());
                }
                Ok(())
            }
            ExchangeState::Upload {
                writer,
                received,
                expected_bytes,
                ..
            } => {
                *received += data.len() as u64;
                if expected_bytes.is_some_and(|expected| *received > expected) {
                    return Err(self.fail_upload(exchange, range_mismatch()));
                }
                if writer.size() + data.len() as u64 > limits.max_blob_size {
                    return Err(self.fail_upload(exchange, blob_too_large(limits.max_blob_size)));
                }
                // The minimum free space holds during a body too: a large
                // upload that would eat into it stops, and its session goes.
                if let Err(full) = self.storage.check_space_to_write(data.len() as u64) {
                    return Err(self.fail_upload(exchange, storage_full(full)));
                }
                if let Err(error) = writer.write(data) {
                    return Err(self.fail_upload(exchange, RegistryError::storage(error)));
                }
                Ok(())
            }
        }
    }

    /// Completes a request whose body was read entirely.
    pub fn finish(&mut self, exchange: Exchange) -> Finished {
        if self.storage.bucket().is_some() {
            return self.finish_on_bucket(exchange);
        }
        let result = match exchange.state {
            ExchangeState::Ready(outcome) => Ok(outcome),
            ExchangeState::Manifest {
                name,
                reference,
                content_type,
                tags,
                body,
            } => {
                // The checks below read the body; it leaves the in-flight
                // total once they have (put_manifest may keep it staged).
                let body = body.into_bytes();
                self.put_manifest(&name, &reference, &content_type, &tags, body, false)
            }
            // Only on a bucket (`finish_on_bucket`).
            ExchangeState::Settled { .. } => Ok(Response::new(500).into()),
            ExchangeState::Upload {
                name,
                id,
                writer,
                then,
                expected_bytes,
                received,
            } => {
                self.storage.release_writer(&name, &id, *writer);
                if expected_bytes.is_some_and(|expected| expected != received) {
                    let _ = self.storage.cancel_upload(&name, &id);
                    Err(range_mismatch())
                } else {
                    match then {
                        AfterUpload::Progress => Ok(self.upload_progress(&name, &id, 202).into()),
                        AfterUpload::Commit(digest) => self.commit_upload(&name, &id, &digest),
                    }
                }
            }
        };
        Finished::Answer(result.unwrap_or_else(|error| error.into_response().into()))
    }

    /// `finish` on a bucket, where a run may wait: then the exchange, as
    /// it is, is kept for the next run.
    fn finish_on_bucket(&mut self, mut exchange: Exchange) -> Finished {
        let result = match &mut exchange.state {
            ExchangeState::Ready(_) => {
                let ExchangeState::Ready(outcome) = exchange.state else {
                    unreachable!("matched above");
                };
                return Finished::Answer(outcome);
            }
            // The body stays with the exchange; the run checks a copy.
            ExchangeState::Manifest {
                name,
                reference,
                content_type,
                tags,
                body,
            } => self.put_manifest(name, reference, content_type, tags, body.bytes.clone(), false),
            ExchangeState::Upload {
                name,
                id,
                expected_bytes,
                received,
                ..
            } if expected_bytes.is_some_and(|expected| expected != *received) => {
                let _ = self.storage.cancel_upload(name, id);
                Err(range_mismatch())
            }
            ExchangeState::Upload {
                name,
                id,
                writer,
                then,
                ..
            } => match writer.settle() {
                Ok(()) if !self.waits() => {
                    // What the request read before its body (the session
                    // as it was) is out of date now.
                    if let Some(bucket) = self.storage.bucket() {
                        bucket.objects().forget_reads();
                    }
                    let settled = ExchangeState::Settled {
                        name: std::mem::take(name),
                        id: std::mem::take(id),
                        then: std::mem::replace(then, AfterUpload::Progress),
                        size: writer.size(),
                    };
                    exchange.state = settled;
                    return self.finish_on_bucket(exchange);
                }
                Ok(()) => Ok(Response::new(503).into()),
                Err(error) => Err(RegistryError::storage(error)),
            },
            ExchangeState::Settled { name, id, then, size } => match then {
                AfterUpload::Progress => Ok(self.upload_progress_of(name, id, 202, *size).into()),
                AfterUpload::Commit(digest) => self.commit_upload(name, id, digest),
            },
        };
        if self.waits() {
            return Finished::Wait(exchange);
        }
        Finished::Answer(result.unwrap_or_else(|error| error.into_response().into()))
    }

    /// Whether the upload body being received takes no more bytes for now
    /// (its bucket part is being sent); its holder is woken when it does.
    pub fn body_paused(&mut self, exchange: &mut Exchange) -> bool {
        match &mut exchange.state {
            ExchangeState::Upload { writer, .. } => writer.paused(),
            _ => false,
        }
    }

    /// The connection ended before the body did. An upload keeps what it
    /// received (the client may ask the upload's status and resume), except
    /// a monolithic one, which has no session the client knows of to resume.
    pub fn abort(&mut self, exchange: Exchange) {
        if let ExchangeState::Upload {
            name,
            id,
            writer,
            then,
            ..
        } = exchange.state
        {
            self.storage.release_writer(&name, &id, *writer);
            if matches!(then, AfterUpload::Commit(_)) {
                let _ = self.storage.cancel_upload(&name, &id);
            }
        }
    }

    /// Ends an upload exchange on an error: the session is removed, since its
    /// bytes no longer match what the client believes it sent.
    fn fail_upload(&mut self, exchange: &mut Exchange, error: RegistryError) -> Response {
        let state = std::mem::replace(
            &mut exchange.state,
            ExchangeState::Ready(Response::new(500).into()),
        );
        if let ExchangeState::Upload { name, id, writer, .. } = state {
            self.storage.release_writer(&name, &id, *writer);
            let _ = self.storage.cancel_upload(&name, &id);
        }
        error.into_response().with_close()
    }

    fn dispatch(
        &mut self,
        head: &RequestHead,
        route: Route,
        readable: &dyn Fn(&str) -> bool,
    ) -> Result<ExchangeState> {
        match (route, &head.method) {
            (Route::Healthz, Method::Get | Method::Head) => ready(Response::new(200).body(text("ok\n"))),
            (Route::Readyz, Method::Get | Method::Head) => ready(Response::new(200).body(text("ready\n"))),
            (Route::Base, Method::Get | Method::Head) => ready(
                Response::json(200, &serde_json::json!({}))
                    .header("Docker-Distribution-API-Version", "registry/2.0"),
            ),
            (Route::Catalog, Method::Get | Method::Head) => ready(self.catalog(head, readable)?),
            (Route::Tags { name }, Method::Get | Method::Head) => {
                ready(self.list_tags(head, valid_name(name)?)?)
            }
            (Route::TagDetails { name }, Method::Get | Method::Head) => {
                ready(self.tag_details(head, valid_name(name)?)?)
            }
            (Route::Manifest { name, reference }, method) => {
                let name = valid_name(name)?;
                match method {
                    Method::Get | Method::Head => {
                        let reference = parse_existing_reference(&reference)?;
                        ready(self.get_manifest(head, &name, &reference)?)
                    }
                    Method::Put => self.begin_manifest_put(head, name, parse_reference(&reference)?),
                    Method::Delete => {
                        let reference = parse_existing_reference(&reference)?;
                        ready(self.delete_manifest(&name, &reference)?)
                    }
                    _ => Err(method_not_allowed()),
                }
            }
            (Route::Blob { name, digest }, method) => {
                let name = valid_name(name)?;
                let digest = parse_digest(&digest)?;
                match method {
                    Method::Get | Method::Head => ready(self.get_blob(head, &name, &digest)?),
                    Method::Delete => ready(self.delete_blob(&name, &digest)?),
                    _ => Err(method_not_allowed()),
                }
            }
            (Route::UploadStart { name }, Method::Post) => {
                self.start_upload(head, valid_name(name)?, readable)
            }
            (Route::Upload { name, id }, method) => {
                let name = valid_name(name)?;
                if !is_upload_id(&id)
                    || !self
                        .storage
                        .upload_known(&name, &id)
                        .map_err(RegistryError::storage)?
                {
                    return Err(RegistryError::new(ErrorCode::BlobUploadUnknown, "upload unknown"));
                }
                match method {
                    Method::Get => ready(self.upload_progress(&name, &id, 204)),
                    Method::Patch => self.begin_upload_data(head, name, id, None),
                    Method::Put => {
                        let digest = required_digest_param(head)?;
                        self.begin_upload_data(head, name, id, Some(digest))
                    }
                    Method::Delete => {
                        self.storage
                            .cancel_upload(&name, &id)
                            .map_err(RegistryError::storage)?;
                        ready(Response::new(204))
                    }
                    _ => Err(method_not_allowed()),
                }
            }
            (Route::Referrers { name, digest }, Method::Get | Method::Head) => {
                let name = valid_name(name)?;
                let digest = parse_digest(&digest)?;
                ready(self.referrers(head, &name, &digest)?)
            }
            // Served before the registry (the connection and the auth flow);
            // here only with a method they do not take.
            (Route::NotFound | Route::Metrics | Route::Token | Route::Admin, _) => {
                Err(RegistryError::new(ErrorCode::Unsupported, "unknown endpoint").status(404))
            }
            _ => Err(method_not_allowed()),
        }
    }
}

fn ready(outcome: impl Into<Outcome>) -> Result<ExchangeState> {
    Ok(ExchangeState::Ready(outcome.into()))
}

fn text(body: &str) -> crate::http::Body {
    crate::http::Body::Bytes(body.as_bytes().to_vec())
}

fn valid_name(name: String) -> Result<String> {
    if reference::is_valid_name(&name) {
        Ok(name)
    } else {
        Err(
            RegistryError::new(ErrorCode::NameInvalid, "invalid repository name")
                .detail(serde_json::json!({ "name": name })),
        )
    }
}

fn parse_reference(text: &str) -> Result<Reference> {
    Reference::parse(text).map_err(|error| match error {
        reference::ReferenceError::InvalidTag => RegistryError::new(ErrorCode::TagInvalid, "invalid tag")
            .detail(serde_json::json!({ "tag": text })),
        reference::ReferenceError::Digest(_) => digest_invalid(text),
    })
}

/// A reference to read or delete: a tag outside the tag grammar names
/// nothing that can exist, so it is unknown (404), as the conformance suites
/// expect; only a PUT, which would create it, is told the tag is invalid.
fn parse_existing_reference(text: &str) -> Result<Reference> {
    match Reference::parse(text) {
        Err(reference::ReferenceError::InvalidTag) => Err(RegistryError::new(
            ErrorCode::ManifestUnknown,
            "manifest unknown to registry",
        )
        .detail(serde_json::json!({ "reference": text }))),
        _ => parse_reference(text),
    }
}

fn parse_digest(text: &str) -> Result<crate::digest::Digest> {
    crate::digest::Digest::parse(text).map_err(|_| digest_invalid(text))
}

fn digest_invalid(text: &str) -> RegistryError {
    RegistryError::new(ErrorCode::DigestInvalid, "invalid or unsupported digest")
        .detail(serde_json::json!({ "digest": text }))
}

fn required_digest_param(head: &RequestHead) -> Result<crate::digest::Digest> {
    match head.query_value("digest") {
        Some(text) => parse_digest(&text),
        None => Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            "the digest parameter is required",
        )),
    }
}

/// Session ids are ours (32 lowercase hex); anything else cannot name a
/// session and must never reach the filesystem as a path component.
fn is_upload_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The target of a registry-decided removal changed (or went) since the
/// decision: nothing is removed, and the next run decides again.
fn stale_removal() -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestUnknown,
        "changed since the removal was decided",
    )
    .status(409)
}

fn method_not_allowed() -> RegistryError {
    RegistryError::new(ErrorCode::Unsupported, "method not allowed on this endpoint")
}

fn manifest_too_large(limit: u64) -> RegistryError {
    RegistryError::new(
        ErrorCode::SizeInvalid,
        format!("manifest larger than {limit} bytes"),
    )
    .status(413)
}

fn blob_too_large(limit: u64) -> RegistryError {
    RegistryError::new(ErrorCode::SizeInvalid, format!("blob larger than {limit} bytes")).status(413)
}

/// `min_free_space` refused a push: 507, the message saying what is free
/// and what must stay so, and both numbers for tools.
fn storage_full(full: crate::storage::Full) -> RegistryError {
    RegistryError::storage_full(full.to_string()).detail(serde_json::json!({
        "free_bytes": full.free_bytes,
        "min_free_bytes": full.min_free_bytes,
    }))
}

fn range_mismatch() -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUploadInvalid,
        "body length does not match Content-Range",
    )
    .status(416)
}

impl crate::event_webhook::notifier::Apply<Commit> for Registry {
    fn apply(
        &mut self,
        holder: Holder,
        commit: Commit,
        again: bool,
    ) -> crate::event_webhook::notifier::Applied<Commit> {
        use crate::event_webhook::notifier::Applied;
        let Some(bucket) = self.storage.bucket() else {
            return Applied::Done(Registry::apply(self, commit));
        };
        let objects = bucket.objects();
        objects.enter(holder, objects.now_ms());
        if !again {
            // What the request read before its webhooks were asked may be
            // out of date: the change is checked against the bucket now.
            objects.forget_reads();
        }
        let result = Registry::apply(self, commit.clone());
        if self.leave() {
            return Applied::Waiting(commit);
        }
        // Made: the holder's record of it is of no more use.
        self.release(holder);
        Applied::Done(result)
    }

    fn discard(&mut self, commit: Commit) {
        Registry::discard(self, commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::storage::{DiskSpace, MinFreeSpace};
    use crate::test_support::TempDir;

    /// A registry on a fresh directory under the configuration `text`.
    fn registry(dir: &TempDir, text: &str) -> Registry {
        let loaded = crate::config::load_sources(&[("test.toml".into(), text.into())]).unwrap();
        let storage = Storage::open(dir.path(), false, 16).unwrap();
        let mut registry = Registry::new(storage, Limits::of(&loaded.config.global));
        registry.set_tag_immutability(TagImmutability::of(&loaded.config));
        registry
    }

    /// A distinct, valid image manifest per `seed`, and its digest.
    fn manifest(seed: &str) -> (Vec<u8>, String) {
        let config = Digest::sha256_of(b"{}");
        let body = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{\"mediaType\":             \"application/vnd.oci.image.config.v1+json\",\"digest\":\"{config}\",\"size\":2}},             \"layers\":[],\"annotations\":{{\"seed\":\"{seed}\"}}}}",
            manifest::OCI_MANIFEST
        )
        .into_bytes();
        let digest = Digest::sha256_of(&body).to_string();
        (body, digest)
    }

    fn put(registry: &mut Registry, path: &str, body: &[u8]) -> Outcome {
        let request = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
            manifest::OCI_MANIFEST,
            body.len()
        );
        let (_, head) = crate::http::request::parse_head(request.as_bytes(), 8192)
            .unwrap()
            .unwrap();
        match registry.begin(&head) {
            Begin::ReadBody(mut exchange) => {
                registry.body(&mut exchange, body).unwrap();
                finished(registry.finish(exchange))
            }
            Begin::Answer(outcome) => outcome,
        }
    }

    /// On the filesystem, `finish` answers at once.
    fn finished(finished: Finished) -> Outcome {
        match finished {
            Finished::Answer(outcome) => outcome,
            Finished::Wait(_) => panic!("the filesystem never waits"),
        }
    }

    fn tag(registry: &Registry, name: &str, tag: &str) -> Option<String> {
        registry
            .storage()
            .tag(name, tag)
            .unwrap()
            .map(|digest| digest.to_string())
    }

    fn error_code(response: &Response) -> String {
        let crate::http::Body::Bytes(bytes) = &response.body else {
            panic!("no error body");
        };
        let body: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        body["errors"][0]["code"].as_str().unwrap().to_string()
    }

    #[test]
    fn immutable_tags_do_not_move_but_take_the_same_digest_again() {
        let dir = TempDir::new("immutable");
        let config = "[global]\nimmutable_tags = true\nimmutable_tags_exclusions = [\"^latest$\"]\n\
                      [repository.\"dev\"]\nimmutable_tags = false\n";
        let mut registry = registry(&dir, config);
        let (a, a_digest) = manifest("a");
        let (b, b_digest) = manifest("b");
        assert_eq!(
            put(&mut registry, "/v2/app/manifests/v1", &a).response.status,
            201
        );
        assert_eq!(
            put(&mut registry, "/v2/app/manifests/v1", &a).response.status,
            201,
            "same digest"
        );
        let refused = put(&mut registry, "/v2/app/manifests/v1", &b).response;
        assert_eq!(refused.status, 409);
        assert_eq!(error_code(&refused), "CONFLICT");
        assert_eq!(tag(&registry, "app", "v1"), Some(a_digest.clone()));
        // By digest with `?tag=`: refused when one of the tags would move, nothing stored.
        let path = format!("/v2/app/manifests/{b_digest}?tag=v2&tag=v1");
        assert_eq!(put(&mut registry, &path, &b).response.status, 409);
        assert_eq!(tag(&registry, "app", "v2"), None, "all or nothing");
        let path = format!("/v2/app/manifests/{b_digest}?tag=v2");
        assert_eq!(put(&mut registry, &path, &b).response.status, 201, "a new tag");
        // Excluded tags and a repository that turns it off move freely.
        for (name, tag_name) in [("app", "latest"), ("dev", "v1"), ("dev/sub", "v1")] {
            let path = format!("/v2/{name}/manifests/{tag_name}");
            assert_eq!(put(&mut registry, &path, &a).response.status, 201);
            assert_eq!(
                put(&mut registry, &path, &b).response.status,
                201,
                "{name}:{tag_name}"
            );
            assert_eq!(tag(&registry, name, tag_name), Some(b_digest.clone()));
        }
    }

    #[test]
    fn a_staged_push_is_checked_again_when_it_is_made() {
        let dir = TempDir::new("immutable-staged");
        let mut registry = registry(&dir, "[global]\nimmutable_tags = true\n");
        let (a, _) = manifest("a");
        let (b, b_digest) = manifest("b");
        // A webhook wants pushes: the change waits, staged, while it is asked.
        registry.set_interest(EventKind::ManifestPush.bit());
        let staged = put(&mut registry, "/v2/app/manifests/v1", &a).staged.unwrap();
        // Meanwhile another push sets the tag (its own webhook already said yes).
        let other = put(&mut registry, "/v2/app/manifests/v1", &b).staged.unwrap();
        registry.apply(other.commit).unwrap();
        let refused = registry.apply(staged.commit).unwrap_err();
        assert_eq!(refused.status, 409);
        assert_eq!(error_code(&refused), "CONFLICT");
        assert_eq!(tag(&registry, "app", "v1"), Some(b_digest.clone()));
        // A reload that makes the tag immutable while a move waits: refused too.
        registry.set_tag_immutability(TagImmutability::default());
        let staged = put(&mut registry, "/v2/app/manifests/v1", &a).staged.unwrap();
        let loaded =
            crate::config::load_sources(&[("t.toml".into(), "[global]\nimmutable_tags = true\n".into())]);
        registry.set_tag_immutability(TagImmutability::of(&loaded.unwrap().config));
        assert_eq!(registry.apply(staged.commit).unwrap_err().status, 409);
        // The same digest again, staged, is made.
        let staged = put(&mut registry, "/v2/app/manifests/v1", &b).staged.unwrap();
        registry.apply(staged.commit).unwrap();
        assert_eq!(tag(&registry, "app", "v1"), Some(b_digest));
    }

    #[test]
    fn deleting_an_immutable_tag_is_not_refused() {
        let dir = TempDir::new("immutable-delete");
        let mut registry = registry(&dir, "[global]\nimmutable_tags = true\n");
        let (a, _) = manifest("a");
        assert_eq!(
            put(&mut registry, "/v2/app/manifests/v1", &a).response.status,
            201
        );
        let request = "DELETE /v2/app/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let (_, head) = crate::http::request::parse_head(request.as_bytes(), 8192)
            .unwrap()
            .unwrap();
        let Begin::Answer(outcome) = registry.begin(&head) else {
            panic!("a delete has no body");
        };
        assert_eq!(outcome.response.status, 202);
        assert_eq!(tag(&registry, "app", "v1"), None);
    }

    fn head(request: &str) -> RequestHead {
        let text = format!("{request} HTTP/1.1\r\nHost: x\r\n\r\n");
        crate::http::request::parse_head(text.as_bytes(), 1 << 14)
            .unwrap()
            .unwrap()
            .1
    }

    fn with_length(mut head: RequestHead, length: u64) -> RequestHead {
        head.framing = crate::http::request::BodyFraming::Length(length);
        head
    }

    /// Runs a request to its answer; `None` as the body sends none.
    fn serve(registry: &mut Registry, head: &RequestHead, body: &[u8]) -> Response {
        match registry.begin(head) {
            Begin::Answer(outcome) => outcome.response,
            Begin::ReadBody(mut exchange) => match registry.body(&mut exchange, body) {
                Ok(()) => finished(registry.finish(exchange)).response,
                Err(response) => response,
            },
        }
    }

    fn error_message(response: &Response) -> String {
        let crate::http::Body::Bytes(bytes) = &response.body else {
            panic!("no JSON body");
        };
        let body: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        body["errors"][0]["message"].as_str().unwrap().to_string()
    }

    #[test]
    fn below_min_free_space_pushes_are_refused_before_writing_and_reads_go_on() {
        let root = TempDir::new("registry-test");
        let free = Rc::new(Cell::new(10_000u64));
        let probe_free = free.clone();
        let storage = Storage::open(root.path(), false, 16).unwrap().with_space_guard(
            MinFreeSpace::Bytes(1000),
            Box::new(move |_| {
                Ok(DiskSpace {
                    free_bytes: probe_free.get(),
                    total_bytes: 1 << 20,
                })
            }),
        );
        let limits = Limits {
            max_manifest_size: 1 << 20,
            max_blob_size: 1 << 20,
            allow_missing_manifest_references: true,
            update_pull_time: false,
        };
        let mut registry = Registry::new(storage, limits);
        let layer = b"layer bytes";
        let digest = Digest::sha256_of(layer);
        let monolithic = |length| {
            with_length(
                head(&format!("POST /v2/ns/blobs/uploads/?digest={digest}")),
                length,
            )
        };
        assert_eq!(
            serve(&mut registry, &monolithic(layer.len() as u64), layer).status,
            201
        );
        // An open session, started while there was room.
        let started = serve(&mut registry, &head("POST /v2/ns/blobs/uploads/"), b"");
        assert_eq!(started.status, 202);
        let location = started
            .headers
            .iter()
            .find(|(name, _)| *name == "Location")
            .unwrap()
            .1
            .clone();
        assert_eq!(registry.storage().upload_sessions(), 1);

        free.set(999);
        for (request, length) in [
            ("POST /v2/ns/blobs/uploads/".to_string(), 0),
            (format!("POST /v2/ns/blobs/uploads/?digest={digest}"), 11),
            (format!("POST /v2/other/blobs/uploads/?mount={digest}&from=ns"), 0),
            (format!("PATCH {location}"), 11),
            (format!("PUT {location}?digest={digest}"), 11),
            ("PUT /v2/ns/manifests/latest".to_string(), 2),
        ] {
            let response = serve(&mut registry, &with_length(head(&request), length), layer);
            assert_eq!(response.status, 507, "{request}");
            assert_eq!(
                error_message(&response),
                "the registry's storage is full: 999 B free, min_free_space is 1000 B; pushes resume when space is freed",
                "{request}"
            );
        }
        // Nothing was written, and the open session is still there to resume.
        assert_eq!(registry.storage().upload_sessions(), 1);
        assert_eq!(
            registry
                .storage()
                .upload_size("ns", &location[location.len() - 32..]),
            Some(0)
        );
        // Reads and deletes go on.
        assert_eq!(
            serve(&mut registry, &head(&format!("GET /v2/ns/blobs/{digest}")), b"").status,
            200
        );
        assert_eq!(serve(&mut registry, &head("GET /v2/_catalog"), b"").status, 200);
        assert_eq!(
            serve(
                &mut registry,
                &head(&format!("DELETE /v2/ns/blobs/{digest}")),
                b""
            )
            .status,
            202
        );

        // An announced body that would eat into the minimum is refused whole.
        free.set(2000);
        let response = serve(&mut registry, &monolithic(1001), &[0; 1001]);
        assert_eq!(response.status, 507);
        assert!(error_message(&response).contains("too full for this upload"));
        assert_eq!(
            registry.storage().upload_sessions(),
            1,
            "the monolithic session is gone"
        );
        // A body without a length is stopped at the chunk that would.
        let mut chunked = head(&format!("PATCH {location}"));
        chunked.framing = crate::http::request::BodyFraming::Chunked;
        let Begin::ReadBody(mut exchange) = registry.begin(&chunked) else {
            panic!("the PATCH starts");
        };
        assert!(registry.body(&mut exchange, &[1; 500]).is_ok());
        free.set(1500);
        let refused = registry.body(&mut exchange, &[1; 600]).unwrap_err();
        assert_eq!(refused.status, 507);
        assert_eq!(
            registry.storage().upload_sessions(),
            0,
            "a cut body ends its session"
        );

        // Space is back: the next push is accepted, no restart.
        free.set(10_000);
        assert_eq!(
            serve(&mut registry, &monolithic(layer.len() as u64), layer).status,
            201
        );
    }

    #[test]
    fn manifest_bodies_count_in_flight_until_they_end_however_they_end() {
        let in_flight = Rc::new(Cell::new(0));
        let body = |in_flight: &Rc<Cell<u64>>| ManifestBody {
            bytes: Vec::new(),
            in_flight: in_flight.clone(),
        };
        let mut finished = body(&in_flight);
        let mut dropped = body(&in_flight);
        assert!(finished.append(&[1; 100]));
        assert!(dropped.append(&[2; 50]));
        assert_eq!(in_flight.get(), 150, "exact first reservations");
        assert!(finished.append(&[1; 10]));
        assert_eq!(in_flight.get(), 250, "grown by doubling, counted by capacity");
        assert_eq!(finished.into_bytes().len(), 110);
        assert_eq!(in_flight.get(), 50);
        drop(dropped);
        assert_eq!(in_flight.get(), 0);
        // The cap is on the total of all bodies.
        let mut big = body(&in_flight);
        assert!(big.append(&vec![0; MANIFEST_BYTES_IN_FLIGHT_MAX as usize]));
        let mut other = body(&in_flight);
        assert!(!other.append(&[0]), "over the total");
        drop(big);
        assert!(other.append(&[0]));
    }
}
