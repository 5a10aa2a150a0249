//! `angos storage check`: what a registry needs of an S3-compatible bucket,
//! tried for real under a scratch prefix and cleaned up after: signed
//! writes and reads, conditional creation (`If-None-Match: *`, which
//! replicas sharing a bucket rely on), ranged reads, paginated listings,
//! multipart uploads, server-side copies and presigned URLs. Sans-IO: the
//! steps are operations for the `Client`, each judged by its outcome.

use super::api::{Bucket, Operation};
use super::client::{Failure, Outcome};

/// The part size of the multipart step: S3's smallest but the last.
const PART_BYTES: usize = super::api::PART_BYTES_MIN as usize;

/// What one step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The sequence; `next_operation` gives the operation to run, `judge` its verdict.
pub struct Check {
    scratch: String,
    step: usize,
    upload_id: String,
    part_etags: Vec<String>,
    continuation: Option<String>,
    /// Keys written so far, deleted at the end whatever happened.
    written: Vec<String>,
    cleaning: Vec<String>,
    pub reports: Vec<StepReport>,
}

const STEPS: &[&str] = &[
    "put an object",
    "create it again with If-None-Match: * (must be refused)",
    "head it",
    "read a byte range",
    "put a second object",
    "list the first page of one key",
    "list the next page",
    "start a multipart upload",
    "upload part 1 (5 MiB)",
    "upload part 2 (1 byte)",
    "complete the multipart upload",
    "head the assembled object",
    "copy it on the server",
    "read the copy by presigned URL",
];

impl Check {
    /// `scratch`: a fresh prefix (such as `_angos-check/<random>/`).
    pub fn new(scratch: String) -> Check {
        Check {
            scratch,
            step: 0,
            upload_id: String::new(),
            part_etags: Vec::new(),
            continuation: None,
            written: Vec::new(),
            cleaning: Vec::new(),
            reports: Vec::new(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.scratch)
    }

    /// The next operation and its body; `None` when every step and the clean-up ran.
    pub fn next_operation(&mut self) -> Option<(Operation, Vec<u8>)> {
        if self.step >= STEPS.len() {
            // Clean-up: an upload left open, then every key written.
            if !self.upload_id.is_empty() {
                let upload_id = std::mem::take(&mut self.upload_id);
                let key = self.key("big");
                self.cleaning.push(key.clone());
                return Some((Operation::AbortMultipart { key, upload_id }, Vec::new()));
            }
            if let Some(key) = self.written.pop() {
                self.cleaning.push(key.clone());
                return Some((Operation::Delete { key }, Vec::new()));
            }
            return None;
        }
        let a = self.key("a");
        let operation = match self.step {
            0 | 1 => {
                let body = b"abc".to_vec();
                let operation = Operation::Put {
                    key: a,
                    length: 3,
                    sha256: Some(super::sigv4::payload_sha256(&body)),
                    if_absent: true,
                };
                return Some((operation, body));
            }
            2 => Operation::Head { key: a },
            3 => Operation::Get {
                key: a,
                range: Some((1, 1)),
            },
            4 => {
                let body = b"second".to_vec();
                let operation = Operation::Put {
                    key: self.key("b"),
                    length: body.len() as u64,
                    sha256: None,
                    if_absent: false,
                };
                return Some((operation, body));
            }
            5 | 6 => Operation::List {
                prefix: self.scratch.clone(),
                delimiter: None,
                continuation: self.continuation.clone(),
                start_after: None,
                max_keys: 1,
            },
            7 => Operation::CreateMultipart { key: self.key("big") },
            8 | 9 => {
                let (part, body) = if self.step == 8 {
                    (1, vec![7u8; PART_BYTES])
                } else {
                    (2, vec![8u8])
                };
                let operation = Operation::UploadPart {
                    key: self.key("big"),
                    upload_id: self.upload_id.clone(),
                    part,
                    length: body.len() as u64,
                };
                return Some((operation, body));
            }
            10 => Operation::CompleteMultipart {
                key: self.key("big"),
                upload_id: self.upload_id.clone(),
                parts: self
                    .part_etags
                    .iter()
                    .enumerate()
                    .map(|(index, etag)| (index as u32 + 1, etag.clone()))
                    .collect(),
                if_absent: false,
            },
            11 => Operation::Head { key: self.key("big") },
            12 => Operation::Copy {
                key: self.key("copy"),
                source: self.key("a"),
            },
            _ => Operation::PresignedGet {
                key: self.key("copy"),
                expires_secs: 300,
            },
        };
        Some((operation, Vec::new()))
    }

    /// Judges the outcome of what `next_operation` gave last.
    pub fn judge(&mut self, bucket: &Bucket, outcome: Outcome) {
        if self.step >= STEPS.len() {
            if let (Some(key), Outcome::Failed(failure)) = (self.cleaning.last(), &outcome) {
                self.reports.push(StepReport {
                    name: "clean up",
                    ok: false,
                    detail: format!("{key}: {failure}"),
                });
            }
            return;
        }
        let name = STEPS[self.step];
        let verdict = self.verdict(bucket, outcome);
        let ok = verdict.is_ok();
        self.reports.push(StepReport {
            name,
            ok,
            detail: verdict.unwrap_or_else(|why| why),
        });
        self.step += 1;
        // What follows depends on every step but the conditional write's
        // (a server without it is still worth checking further): stop at a
        // failure, clean up what exists.
        if !ok && name != STEPS[1] {
            self.step = STEPS.len();
        }
    }

    fn verdict(&mut self, bucket: &Bucket, outcome: Outcome) -> Result<String, String> {
        let (head, body) = match (self.step, outcome) {
            (1, Outcome::Failed(Failure::S3(error))) if error.is_precondition_failed() => {
                return Ok("refused with 412: replicas can create objects once".into());
            }
            // CompleteMultipartUpload is not idempotent: when an attempt's
            // answer was lost, the retry finds the upload gone. The next step
            // reads the assembled object, which tells.
            (10, Outcome::Failed(Failure::S3(error))) if error.code == "NoSuchUpload" => {
                self.upload_id.clear();
                self.written.push(self.key("big"));
                return Ok("the upload was gone: completed by an attempt whose answer was lost".into());
            }
            (1, Outcome::Done { .. }) => {
                return Err(
                    "accepted: this server ignores If-None-Match: *, so replicas sharing the \
                            bucket could overwrite each other's first writes"
                        .into(),
                );
            }
            (_, Outcome::Failed(failure)) => return Err(failure.to_string()),
            (_, Outcome::Done { head, body }) => (head, body),
        };
        match self.step {
            0 => {
                self.written.push(self.key("a"));
                Ok(String::new())
            }
            2 => match head.content_length {
                Some(3) => Ok(String::new()),
                other => Err(format!("Content-Length {other:?}, not 3")),
            },
            3 if head.status == 206 && body == b"b" => Ok(String::new()),
            3 => Err(format!(
                "status {} with {:?}, not 206 with \"b\"",
                head.status,
                String::from_utf8_lossy(&body)
            )),
            4 => {
                self.written.push(self.key("b"));
                Ok(String::new())
            }
            5 | 6 => {
                let listing = super::api::parse_listing(bucket, &body)?;
                let expected = if self.step == 5 { "a" } else { "b" };
                let keys: Vec<&str> = listing.objects.iter().map(|object| object.key.as_str()).collect();
                if keys.len() != 1 || !keys[0].ends_with(&format!("/{expected}")) {
                    return Err(format!(
                        "listed {keys:?}, expected only the key ending in /{expected}"
                    ));
                }
                if self.step == 5 {
                    match listing.next {
                        Some(token) => self.continuation = Some(token),
                        None => return Err("no continuation token with more keys to list".into()),
                    }
                }
                Ok(String::new())
            }
            7 => {
                self.upload_id = super::api::parse_upload_id(&body)?;
                Ok(String::new())
            }
            8 | 9 => match head.fields.iter().find(|(name, _)| name == "etag") {
                Some((_, etag)) => {
                    self.part_etags.push(etag.clone());
                    Ok(String::new())
                }
                None => Err("the part's answer has no ETag".into()),
            },
            10 => {
                self.upload_id.clear();
                self.written.push(self.key("big"));
                Ok(String::new())
            }
            11 => match head.content_length {
                Some(length) if length == PART_BYTES as u64 + 1 => Ok(String::new()),
                other => Err(format!("Content-Length {other:?}, not {}", PART_BYTES + 1)),
            },
            12 => {
                self.written.push(self.key("copy"));
                Ok(String::new())
            }
            _ if body == b"abc" => Ok(String::new()),
            _ => Err(format!("read {:?}, not \"abc\"", String::from_utf8_lossy(&body))),
        }
    }

    /// Every step passed.
    pub fn passed(&self) -> bool {
        self.reports.len() >= STEPS.len() && self.reports.iter().all(|report| report.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::ResponseHead;
    use crate::s3::api::S3Error;

    fn bucket() -> Bucket {
        Bucket {
            scheme: crate::config::Scheme::Http,
            host: "h".into(),
            port: 80,
            name: "b".into(),
            key_prefix: String::new(),
            credentials: crate::s3::sigv4::Credentials {
                access_key_id: "a".into(),
                secret_key: "s".into(),
                region: "r".into(),
            },
        }
    }

    fn done(status: u16, fields: &[(&str, &str)], length: Option<u64>, body: &[u8]) -> Outcome {
        Outcome::Done {
            head: ResponseHead {
                status,
                fields: fields
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                content_length: length,
            },
            body: body.to_vec(),
        }
    }

    fn failed(status: u16, code: &str) -> Outcome {
        Outcome::Failed(Failure::S3(S3Error {
            status,
            code: code.into(),
            message: String::new(),
        }))
    }

    /// The answer a conforming server gives to each step.
    fn good_answer(step: usize) -> Outcome {
        let listing = |key: &str, next: Option<&str>| {
            let next = next.map_or(String::new(), |token| {
                format!("<NextContinuationToken>{token}</NextContinuationToken>")
            });
            format!(
                "<ListBucketResult><IsTruncated>{}</IsTruncated><Contents><Key>s/{key}</Key><Size>1</Size></Contents>{next}</ListBucketResult>",
                !next.is_empty()
            )
        };
        match step {
            1 => failed(412, "PreconditionFailed"),
            2 => done(200, &[], Some(3), b""),
            3 => done(206, &[], Some(1), b"b"),
            5 => done(200, &[], None, listing("a", Some("t")).as_bytes()),
            6 => done(200, &[], None, listing("b", None).as_bytes()),
            7 => done(
                200,
                &[],
                None,
                b"<InitiateMultipartUploadResult><UploadId>u</UploadId></InitiateMultipartUploadResult>",
            ),
            8 | 9 => done(200, &[("etag", "\"e\"")], Some(0), b""),
            11 => done(200, &[], Some(PART_BYTES as u64 + 1), b""),
            13 => done(200, &[], Some(3), b"abc"),
            _ => done(200, &[], Some(0), b""),
        }
    }

    #[test]
    fn a_conforming_server_passes_every_step_and_everything_written_is_deleted() {
        let mut check = Check::new("s/".into());
        let mut step = 0;
        let mut deleted = Vec::new();
        while let Some((operation, _)) = check.next_operation() {
            if let Operation::Delete { key } = &operation {
                deleted.push(key.clone());
                check.judge(&bucket(), done(204, &[], Some(0), b""));
                continue;
            }
            check.judge(&bucket(), good_answer(step));
            step += 1;
        }
        assert!(check.passed(), "{:?}", check.reports);
        deleted.sort();
        assert_eq!(deleted, ["s/a", "s/b", "s/big", "s/copy"]);
    }

    #[test]
    fn a_server_without_conditional_writes_fails_that_step_only() {
        let mut check = Check::new("s/".into());
        let mut step = 0;
        while let Some((operation, _)) = check.next_operation() {
            let answer = match (&operation, step) {
                (Operation::Delete { .. }, _) => done(204, &[], Some(0), b""),
                (_, 1) => done(200, &[], Some(0), b""),
                _ => good_answer(step),
            };
            if !matches!(operation, Operation::Delete { .. }) {
                step += 1;
            }
            check.judge(&bucket(), answer);
        }
        let failed: Vec<&str> = check.reports.iter().filter(|r| !r.ok).map(|r| r.name).collect();
        assert_eq!(failed, [STEPS[1]]);
        assert!(!check.passed());
    }

    #[test]
    fn a_failure_mid_upload_stops_and_aborts_the_upload_then_deletes() {
        let mut check = Check::new("s/".into());
        let mut step = 0;
        let mut cleanup = Vec::new();
        while let Some((operation, _)) = check.next_operation() {
            if step > 8
                || matches!(
                    operation,
                    Operation::Delete { .. } | Operation::AbortMultipart { .. }
                )
            {
                cleanup.push(operation);
                check.judge(&bucket(), done(204, &[], Some(0), b""));
                continue;
            }
            let answer = if step == 8 {
                failed(500, "InternalError")
            } else {
                good_answer(step)
            };
            check.judge(&bucket(), answer);
            step += 1;
        }
        assert!(matches!(&cleanup[0], Operation::AbortMultipart { upload_id, .. } if upload_id == "u"));
        assert_eq!(cleanup.len(), 3, "abort, then delete a and b: {cleanup:?}");
        assert_eq!(check.reports.last().map(|r| r.ok), Some(false));
    }
}
