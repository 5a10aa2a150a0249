//! The OCI error codes (distribution-spec "Error Codes") and the one place
//! that maps each to its HTTP status and JSON body: registry answers,
//! refusals, malformed requests, webhook failures and the admin API all
//! answer through `RegistryError`. A leaf: it knows responses, nothing else.

use super::Response;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    /// Docker's code for a tag outside the tag grammar; clients know it.
    TagInvalid,
    Unsupported,
    TooManyRequests,
    /// No credentials, or wrong ones: the answer carries the challenge.
    Unauthorized,
    /// The client is known and lacks the permission.
    Denied,
    /// A failure of ours (storage I/O); the client may retry.
    Unknown,
    /// Distribution's code for `503`: the object storage behind the
    /// registry does not answer; the client may retry later.
    Unavailable,
    /// Not in the OCI list: upstream Angos's code for a push that would move
    /// an immutable tag (doc/how-to/protect-tags-immutability.md), kept so
    /// its clients and scripts read the same answer.
    Conflict,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Conflict => "CONFLICT",
        }
    }

    /// The status the spec's endpoint tables give this code.
    pub fn default_status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 404,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unknown => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::Conflict => 409,
            _ => 400,
        }
    }
}

/// An error answer: code, status, message and optional detail.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub status: u16,
    pub message: String,
    pub detail: Option<serde_json::Value>,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError {
            code,
            status: code.default_status(),
            message: message.into(),
            detail: None,
        }
    }

    pub fn status(mut self, status: u16) -> RegistryError {
        self.status = status;
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> RegistryError {
        self.detail = Some(detail);
        self
    }

    /// Storage failures are logged with their cause and answered 500 without
    /// it, except a full disk (or quota), which the client is told plainly:
    /// it is the operator's to fix, and retrying at once will not help.
    ///
    /// The object storage backend's errors: a wait (never sent: the
    /// request runs again once what it waits for is in), the bucket not
    /// answering (`503 UNAVAILABLE`, the reason logged), corrupt objects.
    pub fn storage(error: std::io::Error) -> RegistryError {
        use crate::storage::bucket::BucketError;
        match BucketError::of_io(&error) {
            Some(BucketError::Pending) => {
                return RegistryError::new(ErrorCode::Unavailable, "waiting on object storage");
            }
            Some(BucketError::Unavailable(reason)) => {
                log::warn!("object storage: {reason}");
                return RegistryError::new(
                    ErrorCode::Unavailable,
                    "the registry's object storage is not answering; retry later",
                );
            }
            Some(BucketError::Corrupt { .. }) | None => {}
        }
        if crate::storage::space::is_storage_full(&error) {
            log::warn!("storage full: {error}");
            return RegistryError::storage_full(
                "the registry's storage is full (no space left on its disk); pushes resume when space is freed",
            );
        }
        log::error!("storage error: {error}");
        RegistryError::new(ErrorCode::Unknown, "storage error")
    }

    /// A write refused, or failed, because the registry's disk is full:
    /// `507 Insufficient Storage` (RFC 4918 section 11.5, the one status that
    /// says so). The distribution spec's code table has no code for it; of its
    /// codes, `DENIED` is the one that fits ("the operation is refused") and
    /// the one clients do not retry at once (Docker retries `UNKNOWN`), which
    /// a full disk would only answer the same way. The message says why.
    pub fn storage_full(message: impl Into<String>) -> RegistryError {
        RegistryError::new(ErrorCode::Denied, message).status(507)
    }

    /// The spec's error body: `{"errors":[{"code","message","detail"?}]}`.
    pub fn body(&self) -> serde_json::Value {
        let mut entry = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(detail) = &self.detail {
            entry["detail"] = detail.clone();
        }
        serde_json::json!({ "errors": [entry] })
    }

    pub fn into_response(self) -> Response {
        Response::json(self.status, &self.body())
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code.as_str(), self.message)
    }
}

impl From<RegistryError> for Response {
    fn from(error: RegistryError) -> Response {
        error.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_with_a_message_that_says_so() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let error = RegistryError::storage(std::io::Error::from_raw_os_error(errno));
            assert_eq!(error.status, 507, "errno {errno}");
            assert_eq!(error.code, ErrorCode::Denied);
            assert!(error.message.contains("storage is full"), "{}", error.message);
        }
        let other = RegistryError::storage(std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!((other.status, other.code), (500, ErrorCode::Unknown));
        let response = RegistryError::storage_full("full").into_response();
        assert_eq!(response.status, 507);
        assert_eq!(crate::http::response::reason(507), "Insufficient Storage");
    }
}
