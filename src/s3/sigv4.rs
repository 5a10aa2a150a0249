//! AWS Signature Version 4 for S3 (the `Authorization` header and presigned
//! URLs), written over the crate's HMAC-SHA256: a pure function of the
//! request's parts, the credentials and the time it is given. Nothing here
//! reads a clock; the caller passes `amz_date` (`YYYYMMDDTHHMMSSZ`).

use sha2::{Digest as _, Sha256};

use crate::digest::to_lower_hex;
use crate::hmac::hmac_sha256;

/// The payload hash of a request without a body.
pub const EMPTY_PAYLOAD_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// The payload "hash" of a presigned URL, and of a streamed body whose hash
/// is not known up front (S3 accepts it over TLS and plain HTTP alike).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "s3";

/// What signs: the key pair and the region it is scoped to.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_key: String,
    pub region: String,
}

impl std::fmt::Debug for Credentials {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// One request to sign. `path` is the absolute path as sent, already
/// percent-encoded (`uri_encode(key, false)` per object key); `query` holds
/// raw (not encoded) name-value pairs; `headers` every header to sign,
/// `host` included.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    /// Lowercase hex SHA-256 of the body, or `UNSIGNED_PAYLOAD`.
    pub payload_sha256: &'a str,
}

/// The `Authorization` header value for `request` at `amz_date`. The
/// request must also carry `x-amz-date: amz_date` and
/// `x-amz-content-sha256: payload_sha256` among its signed headers (S3
/// requires both; `signed_headers` below does not add them).
pub fn authorization(credentials: &Credentials, request: &Request<'_>, amz_date: &str) -> String {
    let (signed_headers, signature) =
        signature(credentials, request, amz_date, &canonical_query(request.query));
    format!(
        "{ALGORITHM} Credential={}/{},SignedHeaders={signed_headers},Signature={signature}",
        credentials.access_key_id,
        scope(credentials, amz_date)
    )
}

/// A presigned URL's query string (without `?`) for `method` on `path` at
/// `host`, valid `expires_secs` from `amz_date`: the request's own `query`
/// plus the `X-Amz-*` parameters and the signature.
pub fn presigned_query(
    credentials: &Credentials,
    method: &str,
    host: &str,
    path: &str,
    query: &[(&str, &str)],
    amz_date: &str,
    expires_secs: u64,
) -> String {
    let credential = format!("{}/{}", credentials.access_key_id, scope(credentials, amz_date));
    let expires = expires_secs.to_string();
    let mut all: Vec<(&str, &str)> = query.to_vec();
    all.extend([
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", &credential),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", &expires),
        ("X-Amz-SignedHeaders", "host"),
    ]);
    let canonical = canonical_query(&all);
    let request = Request {
        method,
        path,
        query: &all,
        headers: &[("host", host)],
        payload_sha256: UNSIGNED_PAYLOAD,
    };
    let (_, signature) = signature(credentials, &request, amz_date, &canonical);
    format!("{canonical}&X-Amz-Signature={signature}")
}

/// Percent-encodes `text` as SigV4 wants: unreserved characters as they are,
/// everything else `%XX` (uppercase) byte by byte; `/` kept when
/// `keep_slash` (object keys in a path), encoded otherwise (query values).
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && byte == b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Lowercase hex SHA-256 of `bytes`: a payload hash.
pub fn payload_sha256(bytes: &[u8]) -> String {
    to_lower_hex(&Sha256::digest(bytes))
}

fn scope(credentials: &Credentials, amz_date: &str) -> String {
    let date = amz_date.get(..8).unwrap_or(amz_date);
    format!("{date}/{}/{SERVICE}/aws4_request", credentials.region)
}

/// Sorted by encoded name, then encoded value; `name=value` joined by `&`.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(name, value)| (uri_encode(name, false), uri_encode(value, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The signed header names and the signature.
fn signature(
    credentials: &Credentials,
    request: &Request<'_>,
    amz_date: &str,
    canonical_query: &str,
) -> (String, String) {
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), collapse_spaces(value)))
        .collect();
    headers.sort();
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method, request.path, request.payload_sha256
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        scope(credentials, amz_date),
        payload_sha256(canonical_request.as_bytes())
    );
    let key = signing_key(credentials, amz_date.get(..8).unwrap_or(amz_date));
    let signature = to_lower_hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    (signed_headers, signature)
}

/// `kSigning`: the secret, narrowed to the day, region and service.
fn signing_key(credentials: &Credentials, date: &str) -> [u8; 32] {
    let secret = format!("AWS4{}", credentials.secret_key);
    let day = hmac_sha256(secret.as_bytes(), date.as_bytes());
    let region = hmac_sha256(&day, credentials.region.as_bytes());
    let service = hmac_sha256(&region, SERVICE.as_bytes());
    hmac_sha256(&service, b"aws4_request")
}

/// A header value as SigV4 canonicalizes it: trimmed, runs of spaces one.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key pair of AWS's S3 SigV4 documentation.
    fn example() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
        }
    }

    /// S3's documented example: `GET /test.txt` with a `Range`.
    #[test]
    fn the_documented_get_object_example_signs_alike() {
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        };
        assert_eq!(
            authorization(&example(), &request, "20130524T000000Z"),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// S3's documented presigned URL example: `GET /test.txt` for a day.
    #[test]
    fn the_documented_presigned_url_example_signs_alike() {
        let query = presigned_query(
            &example(),
            "GET",
            "examplebucket.s3.amazonaws.com",
            "/test.txt",
            &[],
            "20130524T000000Z",
            86400,
        );
        assert_eq!(
            query,
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn keys_and_query_values_are_encoded_as_sigv4_wants() {
        assert_eq!(uri_encode("a b/c+d~e", true), "a%20b/c%2Bd~e");
        assert_eq!(uri_encode("a b/c", false), "a%20b%2Fc");
        assert_eq!(uri_encode("é", false), "%C3%A9");
        assert_eq!(
            canonical_query(&[("prefix", "x/y"), ("list-type", "2"), ("a", "")]),
            "a=&list-type=2&prefix=x%2Fy"
        );
    }

    #[test]
    fn header_values_are_trimmed_and_their_spaces_collapsed() {
        assert_eq!(collapse_spaces("  a   b  c "), "a b c");
    }

    #[test]
    fn the_secret_stays_out_of_debug_output() {
        assert!(!format!("{:?}", example()).contains("EXAMPLEKEY"));
    }
}
