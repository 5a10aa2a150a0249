//! Manifest and index JSON: the checks a registry makes before storing one,
//! and the referrer descriptor derived from a manifest with a `subject`.

use serde_json::{Map, Value};

use crate::digest::{Digest, DigestError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Descriptors (config, layers, child manifests) one manifest may list.
/// Real images have tens of layers (docker caps them at 127) and real
/// indexes tens of platforms; checking a manifest costs a file lookup per
/// descriptor, so an unbounded list would let one request hold the loop.
pub const DESCRIPTORS_MAX: usize = 4096;

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
///
/// `content_type` may carry parameters (`; charset=...`), which are ignored,
/// and media types compare case-insensitively (RFC 6838 4.2). An empty
/// `content_type` means the PUT carried none; the body's `mediaType` then
/// stands alone.
pub fn parse(content_type: &str, body: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let document: Value =
        serde_json::from_slice(body).map_err(|error| ManifestError::Invalid(format!("not JSON: {error}")))?;
    let Value::Object(object) = document else {
        return Err(invalid("not a JSON object"));
    };
    let declared = essence(content_type);

    let media_type = optional_string(&object, "mediaType")?.map(str::to_owned);
    if let Some(body_type) = &media_type {
        // Spec "Pushing Manifests": the mediaType in the body, when present,
        // must match the Content-Type, or the registry stores a manifest that
        // is served under one type and describes itself as another.
        if !declared.is_empty() && !body_type.eq_ignore_ascii_case(declared) {
            return Err(ManifestError::Invalid(format!(
                "mediaType {body_type:?} does not match Content-Type {declared:?}"
            )));
        }
    }
    let effective = media_type.as_deref().unwrap_or(declared);
    let kind = Kind::of(effective, &object);

    if is_known_media_type(effective) {
        // image-spec and Docker v2 schema 2 both fix schemaVersion at 2; a 1
        // here is a schema 1 manifest mislabelled as a current type. Types we
        // only sniff may version themselves as they like.
        match object.get("schemaVersion") {
            None | Some(Value::Null) => {}
            Some(version) if version.as_u64() == Some(2) => {}
            Some(_) => return Err(invalid("schemaVersion must be 2")),
        }
    }

    let mut blobs = Vec::new();
    let mut config_media_type = None;
    let mut manifests = Vec::new();
    match kind {
        Kind::Image { strict } => {
            match non_null(&object, "config") {
                Some(config) => {
                    let config = descriptor(config, "config")?;
                    config_media_type = Some(config.media_type.clone());
                    blobs.push(config);
                }
                None if strict => return Err(invalid("missing config")),
                None => {}
            }
            match non_null(&object, "layers") {
                // OCI artifacts may have no layers, but the field is still required.
                Some(layers) => blobs.extend(descriptors(layers, "layers")?),
                None if strict => return Err(invalid("missing layers")),
                None => {}
            }
        }
        Kind::Index => match non_null(&object, "manifests") {
            Some(entries) => manifests = descriptors(entries, "manifests")?,
            None => return Err(invalid("missing manifests")),
        },
        Kind::Other => {}
    }

    if blobs.len() + manifests.len() > DESCRIPTORS_MAX {
        return Err(ManifestError::Invalid(format!(
            "more than {DESCRIPTORS_MAX} descriptors (config, layers and manifests)"
        )));
    }

    let subject = non_null(&object, "subject")
        .map(|value| descriptor(value, "subject"))
        .transpose()?;

    // Spec "Listing Referrers": artifactType, and "if the artifactType is
    // empty or missing in an image manifest" the config descriptor's
    // mediaType; an index without artifactType has none.
    let artifact_type = match optional_string(&object, "artifactType")? {
        Some(artifact_type) if !artifact_type.is_empty() => Some(artifact_type.to_owned()),
        _ => config_media_type.filter(|media_type| !media_type.is_empty()),
    };

    let annotations = match non_null(&object, "annotations") {
        None => None,
        Some(Value::Object(annotations)) => {
            // image-spec "Annotations": a map of string to string.
            if annotations.values().any(|value| !value.is_string()) {
                return Err(invalid("annotations must map strings to strings"));
            }
            Some(annotations.clone())
        }
        Some(_) => return Err(invalid("annotations must be an object")),
    };

    Ok(ParsedManifest {
        media_type,
        is_index: kind == Kind::Index,
        blobs,
        manifests,
        subject,
        artifact_type,
        annotations,
    })
}

/// How the body is checked, from its media type or, for a type we do not
/// know, from the fields it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `config` and `layers`; `strict` when both are required (a known
    /// image manifest type), otherwise whichever is present is checked.
    Image {
        strict: bool,
    },
    Index,
    /// An artifact with neither: nothing it references is checked.
    Other,
}

impl Kind {
    fn of(media_type: &str, object: &Map<String, Value>) -> Kind {
        let is = |known: &str| media_type.eq_ignore_ascii_case(known);
        let known_index = is(OCI_INDEX) || is(DOCKER_MANIFEST_LIST);
        if is(OCI_MANIFEST) || is(DOCKER_MANIFEST_V2) {
            Kind::Image { strict: true }
        } else if known_index || non_null(object, "manifests").is_some() {
            Kind::Index
        } else if non_null(object, "config").is_some() || non_null(object, "layers").is_some() {
            Kind::Image { strict: false }
        } else {
            Kind::Other
        }
    }
}

/// One of the four manifest and index types a registry must understand.
fn is_known_media_type(media_type: &str) -> bool {
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST]
        .iter()
        .any(|known| media_type.eq_ignore_ascii_case(known))
}

fn invalid(why: &str) -> ManifestError {
    ManifestError::Invalid(why.to_owned())
}

/// The media type without parameters or surrounding whitespace.
fn essence(content_type: &str) -> &str {
    content_type
        .split_once(';')
        .map_or(content_type, |(essence, _)| essence)
        .trim()
}

/// A field's value, with JSON `null` read as absent, as Go's encoding/json
/// (which most clients use) writes and reads it.
fn non_null<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

fn optional_string<'a>(object: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ManifestError> {
    match non_null(object, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ManifestError::Invalid(format!("{key} must be a string"))),
    }
}

/// A content descriptor (image-spec descriptor.md): `mediaType` a string,
/// `digest` a digest we can verify, `size` a non-negative integer.
fn descriptor(value: &Value, path: &str) -> Result<Descriptor, ManifestError> {
    let Value::Object(object) = value else {
        return Err(ManifestError::Invalid(format!("{path} must be an object")));
    };
    let media_type = match object.get("mediaType") {
        Some(Value::String(media_type)) => media_type.clone(),
        _ => {
            return Err(ManifestError::Invalid(format!(
                "{path}.mediaType must be a string"
            )));
        }
    };
    let digest = match object.get("digest") {
        Some(Value::String(text)) => Digest::parse(text).map_err(|error| match error {
            DigestError::Invalid => ManifestError::Invalid(format!("{path}.digest is invalid")),
            DigestError::Unsupported => {
                ManifestError::Invalid(format!("{path}.digest uses an unsupported algorithm"))
            }
        })?,
        _ => return Err(ManifestError::Invalid(format!("{path}.digest must be a string"))),
    };
    // `as_u64` is `None` for negatives and for floats such as 1.0 or 1e3.
    let Some(size) = object.get("size").and_then(Value::as_u64) else {
        return Err(ManifestError::Invalid(format!(
            "{path}.size must be a non-negative integer"
        )));
    };
    Ok(Descriptor {
        media_type,
        digest,
        size,
    })
}

fn descriptors(value: &Value, path: &str) -> Result<Vec<Descriptor>, ManifestError> {
    let Value::Array(entries) = value else {
        return Err(ManifestError::Invalid(format!("{path} must be an array")));
    };
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| descriptor(entry, &format!("{path}[{index}]")))
        .collect()
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
    // serde_json's Map is ordered by key (no preserve_order feature), so the
    // text is stable whatever order the fields are inserted in.
    let mut object = Map::new();
    object.insert("mediaType".to_owned(), Value::from(media_type));
    object.insert("digest".to_owned(), Value::from(digest.to_string()));
    object.insert("size".to_owned(), Value::from(size));
    if let Some(artifact_type) = &parsed.artifact_type {
        object.insert("artifactType".to_owned(), Value::from(artifact_type.as_str()));
    }
    // An empty map says nothing; clients compare descriptors field by field,
    // and `{}` where the manifest's descriptor has none reads as a difference.
    if let Some(annotations) = parsed.annotations.as_ref().filter(|map| !map.is_empty()) {
        object.insert("annotations".to_owned(), Value::Object(annotations.clone()));
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const LAYER: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const OTHER: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn digest(text: &str) -> Digest {
        Digest::parse(text).unwrap()
    }

    fn oci_manifest() -> Value {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": CONFIG,
                "size": 7023
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": LAYER,
                    "size": 32654
                }
            ],
            "annotations": { "com.example.key": "value" }
        })
    }

    fn parse_value(content_type: &str, value: &Value) -> Result<ParsedManifest, ManifestError> {
        parse(content_type, value.to_string().as_bytes())
    }

    /// A named change that must make `oci_manifest()` invalid.
    type Edit = (&'static str, fn(&mut Value));

    fn assert_invalid(content_type: &str, value: &Value) {
        let result = parse_value(content_type, value);
        assert!(
            matches!(result, Err(ManifestError::Invalid(_))),
            "{value}: {result:?}"
        );
    }

    #[test]
    fn oci_image_manifest() {
        let parsed = parse_value(OCI_MANIFEST, &oci_manifest()).unwrap();
        assert_eq!(parsed.media_type.as_deref(), Some(OCI_MANIFEST));
        assert!(!parsed.is_index);
        assert_eq!(
            parsed.blobs,
            vec![
                Descriptor {
                    media_type: "application/vnd.oci.image.config.v1+json".to_owned(),
                    digest: digest(CONFIG),
                    size: 7023,
                },
                Descriptor {
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
                    digest: digest(LAYER),
                    size: 32654,
                },
            ]
        );
        assert!(parsed.manifests.is_empty());
        assert_eq!(parsed.subject, None);
        // No artifactType: the config's mediaType stands in (spec, referrers).
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(parsed.annotations.unwrap()["com.example.key"], "value");
    }

    #[test]
    fn content_type_parameters_and_case_are_ignored() {
        let manifest = oci_manifest();
        assert!(parse_value(&format!("{OCI_MANIFEST}; charset=utf-8"), &manifest).is_ok());
        assert!(parse_value(&OCI_MANIFEST.to_uppercase(), &manifest).is_ok());
        assert!(parse_value("", &manifest).is_ok());
    }

    #[test]
    fn oci_index() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": LAYER,
                    "size": 7143,
                    "platform": { "architecture": "ppc64le", "os": "linux" }
                },
                { "mediaType": OCI_MANIFEST, "digest": OTHER, "size": 7682 }
            ]
        });
        let parsed = parse_value(OCI_INDEX, &index).unwrap();
        assert!(parsed.is_index);
        assert!(parsed.blobs.is_empty());
        let digests: Vec<_> = parsed.manifests.iter().map(|d| d.digest.to_string()).collect();
        assert_eq!(digests, [LAYER, OTHER]);
        // An index without artifactType has none (no config to fall back on).
        assert_eq!(parsed.artifact_type, None);
        assert_eq!(parsed.annotations, None);
    }

    #[test]
    fn index_with_artifact_type() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle",
            "manifests": []
        });
        let parsed = parse_value(OCI_INDEX, &index).unwrap();
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some("application/vnd.example.bundle")
        );
    }

    #[test]
    fn docker_v2_manifest_and_list() {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_V2,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 7023,
                "digest": CONFIG
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 32654,
                    "digest": LAYER
                }
            ]
        });
        let parsed = parse_value(DOCKER_MANIFEST_V2, &manifest).unwrap();
        assert!(!parsed.is_index);
        assert_eq!(parsed.blobs.len(), 2);

        let list = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                { "mediaType": DOCKER_MANIFEST_V2, "size": 7143, "digest": OTHER }
            ]
        });
        let parsed = parse_value(DOCKER_MANIFEST_LIST, &list).unwrap();
        assert!(parsed.is_index);
        assert_eq!(parsed.manifests[0].digest, digest(OTHER));
    }

    #[test]
    fn artifact_with_subject() {
        let artifact = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": { "mediaType": OCI_EMPTY_CONFIG, "digest": CONFIG, "size": 2 },
            "layers": [],
            "subject": { "mediaType": OCI_MANIFEST, "digest": OTHER, "size": 1024 },
            "annotations": { "org.opencontainers.image.created": "2024-01-01T00:00:00Z" }
        });
        let parsed = parse_value(OCI_MANIFEST, &artifact).unwrap();
        assert_eq!(parsed.blobs.len(), 1);
        assert_eq!(parsed.blobs[0].media_type, OCI_EMPTY_CONFIG);
        assert_eq!(
            parsed.subject,
            Some(Descriptor {
                media_type: OCI_MANIFEST.to_owned(),
                digest: digest(OTHER),
                size: 1024,
            })
        );
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );

        let stored = digest(LAYER);
        let descriptor = referrer_descriptor(&parsed, OCI_MANIFEST, &stored, 555);
        assert_eq!(
            descriptor,
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": LAYER,
                "size": 555,
                "artifactType": "application/vnd.example.sbom",
                "annotations": { "org.opencontainers.image.created": "2024-01-01T00:00:00Z" }
            })
        );
    }

    #[test]
    fn referrer_descriptor_omits_absent_fields() {
        let index = serde_json::json!({ "mediaType": OCI_INDEX, "manifests": [], "annotations": {} });
        let parsed = parse_value(OCI_INDEX, &index).unwrap();
        let descriptor = referrer_descriptor(&parsed, OCI_INDEX, &digest(OTHER), 42);
        assert_eq!(
            descriptor.to_string(),
            format!(r#"{{"digest":"{OTHER}","mediaType":"{OCI_INDEX}","size":42}}"#)
        );
    }

    #[test]
    fn config_media_type_is_the_fallback_artifact_type() {
        let mut manifest = oci_manifest();
        manifest["config"]["mediaType"] = Value::from("application/vnd.example.config");
        manifest["artifactType"] = Value::from("");
        let parsed = parse_value(OCI_MANIFEST, &manifest).unwrap();
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some("application/vnd.example.config")
        );
    }

    #[test]
    fn body_without_media_type_follows_content_type() {
        let mut manifest = oci_manifest();
        manifest.as_object_mut().unwrap().remove("mediaType");
        let parsed = parse_value(OCI_MANIFEST, &manifest).unwrap();
        assert_eq!(parsed.media_type, None);
        assert_eq!(parsed.blobs.len(), 2);
        // Under an index content type the same body lacks `manifests`.
        assert_invalid(OCI_INDEX, &manifest);
    }

    #[test]
    fn unknown_media_types_are_sniffed() {
        let mut manifest = oci_manifest();
        manifest.as_object_mut().unwrap().remove("mediaType");
        let parsed = parse_value("application/json", &manifest).unwrap();
        assert!(!parsed.is_index);
        assert_eq!(parsed.blobs.len(), 2);

        let index = serde_json::json!({
            "manifests": [{ "mediaType": OCI_MANIFEST, "digest": OTHER, "size": 1 }]
        });
        let parsed = parse_value("application/vnd.example.index", &index).unwrap();
        assert!(parsed.is_index);
        assert_eq!(parsed.manifests.len(), 1);

        // Sniffed structure is still checked.
        let bad = serde_json::json!({ "layers": [{ "mediaType": "x", "digest": "nope", "size": 1 }] });
        assert_invalid("application/vnd.example", &bad);

        // schemaVersion is only pinned for the known types.
        let v1 = serde_json::json!({ "schemaVersion": 1, "layers": [] });
        assert!(parse_value("application/vnd.example", &v1).is_ok());

        let opaque = serde_json::json!({ "mediaType": "application/vnd.example", "anything": 1 });
        let parsed = parse_value("application/vnd.example", &opaque).unwrap();
        assert!(parsed.blobs.is_empty() && parsed.manifests.is_empty() && !parsed.is_index);
        assert_eq!(parsed.artifact_type, None);
    }

    #[test]
    fn descriptor_count_is_capped() {
        let layer = serde_json::json!({ "mediaType": "x", "digest": LAYER, "size": 1 });
        let mut manifest = oci_manifest();
        manifest["layers"] = Value::Array(vec![layer.clone(); DESCRIPTORS_MAX - 1]);
        assert!(
            parse_value(OCI_MANIFEST, &manifest).is_ok(),
            "config + 4095 layers"
        );
        manifest["layers"] = Value::Array(vec![layer; DESCRIPTORS_MAX]);
        assert_invalid(OCI_MANIFEST, &manifest);
    }

    #[test]
    fn invalid_json() {
        for body in [&b""[..], b"{", b"not json", b"{\"a\":1}}", b"\xff"] {
            assert!(parse(OCI_MANIFEST, body).is_err(), "{body:?}");
        }
        for value in [
            serde_json::json!([]),
            serde_json::json!("x"),
            serde_json::json!(null),
        ] {
            assert_invalid(OCI_MANIFEST, &value);
        }
    }

    #[test]
    fn mismatched_media_type() {
        assert_invalid(OCI_INDEX, &oci_manifest());
        assert_invalid(DOCKER_MANIFEST_V2, &oci_manifest());
        let mut manifest = oci_manifest();
        manifest["mediaType"] = Value::from(7);
        assert_invalid(OCI_MANIFEST, &manifest);
    }

    #[test]
    fn malformed_descriptors() {
        let edits: [Edit; 12] = [
            ("bad layer digest", |m| {
                m["layers"][0]["digest"] = Value::from("sha256:abc")
            }),
            ("uppercase digest", |m| {
                m["layers"][0]["digest"] = Value::from(LAYER.to_uppercase().replace("SHA", "sha"))
            }),
            ("unsupported digest", |m| {
                m["layers"][0]["digest"] = Value::from("sha384:abc")
            }),
            ("missing digest", |m| {
                m["config"].as_object_mut().unwrap().remove("digest");
            }),
            ("negative size", |m| m["layers"][0]["size"] = Value::from(-1)),
            ("float size", |m| m["layers"][0]["size"] = serde_json::json!(1.5)),
            ("string size", |m| m["config"]["size"] = Value::from("12")),
            ("missing mediaType", |m| {
                m["layers"][0].as_object_mut().unwrap().remove("mediaType");
            }),
            ("missing config", |m| {
                m.as_object_mut().unwrap().remove("config");
            }),
            ("missing layers", |m| {
                m.as_object_mut().unwrap().remove("layers");
            }),
            ("layers not an array", |m| m["layers"] = serde_json::json!({})),
            ("bad subject", |m| {
                m["subject"] = serde_json::json!({ "mediaType": OCI_MANIFEST })
            }),
        ];
        for (name, edit) in edits {
            let mut manifest = oci_manifest();
            edit(&mut manifest);
            let result = parse_value(OCI_MANIFEST, &manifest);
            assert!(
                matches!(result, Err(ManifestError::Invalid(_))),
                "{name}: {result:?}"
            );
        }
    }

    #[test]
    fn malformed_top_level_fields() {
        let edits: [Edit; 4] = [
            ("schemaVersion 1", |m| m["schemaVersion"] = Value::from(1)),
            ("artifactType not a string", |m| {
                m["artifactType"] = Value::from(1)
            }),
            ("annotations not an object", |m| {
                m["annotations"] = serde_json::json!([])
            }),
            ("annotation not a string", |m| {
                m["annotations"]["k"] = Value::from(1)
            }),
        ];
        for (name, edit) in edits {
            let mut manifest = oci_manifest();
            edit(&mut manifest);
            let result = parse_value(OCI_MANIFEST, &manifest);
            assert!(
                matches!(result, Err(ManifestError::Invalid(_))),
                "{name}: {result:?}"
            );
        }
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let mut manifest = oci_manifest();
        manifest["subject"] = Value::Null;
        manifest["artifactType"] = Value::Null;
        manifest["annotations"] = Value::Null;
        let parsed = parse_value(OCI_MANIFEST, &manifest).unwrap();
        assert_eq!(parsed.subject, None);
        assert_eq!(parsed.annotations, None);
    }
}
