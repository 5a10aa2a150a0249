//! Manifest and index JSON: the checks a registry makes before storing one,
//! and the referrer descriptor derived from a manifest with a `subject`.

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// A content descriptor the manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// What the registry needs to know about a manifest it is asked to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    /// `mediaType` from the body, when present.
    pub media_type: Option<String>,
    /// `true` for an image index / manifest list (`manifests` array).
    pub is_index: bool,
    /// Blobs it references (`config` and `layers`) that must exist in the repository.
    pub blobs: Vec<Descriptor>,
    /// Manifests an index references (`manifests`) that must exist in the repository.
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// `artifactType`, else for an image manifest `config.mediaType` (spec: the
    /// referrers API reports that when artifactType is absent).
    pub artifact_type: Option<String>,
    /// The `annotations` object, verbatim, when present.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// Not JSON, not an object, a descriptor without a valid digest/size/mediaType,
    /// or a `mediaType` field that contradicts the `Content-Type` of the PUT.
    Invalid(String),
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestError::Invalid(why) => write!(f, "invalid manifest: {why}"),
        }
    }
}

/// Parses and checks a manifest body PUT with `content_type`. Accepts OCI
/// image manifests and indexes, Docker v2 manifests and manifest lists, and
/// any other JSON object carrying a media type (artifacts). Rejects bodies that
/// are not a JSON object, descriptors that are malformed, and a body
/// `mediaType` that differs from `content_type`.
pub fn parse(content_type: &str, body: &[u8]) -> Result<ParsedManifest, ManifestError> {
    todo!()
}

/// The descriptor the referrers API lists for a manifest stored as
/// `digest` with `size` bytes: `mediaType`, `digest`, `size`, `artifactType`
/// (when known) and `annotations` (when present), as a JSON object.
pub fn referrer_descriptor(
    parsed: &ParsedManifest,
    media_type: &str,
    digest: &Digest,
    size: u64,
) -> serde_json::Value {
    todo!()
}
