//! Real clients against the registry: `skopeo copy` pushes a multi-layer image (and
//! a multi-arch index) from an OCI layout built here and pulls it back into a second
//! layout with identical digests; the `oras` Python library (oras-py) pushes and
//! pulls an artifact with an `artifactType`, then pushes referrers whose `subject` is
//! that artifact, which the referrers API lists and filters. These tools are test
//! prerequisites (scripts/test.sh installs them): when missing the tests fail with a
//! message saying so, they never skip.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;

use common::*;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

#[track_caller]
pub(crate) fn require_skopeo() {
    let ok = Command::new("skopeo")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "skopeo is required by this test but is not installed; run scripts/test.sh, which \
         installs it (apt-get install -y skopeo)"
    );
}

#[track_caller]
pub(crate) fn require_python_oras() {
    let ok = Command::new("python3")
        .args(["-c", "import oras.client"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the Python library oras (oras-py) is required by this test but `python3 -c 'import \
         oras.client'` fails; run scripts/test.sh, which installs it (python3 -m pip install oras)"
    );
}

/// Runs a command to completion within `limit`, panicking with its output (and the
/// server's) on failure or timeout.
pub(crate) fn run(server: &Server, command: &mut Command, limit: Duration) -> String {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let out = out_thread.join().unwrap();
    let err = err_thread.join().unwrap();
    match status {
        Some(status) if status.success() => out,
        _ => panic!(
            "{description} failed ({status:?}, limit {limit:?})\n--- stdout\n{out}\n--- stderr\n{err}\n--- server\n{}",
            server.logs().join("\n")
        ),
    }
}

// ---------------------------------------------------------------------------
// Building an OCI image layout by hand
// ---------------------------------------------------------------------------

/// A ustar archive holding one regular file (POSIX.1-1988 header, two zero blocks).
fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let digits = field.len() - 1;
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    };
    octal(&mut header[100..108], 0o644); // mode
    octal(&mut header[108..116], 0); // uid
    octal(&mut header[116..124], 0); // gid
    octal(&mut header[124..136], content.len() as u64); // size
    octal(&mut header[136..148], 1_700_000_000); // mtime
    header[156] = b'0'; // regular file
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());

    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// A valid gzip member (RFC 1952) whose deflate stream uses stored blocks only
/// (RFC 1951 section 3.2.4), so no compressor is needed.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn write_blob(layout: &Path, content: &[u8]) -> String {
    let d = digest(content);
    let dir = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&d["sha256:".len()..]), content).unwrap();
    d
}

/// An image of three layers (two gzip, one plain tar) and its config, written into
/// `layout`; returns (manifest bytes, every blob).
pub(crate) fn write_image(layout: &Path, arch: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let tars: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            tar_with_file(
                &format!("layer{i}/file-{arch}.txt"),
                format!("content of layer {i} for {arch}\n")
                    .repeat(50 + i)
                    .as_bytes(),
            )
        })
        .collect();
    let layers: Vec<(Vec<u8>, &str)> = vec![
        (gzip_stored(&tars[0]), OCI_LAYER_GZIP),
        (gzip_stored(&tars[1]), OCI_LAYER_GZIP),
        (tars[2].clone(), OCI_LAYER),
    ];
    let diff_ids: Vec<String> = tars.iter().map(|t| json_str(&digest(t))).collect();
    let config = format!(
        "{{\"architecture\":\"{arch}\",\"os\":\"linux\",\"config\":{{\"Env\":[\"PATH=/bin\"]}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        diff_ids.join(",")
    )
    .into_bytes();
    let manifest = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        layers.iter().map(|(b, t)| descriptor(t, b)).collect(),
    )
    .to_json()
    .into_bytes();
    let mut blobs = vec![config];
    blobs.extend(layers.into_iter().map(|(b, _)| b));
    for blob in &blobs {
        write_blob(layout, blob);
    }
    write_blob(layout, &manifest);
    (manifest, blobs)
}

pub(crate) fn write_layout_index(layout: &Path, media_type: &str, top: &[u8], tag: &str) {
    std::fs::write(layout.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").unwrap();
    let index = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[{}]}}",
        descriptor_with(
            media_type,
            top,
            &format!(
                "\"annotations\":{}",
                annotations_json(&[("org.opencontainers.image.ref.name", tag)])
            )
        )
    );
    std::fs::write(layout.join("index.json"), index).unwrap();
}

/// The digest that a layout's index.json names for `tag`.
pub(crate) fn layout_digest(layout: &Path, tag: &str) -> String {
    let text = std::fs::read_to_string(layout.join("index.json"))
        .unwrap_or_else(|e| panic!("no index.json in {}: {e}", layout.display()));
    let index = Json::parse(&text).unwrap();
    let manifests = index.get("manifests").and_then(Json::as_array).unwrap();
    let entry = manifests
        .iter()
        .find(|m| {
            m.get("annotations")
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .and_then(Json::as_str)
                == Some(tag)
        })
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
        .unwrap_or_else(|| panic!("index.json has no entry for {tag}: {text}"));
    entry.get("digest").and_then(Json::as_str).unwrap().to_string()
}

#[track_caller]
pub(crate) fn assert_layout_has(layout: &Path, content: &[u8]) {
    let d = digest(content);
    let path = layout.join("blobs").join("sha256").join(&d["sha256:".len()..]);
    let stored = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("pulled layout lacks blob {d} ({}): {e}", path.display()));
    assert!(stored == content, "blob {d} differs in the pulled layout");
}

pub(crate) fn skopeo(server: &Server, args: &[&str]) -> String {
    let mut command = Command::new("skopeo");
    command.arg("--insecure-policy").args(args);
    run(server, &mut command, Duration::from_secs(300))
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

#[test]
fn skopeo_copy_pushes_and_pulls_a_multi_layer_image_with_identical_digests() {
    require_skopeo();
    let server = Server::start();
    let work = TempDir::new("skopeo");
    let source = work.path().join("source");
    let (manifest, blobs) = write_image(&source, "amd64");
    write_layout_index(&source, OCI_MANIFEST, &manifest, "v1");
    let manifest_digest = digest(&manifest);

    let registry = format!("127.0.0.1:{}", server.addr.port());
    let remote = format!("docker://{registry}/clients/image:v1");
    skopeo(
        &server,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--preserve-digests",
            &format!("oci:{}:v1", source.display()),
            &remote,
        ],
    );

    // The registry holds the exact bytes.
    let response = server.request(
        "GET",
        "/v2/clients/image/manifests/v1",
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    response.assert_status(200);
    assert!(response.body == manifest, "the pushed manifest was altered");
    assert_eq!(response.header("content-type"), Some(OCI_MANIFEST));
    for blob in &blobs {
        let r = server.get(&format!("/v2/clients/image/blobs/{}", digest(blob)));
        r.assert_status(200);
        assert!(r.body == *blob);
    }

    // Pull back, by tag and by digest, into fresh layouts.
    for (label, reference) in [
        ("by-tag", remote.clone()),
        (
            "by-digest",
            format!("docker://{registry}/clients/image@{manifest_digest}"),
        ),
    ] {
        let dest = work.path().join(label);
        skopeo(
            &server,
            &[
                "copy",
                "--src-tls-verify=false",
                "--preserve-digests",
                &reference,
                &format!("oci:{}:v1", dest.display()),
            ],
        );
        assert_eq!(layout_digest(&dest, "v1"), manifest_digest, "{label}");
        assert_layout_has(&dest, &manifest);
        for blob in &blobs {
            assert_layout_has(&dest, blob);
        }
    }

    // skopeo's own view of the remote agrees.
    let inspect = skopeo(&server, &["inspect", "--tls-verify=false", "--raw", &remote]);
    assert_eq!(digest(inspect.as_bytes()), manifest_digest);
}

#[test]
fn skopeo_copy_all_pushes_and_pulls_a_multi_arch_index() {
    require_skopeo();
    let server = Server::start();
    let work = TempDir::new("skopeo-index");
    let source = work.path().join("source");
    let (amd, amd_blobs) = write_image(&source, "amd64");
    let (arm, arm_blobs) = write_image(&source, "arm64");
    let index = index_json(
        OCI_INDEX,
        &[
            descriptor_with(
                OCI_MANIFEST,
                &amd,
                "\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}",
            ),
            descriptor_with(
                OCI_MANIFEST,
                &arm,
                "\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\"}",
            ),
        ],
        None,
        None,
    )
    .into_bytes();
    write_blob(&source, &index);
    write_layout_index(&source, OCI_INDEX, &index, "multi");

    let registry = format!("127.0.0.1:{}", server.addr.port());
    let remote = format!("docker://{registry}/clients/multi:multi");
    skopeo(
        &server,
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--preserve-digests",
            &format!("oci:{}:multi", source.display()),
            &remote,
        ],
    );
    let response = server.request(
        "GET",
        "/v2/clients/multi/manifests/multi",
        &[("Accept", OCI_INDEX)],
        b"",
    );
    response.assert_status(200);
    assert!(response.body == index);
    assert_eq!(response.header("content-type"), Some(OCI_INDEX));

    let dest = work.path().join("pulled");
    skopeo(
        &server,
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--preserve-digests",
            &remote,
            &format!("oci:{}:multi", dest.display()),
        ],
    );
    assert_eq!(layout_digest(&dest, "multi"), digest(&index));
    for content in [&index, &amd, &arm]
        .into_iter()
        .chain(amd_blobs.iter())
        .chain(arm_blobs.iter())
    {
        assert_layout_has(&dest, content);
    }
}

// ---------------------------------------------------------------------------
// oras-py
// ---------------------------------------------------------------------------

const ARTIFACT_TYPE: &str = "application/vnd.example.thing.v1";
const DATA_TYPE: &str = "application/vnd.example.data.v1";
const SIG_CONFIG_TYPE: &str = "application/vnd.example.signature.config.v1+json";
const SBOM_TYPE: &str = "application/vnd.example.sbom.v1";

/// The Python driver. Arguments: registry host:port, a work directory. Prints
/// `key=value` lines for the Rust side.
const ORAS_SCRIPT: &str = r#"
import hashlib, json, os, sys
import oras.client, oras.defaults, oras.oci

host, work = sys.argv[1], sys.argv[2]
os.chdir(work)
client = oras.client.OrasClient(hostname=host, insecure=True)
repo = f"{host}/oras/demo"

def check(response, what):
    if response.status_code not in (200, 201, 202):
        raise SystemExit(f"{what}: HTTP {response.status_code} {response.text}")
    return response

def write(name, data):
    with open(name, "wb") as f:
        f.write(data)

# 1. An artifact with an artifactType, built with the lower-level calls because
#    push() has no artifactType parameter.
payload = b"the artifact payload\n" * 100
write("artifact.txt", payload)
write("empty.json", b"{}")
container = client.get_container(f"{repo}:v1")
layer = oras.oci.NewLayer("artifact.txt", media_type="DATA_TYPE")
layer["annotations"] = {oras.defaults.annotation_title: "artifact.txt"}
check(client.upload_blob("artifact.txt", container, layer), "upload layer")
config = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
          "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()}
check(client.upload_blob("empty.json", container, config), "upload config")
manifest = oras.oci.NewManifest()
manifest["artifactType"] = "ARTIFACT_TYPE"
manifest["config"] = config
manifest["layers"] = [layer]
response = check(client.upload_manifest(manifest, container), "upload manifest")
print(f"artifact_status={response.status_code}")
print(f"artifact_digest_header={response.headers.get('Docker-Content-Digest', '')}")

# Pull it back with the high-level call and compare.
fetched = client.get_manifest(f"{repo}:v1")
assert fetched.get("artifactType") == "ARTIFACT_TYPE", fetched
files = client.pull(target=f"{repo}:v1", outdir=os.path.join(work, "pulled"))
assert len(files) == 1, files
with open(files[0], "rb") as f:
    assert f.read() == payload, "pulled payload differs"
print(f"pulled={files[0]}")

raw = client.do_request(f"http://{container.manifest_url()}", "GET",
                        headers={"Accept": oras.defaults.default_manifest_media_type})
check(raw, "get raw manifest")
subject = oras.oci.Subject(mediaType=oras.defaults.default_manifest_media_type,
                           digest="sha256:" + hashlib.sha256(raw.content).hexdigest(),
                           size=len(raw.content))
print(f"subject_digest={subject.digest}")

# 2. A referrer pushed with the high-level push() and a subject; no artifactType,
#    so the registry reports its config media type.
write("signature.json", b'{"signature": "abc"}')
write("sigconfig.json", b'{"signer": "test"}')
response = client.push(target=f"{repo}:signature",
                       files=["signature.json:application/vnd.example.signature.v1"],
                       manifest_config="sigconfig.json:SIG_CONFIG_TYPE",
                       subject=subject, quiet=True)
check(response, "push referrer")
print(f"referrer_status={response.status_code}")
print(f"referrer_oci_subject={response.headers.get('OCI-Subject', '')}")

# 3. A referrer with an explicit artifactType, by digest (untagged).
write("sbom.json", b'{"packages": []}')
sbom_layer = oras.oci.NewLayer("sbom.json", media_type="application/json")
check(client.upload_blob("sbom.json", container, sbom_layer), "upload sbom")
sbom = oras.oci.NewManifest()
sbom["artifactType"] = "SBOM_TYPE"
sbom["config"] = config
sbom["layers"] = [sbom_layer]
sbom["subject"] = {"mediaType": subject.mediaType, "digest": subject.digest, "size": subject.size}
sbom["annotations"] = {"org.example.kind": "sbom"}
body = json.dumps(sbom).encode()
sbom_digest = "sha256:" + hashlib.sha256(body).hexdigest()
response = client.do_request(f"http://{host}/v2/oras/demo/manifests/{sbom_digest}", "PUT",
                             data=body,
                             headers={"Content-Type": oras.defaults.default_manifest_media_type})
check(response, "push sbom referrer")
print(f"sbom_digest={sbom_digest}")
print(f"sbom_oci_subject={response.headers.get('OCI-Subject', '')}")
print("done=yes")
"#;

fn field<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the oras script printed no {key}: {output}"))
}

fn referrer_digests(index: &Json) -> Vec<String> {
    let mut out: Vec<String> = index
        .get("manifests")
        .and_then(Json::as_array)
        .unwrap_or_else(|| panic!("no manifests in {index:?}"))
        .iter()
        .map(|d| d.get("digest").and_then(Json::as_str).unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn oras_pushes_and_pulls_an_artifact_and_its_referrers_are_listed() {
    require_python_oras();
    let server = Server::start();
    let work = TempDir::new("oras");
    let script = work.path().join("oras_driver.py");
    let text = ORAS_SCRIPT
        .replace("\"DATA_TYPE\"", &json_str(DATA_TYPE))
        .replace("\"ARTIFACT_TYPE\"", &json_str(ARTIFACT_TYPE))
        .replace("\"SBOM_TYPE\"", &json_str(SBOM_TYPE))
        .replace("SIG_CONFIG_TYPE", SIG_CONFIG_TYPE);
    std::fs::write(&script, text).unwrap();
    let host = format!("127.0.0.1:{}", server.addr.port());
    let output = run(
        &server,
        Command::new("python3").arg(&script).arg(&host).arg(work.path()),
        Duration::from_secs(300),
    );
    assert_eq!(field(&output, "done"), "yes");
    assert_eq!(field(&output, "artifact_status"), "201");
    assert_eq!(field(&output, "referrer_status"), "201");

    // The artifact as stored.
    let artifact = server.request(
        "GET",
        "/v2/oras/demo/manifests/v1",
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    artifact.assert_status(200);
    let subject_digest = digest(&artifact.body);
    assert_eq!(field(&output, "subject_digest"), subject_digest);
    assert_eq!(field(&output, "artifact_digest_header"), subject_digest);
    assert_eq!(
        artifact.json().get("artifactType").and_then(Json::as_str),
        Some(ARTIFACT_TYPE)
    );

    // Both referrers were acknowledged with OCI-Subject.
    assert_eq!(field(&output, "referrer_oci_subject"), subject_digest);
    assert_eq!(field(&output, "sbom_oci_subject"), subject_digest);

    let signature = server.request(
        "GET",
        "/v2/oras/demo/manifests/signature",
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    signature.assert_status(200);
    let signature_digest = digest(&signature.body);
    let sbom_digest = field(&output, "sbom_digest").to_string();

    let path = format!("/v2/oras/demo/referrers/{subject_digest}");
    let all = server.get(&path);
    all.assert_status(200);
    assert_eq!(all.header("content-type"), Some(OCI_INDEX));
    let mut expected = vec![signature_digest.clone(), sbom_digest.clone()];
    expected.sort();
    assert_eq!(referrer_digests(&all.json()), expected, "{}", all.describe());
    let index = all.json();
    let manifests = index.get("manifests").and_then(Json::as_array).unwrap();
    for descriptor in manifests {
        let d = descriptor.get("digest").and_then(Json::as_str).unwrap();
        let artifact_type = descriptor.get("artifactType").and_then(Json::as_str);
        if d == signature_digest {
            assert_eq!(artifact_type, Some(SIG_CONFIG_TYPE));
        } else {
            assert_eq!(artifact_type, Some(SBOM_TYPE));
            assert_eq!(
                descriptor
                    .get("annotations")
                    .and_then(|a| a.get("org.example.kind"))
                    .and_then(Json::as_str),
                Some("sbom")
            );
        }
    }

    for (filter, want) in [
        (SBOM_TYPE, vec![sbom_digest.clone()]),
        (SIG_CONFIG_TYPE, vec![signature_digest.clone()]),
        (ARTIFACT_TYPE, vec![]),
    ] {
        let mut query = String::new();
        let _ = write!(query, "{path}?artifactType={}", percent_encode(filter));
        let filtered = server.get(&query);
        filtered.assert_status(200);
        assert_eq!(
            filtered.header("oci-filters-applied"),
            Some("artifactType"),
            "{}",
            filtered.describe()
        );
        assert_eq!(referrer_digests(&filtered.json()), want, "filter {filter}");
    }
}
