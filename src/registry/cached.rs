//! The registry's half of the pull-through cache (`crate::mirror`): storing a
//! fetched manifest, writing a fetched blob into an upload session and
//! committing it once verified, and the answer that streams a blob while
//! its fill runs. Changes come out staged like a client's, so webhooks
//! hear of them (the notifier marks them `actor.internal = "cache"`).

use std::fs::File;
use std::rc::Rc;

use super::reference::Reference;
use super::{AfterUpload, Commit, EventDraft, Exchange, ExchangeState, Limits, Outcome, Registry};
use crate::digest::Digest;
use crate::event_webhook::event::EventKind;
use crate::http::{Body, Response};
use crate::storage::UploadWriter;

impl Registry {
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stores a manifest fetched from an upstream (its digest already
    /// checked against what was asked for or announced): tagged when fetched
    /// by tag, its references not required (a mirror holds what was pulled).
    pub fn cache_manifest(
        &mut self,
        name: &str,
        reference: &Reference,
        media_type: &str,
        body: Vec<u8>,
    ) -> Result<Outcome, String> {
        let tags = match reference {
            Reference::Tag(tag) => vec![tag.clone()],
            Reference::Digest(_) => Vec::new(),
        };
        self.put_manifest(name, reference, media_type, &tags, body, true)
            .map_err(|error| format!("the upstream's manifest was refused: {error}"))
    }

    /// Opens an upload session in `name` for a blob of `size` bytes coming
    /// from an upstream: its id, writer, and the file opened for readers.
    pub fn start_fill(&mut self, name: &str, size: u64) -> Result<(String, UploadWriter, File), String> {
        self.storage
            .check_space_to_start(Some(size))
            .map_err(|full| full.to_string())?;
        let id = self
            .storage
            .start_upload(name)
            .map_err(|error| super::blobs::upload_error(error).to_string())?;
        let opened = self
            .storage
            .upload_writer(name, &id)
            .map_err(|error| super::blobs::upload_error(error).to_string())
            .and_then(|writer| {
                let file = self
                    .storage
                    .upload_data_file(&id)
                    .map_err(|error| error.to_string())?;
                Ok((writer, file))
            });
        match opened {
            Ok((writer, file)) => Ok((id, writer, file)),
            Err(reason) => {
                let _ = self.storage.cancel_upload(name, &id);
                Err(reason)
            }
        }
    }

    /// On a bucket: a local file for a blob of `size` bytes coming from an
    /// upstream, which its readers stream while it is written
    /// (`Storage::open_spool`); the bucket gets it once verified.
    pub fn start_spool(&mut self, size: u64) -> Result<File, String> {
        self.storage
            .check_space_to_start(Some(size))
            .map_err(|full| full.to_string())?;
        self.storage
            .open_spool()
            .map_err(|error| format!("opening a spool for the fill: {error}"))
    }

    /// On a bucket: a verified spool's bytes become the blob as a monolithic
    /// upload would (`POST ?digest=`): this opens its session; the bytes go
    /// in with `body` and it ends with `finish`, like a client's request
    /// (each of them may wait: run it again when the holder is woken).
    pub fn begin_fill_upload(&mut self, name: &str, digest: &Digest) -> Result<Exchange, String> {
        let id = self
            .storage
            .start_upload(name)
            .map_err(|error| super::blobs::upload_error(error).to_string())?;
        let writer = self
            .storage
            .upload_writer(name, &id)
            .map_err(|error| super::blobs::upload_error(error).to_string())?;
        Ok(Exchange {
            route_label: "cache",
            state: ExchangeState::Upload {
                name: name.to_string(),
                id,
                writer: Box::new(writer),
                then: AfterUpload::Commit(digest.clone()),
                expected_bytes: None,
                received: 0,
            },
        })
    }

    /// The fill wrote every byte: checks the digest and stages the commit
    /// (with its `blob.push` event). A mismatch removes the session: wrong
    /// bytes never become the blob.
    pub fn commit_fill(
        &mut self,
        name: &str,
        upload: &str,
        writer: UploadWriter,
        digest: &Digest,
    ) -> Result<Outcome, String> {
        self.storage.release_writer(name, upload, writer);
        self.storage
            .verify_upload(name, upload, digest)
            .map_err(|error| match error {
                crate::storage::UploadError::DigestMismatch => {
                    "the upstream's bytes do not match the blob's digest".to_string()
                }
                error => super::blobs::upload_error(error).to_string(),
            })?;
        let events = if self.wants(EventKind::BlobPush) {
            vec![EventDraft::new(EventKind::BlobPush, name).digest(digest)]
        } else {
            Vec::new()
        };
        let commit = Commit::Upload {
            name: name.to_string(),
            id: upload.to_string(),
            digest: digest.clone(),
        };
        let created = Response::new(201).header("Docker-Content-Digest", digest.to_string());
        self.outcome(created, events, commit)
            .map_err(|error| error.to_string())
    }

    /// A fill that will not complete: its session and bytes go.
    pub fn cancel_fill(&mut self, name: &str, upload: &str, writer: Option<UploadWriter>) {
        if let Some(writer) = writer {
            self.storage.release_writer(name, upload, writer);
        }
        let _ = self.storage.cancel_upload(name, upload);
    }

    /// The answer to a blob GET served while its fill runs: the whole blob,
    /// sent as it is written (`Range` is not honoured on a miss; RFC 9110
    /// lets a server ignore it), and the `blob.pull` event.
    pub fn streaming_blob(
        &mut self,
        name: &str,
        digest: &Digest,
        file: File,
        size: u64,
        growing: Rc<dyn crate::http::output::Growing>,
    ) -> Outcome {
        let response = Response::new(200)
            .header("Content-Type", "application/octet-stream")
            .header("Docker-Content-Digest", digest.to_string())
            .header("ETag", format!("\"{digest}\""))
            .body(Body::Growing {
                file,
                len: size,
                growing,
            });
        let events = if self.wants(EventKind::BlobPull) {
            vec![EventDraft::new(EventKind::BlobPull, name).digest(digest)]
        } else {
            Vec::new()
        };
        self.outcome(response, events, Commit::Nothing)
            .unwrap_or_else(|error| error.into_response().into())
    }
}
