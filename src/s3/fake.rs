//! An in-memory S3 for tests: it executes the requests the registry's S3
//! client sends (bytes in, answer pieces out), with S3's semantics for what
//! the registry uses, and injects faults from a seed: `503 SlowDown` before a
//! request is applied, and lost answers after it is (the connection drops,
//! the change stands). Conditional creation can be switched off, as on
//! Garage. Signatures are not checked (the documented vectors and a real
//! server do that).

use std::collections::{BTreeMap, HashMap};

use crate::http::client::ResponseHead;
use crate::http::exchange::Answer;
use crate::http::request::{RequestHead, parse_head};

/// Faults per thousand requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answered `503 SlowDown` without being applied.
    pub throttled: u32,
    /// Applied, but the answer never arrives.
    pub lost: u32,
}

pub struct FakeS3 {
    bucket: String,
    pub objects: BTreeMap<String, Vec<u8>>,
    /// Upload id to its key and parts.
    uploads: HashMap<String, (String, BTreeMap<u32, Vec<u8>>)>,
    next_upload: u64,
    pub conditional_writes: bool,
    /// When each object was last written (seconds), for `LastModified`.
    pub modified: HashMap<String, u64>,
    /// The fake's clock, in seconds since the epoch.
    pub now_secs: u64,
    faults: Faults,
    state: u64,
    /// Requests seen, and those that were faulted.
    pub requests: u64,
    pub faulted: u64,
}

impl FakeS3 {
    /// The key `x-amz-copy-source` names (`/bucket/key`, percent-encoded).
    fn copy_source(&self, head: &RequestHead) -> String {
        let source = head.header("x-amz-copy-source").unwrap_or_default();
        let source = crate::http::request::percent_decode(source.trim_start_matches('/'), false);
        source
            .strip_prefix(&format!("{}/", self.bucket))
            .unwrap_or(&source)
            .to_string()
    }

    pub fn new(bucket: &str, faults: Faults, seed: u64) -> FakeS3 {
        FakeS3 {
            bucket: bucket.to_string(),
            objects: BTreeMap::new(),
            uploads: HashMap::new(),
            next_upload: 1,
            conditional_writes: true,
            modified: HashMap::new(),
            now_secs: 1_700_000_000,
            faults,
            state: seed | 1,
            requests: 0,
            faulted: 0,
        }
    }

    fn roll(&mut self) -> u32 {
        // xorshift64*: the faults replay from the seed.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as u32 % 1000
    }

    /// Executes one request (head and body) and gives the answer's pieces.
    pub fn handle(&mut self, request: &[u8]) -> Vec<Answer> {
        self.requests += 1;
        let Ok(Some((consumed, head))) = parse_head(request, 64 * 1024) else {
            return vec![Answer::Failed("the fake could not parse the request".into())];
        };
        let body = &request[consumed..];
        if self.roll() < self.faults.throttled {
            self.faulted += 1;
            return answer(
                503,
                &[],
                b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    .to_vec(),
            );
        }
        let lost = self.roll() < self.faults.lost;
        let pieces = self.apply(&head, body);
        if lost {
            self.faulted += 1;
            return vec![Answer::Failed("connection reset by peer".into())];
        }
        pieces
    }

    fn apply(&mut self, head: &RequestHead, body: &[u8]) -> Vec<Answer> {
        let bucket_path = format!("/{}", self.bucket);
        let Some(rest) = head.path.strip_prefix(&bucket_path) else {
            return error(404, "NoSuchBucket");
        };
        let key = rest.strip_prefix('/').unwrap_or_default().to_string();
        let method = format!("{:?}", head.method).to_ascii_uppercase();
        let query = |name: &str| head.query_value(name);
        let has = |name: &str| {
            head.query
                .split('&')
                .any(|pair| pair.split('=').next() == Some(name))
        };
        match (method.as_str(), key.is_empty()) {
            ("GET", true) if query("list-type").as_deref() == Some("2") => self.list(head),
            ("PUT", false) if head.header("x-amz-copy-source").is_some() && has("uploadId") => {
                // A part copied from a range of another object.
                let source_key = self.copy_source(head);
                let range = head
                    .header("x-amz-copy-source-range")
                    .and_then(|range| range.strip_prefix("bytes="))
                    .and_then(|range| range.split_once('-'))
                    .and_then(|(first, last)| {
                        Some((first.parse::<usize>().ok()?, last.parse::<usize>().ok()?))
                    });
                let part: u32 = query("partNumber").and_then(|n| n.parse().ok()).unwrap_or(0);
                let bytes = self.objects.get(&source_key).cloned();
                match (
                    bytes,
                    range,
                    self.uploads.get_mut(&query("uploadId").unwrap_or_default()),
                ) {
                    (_, _, None) => error(404, "NoSuchUpload"),
                    (None, _, _) => error(404, "NoSuchKey"),
                    (Some(bytes), Some((first, last)), Some((_, parts)))
                        if first <= last && last < bytes.len() =>
                    {
                        parts.insert(part, bytes[first..=last].to_vec());
                        answer(
                            200,
                            &[],
                            format!("<CopyPartResult><ETag>\"c{part}\"</ETag></CopyPartResult>").into_bytes(),
                        )
                    }
                    _ => error(416, "InvalidRange"),
                }
            }
            ("PUT", false) if head.header("x-amz-copy-source").is_some() => {
                let source_key = self.copy_source(head);
                match self.objects.get(&source_key).cloned() {
                    Some(bytes) => {
                        self.modified.insert(key.clone(), self.now_secs);
                        self.objects.insert(key, bytes);
                        answer(
                            200,
                            &[],
                            b"<CopyObjectResult><ETag>\"c\"</ETag></CopyObjectResult>".to_vec(),
                        )
                    }
                    None => error(404, "NoSuchKey"),
                }
            }
            ("PUT", false) if has("uploadId") => {
                let part: u32 = query("partNumber").and_then(|n| n.parse().ok()).unwrap_or(0);
                match self.uploads.get_mut(&query("uploadId").unwrap_or_default()) {
                    Some((_, parts)) => {
                        parts.insert(part, body.to_vec());
                        answer(200, &[("etag", format!("\"p{part}\""))], Vec::new())
                    }
                    None => error(404, "NoSuchUpload"),
                }
            }
            ("PUT", false) => {
                let create_once = head.header("if-none-match") == Some("*");
                if create_once && self.conditional_writes && self.objects.contains_key(&key) {
                    return error(412, "PreconditionFailed");
                }
                self.modified.insert(key.clone(), self.now_secs);
                self.objects.insert(key, body.to_vec());
                answer(200, &[("etag", "\"e\"".into())], Vec::new())
            }
            ("POST", false) if has("uploads") => {
                let id = format!("upload-{}", self.next_upload);
                self.next_upload += 1;
                self.uploads.insert(id.clone(), (key, BTreeMap::new()));
                answer(
                    200,
                    &[],
                    format!("<InitiateMultipartUploadResult><UploadId>{id}</UploadId></InitiateMultipartUploadResult>").into_bytes(),
                )
            }
            ("POST", false) if has("uploadId") => {
                let id = query("uploadId").unwrap_or_default();
                match self.uploads.remove(&id) {
                    Some((upload_key, parts)) if upload_key == key => {
                        let assembled: Vec<u8> = parts.into_values().flatten().collect();
                        self.modified.insert(key.clone(), self.now_secs);
                        self.objects.insert(key, assembled);
                        answer(
                            200,
                            &[],
                            b"<CompleteMultipartUploadResult><ETag>\"m-2\"</ETag></CompleteMultipartUploadResult>".to_vec(),
                        )
                    }
                    _ => error(404, "NoSuchUpload"),
                }
            }
            ("DELETE", false) if has("uploadId") => {
                match self.uploads.remove(&query("uploadId").unwrap_or_default()) {
                    Some(_) => answer(204, &[], Vec::new()),
                    None => error(404, "NoSuchUpload"),
                }
            }
            ("DELETE", false) => {
                self.objects.remove(&key);
                answer(204, &[], Vec::new())
            }
            ("GET" | "HEAD", false) => {
                let Some(bytes) = self.objects.get(&key) else {
                    return error(404, "NoSuchKey");
                };
                let mut bytes = bytes.clone();
                let mut status = 200;
                if let Some(range) = head
                    .header("range")
                    .and_then(|value| value.strip_prefix("bytes="))
                {
                    let (first, last) = range.split_once('-').unwrap_or(("0", ""));
                    let first: usize = first.parse().unwrap_or(0);
                    let last: usize = last.parse().unwrap_or(bytes.len().saturating_sub(1));
                    bytes = bytes
                        .get(first..=last.min(bytes.len().saturating_sub(1)))
                        .unwrap_or_default()
                        .to_vec();
                    status = 206;
                }
                if method == "HEAD" {
                    let length = bytes.len() as u64;
                    let modified = self.modified.get(&key).copied().unwrap_or(self.now_secs);
                    return vec![
                        Answer::Head(ResponseHead {
                            status,
                            fields: vec![
                                ("etag".into(), "\"e\"".into()),
                                ("last-modified".into(), crate::clock::http_date(modified)),
                            ],
                            content_length: Some(length),
                        }),
                        Answer::End,
                    ];
                }
                answer(status, &[], bytes)
            }
            _ => error(400, "InvalidRequest"),
        }
    }

    fn list(&self, head: &RequestHead) -> Vec<Answer> {
        let prefix = head.query_value("prefix").unwrap_or_default();
        let max_keys: usize = head
            .query_value("max-keys")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        // The token is the last key of the previous page.
        let after = head
            .query_value("continuation-token")
            .or_else(|| head.query_value("start-after"))
            .unwrap_or_default();
        let mut keys = self
            .objects
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix) && key.as_str() > after.as_str())
            .map(|(key, bytes)| (key.clone(), bytes.len()));
        let page: Vec<(String, usize)> = keys.by_ref().take(max_keys).collect();
        let more = keys.next().is_some();
        let mut xml = format!("<ListBucketResult><IsTruncated>{more}</IsTruncated>");
        for (key, size) in &page {
            let modified = self.modified.get(key).copied().unwrap_or(self.now_secs);
            let modified = crate::clock::rfc3339_utc(modified * 1_000_000);
            xml.push_str(&format!(
                "<Contents><Key>{key}</Key><Size>{size}</Size><ETag>\"e\"</ETag><LastModified>{modified}</LastModified></Contents>"
            ));
        }
        if more && let Some((last, _)) = page.last() {
            xml.push_str(&format!("<NextContinuationToken>{last}</NextContinuationToken>"));
        }
        xml.push_str("</ListBucketResult>");
        answer(200, &[], xml.into_bytes())
    }
}

fn answer(status: u16, fields: &[(&str, String)], body: Vec<u8>) -> Vec<Answer> {
    let mut pieces = vec![Answer::Head(ResponseHead {
        status,
        fields: fields
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect(),
        content_length: Some(body.len() as u64),
    })];
    if !body.is_empty() {
        pieces.push(Answer::Body(body));
    }
    pieces.push(Answer::End);
    pieces
}

fn error(status: u16, code: &str) -> Vec<Answer> {
    answer(
        status,
        &[],
        format!("<Error><Code>{code}</Code><Message>fake</Message></Error>").into_bytes(),
    )
}

/// A configuration of the fake's bucket (`reg`) with `max_attempts`.
pub fn config(max_attempts: u32) -> crate::config::s3::S3Config {
    let text = format!(
        "[blob_store.s3]\nendpoint = \"http://10.0.0.5:3900\"\nbucket = \"reg\"\nregion = \"r\"\n\
         access_key_id = \"AK\"\nsecret_key = \"SK\"\nmax_attempts = {max_attempts}\n\
         operation_timeout_secs = 600\noperation_attempt_timeout_secs = 5\n"
    );
    crate::config::load_sources(&[("t.toml".into(), text)])
        .unwrap()
        .config
        .storage
        .s3
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;
    use crate::http::exchange::Outgoing;
    use crate::s3::check::Check;
    use crate::s3::client::Client;

    /// Runs the bucket check against `fake` on a hand-driven clock.
    fn run_check(fake: &mut FakeS3, max_attempts: u32, seed: u64) -> Check {
        let mut client = Client::new(&config(max_attempts), Box::new(SeededEntropy::new(seed)));
        let mut check = Check::new("_angos-check/t/".into());
        let mut now = 0u64;
        let (operation, body) = check.next_operation().unwrap();
        client.submit(operation, body, now, 1_700_000_000);
        loop {
            while let Some(outgoing) = client.poll_outgoing() {
                if let Outgoing::Send {
                    exchange,
                    mut request,
                    body,
                    ..
                } = outgoing
                {
                    request.extend_from_slice(&body);
                    for piece in fake.handle(&request) {
                        client.handle_answer(exchange, piece, now);
                    }
                }
            }
            if let Some((_, outcome)) = client.poll_done() {
                check.judge(client.bucket(), outcome);
                match check.next_operation() {
                    Some((operation, body)) => {
                        client.submit(operation, body, now, 1_700_000_000);
                    }
                    None => return check,
                }
                continue;
            }
            now = client.poll_timeout().expect("a retry or an attempt is due");
            client.handle_timeout(now, 1_700_000_000);
        }
    }

    #[test]
    fn the_bucket_check_passes_against_the_fake_and_leaves_it_empty() {
        let mut fake = FakeS3::new("reg", Faults::default(), 1);
        let check = run_check(&mut fake, 3, 1);
        assert!(check.passed(), "{:?}", check.reports);
        assert!(
            fake.objects.is_empty(),
            "{:?}",
            fake.objects.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn without_conditional_writes_the_check_says_so() {
        let mut fake = FakeS3::new("reg", Faults::default(), 1);
        fake.conditional_writes = false;
        let check = run_check(&mut fake, 3, 1);
        let failed: Vec<&str> = check.reports.iter().filter(|r| !r.ok).map(|r| r.name).collect();
        assert_eq!(failed.len(), 1, "{:?}", check.reports);
        assert!(failed[0].contains("If-None-Match"));
    }

    /// Throttling is retried away: with enough attempts every seed passes.
    #[test]
    fn throttling_is_retried_until_the_check_passes() {
        for seed in 1..25 {
            let faults = Faults {
                throttled: 300,
                lost: 0,
            };
            let mut fake = FakeS3::new("reg", faults, seed);
            let check = run_check(&mut fake, 20, seed);
            assert!(check.passed(), "seed {seed}: {:?}", check.reports);
            assert!(
                fake.faulted > 0 || fake.requests < 10,
                "seed {seed} injected nothing"
            );
            assert!(fake.objects.is_empty(), "seed {seed} left objects");
        }
    }

    /// A lost answer is retried; the operations the check uses are
    /// idempotent but a create-once put, whose retry finds its own object.
    #[test]
    fn lost_answers_are_retried_and_only_create_once_writes_notice() {
        let mut create_once_refused = 0;
        for seed in 1..25 {
            let faults = Faults {
                throttled: 0,
                lost: 150,
            };
            let mut fake = FakeS3::new("reg", faults, seed);
            let check = run_check(&mut fake, 20, seed);
            for report in check.reports.iter().filter(|r| !r.ok) {
                // Only the first write can fail: its retry met the object its
                // lost attempt created (412). The storage backend must read
                // such a 412 on its own retry as success.
                assert_eq!(report.name, "put an object", "seed {seed}: {:?}", check.reports);
                assert!(report.detail.contains("412"), "seed {seed}: {}", report.detail);
                create_once_refused += 1;
            }
        }
        assert!(create_once_refused < 24, "most seeds pass");
    }
}
