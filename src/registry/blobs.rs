//! Blob endpoints: HEAD/GET (with a single `Range`), DELETE, and uploads
//! (session start, cross-repository mount, monolithic, chunked and streamed
//! data, status, completion, cancel).

use super::error::{ErrorCode, RegistryError};
use super::range::{self, RangeError};
use super::{AfterUpload, Commit, EventDraft, ExchangeState, Outcome, Registry, Result};
use crate::digest::Digest;
use crate::event_webhook::event::EventKind;
use crate::http::{Body, Method, RequestHead, Response};
use crate::storage::UploadError;

/// Directories under `repositories/` an automatic mount (`?mount=` without
/// `from`) may look through for a namespace holding the blob; past that the
/// client uploads the blob as the spec allows (202).
const AUTO_MOUNT_DIRECTORIES_MAX: usize = 1024;

impl Registry {
    pub(super) fn get_blob(&mut self, head: &RequestHead, name: &str, digest: &Digest) -> Result<Outcome> {
        let blob_unknown = || {
            RegistryError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
                .detail(serde_json::json!({ "digest": digest.to_string() }))
        };
        let base = |status: u16| {
            Response::new(status)
                .header("Content-Type", "application/octet-stream")
                .header("Docker-Content-Digest", digest.to_string())
                .header("Accept-Ranges", "bytes")
                .header("ETag", format!("\"{digest}\""))
                .header("Cache-Control", "max-age=31536000")
        };
        if head.method == Method::Head {
            let size = self
                .storage
                .blob_size(name, digest)
                .map_err(RegistryError::storage)?
                .ok_or_else(blob_unknown)?;
            return Ok(base(200).body(Body::Length(size)).into());
        }
        // A GET (not a HEAD) is a pull.
        let events = if self.wants(EventKind::BlobPull) {
            vec![EventDraft::new(EventKind::BlobPull, name).digest(digest)]
        } else {
            Vec::new()
        };
        let (source, size) = self
            .storage
            .blob_source(name, digest)
            .map_err(RegistryError::storage)?
            .ok_or_else(blob_unknown)?;
        if self.waits() {
            // Run again: the body is opened (on a bucket, its read started)
            // by the run that answers.
            return Ok(Response::new(503).into());
        }
        if let Some(url) = self.storage.blob_redirect(&source) {
            // The client fetches it from the bucket (a Range it sends goes
            // there too); the pull is the same event.
            let response = Response::new(307)
                .header("Location", url)
                .header("Docker-Content-Digest", digest.to_string());
            return self.outcome(response, events, Commit::Nothing);
        }
        if let Some(value) = head.header("range") {
            match range::parse_range(value, size) {
                Ok(range) => {
                    let len = range.end - range.start + 1;
                    let response = base(206)
                        .header(
                            "Content-Range",
                            format!("bytes {}-{}/{size}", range.start, range.end),
                        )
                        .body(self.storage.body_of_blob(source, range.start, len));
                    return self.outcome(response, events, Commit::Nothing);
                }
                Err(RangeError::Unsatisfiable) => {
                    return Ok(Response::new(416)
                        .header("Content-Range", format!("bytes */{size}"))
                        .into());
                }
                // RFC 9110 section 14.2: a Range we do not understand is ignored.
                Err(RangeError::Unsupported) => {}
            }
        }
        let response = base(200).body(self.storage.body_of_blob(source, 0, size));
        self.outcome(response, events, Commit::Nothing)
    }

    pub(super) fn delete_blob(&mut self, name: &str, digest: &Digest) -> Result<Response> {
        if self
            .storage
            .delete_blob(name, digest)
            .map_err(RegistryError::storage)?
        {
            Ok(Response::new(202))
        } else {
            Err(
                RegistryError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
                    .detail(serde_json::json!({ "digest": digest.to_string() })),
            )
        }
    }

    /// `POST /v2/<name>/blobs/uploads/`: a mount, a monolithic upload with
    /// `?digest=`, or a new session.
    pub(super) fn start_upload(
        &mut self,
        head: &RequestHead,
        name: String,
        readable: &dyn Fn(&str) -> bool,
    ) -> Result<ExchangeState> {
        // Before anything is written, a mount's link included: a push that
        // cannot finish should not start.
        self.storage
            .check_space_to_start(None)
            .map_err(super::storage_full)?;
        if let Some(mount) = head.query_value("mount") {
            // Invalid mount arguments fall back to a plain upload (spec: "Cross
            // Repository Blob Mount"), and so does a source the client may not
            // pull from: mounting must not copy what the client cannot read.
            // Without `from`, any namespace the client may pull from and that
            // holds the blob will do (the spec's automatic mount).
            let source = match (Digest::parse(&mount), head.query_value("from")) {
                (Ok(digest), Some(from)) => {
                    let readable = super::reference::is_valid_name(&from)
                        && readable(&from)
                        && self
                            .storage
                            .blob_size(&from, &digest)
                            .map_err(RegistryError::storage)?
                            .is_some();
                    readable.then_some(digest)
                }
                (Ok(digest), None) => self
                    .storage
                    .find_blob_holder(&digest, readable, AUTO_MOUNT_DIRECTORIES_MAX)
                    .map_err(RegistryError::storage)?
                    .map(|_| digest),
                (Err(_), _) => None,
            };
            if let Some(digest) = source {
                let events = self.blob_push_events(&name, &digest);
                let commit = Commit::Mount {
                    name: name.clone(),
                    digest: digest.clone(),
                };
                let outcome = self.outcome(blob_created(&name, &digest), events, commit)?;
                return Ok(ExchangeState::Ready(outcome));
            }
        }
        let digest = match head.query_value("digest") {
            Some(text) => Some(super::parse_digest(&text)?),
            None => None,
        };
        let id = self.storage.start_upload(&name).map_err(upload_error)?;
        match digest {
            Some(digest) => self.begin_upload_data(head, name, id, Some(digest)),
            None => Ok(ExchangeState::Ready(self.upload_progress(&name, &id, 202).into())),
        }
    }

    /// PATCH, PUT and monolithic POST bodies: check `Content-Range` and the
    /// size limit before any byte is accepted, then stream into the session.
    pub(super) fn begin_upload_data(
        &mut self,
        head: &RequestHead,
        name: String,
        id: String,
        commit: Option<Digest>,
    ) -> Result<ExchangeState> {
        let size = self.storage.upload_size(&name, &id).unwrap_or(0);
        let mut expected_bytes = None;
        if let Some(value) = head.header("content-range") {
            let range = range::parse_content_range(value);
            // A chunk must start right after the bytes we have (spec: 416 for
            // an invalid or out-of-order Content-Range).
            let Some(range) = range.filter(|range| range.start == size) else {
                return Ok(ExchangeState::Ready(self.upload_progress(&name, &id, 416).into()));
            };
            let announced = range.end - range.start + 1;
            if head.content_length().is_some_and(|length| length != announced) {
                return Ok(ExchangeState::Ready(self.upload_progress(&name, &id, 416).into()));
            }
            expected_bytes = Some(announced);
        }
        if let Some(length) = head.content_length()
            && size.saturating_add(length) > self.limits.max_blob_size
        {
            if commit.is_some() && head.method == Method::Post {
                let _ = self.storage.cancel_upload(&name, &id);
            }
            return Err(super::blob_too_large(self.limits.max_blob_size));
        }
        // Refused before the body is read: the session keeps what it has, so
        // a chunked upload resumes where it stopped once space is freed.
        if let Err(full) = self.storage.check_space_to_start(head.content_length()) {
            if commit.is_some() && head.method == Method::Post {
                let _ = self.storage.cancel_upload(&name, &id);
            }
            return Err(super::storage_full(full));
        }
        let writer = Box::new(self.storage.upload_writer(&name, &id).map_err(upload_error)?);
        Ok(ExchangeState::Upload {
            name,
            id,
            writer,
            then: match commit {
                Some(digest) => AfterUpload::Commit(digest),
                None => AfterUpload::Progress,
            },
            expected_bytes,
            received: 0,
        })
    }

    /// The upload status answer: `Location`, `Range` of the bytes received,
    /// and the session id headers.
    pub(super) fn upload_progress(&self, name: &str, id: &str, status: u16) -> Response {
        let size = self.storage.upload_size(name, id).unwrap_or(0);
        self.upload_progress_of(name, id, status, size)
    }

    /// The same, for a session known to hold `size` bytes.
    pub(super) fn upload_progress_of(&self, name: &str, id: &str, status: u16, size: u64) -> Response {
        // The spec's inclusive range; an empty session reports "0-0" as
        // distribution does, since "0--1" is not a range.
        let end = size.saturating_sub(1);
        Response::new(status)
            .header("Location", format!("/v2/{name}/blobs/uploads/{id}"))
            .header("Range", format!("0-{end}"))
            .header("Blob-Upload-Session-ID", id)
            .header("Docker-Upload-UUID", id)
    }

    pub(super) fn commit_upload(&mut self, name: &str, id: &str, digest: &Digest) -> Result<Outcome> {
        self.storage
            .verify_upload(name, id, digest)
            .map_err(upload_error)?;
        let events = self.blob_push_events(name, digest);
        let commit = Commit::Upload {
            name: name.to_string(),
            id: id.to_string(),
            digest: digest.clone(),
        };
        self.outcome(blob_created(name, digest), events, commit)
    }

    fn blob_push_events(&self, name: &str, digest: &Digest) -> Vec<EventDraft> {
        if self.wants(EventKind::BlobPush) {
            vec![EventDraft::new(EventKind::BlobPush, name).digest(digest)]
        } else {
            Vec::new()
        }
    }
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    Response::new(201)
        .header("Location", format!("/v2/{name}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
}

pub(super) fn upload_error(error: UploadError) -> RegistryError {
    match error {
        UploadError::Unknown => RegistryError::new(ErrorCode::BlobUploadUnknown, "upload unknown"),
        UploadError::DigestMismatch => RegistryError::new(
            ErrorCode::DigestInvalid,
            "provided digest did not match uploaded content",
        ),
        UploadError::TooManySessions => {
            RegistryError::new(ErrorCode::TooManyRequests, "too many upload sessions in progress")
        }
        UploadError::TooManySessionsHere(max) => RegistryError::new(
            ErrorCode::TooManyRequests,
            format!("too many upload sessions in progress in this repository (at most {max})"),
        ),
        UploadError::Io(error) => RegistryError::storage(error),
    }
}
