//! Upload sessions on the bucket, so that a session's chunks may reach any
//! replica: everything about a session is in `_uploads/<id>/` (`layout.rs`),
//! written when each request's body is in. Bytes become parts of one S3
//! multipart upload (`_uploads/<id>/data`) as soon as a whole part
//! (`multipart_part_size`) is in; what is left past the last whole part
//! waits in `_uploads/<id>/tail` for the next chunk, which begins with it.
//! The digest's running state travels in the session (`Hasher::save`), so
//! no replica reads the bytes back to check them. A replica holds at most
//! one part being sent and one being filled per upload; the connection
//! stops reading while both are full (`PartWriter::paused`).
//!
//! Commit, once the digest matched: the tail becomes the last part (or the
//! whole blob, for a blob smaller than a part), the multipart upload is
//! completed, and the result is copied to the content key, which thus only
//! ever holds verified bytes; then the link, and the session goes.

use std::rc::Rc;

use super::objects::{Objects, Wait};
use super::{BucketError, BucketStore, Result, all, layout};
use crate::base64::{Alphabet, Padding};
use crate::digest::{Digest, Hasher};
use crate::s3::api::{Operation, PARTS_MAX, parse_upload_id};

/// One part of the multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub etag: String,
    pub size: u64,
}

/// A session as `_uploads/<id>/state` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub namespace: String,
    /// Bytes received: the parts' and the tail's.
    pub size: u64,
    /// `Hasher::save` of every byte received.
    pub hash: Vec<u8>,
    pub upload_id: Option<String>,
    pub parts: Vec<Part>,
    /// Bytes in the tail object.
    pub tail: u64,
}

impl Session {
    fn new(namespace: &str) -> Session {
        Session {
            namespace: namespace.to_string(),
            size: 0,
            hash: Hasher::sha256().save(),
            upload_id: None,
            parts: Vec::new(),
            tail: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let parts: Vec<serde_json::Value> = self
            .parts
            .iter()
            .map(|part| serde_json::json!([part.number, part.etag, part.size]))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "namespace": self.namespace,
            "size": self.size,
            "hash": crate::base64::encode(&self.hash, Alphabet::Standard),
            "upload_id": self.upload_id,
            "parts": parts,
            "tail": self.tail,
        }))
        .unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Session> {
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let parts = value["parts"]
            .as_array()?
            .iter()
            .map(|part| {
                Some(Part {
                    number: u32::try_from(part[0].as_u64()?).ok()?,
                    etag: part[1].as_str()?.to_string(),
                    size: part[2].as_u64()?,
                })
            })
            .collect::<Option<Vec<Part>>>()?;
        let session = Session {
            namespace: value["namespace"].as_str()?.to_string(),
            size: value["size"].as_u64()?,
            hash: crate::base64::decode(value["hash"].as_str()?, Alphabet::Standard, Padding::Optional)?,
            upload_id: value["upload_id"].as_str().map(str::to_string),
            parts,
            tail: value["tail"].as_u64()?,
        };
        let in_parts: u64 = session.parts.iter().map(|part| part.size).sum();
        (in_parts + session.tail == session.size).then_some(session)
    }
}

/// Streams one request's body into a session: whole parts go out as they
/// fill, the rest is the new tail when the body ends (`settle`).
#[derive(Debug)]
pub struct PartWriter {
    objects: Rc<Objects>,
    id: String,
    session: Session,
    hasher: Hasher,
    /// The tail and what arrived since that is not in a part yet.
    buffer: Vec<u8>,
    part_size: usize,
    /// The part being sent: its number and size.
    sending: Option<(u32, u64)>,
    failed: Option<String>,
}

fn part_label(number: u32) -> String {
    format!("part {number}")
}

impl PartWriter {
    /// Bytes in the session so far.
    pub fn size(&self) -> u64 {
        self.session.size
    }

    /// Takes `bytes` into the session; parts go out as they fill.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(BucketError::Unavailable(reason.clone()));
        }
        self.hasher.update(bytes);
        self.session.size += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        self.pump();
        match &self.failed {
            Some(reason) => Err(BucketError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }

    /// Whether the body must wait: a whole part is in and cannot go yet (the
    /// one before is being sent, or the multipart upload being created).
    pub fn paused(&mut self) -> bool {
        self.pump();
        self.failed.is_none() && self.buffer.len() >= self.part_size
    }

    /// Notes a finished part, and sends the next when one is full.
    fn pump(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let objects = self.objects.clone();
        if let Some((number, size)) = self.sending {
            match objects.recall(&part_label(number)) {
                Some(Ok(performed)) => {
                    let Some(etag) = performed.etag.clone() else {
                        self.failed = Some(format!("S3 answered part {number} without an ETag"));
                        return;
                    };
                    self.session.parts.push(Part { number, etag, size });
                    self.sending = None;
                }
                Some(Err(Wait::Unavailable(reason))) => {
                    self.failed = Some(reason);
                    return;
                }
                Some(Err(Wait::Pending)) | None => return,
            }
        }
        if self.buffer.len() < self.part_size {
            return;
        }
        let key = layout::upload_data(&self.id);
        if self.session.upload_id.is_none() {
            let created = objects.perform(
                "create the multipart upload",
                Operation::CreateMultipart { key: key.clone() },
                Vec::new(),
                None,
            );
            match created {
                Ok(performed) => match parse_upload_id(&performed.body) {
                    Ok(id) => self.session.upload_id = Some(id),
                    Err(why) => {
                        self.failed = Some(why);
                        return;
                    }
                },
                Err(Wait::Pending) => return,
                Err(Wait::Unavailable(reason)) => {
                    self.failed = Some(reason);
                    return;
                }
            }
        }
        let number = self.session.parts.len() as u32 + 1;
        if number >= PARTS_MAX {
            self.failed = Some(format!(
                "more than {PARTS_MAX} parts: raise multipart_part_size for blobs this large"
            ));
            return;
        }
        // The whole part moves out of the buffer as it is (no copy); what
        // came after it starts the next.
        let rest = self.buffer.split_off(self.part_size);
        let part = std::mem::replace(&mut self.buffer, rest);
        // The next part fills exactly (a doubling Vec would reach 64 MiB
        // for a 50 MiB part).
        self.buffer
            .reserve_exact(self.part_size.saturating_sub(self.buffer.len()));
        let size = part.len() as u64;
        let operation = Operation::UploadPart {
            key,
            upload_id: self.session.upload_id.clone().unwrap_or_default(),
            part: number,
            length: size,
        };
        match objects.perform(&part_label(number), operation, part, None) {
            Err(Wait::Unavailable(reason)) => self.failed = Some(reason),
            _ => self.sending = Some((number, size)),
        }
    }

    /// The body is in: once the part in flight is done, the rest becomes
    /// the tail and the session is written. Run again until it answers.
    pub fn settle(&mut self) -> Result<()> {
        self.pump();
        let objects = self.objects.clone();
        if let Some(reason) = &self.failed {
            return Err(BucketError::Unavailable(reason.clone()));
        }
        // A part in flight, or one full and waiting for the multipart
        // upload to be created: the tail is what is left after them.
        if self.sending.is_some() || self.buffer.len() >= self.part_size {
            return Err(BucketError::Pending);
        }
        self.session.tail = self.buffer.len() as u64;
        self.session.hash = self.hasher.save();
        objects.put(&layout::upload_tail(&self.id), Rc::from(&self.buffer[..]), false)?;
        objects.put(
            &layout::upload_state(&self.id),
            Rc::from(self.session.encode()),
            false,
        )?;
        Ok(())
    }
}

impl BucketStore {
    /// Opens session `id` (the caller's random name) in `namespace`.
    pub fn start_upload(&self, namespace: &str, id: &str) -> Result<()> {
        let session = Session::new(namespace);
        self.objects
            .put(&layout::upload_state(id), Rc::from(session.encode()), false)?;
        Ok(())
    }

    /// Session `id`, if it is `namespace`'s.
    pub fn upload(&self, namespace: &str, id: &str) -> Result<Option<Session>> {
        let key = layout::upload_state(id);
        let Some(bytes) = self.objects.get(&key, false)? else {
            return Ok(None);
        };
        let session = Session::decode(&bytes).ok_or(BucketError::Corrupt {
            key,
            why: "corrupt upload session",
        })?;
        Ok((session.namespace == namespace).then_some(session))
    }

    /// A writer that carries session `id` on from where it stopped.
    pub fn upload_writer(&self, namespace: &str, id: &str) -> Result<Option<PartWriter>> {
        let session = self.upload(namespace, id);
        let tail = self.objects.get(&layout::upload_tail(id), false);
        let (Some(session), tail) = (session?, tail?) else {
            return Ok(None);
        };
        let tail = tail.unwrap_or_else(|| Rc::from(&b""[..]));
        let corrupt = BucketError::Corrupt {
            key: layout::upload_state(id),
            why: "an upload session whose tail or hash does not match it",
        };
        if tail.len() as u64 != session.tail {
            return Err(corrupt);
        }
        let hasher = Hasher::restore(&session.hash).ok_or(corrupt)?;
        Ok(Some(PartWriter {
            objects: self.objects.clone(),
            id: id.to_string(),
            buffer: tail.to_vec(),
            session,
            hasher,
            part_size: self.part_size,
            sending: None,
            failed: None,
        }))
    }

    /// Whether session `id` holds bytes that hash to `expected`:
    /// `Ok(Some(size))`; `Ok(None)` when they do not (the session is then
    /// removed), `Err` when there is no such session.
    pub fn verify_upload(&self, namespace: &str, id: &str, expected: &Digest) -> Result<Option<Option<u64>>> {
        let Some(session) = self.upload(namespace, id)? else {
            return Ok(None);
        };
        let running = Hasher::restore(&session.hash);
        let actual = match running {
            Some(hasher) if hasher.algorithm() == expected.algorithm() => Some(hasher.digest()),
            // Another algorithm than the running one (sha512): the bytes
            // are hashed again, which the tail allows when it is all of them.
            _ if session.upload_id.is_none() => {
                let tail = self
                    .objects
                    .get(&layout::upload_tail(id), false)?
                    .unwrap_or_else(|| Rc::from(&b""[..]));
                Some(Hasher::for_digest(expected).digest_of(&tail))
            }
            // Over more than one part: the parts are put together (as the
            // commit would) and read back through that algorithm, streamed.
            _ => {
                let tail = self
                    .objects
                    .get(&layout::upload_tail(id), false)?
                    .unwrap_or_else(|| Rc::from(&b""[..]));
                let mut session = session.clone();
                let data = self.assemble(id, &mut session, &tail)?;
                let algorithm = match expected.algorithm() {
                    "sha512" => "sha512",
                    _ => "sha256",
                };
                self.objects.digest_of(&data, algorithm)?
            }
        };
        if actual.as_ref() != Some(expected) {
            // Another algorithm than the running one, or other bytes: the
            // spec's answer is the same, and the session is of no more use.
            self.cancel_upload(namespace, id)?;
            return Ok(Some(None));
        }
        Ok(Some(Some(session.size)))
    }

    /// Makes session `id`'s bytes blob `digest` of `namespace` (verified
    /// before: `verify_upload`). `false` when there is no such session.
    pub fn commit_upload(&self, namespace: &str, id: &str, digest: &Digest) -> Result<bool> {
        let session = self.upload(namespace, id);
        let tail = self.objects.get(&layout::upload_tail(id), false);
        let (Some(mut session), tail) = (session?, tail?) else {
            return Ok(false);
        };
        let tail = tail.unwrap_or_else(|| Rc::from(&b""[..]));
        let blob = layout::blob(digest);
        // Written even when the content is there (the same bytes): its new
        // time keeps a collection on another replica, which may have looked
        // before the link below exists, from removing it (`collect.rs`).
        {
            match &session.upload_id {
                None => {
                    // Smaller than a part: the tail is the blob.
                    self.objects.put(&blob, tail, false)?;
                }
                Some(_) => {
                    let data = self.assemble(id, &mut session, &tail)?;
                    self.copy_to(&data, &blob, session.size)?;
                }
            }
        }
        self.objects
            .put(&layout::layer_link(namespace, digest), Rc::from(&b""[..]), false)?;
        // A collection that listed the content before it was written again
        // may have removed it since: then the push fails (the client pushes
        // again) rather than answer for a blob that is not there.
        if !self.objects.exists_again(&blob, "the content, still there?")? {
            return Err(BucketError::Unavailable(format!(
                "{digest} was removed by a garbage collection while it was pushed; push it again"
            )));
        }
        self.add_to_catalog(namespace)?;
        self.remove_session(id, None)?;
        Ok(true)
    }

    /// Puts session `id`'s multipart upload together into its data object
    /// (`_uploads/<id>/data`): the tail as the last part, then completed.
    /// The same labels in a verification and a commit of one request: the
    /// second finds the first's writes made.
    fn assemble(&self, id: &str, session: &mut Session, tail: &[u8]) -> Result<String> {
        let data = layout::upload_data(id);
        let Some(upload_id) = session.upload_id.clone() else {
            return Ok(data);
        };
        if !tail.is_empty() {
            let number = session.parts.len() as u32 + 1;
            let operation = Operation::UploadPart {
                key: data.clone(),
                upload_id: upload_id.clone(),
                part: number,
                length: tail.len() as u64,
            };
            let performed = match self
                .objects
                .perform("the last part", operation, tail.to_vec(), None)
            {
                Ok(performed) => performed,
                // Completed already, by an earlier verification.
                Err(Wait::Unavailable(reason)) if reason.contains("NoSuchUpload") => {
                    return self.assembled(&data, session.size, reason);
                }
                Err(wait) => return Err(wait.into()),
            };
            session.parts.push(Part {
                number,
                etag: performed.etag.clone().unwrap_or_default(),
                size: tail.len() as u64,
            });
        }
        let operation = Operation::CompleteMultipart {
            key: data.clone(),
            upload_id,
            parts: session
                .parts
                .iter()
                .map(|part| (part.number, part.etag.clone()))
                .collect(),
            if_absent: false,
        };
        match self.objects.perform(
            "complete the multipart upload",
            operation,
            Vec::new(),
            Some(&data),
        ) {
            Ok(_) => Ok(data),
            // An attempt whose answer was lost (or an earlier verification)
            // completed it: the upload is gone and the object there.
            Err(Wait::Unavailable(reason)) if reason.contains("NoSuchUpload") => {
                self.assembled(&data, session.size, reason)
            }
            Err(wait) => Err(wait.into()),
        }
    }

    /// The multipart upload is gone: fine when its object is there, whole.
    fn assembled(&self, data: &str, size: u64, reason: String) -> Result<String> {
        match self.objects.size(data, false)? {
            Some(found) if found == size => Ok(data.to_string()),
            _ => Err(BucketError::Unavailable(reason)),
        }
    }

    /// Copies object `source` of `size` bytes to `key` on the server: at
    /// once up to `multipart_copy_threshold`, else as a multipart upload of
    /// ranges, `multipart_copy_jobs` in flight at a time.
    fn copy_to(&self, source: &str, key: &str, size: u64) -> Result<()> {
        let plan = self.copy;
        if size <= plan.threshold {
            let operation = Operation::Copy {
                key: key.to_string(),
                source: source.to_string(),
            };
            self.objects
                .perform("copy to the content key", operation, Vec::new(), Some(key))?;
            return Ok(());
        }
        let created = self.objects.perform(
            "start the copy in parts",
            Operation::CreateMultipart { key: key.to_string() },
            Vec::new(),
            None,
        )?;
        let upload_id = parse_upload_id(&created.body).map_err(BucketError::Unavailable)?;
        let chunk = plan.chunk.max(1);
        let ranges: Vec<(u32, u64, u64)> = (0..size.div_ceil(chunk))
            .map(|index| {
                let first = index * chunk;
                (index as u32 + 1, first, (first + chunk).min(size) - 1)
            })
            .collect();
        let mut parts = Vec::with_capacity(ranges.len());
        // A window at a time: the next goes out once this one is in.
        for window in ranges.chunks(plan.jobs.max(1)) {
            let copied = all(window, |(part, first, last)| {
                let operation = Operation::UploadPartCopy {
                    key: key.to_string(),
                    upload_id: upload_id.clone(),
                    part: *part,
                    source: source.to_string(),
                    first: *first,
                    last: *last,
                };
                let performed =
                    self.objects
                        .perform(&format!("copy part {part}"), operation, Vec::new(), None)?;
                let etag = crate::s3::api::copied_part_etag(&performed.body).ok_or_else(|| {
                    BucketError::Unavailable(format!("part {part} of a copy answered without an ETag"))
                })?;
                Ok((*part, etag))
            })?;
            parts.extend(copied);
        }
        let operation = Operation::CompleteMultipart {
            key: key.to_string(),
            upload_id,
            parts,
            if_absent: false,
        };
        match self
            .objects
            .perform("complete the copy in parts", operation, Vec::new(), Some(key))
        {
            Ok(_) => Ok(()),
            // An attempt whose answer was lost completed it.
            Err(Wait::Unavailable(reason)) if reason.contains("NoSuchUpload") => {
                match self.objects.size(key, false)? {
                    Some(copied) if copied == size => Ok(()),
                    _ => Err(BucketError::Unavailable(reason)),
                }
            }
            Err(wait) => Err(wait.into()),
        }
    }

    /// Removes session `id` of `namespace`; `false` when there is none.
    pub fn cancel_upload(&self, namespace: &str, id: &str) -> Result<bool> {
        let Some(session) = self.upload(namespace, id)? else {
            return Ok(false);
        };
        self.remove_session(id, session.upload_id.as_deref())?;
        Ok(true)
    }

    /// The session's objects, the state last (what finds the state finds
    /// the rest), after aborting its multipart upload when still open.
    pub(super) fn remove_session(&self, id: &str, open_upload: Option<&str>) -> Result<()> {
        if let Some(upload_id) = open_upload {
            let operation = Operation::AbortMultipart {
                key: layout::upload_data(id),
                upload_id: upload_id.to_string(),
            };
            match self
                .objects
                .perform("abort the multipart upload", operation, Vec::new(), None)
            {
                // Gone already (completed, aborted, expired): nothing to abort.
                Ok(_) => {}
                Err(Wait::Unavailable(reason)) if reason.contains("NoSuchUpload") => {}
                Err(wait) => return Err(wait.into()),
            }
        }
        self.objects.delete(&layout::upload_data(id))?;
        self.objects.delete(&layout::upload_tail(id))?;
        self.objects.delete(&layout::upload_state(id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::objects::Holder;
    use super::super::testing::{Rig, UNIX_SECS};
    use super::*;
    use crate::s3::fake::Faults;

    const PART: u64 = 64;

    fn replica(seed: u64) -> BucketStore {
        super::super::testing::replica(seed, PART)
    }

    /// Runs `operation` as `holder`'s request until it answers, keeping
    /// what the request recorded (its writer's parts) for its next steps.
    fn run<T>(
        rig: &mut Rig,
        store: &BucketStore,
        holder: Holder,
        mut operation: impl FnMut(&BucketStore) -> Result<T>,
    ) -> Result<T> {
        for _ in 0..200 {
            store.objects().set_time(rig.now_ms, UNIX_SECS);
            store.objects().enter(holder, rig.now_ms);
            let result = operation(store);
            let waits = store.objects().leave();
            if !matches!(result, Err(BucketError::Pending)) {
                return result;
            }
            assert!(waits);
            rig.pump(store.objects());
            store.objects().take_woken();
        }
        panic!("never answered");
    }

    /// One PATCH (or the body of a PUT): `bytes` in pieces of 50, the
    /// connection pausing while the writer says so.
    fn send(rig: &mut Rig, store: &BucketStore, holder: Holder, id: &str, bytes: &[u8]) -> Result<()> {
        rig.now_ms += 1;
        let mut writer = run(rig, store, holder, |s| s.upload_writer("n", id))?.expect("a session");
        for piece in bytes.chunks(50) {
            store.objects().set_time(rig.now_ms, UNIX_SECS);
            store.objects().enter(holder, rig.now_ms);
            writer.write(piece)?;
            let mut paused = writer.paused();
            store.objects().leave();
            while paused {
                rig.pump(store.objects());
                store.objects().take_woken();
                store.objects().enter(holder, rig.now_ms);
                paused = writer.paused();
                store.objects().leave();
            }
        }
        run(rig, store, holder, |_| writer.settle())?;
        store.objects().release(holder);
        Ok(())
    }

    fn commit(
        rig: &mut Rig,
        store: &BucketStore,
        holder: Holder,
        id: &str,
        digest: &Digest,
    ) -> Result<Option<Option<u64>>> {
        rig.now_ms += 1;
        let verified = run(rig, store, holder, |s| s.verify_upload("n", id, digest))?;
        store.objects().release(holder);
        if matches!(verified, Some(Some(_))) {
            rig.now_ms += 1;
            assert_eq!(
                run(rig, store, holder, |s| s.commit_upload("n", id, digest)),
                Ok(true)
            );
            store.objects().release(holder);
        }
        Ok(verified)
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn uploads_left(rig: &Rig) -> Vec<&String> {
        rig.fake
            .objects
            .keys()
            .filter(|key| key.starts_with(layout::UPLOADS))
            .collect()
    }

    #[test]
    fn a_session_state_round_trips_and_a_torn_one_is_refused() {
        let mut session = Session::new("a/b");
        session.size = 150;
        session.upload_id = Some("u1".into());
        session.parts = vec![Part {
            number: 1,
            etag: "\"e\"".into(),
            size: 128,
        }];
        session.tail = 22;
        assert_eq!(Session::decode(&session.encode()), Some(session.clone()));
        session.tail = 21;
        assert_eq!(
            Session::decode(&session.encode()),
            None,
            "sizes that do not add up"
        );
        assert_eq!(Session::decode(b"{}"), None);
    }

    #[test]
    fn chunks_through_two_replicas_make_one_verified_blob() {
        let mut rig = Rig::new(Faults::default(), 1);
        let (a, b) = (replica(1), replica(2));
        let data = bytes(1000, 7);
        let digest = Digest::sha256_of(&data);
        run(&mut rig, &a, (1, 1), |s| s.start_upload("n", "u1")).unwrap();
        // Chunks of 130, 300 (crossing parts) and the rest, alternating replicas.
        send(&mut rig, &a, (1, 2), "u1", &data[..130]).unwrap();
        send(&mut rig, &b, (2, 1), "u1", &data[130..430]).unwrap();
        send(&mut rig, &a, (1, 3), "u1", &data[430..]).unwrap();
        let session = run(&mut rig, &b, (2, 2), |s| s.upload("n", "u1"))
            .unwrap()
            .unwrap();
        assert_eq!(session.size, 1000);
        assert_eq!(session.parts.len(), 1000 / PART as usize);
        assert!(session.tail < PART);
        assert_eq!(commit(&mut rig, &b, (2, 3), "u1", &digest), Ok(Some(Some(1000))));
        assert_eq!(rig.fake.objects[&layout::blob(&digest)], data);
        assert!(uploads_left(&rig).is_empty(), "{:?}", uploads_left(&rig));
        rig.now_ms += 1;
        assert_eq!(
            run(&mut rig, &a, (1, 9), |s| s.blob_size("n", &digest)),
            Ok(Some(1000))
        );
    }

    /// Content above `multipart_copy_threshold` reaches its key as a copy
    /// in ranges, a window of `multipart_copy_jobs` at a time, through
    /// throttling and lost answers.
    #[test]
    fn content_above_the_copy_threshold_is_copied_in_parts() {
        for seed in 1..6 {
            let mut rig = Rig::faulty(80, 60, seed);
            let a = replica(seed).with_copy_plan(super::super::CopyPlan {
                threshold: 300,
                chunk: 128,
                jobs: 2,
            });
            let data = bytes(1000, 9);
            let digest = Digest::sha256_of(&data);
            run(&mut rig, &a, (1, 1), |s| s.start_upload("n", "big")).unwrap();
            send(&mut rig, &a, (1, 2), "big", &data).unwrap();
            assert_eq!(commit(&mut rig, &a, (1, 3), "big", &digest), Ok(Some(Some(1000))));
            assert_eq!(rig.fake.objects[&layout::blob(&digest)], data, "seed {seed}");
            assert!(uploads_left(&rig).is_empty(), "{:?}", uploads_left(&rig));
        }
    }

    /// A sha512 digest for an upload of several parts: the parts are put
    /// together and read back through SHA-512 (streamed), in one request
    /// (as the registry verifies and commits) or two, through throttling
    /// and lost answers; wrong bytes store nothing.
    #[test]
    fn a_sha512_upload_of_several_parts_is_read_back_and_checked() {
        for seed in 1..8 {
            let mut rig = Rig::faulty(60, 40, seed);
            let (a, b) = (replica(seed), replica(seed + 50));
            let data = bytes(1000, seed as u8);
            let digest = Hasher::for_algorithm("sha512").unwrap().digest_of(&data);
            run(&mut rig, &a, (1, 1), |s| s.start_upload("n", "u")).unwrap();
            send(&mut rig, &a, (1, 2), "u", &data[..600]).unwrap();
            send(&mut rig, &b, (2, 1), "u", &data[600..]).unwrap();
            if seed % 2 == 0 {
                assert_eq!(commit(&mut rig, &b, (2, 2), "u", &digest), Ok(Some(Some(1000))));
            } else {
                rig.now_ms += 1;
                let both = run(&mut rig, &b, (2, 2), |s| {
                    let verified = s.verify_upload("n", "u", &digest)?;
                    Ok((verified, s.commit_upload("n", "u", &digest)?))
                });
                assert_eq!(both, Ok((Some(Some(1000)), true)), "seed {seed}");
            }
            assert_eq!(rig.fake.objects[&layout::blob(&digest)], data, "seed {seed}");
            assert!(uploads_left(&rig).is_empty(), "{:?}", uploads_left(&rig));

            run(&mut rig, &a, (1, 3), |s| s.start_upload("n", "wrong")).unwrap();
            send(&mut rig, &a, (1, 4), "wrong", &data[..900]).unwrap();
            assert_eq!(commit(&mut rig, &a, (1, 5), "wrong", &digest), Ok(Some(None)));
            assert!(uploads_left(&rig).is_empty(), "{:?}", uploads_left(&rig));
        }
    }

    #[test]
    fn a_blob_smaller_than_a_part_is_put_whole_and_wrong_bytes_store_nothing() {
        let mut rig = Rig::new(Faults::default(), 1);
        let a = replica(1);
        let data = bytes(40, 1);
        let digest = Digest::sha256_of(&data);
        run(&mut rig, &a, (1, 1), |s| s.start_upload("n", "small")).unwrap();
        send(&mut rig, &a, (1, 2), "small", &data).unwrap();
        assert_eq!(commit(&mut rig, &a, (1, 3), "small", &digest), Ok(Some(Some(40))));
        assert_eq!(rig.fake.objects[&layout::blob(&digest)], data);

        run(&mut rig, &a, (1, 4), |s| s.start_upload("n", "wrong")).unwrap();
        send(&mut rig, &a, (1, 5), "wrong", &bytes(300, 2)).unwrap();
        let other = Digest::sha256_of(b"something else");
        assert_eq!(commit(&mut rig, &a, (1, 6), "wrong", &other), Ok(Some(None)));
        assert!(!rig.fake.objects.contains_key(&layout::blob(&other)));
        assert!(uploads_left(&rig).is_empty(), "{:?}", uploads_left(&rig));
        assert_eq!(
            commit(&mut rig, &a, (1, 7), "wrong", &other),
            Ok(None),
            "the session is gone"
        );
    }

    #[test]
    fn a_cancelled_upload_leaves_nothing_and_another_namespace_sees_no_session() {
        let mut rig = Rig::new(Faults::default(), 1);
        let a = replica(1);
        run(&mut rig, &a, (1, 1), |s| s.start_upload("n", "u")).unwrap();
        send(&mut rig, &a, (1, 2), "u", &bytes(200, 3)).unwrap();
        rig.now_ms += 1;
        assert_eq!(run(&mut rig, &a, (1, 3), |s| s.upload("other", "u")), Ok(None));
        assert_eq!(run(&mut rig, &a, (1, 4), |s| s.cancel_upload("n", "u")), Ok(true));
        assert!(
            rig.fake
                .objects
                .keys()
                .all(|key| !key.starts_with(layout::UPLOADS))
        );
    }

    /// Throttling and lost answers on every seed: the blob is whole and
    /// verified, and no session object is left.
    #[test]
    fn uploads_survive_throttling_and_lost_answers() {
        for seed in 1..25 {
            let mut rig = Rig::faulty(150, 100, seed);
            let (a, b) = (replica(seed), replica(seed + 50));
            let data = bytes(700, seed as u8);
            let digest = Digest::sha256_of(&data);
            run(&mut rig, &a, (1, 1), |s| s.start_upload("n", "u")).unwrap();
            send(&mut rig, &a, (1, 2), "u", &data[..333]).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            send(&mut rig, &b, (2, 1), "u", &data[333..]).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(
                commit(&mut rig, &a, (1, 3), "u", &digest),
                Ok(Some(Some(700))),
                "seed {seed}"
            );
            assert_eq!(rig.fake.objects[&layout::blob(&digest)], data, "seed {seed}");
            assert!(
                uploads_left(&rig).is_empty(),
                "seed {seed}: {:?}",
                uploads_left(&rig)
            );
        }
    }
}
