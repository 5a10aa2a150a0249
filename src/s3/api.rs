//! The S3 operations a registry needs, as signed request heads (path-style
//! addressing: `/<bucket>/<key>`, what every S3-compatible server accepts)
//! and their answers parsed into values. Sans-IO: bytes out, bytes in, the
//! time given by the caller; the outbound client carries the requests and
//! streams any body after the head.

use super::sigv4::{self, Credentials, EMPTY_PAYLOAD_SHA256, UNSIGNED_PAYLOAD};
use super::xml;
use crate::config::Scheme;

/// Objects one listing page holds at most (S3's own ceiling).
pub const LIST_PAGE_MAX: u32 = 1000;
/// The smallest part of a multipart upload but the last (S3's rule).
pub const PART_BYTES_MIN: u64 = 5 << 20;
/// Parts one multipart upload may have (S3's rule).
pub const PARTS_MAX: u32 = 10_000;

/// Where the bucket is, and who signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub name: String,
    /// Prepended to every key (`key_prefix`), with its trailing `/`.
    pub key_prefix: String,
    pub credentials: Credentials,
}

/// One S3 operation on a key (relative to `key_prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// A body of `length` bytes follows the head. `sha256`: the body's hash
    /// when known (small objects), else it is sent unsigned. `if_absent`:
    /// `If-None-Match: *`, the object is created only if it does not exist.
    Put {
        key: String,
        length: u64,
        sha256: Option<String>,
        if_absent: bool,
    },
    /// `range`: the inclusive byte range.
    Get {
        key: String,
        range: Option<(u64, u64)>,
    },
    Head {
        key: String,
    },
    Delete {
        key: String,
    },
    /// ListObjectsV2 of keys under `prefix`; with `delimiter`, what lies
    /// deeper comes back as common prefixes.
    List {
        prefix: String,
        delimiter: Option<String>,
        continuation: Option<String>,
        start_after: Option<String>,
        max_keys: u32,
    },
    /// Copies `source` (a key of the same bucket) to `key` on the server.
    Copy {
        key: String,
        source: String,
    },
    CreateMultipart {
        key: String,
    },
    /// Bytes `first..=last` of `source` (a key of the same bucket) as part
    /// `part` of multipart upload `upload_id` of `key`, copied on the server.
    UploadPartCopy {
        key: String,
        upload_id: String,
        part: u32,
        source: String,
        first: u64,
        last: u64,
    },
    /// A part of `length` bytes follows the head.
    UploadPart {
        key: String,
        upload_id: String,
        part: u32,
        length: u64,
    },
    /// `parts`: (part number, ETag) in order; the XML body is in the head's bytes.
    CompleteMultipart {
        key: String,
        upload_id: String,
        parts: Vec<(u32, String)>,
        if_absent: bool,
    },
    AbortMultipart {
        key: String,
        upload_id: String,
    },
    /// A GET by presigned URL (no credentials on the request itself), as a
    /// client redirected to it sends: to check that such URLs work.
    PresignedGet {
        key: String,
        expires_secs: u64,
    },
}

/// A request ready to send: the head (and, for the operations whose body
/// is made here, the body too), the length of a body the caller streams
/// after it, and whether the answer to it has a body (HEAD has none).
#[derive(Debug)]
pub struct Prepared {
    pub bytes: Vec<u8>,
    pub streamed_body: u64,
    pub head_request: bool,
}

impl Bucket {
    /// `x-amz-copy-source` for `source`, a key of this bucket.
    fn copy_source(&self, source: &str) -> String {
        format!(
            "/{}/{}",
            self.name,
            sigv4::uri_encode(&format!("{}{source}", self.key_prefix), true)
        )
    }

    /// The `Host` header: the port only when not the scheme's default.
    pub fn host_header(&self) -> String {
        crate::config::host_header(self.scheme, &self.host, self.port)
    }

    /// The path of `key`: `/<bucket>/<prefix><key>`, percent-encoded.
    fn path(&self, key: &str) -> String {
        format!(
            "/{}/{}",
            sigv4::uri_encode(&self.name, false),
            sigv4::uri_encode(&format!("{}{key}", self.key_prefix), true)
        )
    }

    /// Signs `operation` at `unix_secs` into the bytes to send.
    pub fn prepare(&self, operation: &Operation, unix_secs: u64) -> Prepared {
        if let Operation::PresignedGet { key, expires_secs } = operation {
            let query = self.presigned_query(key, unix_secs, *expires_secs);
            let target = format!("{}?{query}", self.path(key));
            let mut bytes = Vec::new();
            crate::http::client::write_request_head(&mut bytes, "GET", &target, &self.host_header(), &[], 0);
            return Prepared {
                bytes,
                streamed_body: 0,
                head_request: false,
            };
        }
        let amz_date = crate::clock::amz_date(unix_secs);
        let bucket_path = format!("/{}", sigv4::uri_encode(&self.name, false));
        let mut extra: Vec<(&str, String)> = Vec::new();
        let mut query: Vec<(&str, String)> = Vec::new();
        let mut body = Vec::new();
        let mut streamed_body = 0;
        let mut payload = EMPTY_PAYLOAD_SHA256.to_string();
        let (method, path) = match operation {
            Operation::Put {
                key,
                length,
                sha256,
                if_absent,
            } => {
                streamed_body = *length;
                payload = sha256.clone().unwrap_or_else(|| UNSIGNED_PAYLOAD.to_string());
                if *if_absent {
                    extra.push(("if-none-match", "*".into()));
                }
                ("PUT", self.path(key))
            }
            Operation::Get { key, range } => {
                if let Some((first, last)) = range {
                    extra.push(("range", format!("bytes={first}-{last}")));
                }
                ("GET", self.path(key))
            }
            Operation::Head { key } => ("HEAD", self.path(key)),
            Operation::Delete { key } => ("DELETE", self.path(key)),
            Operation::List {
                prefix,
                delimiter,
                continuation,
                start_after,
                max_keys,
            } => {
                query.push(("list-type", "2".into()));
                query.push(("prefix", format!("{}{prefix}", self.key_prefix)));
                query.push(("max-keys", (*max_keys).min(LIST_PAGE_MAX).to_string()));
                if let Some(delimiter) = delimiter {
                    query.push(("delimiter", delimiter.clone()));
                }
                if let Some(token) = continuation {
                    query.push(("continuation-token", token.clone()));
                }
                if let Some(after) = start_after {
                    query.push(("start-after", format!("{}{after}", self.key_prefix)));
                }
                ("GET", bucket_path)
            }
            Operation::Copy { key, source } => {
                extra.push(("x-amz-copy-source", self.copy_source(source)));
                ("PUT", self.path(key))
            }
            Operation::CreateMultipart { key } => {
                query.push(("uploads", String::new()));
                ("POST", self.path(key))
            }
            Operation::UploadPartCopy {
                key,
                upload_id,
                part,
                source,
                first,
                last,
            } => {
                extra.push(("x-amz-copy-source", self.copy_source(source)));
                extra.push(("x-amz-copy-source-range", format!("bytes={first}-{last}")));
                query.push(("partNumber", part.to_string()));
                query.push(("uploadId", upload_id.clone()));
                ("PUT", self.path(key))
            }
            Operation::UploadPart {
                key,
                upload_id,
                part,
                length,
            } => {
                streamed_body = *length;
                payload = UNSIGNED_PAYLOAD.to_string();
                query.push(("partNumber", part.to_string()));
                query.push(("uploadId", upload_id.clone()));
                ("PUT", self.path(key))
            }
            Operation::CompleteMultipart {
                key,
                upload_id,
                parts,
                if_absent,
            } => {
                query.push(("uploadId", upload_id.clone()));
                body = complete_body(parts).into_bytes();
                payload = sigv4::payload_sha256(&body);
                if *if_absent {
                    extra.push(("if-none-match", "*".into()));
                }
                ("POST", self.path(key))
            }
            Operation::AbortMultipart { key, upload_id } => {
                query.push(("uploadId", upload_id.clone()));
                ("DELETE", self.path(key))
            }
            Operation::PresignedGet { .. } => unreachable!("answered above"),
        };
        let host = self.host_header();
        let mut signed: Vec<(&str, &str)> = vec![
            ("host", &host),
            ("x-amz-content-sha256", &payload),
            ("x-amz-date", &amz_date),
        ];
        signed.extend(extra.iter().map(|(name, value)| (*name, value.as_str())));
        let query_refs: Vec<(&str, &str)> = query
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let request = sigv4::Request {
            method,
            path: &path,
            query: &query_refs,
            headers: &signed,
            payload_sha256: &payload,
        };
        let authorization = sigv4::authorization(&self.credentials, &request, &amz_date);
        let target = if query.is_empty() {
            path.clone()
        } else {
            let encoded: Vec<String> = query
                .iter()
                .map(|(name, value)| {
                    if value.is_empty() && *name == "uploads" {
                        name.to_string()
                    } else {
                        format!(
                            "{}={}",
                            sigv4::uri_encode(name, false),
                            sigv4::uri_encode(value, false)
                        )
                    }
                })
                .collect();
            format!("{path}?{}", encoded.join("&"))
        };
        let mut headers: Vec<(&str, &str)> = signed
            .iter()
            .filter(|(name, _)| *name != "host")
            .copied()
            .collect();
        headers.push(("authorization", &authorization));
        let length = if body.is_empty() {
            streamed_body
        } else {
            body.len() as u64
        };
        let mut bytes = Vec::with_capacity(512 + body.len());
        crate::http::client::write_request_head(&mut bytes, method, &target, &host, &headers, length);
        bytes.extend_from_slice(&body);
        Prepared {
            bytes,
            streamed_body,
            head_request: method == "HEAD",
        }
    }

    /// A presigned GET of `key` valid `expires_secs` from `unix_secs`: the
    /// URL a client may be redirected to.
    pub fn presigned_get(&self, key: &str, unix_secs: u64, expires_secs: u64) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let query = self.presigned_query(key, unix_secs, expires_secs);
        format!("{scheme}://{}{}?{query}", self.host_header(), self.path(key))
    }

    fn presigned_query(&self, key: &str, unix_secs: u64, expires_secs: u64) -> String {
        sigv4::presigned_query(
            &self.credentials,
            "GET",
            &self.host_header(),
            &self.path(key),
            &[],
            &crate::clock::amz_date(unix_secs),
            expires_secs,
        )
    }

    /// A listed key without the `key_prefix`.
    pub fn strip_prefix<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.key_prefix.as_str()).unwrap_or(key)
    }
}

/// The body of CompleteMultipartUpload.
fn complete_body(parts: &[(u32, String)]) -> String {
    let mut body = String::from("<CompleteMultipartUpload>");
    for (number, etag) in parts {
        body.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
            escape(etag)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An S3 error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub status: u16,
    /// S3's `Code` (`NoSuchKey`, `SlowDown`...), empty when the body had none.
    pub code: String,
    pub message: String,
}

impl S3Error {
    /// Worth another attempt after a pause: the server's trouble, not ours.
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 500 | 502 | 503 | 504 | 429)
            || matches!(
                self.code.as_str(),
                "SlowDown"
                    | "InternalError"
                    | "RequestTimeout"
                    | "ServiceUnavailable"
                    | "RequestTimeTooSkewed"
            )
    }

    /// `If-None-Match: *` found the object there already.
    pub fn is_precondition_failed(&self) -> bool {
        self.status == 412 || self.code == "PreconditionFailed"
    }

    pub fn is_not_found(&self) -> bool {
        self.status == 404 || matches!(self.code.as_str(), "NoSuchKey" | "NoSuchUpload")
    }
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code.is_empty(), self.message.is_empty()) {
            (true, _) => write!(f, "S3 answered {}", self.status),
            (false, true) => write!(f, "S3 answered {} {}", self.status, self.code),
            (false, false) => write!(f, "S3 answered {} {}: {}", self.status, self.code, self.message),
        }
    }
}

/// The error an answer with `status` and `body` carries.
pub fn error_of(status: u16, body: &[u8]) -> S3Error {
    let parsed = xml::parse(body).ok().filter(|root| root.name == "Error");
    S3Error {
        status,
        code: parsed
            .as_ref()
            .and_then(|root| root.child_text("Code"))
            .unwrap_or_default()
            .to_string(),
        message: parsed
            .as_ref()
            .and_then(|root| root.child_text("Message"))
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect(),
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Without the `key_prefix`.
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// `LastModified`, in seconds since the epoch (0 when absent).
    pub modified: u64,
}

/// A page of ListObjectsV2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub objects: Vec<Listed>,
    /// Without the `key_prefix`.
    pub common_prefixes: Vec<String>,
    /// Where the next page starts, when there is one.
    pub next: Option<String>,
}

/// Parses a ListObjectsV2 answer.
pub fn parse_listing(bucket: &Bucket, body: &[u8]) -> Result<Listing, String> {
    let root = xml::parse(body)?;
    if root.name != "ListBucketResult" {
        return Err(format!("expected ListBucketResult, got {}", root.name));
    }
    let mut listing = Listing::default();
    for contents in root.children_named("Contents") {
        let key = contents
            .child_text("Key")
            .ok_or("a listed object without a Key")?;
        let size = contents
            .child_text("Size")
            .unwrap_or("0")
            .trim()
            .parse()
            .map_err(|_| format!("a listed object with a bad Size ({key})"))?;
        listing.objects.push(Listed {
            key: bucket.strip_prefix(key).to_string(),
            size,
            etag: contents.child_text("ETag").unwrap_or_default().to_string(),
            modified: contents
                .child_text("LastModified")
                .and_then(crate::clock::parse_rfc3339_utc)
                .unwrap_or(0),
        });
    }
    for prefixes in root.children_named("CommonPrefixes") {
        if let Some(prefix) = prefixes.child_text("Prefix") {
            listing
                .common_prefixes
                .push(bucket.strip_prefix(prefix).to_string());
        }
    }
    let truncated = root
        .child_text("IsTruncated")
        .is_some_and(|text| text.trim() == "true");
    listing.next = root
        .child_text("NextContinuationToken")
        .filter(|token| truncated && !token.is_empty())
        .map(str::to_string);
    if truncated && listing.next.is_none() {
        return Err("a truncated listing without a NextContinuationToken".into());
    }
    Ok(listing)
}

/// The upload id of a CreateMultipartUpload answer.
pub fn parse_upload_id(body: &[u8]) -> Result<String, String> {
    let root = xml::parse(body)?;
    root.child_text("UploadId")
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "CreateMultipartUpload answered without an UploadId".into())
}

/// The element a successful answer to `operation` is, for the operations
/// S3 may answer `200` while reporting an error in the body (completing a
/// multipart upload and copies).
pub fn result_element(operation: &Operation) -> Option<&'static str> {
    match operation {
        Operation::CompleteMultipart { .. } => Some("CompleteMultipartUploadResult"),
        Operation::Copy { .. } => Some("CopyObjectResult"),
        Operation::UploadPartCopy { .. } => Some("CopyPartResult"),
        _ => None,
    }
}

/// Such an answer: a `200` is only success with the result element `root`.
pub fn parse_result(status: u16, body: &[u8], root: &str) -> Result<(), S3Error> {
    match xml::parse(body) {
        Ok(parsed) if status == 200 && parsed.name == root => Ok(()),
        _ => Err(error_of(status, body)),
    }
}

/// The ETag of a copied part (`CopyPartResult`), which comes in the body.
pub fn copied_part_etag(body: &[u8]) -> Option<String> {
    let root = xml::parse(body).ok()?;
    root.child_text("ETag").map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket() -> Bucket {
        Bucket {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port: 3900,
            name: "registry".into(),
            key_prefix: "site-a/".into(),
            credentials: Credentials {
                access_key_id: "AKID".into(),
                secret_key: "secret".into(),
                region: "garage".into(),
            },
        }
    }

    fn text(prepared: &Prepared) -> String {
        String::from_utf8_lossy(&prepared.bytes).into_owned()
    }

    #[test]
    fn a_put_is_path_style_signed_conditional_and_announces_its_streamed_body() {
        let prepared = bucket().prepare(
            &Operation::Put {
                key: "blobs/sha256/ab cd".into(),
                length: 5,
                sha256: None,
                if_absent: true,
            },
            1_700_000_000,
        );
        let head = text(&prepared);
        assert!(
            head.starts_with(
                "PUT /registry/site-a/blobs/sha256/ab%20cd HTTP/1.1\r\nHost: 127.0.0.1:3900\r\n"
            ),
            "{head}"
        );
        assert!(
            head.contains("x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n"),
            "{head}"
        );
        assert!(head.contains("x-amz-date: 20231114T221320Z\r\n"), "{head}");
        assert!(head.contains("if-none-match: *\r\n"), "{head}");
        assert!(
            head.contains("authorization: AWS4-HMAC-SHA256 Credential=AKID/20231114/garage/s3/aws4_request,SignedHeaders=host;if-none-match;x-amz-content-sha256;x-amz-date,Signature="),
            "{head}"
        );
        assert!(
            head.ends_with("Content-Length: 5\r\nConnection: keep-alive\r\n\r\n"),
            "{head}"
        );
        assert_eq!(prepared.streamed_body, 5);
    }

    #[test]
    fn a_listing_request_carries_its_query_with_the_prefix() {
        let prepared = bucket().prepare(
            &Operation::List {
                prefix: "repositories/".into(),
                delimiter: Some("/".into()),
                continuation: Some("a+b/c".into()),
                start_after: None,
                max_keys: 5000,
            },
            1_700_000_000,
        );
        let head = text(&prepared);
        assert!(
            head.starts_with("GET /registry?list-type=2&prefix=site-a%2Frepositories%2F&max-keys=1000&delimiter=%2F&continuation-token=a%2Bb%2Fc HTTP/1.1\r\n"),
            "{head}"
        );
    }

    #[test]
    fn multipart_requests_name_their_upload_and_complete_carries_its_body() {
        let bucket = bucket();
        let create = text(&bucket.prepare(&Operation::CreateMultipart { key: "k".into() }, 0));
        assert!(
            create.starts_with("POST /registry/site-a/k?uploads HTTP/1.1\r\n"),
            "{create}"
        );
        let part = bucket.prepare(
            &Operation::UploadPart {
                key: "k".into(),
                upload_id: "u/1".into(),
                part: 2,
                length: PART_BYTES_MIN,
            },
            0,
        );
        assert!(text(&part).starts_with("PUT /registry/site-a/k?partNumber=2&uploadId=u%2F1 HTTP/1.1\r\n"));
        assert_eq!(part.streamed_body, PART_BYTES_MIN);
        let complete = bucket.prepare(
            &Operation::CompleteMultipart {
                key: "k".into(),
                upload_id: "u".into(),
                parts: vec![(1, "\"e1\"".into()), (2, "\"e2\"".into())],
                if_absent: false,
            },
            0,
        );
        let body = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag></Part>\
<Part><PartNumber>2</PartNumber><ETag>&quot;e2&quot;</ETag></Part></CompleteMultipartUpload>";
        assert!(text(&complete).ends_with(&format!(
            "Content-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
            body.len()
        )));
        assert_eq!(complete.streamed_body, 0);
        let head = bucket.prepare(&Operation::Head { key: "k".into() }, 0);
        assert!(head.head_request);
    }

    #[test]
    fn listings_parse_without_the_key_prefix_and_pages_chain() {
        let body = br#"<ListBucketResult><IsTruncated>true</IsTruncated>
<Contents><Key>site-a/repositories/a/x</Key><Size>3</Size><ETag>"e"</ETag></Contents>
<CommonPrefixes><Prefix>site-a/repositories/b/</Prefix></CommonPrefixes>
<NextContinuationToken>next</NextContinuationToken></ListBucketResult>"#;
        let listing = parse_listing(&bucket(), body).unwrap();
        assert_eq!(listing.objects[0].key, "repositories/a/x");
        assert_eq!(listing.objects[0].size, 3);
        assert_eq!(listing.common_prefixes, ["repositories/b/"]);
        assert_eq!(listing.next.as_deref(), Some("next"));
        assert!(
            parse_listing(
                &bucket(),
                b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>"
            )
            .is_err()
        );
        assert!(parse_listing(&bucket(), b"<Error/>").is_err());
    }

    #[test]
    fn errors_are_read_and_classified() {
        let error = error_of(
            503,
            b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>",
        );
        assert!(error.is_retryable());
        assert_eq!(error.to_string(), "S3 answered 503 SlowDown: Reduce your rate");
        let missing = error_of(404, b"<Error><Code>NoSuchKey</Code></Error>");
        assert!(missing.is_not_found() && !missing.is_retryable());
        assert!(error_of(412, b"").is_precondition_failed());
        assert_eq!(error_of(500, b"not xml").to_string(), "S3 answered 500");
        // A 200 that reports an error in its body is an error.
        assert!(
            parse_result(
                200,
                b"<Error><Code>InternalError</Code></Error>",
                "CompleteMultipartUploadResult"
            )
            .is_err()
        );
        assert!(
            parse_result(
                200,
                b"<CompleteMultipartUploadResult><ETag>e</ETag></CompleteMultipartUploadResult>",
                "CompleteMultipartUploadResult"
            )
            .is_ok()
        );
        assert!(
            parse_result(
                200,
                b"<Error><Code>InternalError</Code></Error>",
                "CopyPartResult"
            )
            .is_err()
        );
        assert_eq!(
            copied_part_etag(b"<CopyPartResult><ETag>&quot;p1&quot;</ETag></CopyPartResult>"),
            Some("\"p1\"".into())
        );
        assert_eq!(
            parse_upload_id(
                b"<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>"
            ),
            Ok("u1".into())
        );
    }

    #[test]
    fn a_presigned_get_is_a_whole_url() {
        let url = bucket().presigned_get("blobs/x", 1_700_000_000, 600);
        assert!(
            url.starts_with(
                "http://127.0.0.1:3900/registry/site-a/blobs/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&"
            ),
            "{url}"
        );
        assert!(url.contains("&X-Amz-Expires=600&"), "{url}");
        assert!(url.contains("&X-Amz-Signature="), "{url}");
    }
}
