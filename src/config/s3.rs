//! `[blob_store.s3]`: S3-compatible object storage (upstream Angos's keys
//! and defaults). A key of upstream's that this build does not use
//! (`multipart_uniform_parts`) is accepted with the unknown-key warning.

use super::{ConfigError, Section, WebhookUrl};

/// S3's smallest part but the last; and its largest.
const PART_BYTES_MIN: u64 = 5 << 20;
const PART_BYTES_MAX: u64 = 5 << 30;

#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Scheme, host and port of the S3 endpoint (path-style addressing).
    pub endpoint: WebhookUrl,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_key: String,
    /// Prepended to every key; empty or ending in `/`.
    pub key_prefix: String,
    /// `multipart_part_size` (default 50MiB): the part an upload buffers at most.
    pub multipart_part_size: u64,
    /// `multipart_copy_threshold` (default 5GB): content larger than this
    /// is copied to its key in parts (S3's single copy stops at 5 GiB).
    pub multipart_copy_threshold: u64,
    /// `multipart_copy_chunk_size` (default 100MB): one such part.
    pub multipart_copy_chunk_size: u64,
    /// `multipart_copy_jobs` (default 4): parts copied at once.
    pub multipart_copy_jobs: usize,
    /// Attempts per operation, the first included (default 3).
    pub max_attempts: u32,
    /// One operation, every attempt included (default 900 s).
    pub operation_timeout_secs: u64,
    /// One attempt (default 300 s).
    pub operation_attempt_timeout_secs: u64,
    /// Ours: how long a replica may answer from a tag, link or listing it
    /// read for an earlier request (default 0: each request reads them
    /// anew, so a push through one replica is seen at once through all).
    pub metadata_max_age_ms: u64,
    /// Ours: a blob `GET` is answered `307` to a presigned URL of its object
    /// (the client downloads from the bucket), instead of streamed through.
    pub redirect_downloads: bool,
    /// Ours: how long such a URL is valid (default 600 s).
    pub redirect_expires_secs: u64,
}

impl std::fmt::Debug for S3Config {
    // The secret key never reaches a log line or an error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.text)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("key_prefix", &self.key_prefix)
            .field("multipart_part_size", &self.multipart_part_size)
            .field("metadata_max_age_ms", &self.metadata_max_age_ms)
            .finish_non_exhaustive()
    }
}

pub(super) fn parse_s3(section: &mut Section) -> Result<S3Config, ConfigError> {
    let required = |section: &mut Section, key: &'static str| -> Result<String, ConfigError> {
        match section.string(key)? {
            Some(value) if !value.trim().is_empty() => Ok(value.to_string()),
            _ => Err(section.error(key, "is required")),
        }
    };
    let endpoint_text = required(section, "endpoint")?;
    let endpoint = WebhookUrl::parse(&endpoint_text)
        .map_err(|why| section.error("endpoint", format!("{endpoint_text:?}: {why}")))?;
    if endpoint.path_and_query != "/" {
        return Err(section.error(
            "endpoint",
            format!("{endpoint_text:?}: the endpoint is a scheme, host and port, without a path"),
        ));
    }
    let bucket = required(section, "bucket")?;
    if !is_bucket_name(&bucket) {
        return Err(section.error(
            "bucket",
            format!("{bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '.' and '-')"),
        ));
    }
    let region = required(section, "region")?;
    let access_key_id = required(section, "access_key_id")?;
    let secret_key = required(section, "secret_key")?;
    for (key, value) in [
        ("region", &region),
        ("access_key_id", &access_key_id),
        ("secret_key", &secret_key),
    ] {
        if value.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err(section.error(key, "must not contain control characters"));
        }
    }
    let key_prefix = match section.string("key_prefix")? {
        None | Some("") => String::new(),
        Some(prefix) => {
            let trimmed = prefix.trim_matches('/');
            if trimmed.is_empty() || trimmed.bytes().any(|b| b < b' ' || b == 0x7f || b == b'\\') {
                return Err(section.error("key_prefix", format!("{prefix:?} is not a key prefix")));
            }
            format!("{trimmed}/")
        }
    };
    let multipart_part_size = section.size("multipart_part_size")?.unwrap_or(50 << 20);
    if !(PART_BYTES_MIN..=PART_BYTES_MAX).contains(&multipart_part_size) {
        return Err(section.error(
            "multipart_part_size",
            "must be between 5MiB and 5GiB (S3's limits on a part)",
        ));
    }
    let multipart_copy_threshold = section.size("multipart_copy_threshold")?.unwrap_or(5_000_000_000);
    if multipart_copy_threshold > PART_BYTES_MAX {
        return Err(section.error(
            "multipart_copy_threshold",
            "must be at most 5GiB (S3's largest single copy)",
        ));
    }
    let multipart_copy_chunk_size = section.size("multipart_copy_chunk_size")?.unwrap_or(100_000_000);
    if !(PART_BYTES_MIN..=PART_BYTES_MAX).contains(&multipart_copy_chunk_size) {
        return Err(section.error(
            "multipart_copy_chunk_size",
            "must be between 5MiB and 5GiB (S3's limits on a part)",
        ));
    }
    let multipart_copy_jobs = section.integer("multipart_copy_jobs", 1, 64)?.unwrap_or(4) as usize;
    let max_attempts = section.integer("max_attempts", 1, 20)?.unwrap_or(3) as u32;
    let operation_timeout_secs = section
        .integer("operation_timeout_secs", 1, 86_400)?
        .unwrap_or(900);
    let operation_attempt_timeout_secs = section
        .integer("operation_attempt_timeout_secs", 1, 86_400)?
        .unwrap_or(300);
    if operation_attempt_timeout_secs > operation_timeout_secs {
        return Err(section.error(
            "operation_attempt_timeout_secs",
            "must not exceed operation_timeout_secs",
        ));
    }
    let metadata_max_age_ms = section.integer("metadata_max_age_ms", 0, 3_600_000)?.unwrap_or(0);
    let redirect_downloads = section.boolean("redirect_downloads")?.unwrap_or(false);
    let redirect_expires_secs = section
        .integer("redirect_expires_secs", 1, 7 * 24 * 3600)?
        .unwrap_or(600);
    Ok(S3Config {
        metadata_max_age_ms,
        redirect_downloads,
        redirect_expires_secs,
        endpoint,
        bucket,
        region,
        access_key_id,
        secret_key,
        key_prefix,
        multipart_part_size,
        multipart_copy_threshold,
        multipart_copy_chunk_size,
        multipart_copy_jobs,
        max_attempts,
        operation_timeout_secs,
        operation_attempt_timeout_secs,
    })
}

/// S3's bucket naming rules (the part that matters for a path).
fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, load_sources};

    fn load(text: &str) -> Result<Config, ConfigError> {
        load_sources(&[("test.toml".to_string(), text.to_string())]).map(|loaded| loaded.config)
    }

    const UPSTREAM_EXAMPLE: &str = r#"
        [blob_store.s3]
        access_key_id = "minioadmin"
        secret_key = "minioadmin"
        endpoint = "https://s3.example.com"
        bucket = "registry"
        region = "us-east-1"
        key_prefix = "site-a"
        multipart_copy_jobs = 4
    "#;

    #[test]
    fn ours_local_dir_and_metadata_age_and_a_mirror_on_a_bucket() {
        let text = format!("{UPSTREAM_EXAMPLE}\nlocal_dir = \"/var/lib/angos\"\nmetadata_max_age_ms = 500\n");
        let config = load(&text).unwrap();
        assert_eq!(
            config.storage.root_dir,
            std::path::PathBuf::from("/var/lib/angos")
        );
        assert_eq!(config.storage.s3.unwrap().metadata_max_age_ms, 500);
        let mirrored = format!(
            "{UPSTREAM_EXAMPLE}\n[[repository.\"hub\".upstream]]\nurl = \"https://registry-1.docker.io\"\n"
        );
        let config = load(&mirrored).unwrap();
        assert!(config.repositories["hub"].mirror.is_mirror());
    }

    #[test]
    fn upstream_angos_s3_configurations_load() {
        let config = load(UPSTREAM_EXAMPLE).unwrap();
        let s3 = config.storage.s3.as_ref().expect("an S3 backend");
        assert_eq!(s3.bucket, "registry");
        assert_eq!(s3.endpoint.host, "s3.example.com");
        assert_eq!(s3.key_prefix, "site-a/");
        assert_eq!(s3.multipart_part_size, 50 << 20);
        assert_eq!(
            (
                s3.multipart_copy_threshold,
                s3.multipart_copy_chunk_size,
                s3.multipart_copy_jobs
            ),
            (5_000_000_000, 100_000_000, 4)
        );
        assert_eq!(
            (
                s3.max_attempts,
                s3.operation_timeout_secs,
                s3.operation_attempt_timeout_secs
            ),
            (3, 900, 300)
        );
        assert!(
            !format!("{s3:?}").contains("minioadmin\", secret"),
            "the secret stays out of Debug"
        );
    }

    #[test]
    fn bad_s3_keys_name_the_key() {
        let cases = [
            ("bucket = \"Bad_Bucket\"", "blob_store.s3.bucket"),
            ("endpoint = \"ftp://x\"", "blob_store.s3.endpoint"),
            ("endpoint = \"http://x/path\"", "blob_store.s3.endpoint"),
            (
                "multipart_part_size = \"1MiB\"",
                "blob_store.s3.multipart_part_size",
            ),
            ("max_attempts = 0", "blob_store.s3.max_attempts"),
            (
                "multipart_copy_chunk_size = \"1MiB\"",
                "blob_store.s3.multipart_copy_chunk_size",
            ),
            (
                "multipart_copy_threshold = \"6GiB\"",
                "blob_store.s3.multipart_copy_threshold",
            ),
            ("multipart_copy_jobs = 0", "blob_store.s3.multipart_copy_jobs"),
            (
                "operation_attempt_timeout_secs = 1000",
                "blob_store.s3.operation_attempt_timeout_secs",
            ),
        ];
        for (line, key) in cases {
            let mut text: Vec<&str> = UPSTREAM_EXAMPLE
                .lines()
                .filter(|existing| {
                    let name = line.split(' ').next().unwrap_or_default();
                    !existing.trim_start().starts_with(&format!("{name} "))
                })
                .collect();
            text.push(line);
            let error = load(&text.join("\n")).unwrap_err().to_string();
            assert!(error.contains(key), "{line}: {error}");
        }
        let error = load("[blob_store.s3]\nbucket = \"abc\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("blob_store.s3.endpoint") && error.contains("required"),
            "{error}"
        );
    }

    #[test]
    fn one_backend_at_a_time() {
        let error = load(&format!(
            "{UPSTREAM_EXAMPLE}\n[blob_store.fs]\nroot_dir = \"/x\"\n"
        ))
        .unwrap_err();
        assert!(error.to_string().contains("blob_store"), "{error}");
    }
}
