//! HTTPS on the reactor: TLS and plain HTTP on separate listeners, real OCI
//! clients over HTTPS with a test CA, a certificate replaced on disk served
//! on the next handshake without a restart, and a client that stalls its
//! handshake delaying no one.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use webhook_support::python::TestCa;

/// Starts a server with `[server.tls]` on its own (ephemeral) port.
fn start_tls(ca: &TestCa, extra: &[&str]) -> (Server, SocketAddr) {
    let mut options = Options::default();
    for line in extra {
        options = options.server_line(line);
    }
    start_tls_with(ca, options)
}

fn start_tls_with(ca: &TestCa, options: Options) -> (Server, SocketAddr) {
    let options = options.server_line(&format!(
        "tls = {{ server_certificate_bundle = \"{}\", server_private_key = \"{}\", port = 0 }}",
        ca.server_cert.display(),
        ca.server_key.display()
    ));
    let server = Server::start_with(&options);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = server.logs().iter().find_map(|line| {
            let rest = line.split("listening for HTTPS on ").nth(1)?;
            rest.trim().parse::<SocketAddr>().ok()
        });
        if let Some(addr) = found {
            return (server, addr);
        }
        assert!(
            Instant::now() < deadline,
            "no HTTPS listening line: {:?}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client_config(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One request over a fresh TLS connection; the status and body, or the TLS error.
fn https_request(
    addr: SocketAddr,
    ca_pem: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let connection =
        rustls::ClientConnection::new(client_config(ca_pem), ServerName::try_from("localhost").unwrap())
            .map_err(|error| error.to_string())?;
    let socket = TcpStream::connect(addr).map_err(|error| error.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .map_err(|error| error.to_string())?;
    stream.write_all(body).map_err(|error| error.to_string())?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // Some peers close without close_notify after `Connection: close`.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(error) => return Err(error.to_string()),
    }
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or(response.len());
    Ok((status, response[(split + 4).min(response.len())..].to_vec()))
}

#[test]
fn https_and_plain_http_are_served_on_separate_listeners() {
    let ca = TestCa::generate();
    let (server, https) = start_tls(&ca, &[]);
    server.get("/v2/").assert_status(200);
    let (status, body) = https_request(https, &ca.ca_pem, "GET", "/v2/", b"").unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));

    // A blob pushed over HTTPS is read back over both listeners.
    let blob = pseudo_random_bytes(7, 3 << 20);
    let digest = format!("sha256:{}", sha256_hex(&blob));
    let (status, _) = https_request(
        https,
        &ca.ca_pem,
        "POST",
        &format!("/v2/tls/app/blobs/uploads/?digest={digest}"),
        &blob,
    )
    .unwrap();
    assert_eq!(status, 201);
    let (status, body) = https_request(
        https,
        &ca.ca_pem,
        "GET",
        &format!("/v2/tls/app/blobs/{digest}"),
        b"",
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        body == blob,
        "the blob read over HTTPS differs ({} bytes)",
        body.len()
    );
    let plain = server.get(&format!("/v2/tls/app/blobs/{digest}"));
    plain.assert_status(200);
    assert!(plain.body == blob);

    // The HTTPS port does not speak plain HTTP, and a client that does not
    // trust the certificate is refused.
    let other_ca = TestCa::generate();
    let refused = https_request(https, &other_ca.ca_pem, "GET", "/v2/", b"").unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
}

#[test]
fn skopeo_pushes_and_pulls_over_https_with_the_test_ca() {
    let ca = TestCa::generate();
    let (_server, https) = start_tls(&ca, &[]);
    let work = TempDir::new("skopeo-tls");
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca.ca_pem, certs.join("ca.crt")).unwrap();
    let layout = work.path().join("layout");
    build_oci_layout(&layout, "v1");
    let destination = format!("docker://localhost:{}/secure/app:v1", https.port());
    let push = Command::new("skopeo")
        .args(["copy", "--dest-cert-dir"])
        .arg(&certs)
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&destination)
        .output()
        .expect("skopeo is installed (scripts/test.sh installs it)");
    assert!(
        push.status.success(),
        "skopeo push over HTTPS: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    let copy = work.path().join("copy");
    let pull = Command::new("skopeo")
        .args(["copy", "--src-cert-dir"])
        .arg(&certs)
        .arg(&destination)
        .arg(format!("oci:{}:v1", copy.display()))
        .output()
        .unwrap();
    assert!(
        pull.status.success(),
        "skopeo pull over HTTPS: {}",
        String::from_utf8_lossy(&pull.stderr)
    );
    // Without the CA, skopeo refuses the certificate.
    let untrusted = Command::new("skopeo")
        .args(["inspect", "--raw", &destination])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
}

/// A PBKDF2 hash cheap enough for the debug build under test.
fn password_hash(password: &str) -> String {
    angos::auth::password::PasswordHash::generate(password.as_bytes(), b"skopeo-salt", 10_000).to_string()
}

#[test]
fn skopeo_pushes_with_credentials_over_https_and_bad_ones_store_nothing() {
    let ca = TestCa::generate();
    let auth = format!(
        "[auth.identity.ci]\nusername = \"ci-bot\"\npassword = \"{}\"\n\
         [auth.identity.alice]\nusername = \"alice\"\npassword = \"{}\"\n\
         [repository.\"secure\"]\npush = [\"ci\"]\n[repository.\"public\"]\npull = [\"*\"]\n",
        password_hash("pipeline"),
        password_hash("wonderland")
    );
    let (server, https) = start_tls_with(&ca, Options::default().table(&auth));
    let work = TempDir::new("skopeo-auth");
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca.ca_pem, certs.join("ca.crt")).unwrap();
    let layout = work.path().join("layout");
    build_oci_layout(&layout, "v1");
    let source = format!("oci:{}:v1", layout.display());
    let push = |destination: &str, creds: Option<&str>| {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--dest-cert-dir"]).arg(&certs);
        match creds {
            Some(creds) => command.args(["--dest-creds", creds]),
            None => command.arg("--dest-no-creds"),
        };
        command
            .arg(&source)
            .arg(format!("docker://localhost:{}/{destination}", https.port()))
            .env("REGISTRY_AUTH_FILE", work.path().join("no-auth.json"))
            .output()
            .expect("skopeo is installed (scripts/test.sh installs it)")
    };
    let pull = |source: &str, creds: Option<&str>, into: &str| {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--src-cert-dir"]).arg(&certs);
        match creds {
            Some(creds) => command.args(["--src-creds", creds]),
            None => command.arg("--src-no-creds"),
        };
        command
            .arg(format!("docker://localhost:{}/{source}", https.port()))
            .arg(format!("oci:{}:v1", work.path().join(into).display()))
            .env("REGISTRY_AUTH_FILE", work.path().join("no-auth.json"))
            .output()
            .unwrap()
    };

    let pushed = push("secure/app:v1", Some("ci-bot:pipeline"));
    assert!(
        pushed.status.success(),
        "skopeo push with --dest-creds: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    // Wrong password, unknown user, a user without push rights, no credentials.
    for (tag, creds) in [
        ("wrong", Some("ci-bot:guess")),
        ("unknown", Some("mallory:pipeline")),
        ("alice", Some("alice:wonderland")),
        ("anonymous", None),
    ] {
        let refused = push(&format!("secure/app:{tag}"), creds);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{tag}: the push succeeded");
        // Each refusal names its cause (tests/refusals.rs covers the wording).
        let expected = match tag {
            "alice" => "alice may not push to secure/app",
            "anonymous" => "authentication required to",
            _ => "incorrect username or password",
        };
        assert!(stderr.contains(expected), "{tag}: {stderr}");
    }
    // Nothing of the refused pushes was stored: only the ci push's tag exists.
    let tags = server.request(
        "GET",
        "/v2/secure/app/tags/list",
        &[("Authorization", "Basic Y2ktYm90OnBpcGVsaW5l")],
        b"",
    );
    tags.assert_status(200);
    assert_eq!(tags.json().string_list("tags"), ["v1"]);

    // Pulls: secure needs a login; public is open to anyone.
    let pulled = pull("secure/app:v1", Some("alice:wonderland"), "alice-copy");
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let refused = pull("secure/app:v1", None, "anonymous-copy");
    assert!(!refused.status.success());
    let pushed = push("public/app:v1", Some("alice:wonderland"));
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let pulled = pull("public/app:v1", None, "public-copy");
    assert!(
        pulled.status.success(),
        "anonymous pull from public: {}",
        String::from_utf8_lossy(&pulled.stderr)
    );
}

#[test]
fn a_certificate_replaced_on_disk_is_served_on_the_next_handshake() {
    let first = TestCa::generate();
    let (server, https) = start_tls(&first, &[]);
    assert_eq!(
        https_request(https, &first.ca_pem, "GET", "/healthz", b"")
            .unwrap()
            .0,
        200
    );

    // Rotate: a certificate from another CA replaces the files in place
    // (written aside, then renamed, as certificate tools do).
    let second = TestCa::generate();
    for (from, to) in [
        (&second.server_key, &first.server_key),
        (&second.server_cert, &first.server_cert),
    ] {
        let aside = to.with_extension("new");
        std::fs::copy(from, &aside).unwrap();
        std::fs::rename(&aside, to).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .logs()
        .iter()
        .any(|line| line.contains("TLS certificate reloaded"))
    {
        assert!(Instant::now() < deadline, "no reload: {:?}", server.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        https_request(https, &second.ca_pem, "GET", "/healthz", b"")
            .unwrap()
            .0,
        200
    );
    let stale = https_request(https, &first.ca_pem, "GET", "/healthz", b"").unwrap_err();
    assert!(stale.contains("certificate"), "{stale}");
}

#[test]
fn a_stalled_handshake_delays_no_one_and_is_cut_off() {
    let ca = TestCa::generate();
    let (server, https) = start_tls(&ca, &["header_timeout_ms = 1000"]);
    // Half a ClientHello, then silence.
    let mut stalled = TcpStream::connect(https).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    let mut silent = TcpStream::connect(https).unwrap();
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            https_request(https, &ca.ca_pem, "GET", "/v2/", b"").unwrap().0,
            200
        );
        server.get("/v2/").assert_status(200);
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "others waited {:?}",
        started.elapsed()
    );
    // The header timeout bounds the handshake: both stalled sockets are closed.
    for socket in [&mut stalled, &mut silent] {
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buffer = [0u8; 64];
        // An alert may come first; then the end of the stream (or a reset).
        let closed = loop {
            match socket.read(&mut buffer) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "a stalled handshake was not closed");
    }
    assert!(started.elapsed() >= Duration::from_millis(800));
}

/// A one-layer OCI image layout tagged `tag` (skopeo copies blobs as they are).
fn build_oci_layout(layout: &Path, tag: &str) {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let write = |content: &[u8]| -> (String, usize) {
        let hex = sha256_hex(content);
        std::fs::write(blobs.join(&hex), content).unwrap();
        (format!("sha256:{hex}"), content.len())
    };
    let (layer, layer_size) = write(&pseudo_random_bytes(11, 200_000));
    let (config, config_size) =
        write(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = write(manifest.as_bytes());
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#
        ),
    )
    .unwrap();
}

/// A self-signed certificate for `localhost` valid from `start` to `end`
/// (`YYYYMMDDHHMMSSZ`), made with `openssl ca` (the only way the openssl
/// command line sets arbitrary dates), as `STEM.pem` and `STEM.key` in `dir`.
fn dated_certificate(dir: &Path, stem: &str, start: &str, end: &str) {
    let ca = dir.join(format!("{stem}-ca"));
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::write(ca.join("index.txt"), b"").unwrap();
    std::fs::write(ca.join("serial"), b"01\n").unwrap();
    std::fs::write(
        ca.join("ca.cnf"),
        "[ca]\ndefault_ca = here\n[here]\ndatabase = index.txt\nserial = serial\nnew_certs_dir = .\n\
         default_md = sha256\npolicy = anything\nemail_in_dn = no\nx509_extensions = leaf\n\
         [anything]\ncommonName = supplied\n\
         [leaf]\nbasicConstraints = critical,CA:FALSE\nsubjectAltName = DNS:localhost\n",
    )
    .unwrap();
    let key = dir.join(format!("{stem}.key"));
    let run = |command: &mut Command| {
        let output = command.current_dir(&ca).output().expect("run openssl");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-out",
            "req.csr",
            "-keyout",
        ])
        .arg(&key));
    run(Command::new("openssl")
        .args([
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-in",
            "req.csr",
            "-startdate",
            start,
            "-enddate",
            end,
            "-keyfile",
        ])
        .arg(&key)
        .arg("-out")
        .arg(dir.join(format!("{stem}.pem"))));
}

#[test]
fn expired_and_future_certificates_load_with_a_warning_and_a_metric() {
    let dir = TempDir::new("dated-certificates");
    dated_certificate(dir.path(), "expired", "20200101000000Z", "20200102000000Z");
    dated_certificate(dir.path(), "future", "20990101000000Z", "20990102000000Z");
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::copy(dir.path().join("expired.pem"), &cert).unwrap();
    std::fs::copy(dir.path().join("expired.key"), &key).unwrap();
    let server = Server::start_with(&Options::default().server_line(&format!(
        "tls = {{ server_certificate_bundle = \"{}\", server_private_key = \"{}\", port = 0 }}",
        cert.display(),
        key.display()
    )));
    let file = cert.display().to_string();
    webhook_support::wait_for_log(
        &server,
        Duration::from_secs(5),
        "about the expired certificate",
        |line| {
            line.contains("WARN") && line.contains(&format!("certificate {file} expired on Thu, 02 Jan 2020"))
        },
    );
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "tls_certificate_not_after_seconds{{file=\"{file}\"}} 1577923200"
        )),
        "{metrics}"
    );
    // Replaced in place by one that is not valid yet: reloaded, with a warning.
    std::fs::copy(dir.path().join("future.key"), dir.path().join("next.key")).unwrap();
    std::fs::copy(dir.path().join("future.pem"), dir.path().join("next.pem")).unwrap();
    std::fs::rename(dir.path().join("next.key"), &key).unwrap();
    std::fs::rename(dir.path().join("next.pem"), &cert).unwrap();
    webhook_support::wait_for_log(
        &server,
        Duration::from_secs(10),
        "about the future certificate",
        |line| {
            line.contains("WARN")
                && line.contains(&format!(
                    "certificate {file} is not valid yet (from Thu, 01 Jan 2099"
                ))
        },
    );
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "tls_certificate_not_before_seconds{{file=\"{file}\"}} 4070908800"
        )),
        "{metrics}"
    );
}
