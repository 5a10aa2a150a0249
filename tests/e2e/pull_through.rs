//! The pull-through cache on the real binary (issue 15), every upstream on loopback:
//! a second `angos` with identities (the token handshake, over HTTPS with a test CA),
//! Debian's `docker-registry` (distribution) with htpasswd (plain, and over HTTPS
//! with a CA of its own), and a small registry that redirects blob GETs to another
//! port (`common::upstreams::RedirectingUpstream`; over HTTPS with a third CA, behind
//! `socat`). Real clients pull through the
//! mirror and get the upstream's digests: skopeo, oras-py, and containerd's `ctr`
//! with a `hosts.toml` mirror (`?ns=docker.io`). Then the cache's behaviour: offline
//! service of what was pulled, a moved tag, twenty concurrent pulls of one uncached
//! 256 MiB blob sharing one upstream fetch, a stalled client that neither slows a fill
//! nor makes the mirror hold it in memory, a corrupt or short upstream blob never
//! stored, redirects followed without credentials, pushes refused, access lists,
//! events, metrics and the admin API's upstream health. The `helper_` tests check the
//! upstreams themselves, with no mirror involved: they pass before the cache exists.
//!
//! skopeo, oras-py, docker-registry and htpasswd are prerequisites (scripts/test.sh
//! installs them): missing, the tests fail saying so. containerd needs root; where it
//! cannot run, its tests skip with the reason, as refusals.rs does for dockerd.
//!
//! Run: `cargo test --test e2e pull_through::`.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::maintenance::json_at;
use common::s3::S3Server;
use common::upstreams::*;
use common::*;
use webhook_support::{TestCa, metric_sum, poll_until, scrape, wait_for_metrics};

/// What a client accepts for a manifest (a runtime asks for all of these).
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// How long a test waits for a server-side effect (a log line, a metric, an event).
const SOON: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Shared steps
// ---------------------------------------------------------------------------

/// A mirror: our registry with `repos` as its mirrored repositories.
fn mirror(repos: &[MirrorRepo]) -> Server {
    mirror_with(Options::default(), repos)
}

fn mirror_with(options: Options, repos: &[MirrorRepo]) -> Server {
    let options = repos.iter().fold(options, |options, repo| repo.add_to(options));
    Server::start_with(&options)
}

fn get_manifest(server: &Server, repo: &str, reference: &str) -> Response {
    server.request(
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    )
}

/// A `GET` of the manifest through the mirror, asserting 200, the upstream's bytes
/// and digest.
#[track_caller]
fn assert_manifest(server: &Server, repo: &str, reference: &str, image: &Image) {
    let response = get_manifest(server, repo, reference);
    assert_eq!(
        response.status,
        200,
        "GET {repo}:{reference} through the mirror: {}\nmirror log:\n{}",
        response.describe(),
        server.logs().join("\n")
    );
    assert_eq!(
        response.header("docker-content-digest"),
        Some(image.digest.as_str()),
        "{}",
        response.describe()
    );
    assert_eq!(
        response.body, image.manifest,
        "the manifest's bytes differ from the upstream's"
    );
}

/// Every blob of `image` through the mirror, asserting 200 and the bytes.
#[track_caller]
fn assert_blobs(server: &Server, repo: &str, image: &Image) {
    for blob in image.layers.iter().chain([&image.config]) {
        let name = digest(blob);
        let response = server.get(&format!("/v2/{repo}/blobs/{name}"));
        assert_eq!(
            response.status,
            200,
            "GET blob {name} of {repo} through the mirror: {}\nmirror log:\n{}",
            response.describe(),
            server.logs().join("\n")
        );
        assert!(response.body == *blob, "blob {name}: the bytes differ");
    }
}

fn host_of(server: &Server) -> String {
    format!("127.0.0.1:{}", server.addr.port())
}

/// The manifest digest an OCI layout's `index.json` names (what skopeo copied; with
/// `--preserve-digests` and `--dest-oci-accept-uncompressed-layers`, else it gzips the
/// uncompressed test layers into another manifest).
fn layout_manifest_digest(layout: &Path) -> String {
    let index = Json::parse(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    json_at(&index, &["manifests"])
        .as_array()
        .and_then(|m| m.first())
        .and_then(|d| d.get("digest"))
        .and_then(Json::as_str)
        .expect("a manifest in index.json")
        .to_string()
}

/// skopeo copies `source` into an OCI layout at `layout`, keeping digests.
#[track_caller]
fn skopeo_pull(source: &str, layout: &Path, work: &Path, what: &str) {
    let copied = skopeo(
        &[
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
            source,
            &format!("oci:{}:v1", layout.display()),
        ],
        work,
    );
    expect_success(&copied, what);
}

/// The layout holds `image`: its manifest digest and its first layer's bytes.
#[track_caller]
fn assert_pulled(layout: &Path, image: &Image) {
    assert_eq!(layout_manifest_digest(layout), image.digest);
    let layer_file = layout
        .join("blobs/sha256")
        .join(digest(&image.layers[0]).trim_start_matches("sha256:"));
    assert!(std::fs::read(&layer_file).unwrap() == image.layers[0]);
}

/// Waits for a server log line containing every one of `words`.
#[track_caller]
fn wait_for_log_words(server: &Server, words: &[&str]) -> String {
    poll_until(SOON, || {
        server.logs().into_iter().find(|line| {
            words
                .iter()
                .all(|w| line.to_ascii_lowercase().contains(&w.to_ascii_lowercase()))
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no log line with {words:?} within {SOON:?}; log:\n{}",
            server.logs().join("\n")
        )
    })
}

fn admin_upstreams(server: &Server) -> Vec<Json> {
    let response = server.get("/v2/_angos/upstreams");
    response.assert_status(200);
    response
        .json()
        .get("upstreams")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_else(|| panic!("no upstreams array: {}", response.describe()))
}

/// The redirecting upstream got the mirror's credentials on its own port and never on
/// the port its redirects point at. A request without them on its own port is fine
/// when it was answered 401: that is how a client learns it must send Basic.
#[track_caller]
fn assert_credentials_stay_home(upstream: &RedirectingUpstream) {
    let seen = upstream.seen();
    assert!(
        seen.iter().any(|s| s.side == Side::Back),
        "no request followed a redirect: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.side == Side::Front && s.authorization.is_some()),
        "the credentials were never sent: {seen:#?}"
    );
    for s in &seen {
        match s.side {
            Side::Front => assert!(
                s.authorization.is_some() || s.status == 401,
                "answered without credentials on the upstream's own port: {s:?}"
            ),
            Side::Back => assert!(
                s.authorization.is_none(),
                "credentials followed a redirect to another port: {s:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Real clients, each upstream kind
// ---------------------------------------------------------------------------

#[test]
fn skopeo_pulls_through_a_token_authenticated_angos_upstream_over_https() {
    let ca = TestCa::generate();
    let upstream = AngosUpstream::start(&["library"], Some((&ca.server_cert, &ca.server_key)));
    let image = small_image("skopeo through angos", 300_000);
    upstream.writer().push("library/app", Some("v1"), &image);
    // The upstream wants the token handshake from anyone without credentials.
    let challenge = upstream.server.get("/v2/");
    assert!(
        challenge
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer realm=")),
        "{}",
        challenge.describe()
    );
    let upstream_digest = upstream.reader().manifest_digest("library/app", "v1");
    assert_eq!(upstream_digest, image.digest);

    let server = mirror(&[MirrorRepo::new("mirror", vec![upstream.entry(Some(&ca.ca_pem))])]);
    let work = TempDir::new("skopeo-mirror");
    let source = format!("docker://{}/mirror/library/app:v1", host_of(&server));
    let inspected = skopeo(
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &source,
        ],
        work.path(),
    );
    let inspected = expect_success(&inspected, "skopeo inspect through the mirror");
    assert_eq!(inspected.trim(), upstream_digest);

    let layout = work.path().join("by-tag");
    skopeo_pull(
        &source,
        &layout,
        work.path(),
        "skopeo copy by tag through the mirror",
    );
    assert_pulled(&layout, &image);

    // By digest, now a local hit.
    let by_digest = format!(
        "docker://{}/mirror/library/app@{upstream_digest}",
        host_of(&server)
    );
    let layout = work.path().join("by-digest");
    skopeo_pull(
        &by_digest,
        &layout,
        work.path(),
        "skopeo copy by digest through the mirror",
    );
    assert_eq!(layout_manifest_digest(&layout), upstream_digest);

    // The mirror answered the upstream's Bearer challenge at its token endpoint, and
    // reused the token: one per pull would be a token request for every blob.
    let metrics = scrape(&upstream.server);
    let tokens = metric_sum(
        &metrics,
        "http_requests_total",
        &[("route", "token"), ("status", "200")],
    );
    // One scope (`repository:library/app:pull`) for the manifest, its tag checks and
    // both blobs: one token, well within its lifetime.
    assert_eq!(tokens, 1.0, "tokens issued to the mirror:\n{metrics}");
}

/// The oras-py driver. Arguments: mirror host:port, repository, tag, work directory.
/// Prints `key=value` lines.
const ORAS_PULL: &str = r#"
import hashlib, os, sys
import oras.client
host, repo, tag, work = sys.argv[1:5]
client = oras.client.OrasClient(hostname=host, insecure=True)
target = f"{host}/{repo}:{tag}"
raw = client.do_request(f"http://{host}/v2/{repo}/manifests/{tag}", "GET",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
if raw.status_code != 200:
    raise SystemExit(f"GET manifest: HTTP {raw.status_code} {raw.text}")
print("manifest_digest=sha256:" + hashlib.sha256(raw.content).hexdigest())
print("header_digest=" + raw.headers.get("Docker-Content-Digest", ""))
files = client.pull(target=target, outdir=os.path.join(work, "pulled"))
for path in files:
    with open(path, "rb") as f:
        print(f"file={os.path.basename(path)}:sha256:" + hashlib.sha256(f.read()).hexdigest())
print("done=yes")
"#;

#[test]
fn oras_pulls_through_distribution_with_htpasswd() {
    let ok = Command::new("python3")
        .args(["-c", "import oras.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the Python library oras is required; run scripts/test.sh (python3 -m pip install oras)"
    );
    let upstream = Distribution::start("dist-user", "dist-secret");
    // A titled layer: oras pulls it to a file of that name.
    let payload = pseudo_random_bytes(7, 150_000);
    let config = b"{}".to_vec();
    let manifest = ManifestSpec::oci(
        descriptor(OCI_EMPTY, &config),
        vec![descriptor_with(
            "application/vnd.example.payload",
            &payload,
            "\"annotations\":{\"org.opencontainers.image.title\":\"payload.bin\"}",
        )],
    )
    .to_json()
    .into_bytes();
    let target = upstream.target();
    target.push_blob("team/artifact", &payload);
    target.push_blob("team/artifact", &config);
    let manifest_digest = target.push_manifest("team/artifact", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(target.manifest_digest("team/artifact", "v1"), manifest_digest);

    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![UpstreamEntry::new(&upstream.url()).credentials("dist-user", "dist-secret")],
    )]);
    let work = TempDir::new("oras-mirror");
    let script = work.path().join("pull.py");
    std::fs::write(&script, ORAS_PULL).unwrap();
    let output = Command::new("python3")
        .arg(&script)
        .args([&host_of(&server), "mirror/team/artifact", "v1"])
        .arg(work.path())
        .output()
        .expect("run python3");
    let text = expect_success(&output, "oras pull through the mirror");
    let field = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(String::from)
            .collect()
    };
    assert_eq!(field("done"), ["yes"], "{text}");
    assert_eq!(field("manifest_digest"), std::slice::from_ref(&manifest_digest));
    assert_eq!(field("header_digest"), [manifest_digest]);
    assert_eq!(field("file"), [format!("payload.bin:{}", digest(&payload))]);
}

#[test]
fn distribution_over_https_with_its_own_ca_fills_the_mirror() {
    let ca = TestCa::generate();
    let upstream =
        Distribution::start_with("tls-user", "tls-secret", Some((&ca.server_cert, &ca.server_key)));
    let certs = TempDir::new("distribution-certs");
    std::fs::copy(&ca.ca_pem, certs.path().join("ca.crt")).unwrap();
    let image = small_image("distribution over https", 200_000);
    upstream.push_with_skopeo("library/base", "v2", &image, Some(certs.path()));

    let entry = UpstreamEntry::new(&upstream.url()).credentials("tls-user", "tls-secret");
    let server = mirror(&[
        MirrorRepo::new("trusted", vec![entry.clone().ca_bundle(&ca.ca_pem)]),
        // Without the CA bundle, the upstream's certificate is not trusted.
        MirrorRepo::new("untrusted", vec![entry]),
    ]);
    assert_manifest(&server, "trusted/library/base", "v2", &image);
    assert_blobs(&server, "trusted/library/base", &image);
    let refused = get_manifest(&server, "untrusted/library/base", "v2");
    refused.assert_error(502, "MANIFEST_UNKNOWN");
}

#[test]
fn the_redirecting_upstream_over_https_with_its_own_ca_fills_the_mirror() {
    let ca = TestCa::generate();
    let upstream = RedirectingUpstream::start_with(Some(("tls-user", "tls-secret")));
    let image = small_image("redirecting over https", 500_000);
    upstream.put_image("library/app", Some("v1"), &image);
    let tls = TlsTerminator::start(upstream.front(), &ca.server_cert, &ca.server_key);
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![
            UpstreamEntry::new(&tls.url())
                .credentials("tls-user", "tls-secret")
                .ca_bundle(&ca.ca_pem),
        ],
    )]);
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    assert_blobs(&server, "mirror/library/app", &image);
    // The layer came by the redirect to the plain back port, without the credentials.
    assert_eq!(upstream.blob_fetches(&digest(&image.layers[0])), 1);
    assert_credentials_stay_home(&upstream);
}

#[test]
fn ctr_pulls_through_a_hosts_toml_mirror_with_ns() {
    let containerd = match Containerd::start() {
        Ok(containerd) => containerd,
        Err(why) => {
            eprintln!("SKIPPED ctr_pulls_through_a_hosts_toml_mirror_with_ns: {why}");
            return;
        }
    };
    let upstream = RedirectingUpstream::start_with(Some(("hub-user", "hub-secret")));
    let image = runnable_image("ctr through the mirror");
    upstream.put_image("library/hello", Some("1.0"), &image);
    let server = mirror(&[MirrorRepo::new(
        "dockerhub",
        vec![UpstreamEntry::new(&upstream.url()).credentials("hub-user", "hub-secret")],
    )
    .namespace("docker.io")]);
    let work = TempDir::new("ctr-mirror");
    let hosts = write_hosts_dir(work.path(), "docker.io", server.addr);
    let reference = "docker.io/library/hello:1.0";
    let pulled = containerd.pull(&hosts, reference);
    assert!(
        pulled.status.success(),
        "ctr pull through the mirror: {}{}\nmirror log:\n{}",
        String::from_utf8_lossy(&pulled.stdout),
        String::from_utf8_lossy(&pulled.stderr),
        server.logs().join("\n")
    );
    assert_eq!(
        containerd.image_digest(reference).as_deref(),
        Some(image.digest.as_str())
    );
    // The mirror stored it under the repository that names docker.io.
    let local = server.request(
        "GET",
        &format!("/v2/dockerhub/library/hello/manifests/{}", image.digest),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    local.assert_status(200);
    // The upstream saw its credentials on its own port only.
    assert_credentials_stay_home(&upstream);
}

// ---------------------------------------------------------------------------
// Offline, fallback, moved tags
// ---------------------------------------------------------------------------

#[test]
fn offline_serves_pulled_tags_and_digests_and_refuses_the_rest_clearly() {
    let mut first = AngosUpstream::start(&["library"], None);
    let image = small_image("offline", 100_000);
    first.writer().push("library/app", Some("v1"), &image);
    let mut second = RedirectingUpstream::start();
    second.put_image("library/other", Some("v1"), &small_image("elsewhere", 0));
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![first.entry(None), UpstreamEntry::new(&second.url())],
    )
    .freshness_secs(0)]);
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    assert_manifest(&server, "mirror/library/app", &image.digest, &image);
    assert_blobs(&server, "mirror/library/app", &image);

    first.stop();
    second.stop();
    // Every upstream is gone: what was pulled is still served, by tag and by digest.
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    assert_manifest(&server, "mirror/library/app", &image.digest, &image);
    let head = server.request(
        "HEAD",
        "/v2/mirror/library/app/manifests/v1",
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    );
    head.assert_status(200);
    assert_eq!(head.header("docker-content-digest"), Some(image.digest.as_str()));
    assert_blobs(&server, "mirror/library/app", &image);
    wait_for_log_words(&server, &["offline"]);
    // A tag never pulled: a clear error, not a hang and not a 404 that says it does
    // not exist upstream.
    get_manifest(&server, "mirror/library/app", "never-pulled").assert_error(502, "MANIFEST_UNKNOWN");
    let metrics = scrape(&server);
    assert!(
        metric_sum(
            &metrics,
            "cache_requests_total",
            &[("kind", "manifest"), ("result", "offline")]
        ) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn a_second_upstream_serves_when_the_first_is_unreachable() {
    // A port nothing listens on: connections are refused.
    let nothing = format!("http://127.0.0.1:{}", free_loopback_port());
    let upstream = RedirectingUpstream::start();
    let image = small_image("fallback", 50_000);
    upstream.put_image("library/app", Some("v1"), &image);
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![UpstreamEntry::new(&nothing), UpstreamEntry::new(&upstream.url())],
    )]);
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    assert_blobs(&server, "mirror/library/app", &image);
}

#[test]
fn a_tag_moved_upstream_is_refetched_unless_immutable_or_fresh() {
    let upstream = RedirectingUpstream::start();
    let entry = UpstreamEntry::new(&upstream.url());
    let server = mirror(&[
        MirrorRepo::new("fresh", vec![entry.clone()]).freshness_secs(0),
        MirrorRepo::new("pinned", vec![entry.clone()])
            .immutable_tags(true)
            .line("immutable_tags_exclusions = [\"^latest$\"]"),
        // Checked again only after an hour: the move is not seen yet.
        MirrorRepo::new("lazy", vec![entry]).freshness_secs(3600),
    ]);
    let old = small_image("old", 0);
    let new = small_image("new", 0);
    upstream.put_image("library/app", Some("v1"), &old);
    upstream.put_image("library/app", Some("latest"), &old);
    for repo in ["fresh", "pinned", "lazy"] {
        assert_manifest(&server, &format!("{repo}/library/app"), "v1", &old);
    }
    assert_manifest(&server, "pinned/library/app", "latest", &old);

    upstream.put_image("library/app", Some("v1"), &new);
    upstream.put_image("library/app", Some("latest"), &new);
    assert_manifest(&server, "fresh/library/app", "v1", &new);
    assert_blobs(&server, "fresh/library/app", &new);
    // An immutable tag is served from the cache without asking the upstream.
    let asked = upstream.count(Side::Front, "HEAD", "/manifests/v1")
        + upstream.count(Side::Front, "GET", "/manifests/v1");
    assert_manifest(&server, "pinned/library/app", "v1", &old);
    let asked_after = upstream.count(Side::Front, "HEAD", "/manifests/v1")
        + upstream.count(Side::Front, "GET", "/manifests/v1");
    assert_eq!(asked, asked_after, "an immutable tag was checked upstream");
    // ...except the excluded `latest`.
    assert_manifest(&server, "pinned/library/app", "latest", &new);
    assert_manifest(&server, "lazy/library/app", "v1", &old);
    let metrics = scrape(&server);
    assert!(
        metric_sum(
            &metrics,
            "cache_requests_total",
            &[("kind", "manifest"), ("result", "refreshed")]
        ) >= 1.0,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Blobs: coalescing, corruption, redirects
// ---------------------------------------------------------------------------

/// The coalescing test's blob: 256 MiB, as the issue says.
const LARGE_BLOB_BYTES: usize = 256 << 20;
/// Its upstream rate: a fill of about a second, so twenty clients meet it in flight.
const LARGE_BLOB_RATE: u64 = 256 << 20;
const CONCURRENT_PULLS: usize = 20;

#[test]
fn twenty_concurrent_pulls_of_one_uncached_blob_share_one_upstream_fetch() {
    let upstream = RedirectingUpstream::start();
    let layer_digest = upstream.put_blob(pseudo_random_bytes(0x256, LARGE_BLOB_BYTES));
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let manifest = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        vec![format!(
            "{{\"mediaType\":\"{OCI_LAYER}\",\"digest\":\"{layer_digest}\",\"size\":{LARGE_BLOB_BYTES}}}"
        )],
    )
    .to_json()
    .into_bytes();
    upstream.put_blob(config);
    upstream.put_manifest("library/big", Some("v1"), OCI_MANIFEST, manifest);
    upstream.set_rate(LARGE_BLOB_RATE);
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![UpstreamEntry::new(&upstream.url())],
    )]);
    get_manifest(&server, "mirror/library/big", "v1").assert_status(200);

    let path = format!("/v2/mirror/library/big/blobs/{layer_digest}");
    let start = Arc::new(Barrier::new(CONCURRENT_PULLS));
    let pulls: Vec<_> = (0..CONCURRENT_PULLS)
        .map(|_| {
            let (start, path, addr) = (Arc::clone(&start), path.clone(), server.addr);
            thread::spawn(move || {
                start.wait();
                download(addr, &path, &[], true)
            })
        })
        .collect();
    for (n, pull) in pulls.into_iter().enumerate() {
        let got = pull.join().unwrap();
        assert!(
            got.is_valid(&layer_digest) && got.bytes == LARGE_BLOB_BYTES as u64,
            "client {n}: {got:?}\nmirror log:\n{}",
            server.logs().join("\n")
        );
    }
    assert_eq!(
        upstream.count(Side::Front, "GET", &layer_digest),
        1,
        "{:?}",
        upstream.seen()
    );
    assert_eq!(upstream.blob_fetches(&layer_digest), 1, "{:?}", upstream.seen());
    // ...and the blob's bytes crossed from the upstream once.
    assert!(upstream.served_bytes() <= LARGE_BLOB_BYTES as u64 + (1 << 20));
    // Later pulls come from the disk.
    assert!(download(server.addr, &path, &[], true).is_valid(&layer_digest));
    assert_eq!(upstream.blob_fetches(&layer_digest), 1);
}

/// The slow-client test's blob: large against the mirror's own memory.
const SLOW_CLIENT_BLOB_BYTES: usize = 128 << 20;
/// What the mirror's peak RSS may grow by while a stalled client's fill completes: far
/// below the blob, so the fill is not held in memory for the client.
const SLOW_CLIENT_RSS_GROWTH_MAX: u64 = 48 << 20;

#[test]
fn a_stalled_client_does_not_hold_the_fill_in_memory_nor_slow_it() {
    let upstream = RedirectingUpstream::start();
    let layer_digest = upstream.put_blob(pseudo_random_bytes(0x51, SLOW_CLIENT_BLOB_BYTES));
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![UpstreamEntry::new(&upstream.url())],
    )]);
    server.get("/v2/").assert_status(200);
    let rss_before = hostile::peak_rss_bytes(&server);
    let path = format!("/v2/mirror/library/app/blobs/{layer_digest}");
    let mut rss_after = 0;
    let got = download_after(server.addr, &path, &[], true, || {
        // The client reads nothing until the upstream has sent the whole blob: the fill
        // goes at the upstream's pace, to disk.
        let sent = poll_until(Duration::from_secs(60), || {
            (upstream.served_bytes() >= SLOW_CLIENT_BLOB_BYTES as u64).then_some(())
        });
        assert!(
            sent.is_some(),
            "the fill waited for the stalled client: {} of {SLOW_CLIENT_BLOB_BYTES} bytes fetched",
            upstream.served_bytes()
        );
        rss_after = hostile::peak_rss_bytes(&server);
    });
    assert!(got.is_valid(&layer_digest), "{got:?}");
    assert!(
        rss_after < rss_before + SLOW_CLIENT_RSS_GROWTH_MAX,
        "the mirror's peak RSS grew from {rss_before} to {rss_after} bytes during a {SLOW_CLIENT_BLOB_BYTES}-byte fill"
    );
}

/// True when some regular file under `root` holds exactly `bytes`.
fn stored_anywhere(root: &Path, bytes: &[u8]) -> bool {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else { continue };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.len() == bytes.len() as u64
                && std::fs::read(entry.path()).is_ok_and(|content| content == bytes)
            {
                return true;
            }
        }
    }
    false
}

/// The first layer's digest, and its bytes with one flipped in the middle.
fn corrupted_layer(image: &Image) -> (String, Vec<u8>) {
    let layer = &image.layers[0];
    let mut wrong = layer.clone();
    let middle = wrong.len() / 2;
    wrong[middle] ^= 0xff;
    (digest(layer), wrong)
}

/// The upstream sends wrong bytes for `layer_digest` from now on: twice, no
/// client gets a whole 200 of them.
#[track_caller]
fn assert_wrong_bytes_never_served(
    server: &Server,
    upstream: &RedirectingUpstream,
    path: &str,
    layer_digest: &str,
) {
    upstream.set_fault(layer_digest, Some(BlobFault::WrongBytes));
    for attempt in 0..2 {
        let got = download(server.addr, path, &[], true);
        assert!(
            !(got.status == 200 && got.complete),
            "attempt {attempt}: the client got a whole 200 of wrong bytes: {got:?}"
        );
        assert!(!got.is_valid(layer_digest));
    }
}

#[test]
fn a_corrupt_or_short_upstream_blob_is_never_stored_or_served_as_valid() {
    let upstream = RedirectingUpstream::start();
    let image = small_image("corrupt", 4 << 20);
    upstream.put_image("library/app", Some("v1"), &image);
    let (layer_digest, wrong) = corrupted_layer(&image);
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![UpstreamEntry::new(&upstream.url())],
    )]);
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    let path = format!("/v2/mirror/library/app/blobs/{layer_digest}");
    assert_wrong_bytes_never_served(&server, &upstream, &path, &layer_digest);
    // Not even a leftover of the failed fill (polled: a temporary file may take a
    // moment to go).
    assert!(
        poll_until(SOON, || (!stored_anywhere(&server.root, &wrong)).then_some(())).is_some(),
        "the wrong bytes are stored under {}",
        server.root.display()
    );
    // The failed fill blocks no good one once the upstream is right again.
    upstream.set_fault(&layer_digest, None);
    let got = download(server.addr, &path, &[], true);
    assert!(got.is_valid(&layer_digest), "after the fault: {got:?}");

    // The short-body case on a blob never fetched.
    let other = small_image("short", 4 << 20);
    upstream.put_image("library/app", Some("v2"), &other);
    let other_digest = digest(&other.layers[0]);
    upstream.set_fault(&other_digest, Some(BlobFault::CloseAfter(1 << 20)));
    let path = format!("/v2/mirror/library/app/blobs/{other_digest}");
    let got = download(server.addr, &path, &[], true);
    assert!(
        !(got.status == 200 && got.complete),
        "a short upstream body reached the client whole: {got:?}"
    );
    let again = download(server.addr, &path, &[], true);
    assert!(!again.is_valid(&other_digest), "{again:?}");
    upstream.set_fault(&other_digest, None);
    assert!(download(server.addr, &path, &[], true).is_valid(&other_digest));
}

// ---------------------------------------------------------------------------
// On a bucket
// ---------------------------------------------------------------------------

/// A mirror replica whose content is in `s3`'s bucket under `prefix`, parts of 5 MiB.
fn mirror_on_bucket(s3: &S3Server, prefix: &str, repo: &MirrorRepo) -> Server {
    let options = Options::default()
        .on_bucket(s3, prefix)
        .bucket_line("multipart_part_size = \"5MiB\"");
    mirror_with(options, std::slice::from_ref(repo))
}

/// The bucket key of `digest`'s content under `prefix`.
fn content_key(prefix: &str, digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("{prefix}/blobs/sha256/{}/{hex}", &hex[..2])
}

/// Waits until the bucket holds the content of every blob of `image` (a fill
/// reaches the bucket just after its readers have the last byte).
#[track_caller]
fn wait_for_content_in_bucket(s3: &S3Server, prefix: &str, image: &Image) {
    let wanted: Vec<String> = image
        .layers
        .iter()
        .chain([&image.config])
        .map(|blob| content_key(prefix, &digest(blob)))
        .collect();
    let held = poll_until(SOON, || {
        let keys = s3.keys(prefix);
        wanted.iter().all(|key| keys.contains(key)).then_some(())
    });
    assert!(
        held.is_some(),
        "the bucket lacks some of {wanted:?}: {:?}",
        s3.keys(prefix)
    );
}

#[test]
fn skopeo_pulls_through_a_mirror_on_a_bucket_and_another_replica_serves_it_offline() {
    let s3 = S3Server::start();
    let mut upstream = RedirectingUpstream::start();
    // A layer of several parts, and the config of one.
    let image = small_image("mirror on a bucket", 12 << 20);
    upstream.put_image("library/app", Some("v1"), &image);
    let repo = MirrorRepo::new("mirror", vec![UpstreamEntry::new(&upstream.url())]).freshness_secs(0);
    let a = mirror_on_bucket(&s3, "cache", &repo);

    let work = TempDir::new("skopeo-bucket-mirror");
    let copy = |server: &Server, layout: &Path| {
        let source = format!("docker://{}/mirror/library/app:v1", host_of(server));
        skopeo_pull(
            &source,
            layout,
            work.path(),
            "skopeo copy through the mirror on the bucket",
        );
        assert_pulled(layout, &image);
    };
    copy(&a, &work.path().join("through-a"));
    wait_for_content_in_bucket(&s3, "cache", &image);
    let keys = s3.keys("cache");
    assert!(
        keys.iter().any(|key| key.ends_with("/_manifests/tags/v1")),
        "the tag is in the bucket: {keys:?}"
    );
    // The fill's spool is gone once pushed: nothing of the layer stays on local disk.
    assert!(
        poll_until(SOON, || (!stored_anywhere(&a.root, &image.layers[0]))
            .then_some(()))
        .is_some(),
        "a spool of the layer stays under {}",
        a.root.display()
    );

    // The upstream goes: replica B, which never fetched anything, serves the
    // cached tag from the bucket (offline), and A keeps serving it.
    upstream.stop();
    let b = mirror_on_bucket(&s3, "cache", &repo);
    assert_manifest(&b, "mirror/library/app", "v1", &image);
    assert_blobs(&b, "mirror/library/app", &image);
    copy(&b, &work.path().join("through-b"));
    copy(&a, &work.path().join("through-a-offline"));
    wait_for_log_words(&b, &["offline"]);
    // Never pulled: a clear error, the bucket being fine.
    get_manifest(&b, "mirror/library/app", "never-pulled").assert_error(502, "MANIFEST_UNKNOWN");
}

#[test]
fn wrong_bytes_from_the_upstream_never_reach_the_bucket() {
    let s3 = S3Server::start();
    let upstream = RedirectingUpstream::start();
    let image = small_image("corrupt on a bucket", 7 << 20);
    upstream.put_image("library/app", Some("v1"), &image);
    let (layer_digest, wrong) = corrupted_layer(&image);
    let repo = MirrorRepo::new("mirror", vec![UpstreamEntry::new(&upstream.url())]);
    let server = mirror_on_bucket(&s3, "corrupt", &repo);
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    let path = format!("/v2/mirror/library/app/blobs/{layer_digest}");
    assert_wrong_bytes_never_served(&server, &upstream, &path, &layer_digest);
    let key = content_key("corrupt", &layer_digest);
    assert!(!s3.keys("corrupt").contains(&key), "wrong bytes became {key}");
    let uploads: Vec<String> = s3
        .keys("corrupt")
        .into_iter()
        .filter(|key| key.contains("/_uploads/"))
        .collect();
    assert!(uploads.is_empty(), "a wrong fill opened an upload: {uploads:?}");
    assert!(
        !stored_anywhere(&server.root, &wrong),
        "the wrong bytes stay on local disk"
    );

    upstream.set_fault(&layer_digest, None);
    let got = download(server.addr, &path, &[], true);
    assert!(got.is_valid(&layer_digest), "after the fault: {got:?}");
    let held = poll_until(SOON, || s3.keys("corrupt").contains(&key).then_some(()));
    assert!(held.is_some(), "the right bytes never reached the bucket");
    // Served from the bucket now, whole.
    let again = download(server.addr, &path, &[], true);
    assert!(again.is_valid(&layer_digest), "{again:?}");
}

#[test]
fn redirects_are_followed_without_forwarding_credentials_up_to_max_redirect() {
    let upstream = RedirectingUpstream::start_with(Some(("redirect-user", "redirect-secret")));
    let entry = UpstreamEntry::new(&upstream.url())
        .credentials("redirect-user", "redirect-secret")
        .line("max_redirect = 2");
    let server = mirror(&[MirrorRepo::new("mirror", vec![entry])]);
    for (n, status) in [307u16, 302, 301, 303, 308].into_iter().enumerate() {
        upstream.set_redirect_status(status);
        // Odd seeds: pseudo_random_bytes sets the lowest bit, so 2k and 2k+1 are one.
        let blob = pseudo_random_bytes(101 + 2 * n as u64, 300_000);
        let name = upstream.put_blob(blob);
        let got = download(
            server.addr,
            &format!("/v2/mirror/library/app/blobs/{name}"),
            &[],
            true,
        );
        assert!(got.is_valid(&name), "through a {status}: {got:?}");
        let redirected = upstream
            .seen()
            .iter()
            .filter(|s| s.side == Side::Front && s.status == status && s.target.ends_with(&name))
            .count();
        assert_eq!(redirected, 1, "one {status} for {name}: {:#?}", upstream.seen());
    }
    upstream.set_redirect_status(307);
    // Two redirects (front, one hop) are within max_redirect = 2.
    upstream.set_extra_hops(1);
    let name = upstream.put_blob(pseudo_random_bytes(201, 100_000));
    let got = download(
        server.addr,
        &format!("/v2/mirror/library/app/blobs/{name}"),
        &[],
        true,
    );
    assert!(got.is_valid(&name), "two redirects: {got:?}");
    // Six are not.
    upstream.set_extra_hops(5);
    let name = upstream.put_blob(pseudo_random_bytes(203, 100_000));
    let got = download(
        server.addr,
        &format!("/v2/mirror/library/app/blobs/{name}"),
        &[],
        true,
    );
    assert!(
        !got.is_valid(&name) && got.status != 200,
        "six redirects were followed: {got:?}\nthe upstream saw: {:#?}",
        upstream.seen()
    );

    assert_credentials_stay_home(&upstream);
}

// ---------------------------------------------------------------------------
// Around the cache: pushes, events, metrics, the admin API, naming
// ---------------------------------------------------------------------------

#[test]
fn pushes_and_deletes_to_a_mirrored_namespace_are_refused_with_401() {
    let upstream = RedirectingUpstream::start();
    let image = small_image("read only", 0);
    upstream.put_image("library/app", Some("v1"), &image);
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![UpstreamEntry::new(&upstream.url())],
    )]);
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    let blob = b"a blob pushed to a mirror".to_vec();
    let blob_digest = digest(&blob);
    let attempts: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "POST",
            "/v2/mirror/library/app/blobs/uploads/".to_string(),
            Vec::new(),
        ),
        (
            "POST",
            format!(
                "/v2/mirror/library/app/blobs/uploads/?digest={}",
                percent_encode(&blob_digest)
            ),
            blob.clone(),
        ),
        (
            "PATCH",
            "/v2/mirror/library/app/blobs/uploads/0f0f0f0f-0000-4000-8000-000000000000".to_string(),
            blob.clone(),
        ),
        (
            "PUT",
            "/v2/mirror/library/app/manifests/v2".to_string(),
            image.manifest.clone(),
        ),
        (
            "DELETE",
            format!("/v2/mirror/library/app/manifests/{}", image.digest),
            Vec::new(),
        ),
        (
            "DELETE",
            "/v2/mirror/library/app/manifests/v1".to_string(),
            Vec::new(),
        ),
        (
            "DELETE",
            format!("/v2/mirror/library/app/blobs/{}", digest(&image.config)),
            Vec::new(),
        ),
    ];
    for (method, path, body) in attempts {
        let content_type = if path.contains("/manifests/") {
            OCI_MANIFEST
        } else {
            "application/octet-stream"
        };
        let response = server.request(method, &path, &[("Content-Type", content_type)], &body);
        assert!(
            response.status == 401 && response.error_codes().iter().any(|c| c == "UNAUTHORIZED"),
            "{method} {path}: {}",
            response.describe()
        );
    }
    // Still there, and a namespace that is not mirrored takes pushes as before.
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    push_image(&server, "local/app", Some("v1"), "not mirrored");
}

#[test]
fn cache_fills_fire_events_with_the_cache_actor_and_client_pulls_fire_pull_events() {
    cache_events_arrive(Options::default());
}

#[test]
fn cache_fills_on_a_bucket_fire_events_with_the_cache_actor() {
    let s3 = S3Server::start();
    // A layer of two parts: the push into the bucket waits on its parts.
    cache_events_arrive(
        Options::default()
            .on_bucket(&s3, "events")
            .bucket_line("multipart_part_size = \"5MiB\""),
    );
}

/// Every cache fill is heard as a push by `actor.internal = "cache"`, every
/// client's pull as a pull.
fn cache_events_arrive(options: Options) {
    let receiver = webhook_support::Receiver::ok();
    let options = options
        .table(&format!(
            "[event_webhook.audit]\nurl = {}\npolicy = \"async\"\n\
             events = [\"manifest.push\", \"tag.create\", \"blob.push\", \"manifest.pull\", \"blob.pull\"]\n",
            json_str(&receiver.url("/events"))
        ))
        .global_line("event_webhooks = [\"audit\"]");
    let upstream = RedirectingUpstream::start();
    let image = small_image("events", 6 << 20);
    upstream.put_image("library/app", Some("v1"), &image);
    let server = mirror_with(
        options,
        &[MirrorRepo::new(
            "mirror",
            vec![UpstreamEntry::new(&upstream.url())],
        )],
    );
    assert_manifest(&server, "mirror/library/app", "v1", &image);
    assert_blobs(&server, "mirror/library/app", &image);

    let blobs: Vec<String> = image
        .layers
        .iter()
        .chain([&image.config])
        .map(|b| digest(b))
        .collect();
    let summary = |events: &[webhook_support::Request]| -> Vec<(String, String, Option<String>)> {
        events
            .iter()
            .map(|e| {
                let json = e.json();
                (
                    e.kind(),
                    json_at(&json, &["digest"]).as_str().unwrap_or("").to_string(),
                    json_at(&json, &["actor", "internal"]).as_str().map(String::from),
                )
            })
            .collect()
    };
    let has =
        |events: &[(String, String, Option<String>)], kind: &str, name: &str, internal: Option<&str>| {
            events
                .iter()
                .any(|(k, d, i)| k == kind && d == name && i.as_deref() == internal)
        };
    let complete = poll_until(SOON, || {
        let events = summary(&receiver.requests());
        let done = has(&events, "manifest.push", &image.digest, Some("cache"))
            && has(&events, "tag.create", &image.digest, Some("cache"))
            && blobs.iter().all(|b| has(&events, "blob.push", b, Some("cache")))
            && events
                .iter()
                .any(|(k, d, i)| k == "manifest.pull" && d == &image.digest && i.as_deref() != Some("cache"))
            && blobs.iter().all(|b| {
                events
                    .iter()
                    .any(|(k, d, i)| k == "blob.pull" && d == b && i.as_deref() != Some("cache"))
            });
        done.then_some(events)
    });
    assert!(
        complete.is_some(),
        "the events did not all arrive within {SOON:?}:\n{}",
        webhook_support::describe_all(&receiver.requests())
    );
}

#[test]
fn metrics_count_the_cache_and_the_admin_api_reports_upstream_health() {
    let mut upstream = RedirectingUpstream::start();
    let image = small_image("metrics", 64_000);
    upstream.put_image("library/app", Some("v1"), &image);
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![UpstreamEntry::new(&upstream.url())],
    )]);
    let states = admin_upstreams(&server);
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(json_at(&states[0], &["repository"]).as_str(), Some("mirror"));
    assert_eq!(
        json_at(&states[0], &["url"]).as_str(),
        Some(upstream.url().as_str())
    );

    // Misses, then hits.
    for _ in 0..2 {
        assert_manifest(&server, "mirror/library/app", &image.digest, &image);
        assert_blobs(&server, "mirror/library/app", &image);
    }
    let metrics = scrape(&server);
    let requests = |kind: &str, result: &str| {
        metric_sum(
            &metrics,
            "cache_requests_total",
            &[("kind", kind), ("result", result)],
        )
    };
    for (kind, result) in [
        ("manifest", "miss"),
        ("manifest", "hit"),
        ("blob", "miss"),
        ("blob", "hit"),
    ] {
        assert!(
            requests(kind, result) >= 1.0,
            "cache_requests_total{{{kind}, {result}}}:\n{metrics}"
        );
    }
    let fetched = metric_sum(&metrics, "cache_fetched_bytes_total", &[]);
    assert!(
        fetched >= image.layers[0].len() as f64,
        "cache_fetched_bytes_total {fetched}:\n{metrics}"
    );
    for family in ["cache_upstream_errors_total", "cache_fills_in_progress"] {
        assert!(metrics.contains(family), "no {family} in:\n{metrics}");
    }
    // The last fill may still be committing after its client's last byte.
    wait_for_metrics(&server, SOON, "no fill in progress", |text| {
        metric_sum(text, "cache_fills_in_progress", &[]) == 0.0
    });
    let states = admin_upstreams(&server);
    assert_eq!(json_at(&states[0], &["state"]).as_str(), Some("up"), "{states:?}");
    assert_eq!(json_at(&states[0], &["consecutive_failures"]).as_u64(), Some(0));
    assert_eq!(json_at(&states[0], &["last_error"]), &Json::Null);

    upstream.stop();
    get_manifest(&server, "mirror/library/app", "never-pulled").assert_error(502, "MANIFEST_UNKNOWN");
    let states = admin_upstreams(&server);
    assert_eq!(
        json_at(&states[0], &["state"]).as_str(),
        Some("down"),
        "{states:?}"
    );
    assert!(
        json_at(&states[0], &["consecutive_failures"]).as_u64() >= Some(1),
        "{states:?}"
    );
    assert!(
        json_at(&states[0], &["last_error"]).as_str().is_some(),
        "{states:?}"
    );
    let metrics = scrape(&server);
    assert!(
        metric_sum(&metrics, "cache_upstream_errors_total", &[]) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn an_upstream_url_with_a_path_prefixes_the_name_and_its_404_is_manifest_unknown() {
    let upstream = RedirectingUpstream::start();
    let image = small_image("prefixed", 0);
    upstream.put_image("team/app", Some("v1"), &image);
    let server = mirror(&[MirrorRepo::new(
        "mirror",
        vec![UpstreamEntry::new(&format!("{}/team", upstream.url()))],
    )]);
    // A HEAD miss fills too.
    let head = server.request(
        "HEAD",
        "/v2/mirror/app/manifests/v1",
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    );
    head.assert_status(200);
    assert_eq!(head.header("docker-content-digest"), Some(image.digest.as_str()));
    assert_manifest(&server, "mirror/app", "v1", &image);
    assert_blobs(&server, "mirror/app", &image);
    assert!(
        upstream.count(Side::Front, "GET", "/v2/team/app/manifests/v1")
            + upstream.count(Side::Front, "HEAD", "/v2/team/app/manifests/v1")
            >= 1
    );
    get_manifest(&server, "mirror/app", "no-such-tag").assert_error(404, "MANIFEST_UNKNOWN");
}

#[test]
fn retention_and_garbage_collection_apply_to_cached_content() {
    let upstream = RedirectingUpstream::start();
    let keep = small_image("retention-keep", 20_000);
    let drop = small_image("retention-drop", 30_000);
    upstream.put_image("library/app", Some("keep"), &keep);
    upstream.put_image("library/app", Some("drop"), &drop);
    let options = Options::default()
        .global_line("gc_grace_secs = 3600")
        .table("[repository.\"mirror\".retention_policy]\nrules = ['image.tag == \"keep\"']\n");
    let server = mirror_with(
        options,
        &[MirrorRepo::new(
            "mirror",
            vec![UpstreamEntry::new(&upstream.url())],
        )],
    );
    for (tag, image) in [("keep", &keep), ("drop", &drop)] {
        assert_manifest(&server, "mirror/library/app", tag, image);
        assert_blobs(&server, "mirror/library/app", image);
    }
    let layer = |image: &Image| digest(&image.layers[0]);
    assert_eq!(upstream.blob_fetches(&layer(&drop)), 1);

    // Retention removes the tag it does not keep (and the manifest left
    // untagged); a collection then removes the blobs nothing references,
    // once older than the grace period (the store is aged two hours).
    common::maintenance::age_store(&server.root, Duration::from_secs(2 * 3600));
    let pruned = common::maintenance::run_job(&server, "prune", "");
    assert!(
        json_at(&pruned, &["tags_removed"]).as_u64() >= Some(1),
        "{pruned:?}"
    );
    let collected = common::maintenance::run_job(&server, "gc", "");
    assert!(
        json_at(&collected, &["report", "contents_removed"]).as_u64() >= Some(2),
        "the dropped image's layer and config: {collected:?}"
    );

    // What was kept is still served from the cache, with no upstream fetch.
    assert_blobs(&server, "mirror/library/app", &keep);
    assert_eq!(
        upstream.blob_fetches(&layer(&keep)),
        1,
        "kept content stays cached"
    );
    // What was removed is a miss again: fetched from the upstream anew.
    assert_eq!(upstream.count(Side::Front, "GET", "/manifests/drop"), 1);
    assert_manifest(&server, "mirror/library/app", "drop", &drop);
    assert_eq!(upstream.count(Side::Front, "GET", "/manifests/drop"), 2);
    assert_blobs(&server, "mirror/library/app", &drop);
    assert_eq!(
        upstream.blob_fetches(&layer(&drop)),
        2,
        "the collected layer is fetched again"
    );
}

#[test]
fn access_lists_apply_to_mirrored_content() {
    let upstream = RedirectingUpstream::start();
    let image = small_image("private mirror", 0);
    upstream.put_image("library/app", Some("v1"), &image);
    let options = Options::default()
        .table(&identity_table("alice", "alice", "wonderland"))
        .table(&identity_table("bob", "bob", "builder"));
    let server = mirror_with(
        options,
        &[MirrorRepo::new("mirror", vec![UpstreamEntry::new(&upstream.url())]).line("pull = [\"alice\"]")],
    );
    let path = "/v2/mirror/library/app/manifests/v1";
    let accept = ("Accept", ACCEPT_MANIFESTS);
    let anonymous = server.request("GET", path, &[accept], b"");
    anonymous.assert_status(401);
    let bob = basic_auth("bob", "builder");
    let refused = server.request("GET", path, &[accept, ("Authorization", &bob)], b"");
    assert!(matches!(refused.status, 401 | 403), "{}", refused.describe());
    // Refused requests never reached the upstream.
    assert_eq!(
        upstream.count(Side::Front, "GET", "/manifests/v1"),
        0,
        "{:?}",
        upstream.seen()
    );
    let alice = basic_auth("alice", "wonderland");
    let allowed = server.request("GET", path, &[accept, ("Authorization", &alice)], b"");
    allowed.assert_status(200);
    assert_eq!(allowed.body, image.manifest);
}

// ---------------------------------------------------------------------------
// The helpers on their own (no mirror): these pass before the cache exists
// ---------------------------------------------------------------------------

#[test]
fn helper_distribution_starts_with_htpasswd_and_accepts_a_push() {
    let registry = Distribution::start("helper-user", "helper-secret");
    let anonymous = Target::new(registry.addr, None).get("/v2/");
    assert_eq!(
        anonymous.status,
        401,
        "{}\nits log:\n{}",
        anonymous.describe(),
        registry.log()
    );
    let image = small_image("helper distribution", 10_000);
    registry.target().push("library/app", Some("v1"), &image);
    assert_eq!(
        registry.target().manifest_digest("library/app", "v1"),
        image.digest
    );
    let blob = registry
        .target()
        .get(&format!("/v2/library/app/blobs/{}", digest(&image.layers[0])));
    blob.assert_status(200);
    assert!(blob.body == image.layers[0]);
}

#[test]
fn helper_distribution_over_tls_accepts_a_skopeo_push_with_the_test_ca() {
    let ca = TestCa::generate();
    let registry =
        Distribution::start_with("tls-user", "tls-secret", Some((&ca.server_cert, &ca.server_key)));
    let certs = TempDir::new("helper-certs");
    std::fs::copy(&ca.ca_pem, certs.path().join("ca.crt")).unwrap();
    let image = small_image("helper distribution tls", 10_000);
    registry.push_with_skopeo("library/app", "v1", &image, Some(certs.path()));
    let cert_dir = certs.path().display().to_string();
    let inspected = skopeo(
        &[
            "inspect",
            "--cert-dir",
            &cert_dir,
            "--creds",
            "tls-user:tls-secret",
            "--format",
            "{{.Digest}}",
            &format!("docker://{}/library/app:v1", registry.host()),
        ],
        certs.path(),
    );
    assert_eq!(expect_success(&inspected, "skopeo inspect").trim(), image.digest);
}

#[test]
fn helper_angos_upstream_challenges_with_a_bearer_realm_and_takes_the_writer_pushes() {
    let ca = TestCa::generate();
    let upstream = AngosUpstream::start(&["library"], Some((&ca.server_cert, &ca.server_key)));
    assert!(upstream.url().starts_with("https://127.0.0.1:"));
    let challenge = upstream.server.get("/v2/library/app/manifests/v1");
    challenge.assert_status(401);
    assert!(
        challenge
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer realm=\"")),
        "{}",
        challenge.describe()
    );
    let image = small_image("helper angos", 10_000);
    upstream.writer().push("library/app", Some("v1"), &image);
    assert_eq!(
        upstream.reader().manifest_digest("library/app", "v1"),
        image.digest
    );
    let toml = MirrorRepo::new("mirror", vec![upstream.entry(Some(&ca.ca_pem))])
        .namespace("docker.io")
        .toml();
    assert!(toml.contains("[[repository.\"mirror\".upstream]]"), "{toml}");
    assert!(
        toml.contains(&format!("username = \"{}\"", UPSTREAM_READER.0)),
        "{toml}"
    );
}

#[test]
fn helper_redirecting_upstream_serves_redirects_counts_and_breaks_on_demand() {
    let mut upstream = RedirectingUpstream::start_with(Some(("u", "p")));
    let image = small_image("helper redirect", 1 << 20);
    upstream.put_image("library/app", Some("v1"), &image);
    let with = Target::new(upstream.front(), Some(basic_auth("u", "p")));
    let without = Target::new(upstream.front(), None);
    without.get("/v2/").assert_status(401);
    with.get("/v2/").assert_status(200);
    assert_eq!(with.manifest_digest("library/app", "v1"), image.digest);
    let layer = digest(&image.layers[0]);
    let redirect = with.get(&format!("/v2/library/app/blobs/{layer}?ns=docker.io"));
    redirect.assert_status(307);
    let location = redirect.expect_header("location").to_string();
    assert!(
        location.starts_with(&format!("http://{}/data/", upstream.back())),
        "{location}"
    );
    let got = download(upstream.back(), &url_path(&location), &[], true);
    assert!(got.is_valid(&layer), "{got:?}");
    assert_eq!(upstream.blob_fetches(&layer), 1);
    assert_eq!(upstream.count(Side::Front, "GET", &layer), 1);
    assert!(
        upstream
            .seen()
            .iter()
            .any(|s| s.target.ends_with("?ns=docker.io"))
    );

    upstream.set_fault(&layer, Some(BlobFault::WrongBytes));
    let got = download(upstream.back(), &url_path(&location), &[], true);
    assert!(
        got.status == 200 && got.complete && !got.is_valid(&layer),
        "{got:?}"
    );
    upstream.set_fault(&layer, Some(BlobFault::CloseAfter(1000)));
    let got = download(upstream.back(), &url_path(&location), &[], true);
    assert!(!got.complete && got.bytes == 1000, "{got:?}");
    upstream.set_fault(&layer, None);

    // Served by the front itself, when asked.
    upstream.set_no_redirect(true);
    let got = download(
        upstream.front(),
        &format!("/v2/library/app/blobs/{layer}"),
        &[("Authorization", &basic_auth("u", "p"))],
        true,
    );
    assert!(got.is_valid(&layer), "{got:?}");
    upstream.set_no_redirect(false);

    upstream.set_extra_hops(2);
    let redirect = with.get(&format!("/v2/library/app/blobs/{layer}"));
    let hop = url_path(redirect.expect_header("location"));
    assert!(hop.starts_with("/hop/2/"), "{hop}");

    // 2 MiB/s: a 1 MiB blob takes about half a second.
    upstream.set_rate(2 << 20);
    let got = download(upstream.back(), &url_path(&location), &[], true);
    assert!(
        got.is_valid(&layer) && got.elapsed >= Duration::from_millis(300),
        "{got:?}"
    );

    upstream.stop();
    assert!(std::net::TcpStream::connect(upstream.front()).is_err());
    assert!(std::net::TcpStream::connect(upstream.back()).is_err());
}

#[test]
fn helper_redirecting_upstream_behind_socat_answers_over_https_with_the_test_ca() {
    let ca = TestCa::generate();
    let upstream = RedirectingUpstream::start_with(Some(("u", "p")));
    let image = small_image("helper socat", 10_000);
    upstream.put_image("library/app", Some("v1"), &image);
    let tls = TlsTerminator::start(upstream.front(), &ca.server_cert, &ca.server_key);
    let certs = TempDir::new("helper-socat-certs");
    std::fs::copy(&ca.ca_pem, certs.path().join("ca.crt")).unwrap();
    let cert_dir = certs.path().display().to_string();
    let inspected = skopeo(
        &[
            "inspect",
            "--raw",
            "--cert-dir",
            &cert_dir,
            "--creds",
            "u:p",
            &format!("docker://{}/library/app:v1", tls.addr),
        ],
        certs.path(),
    );
    let raw = expect_success(&inspected, "skopeo inspect --raw over socat's TLS");
    assert_eq!(raw.as_bytes(), image.manifest.as_slice());
}

#[test]
fn helper_containerd_pulls_from_a_hosts_toml_mirror_with_ns() {
    let containerd = match Containerd::start() {
        Ok(containerd) => containerd,
        Err(why) => {
            eprintln!("SKIPPED helper_containerd_pulls_from_a_hosts_toml_mirror_with_ns: {why}");
            return;
        }
    };
    // The redirecting upstream itself as the mirror: it ignores the query, so this
    // checks containerd, the hosts directory and the runnable image alone.
    let upstream = RedirectingUpstream::start();
    let image = runnable_image("helper ctr");
    upstream.put_image("library/hello", Some("1.0"), &image);
    let work = TempDir::new("helper-ctr");
    let hosts = write_hosts_dir(work.path(), "docker.io", upstream.front());
    let reference = "docker.io/library/hello:1.0";
    let pulled = containerd.pull(&hosts, reference);
    assert!(
        pulled.status.success(),
        "ctr pull: {}{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&pulled.stdout),
        String::from_utf8_lossy(&pulled.stderr),
        containerd.log()
    );
    assert_eq!(
        containerd.image_digest(reference).as_deref(),
        Some(image.digest.as_str())
    );
    let manifest_requests: Vec<Seen> = upstream
        .seen()
        .into_iter()
        .filter(|s| s.target.contains("/manifests/"))
        .collect();
    assert!(!manifest_requests.is_empty());
    assert!(
        manifest_requests
            .iter()
            .all(|s| s.target.contains("ns=docker.io")),
        "{manifest_requests:?}"
    );
}
