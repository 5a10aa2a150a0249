//! The Python side of the webhook tests: the seed's `verify_signature`, copied
//! verbatim, run by `python3` over recorded deliveries; a test CA made with the
//! `openssl` command line (server certificates, and client certificates for mutual
//! TLS); and an HTTPS receiver (`http.server` + `ssl`), optionally requiring a client
//! certificate from the test CA, that verifies each signed delivery with that same
//! function and records every request to a JSON-lines file. Nothing here may reimplement the verification in Rust:
//! the point is that the user's own snippet accepts what the server sends.

use crate::common::{Json, TempDir};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The seed's Python verifier (`configure-event-webhooks.md`, "Verify HMAC
/// Signatures"), byte for byte, up to the Flask usage example.
pub const SEED_VERIFY_SIGNATURE: &str = r#"import hashlib
import hmac

def verify_signature(secret: str, body: bytes, signature_header: str) -> bool:
    """Verify X-Registry-Signature-256 header."""
    if not signature_header.startswith("sha256="):
        return False

    expected = hmac.new(
        secret.encode(),
        body,
        hashlib.sha256
    ).hexdigest()

    received = signature_header[len("sha256="):]
    return hmac.compare_digest(expected, received)
"#;

/// Reads JSON lines `{"secret", "signature", "body_hex"}` and prints `True` or
/// `False` per line, as the seed's function answers.
const VERIFY_SCRIPT_TAIL: &str = r#"
import json
import sys

for line in open(sys.argv[1], encoding="utf-8"):
    record = json.loads(line)
    print(verify_signature(record["secret"], bytes.fromhex(record["body_hex"]), record["signature"]))
"#;

/// The HTTPS receiver; argv: cert, key, output file, secret (or ""), and the CA
/// file client certificates must chain to (or "" for no client certificate).
const HTTPS_RECEIVER_TAIL: &str = r#"
import base64
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CERT, KEY, OUT, SECRET, CLIENT_CA = sys.argv[1:6]
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_POST(self):
        body = self.read_body()
        signature = self.headers.get("X-Registry-Signature-256")
        verified = None
        if SECRET:
            verified = verify_signature(SECRET, body, signature or "")
        # The client certificate's subject CN, when the handshake verified one.
        peer = self.connection.getpeercert() or {}
        client_cn = None
        for rdn in peer.get("subject", ()):
            for name, value in rdn:
                if name == "commonName":
                    client_cn = value
        record = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_b64": base64.b64encode(body).decode("ascii"),
            "signature_ok": verified,
            "client_cn": client_cn,
        }
        with LOCK:
            with open(OUT, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format, *args):
        sys.stderr.write("https receiver: " + (format % args) + "\n")


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
if CLIENT_CA:
    # Mutual TLS: a handshake without a client certificate from CLIENT_CA fails
    # (in accept, so nothing is recorded and the server keeps serving).
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(CLIENT_CA)
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
server.socket = context.wrap_socket(server.socket, server_side=True)
print("PORT", server.server_address[1], flush=True)
server.serve_forever()
"#;

/// How long `python3` and `openssl` may take for one step.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

fn tool_missing(name: &str, package: &str, error: &std::io::Error) -> ! {
    panic!(
        "cannot run `{name}` ({error}); these tests need it: install the Debian package \
         `{package}` (apt-get install -y {package}); scripts/test.sh does"
    )
}

/// The seed's function over each `(secret, body, signature header)`: what it answered.
pub fn python_verify(deliveries: &[(String, Vec<u8>, String)]) -> Vec<bool> {
    let dir = TempDir::new("verify");
    let script = dir.path().join("verify.py");
    std::fs::write(&script, format!("{SEED_VERIFY_SIGNATURE}{VERIFY_SCRIPT_TAIL}")).unwrap();
    let mut input = String::new();
    for (secret, body, signature) in deliveries {
        let mut hex = String::with_capacity(body.len() * 2);
        for b in body {
            let _ = write!(hex, "{b:02x}");
        }
        let _ = writeln!(
            input,
            "{{\"secret\":{},\"signature\":{},\"body_hex\":\"{hex}\"}}",
            crate::common::json_str(secret),
            crate::common::json_str(signature)
        );
    }
    let data = dir.path().join("deliveries.jsonl");
    std::fs::write(&data, input).unwrap();
    let output = Command::new("python3")
        .arg(&script)
        .arg(&data)
        .output()
        .unwrap_or_else(|e| tool_missing("python3", "python3", &e));
    assert!(
        output.status.success(),
        "the Python verifier failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<bool> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| match line.trim() {
            "True" => true,
            "False" => false,
            other => panic!("unexpected verifier output {other:?}"),
        })
        .collect();
    assert_eq!(answers.len(), deliveries.len(), "one answer per delivery");
    answers
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| tool_missing("openssl", "openssl", &e));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn openssl_in(dir: &Path) -> Command {
    let mut command = Command::new("openssl");
    command.current_dir(dir);
    command
}

/// A P-256 private key (fast to make, and what rustls and Python both take).
fn new_key(dir: &Path, file: &str) {
    let args = [
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        file,
    ];
    run(openssl_in(dir).args(args), &format!("openssl genpkey ({file})"));
}

/// In `dir`, where the CA's `ca.pem` and `ca.key` are: a P-256 key
/// `STEM.key`, and `STEM.pem` for CN `common_name` signed by the CA with the
/// extensions of `ext_file`.
fn issue(dir: &Path, stem: &str, common_name: &str, ext_file: &str) {
    let (key, csr, cert) = (
        format!("{stem}.key"),
        format!("{stem}.csr"),
        format!("{stem}.pem"),
    );
    new_key(dir, &key);
    run(
        openssl_in(dir).args([
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={common_name}"),
            "-out",
            &csr,
        ]),
        &format!("openssl req ({stem} CSR)"),
    );
    run(
        openssl_in(dir).args([
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            ext_file,
            "-out",
            &cert,
        ]),
        &format!("openssl x509 -req ({stem} certificate)"),
    );
}

/// A client certificate and its key, signed by a `TestCa`.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The subject common name, as the HTTPS receiver records it.
    pub cn: String,
}

/// A throw-away CA and a server certificate it signed for `IP:127.0.0.1` and
/// `DNS:localhost`, made with the `openssl` command line (P-256 keys: fast). It
/// issues client certificates on demand (`issue_client`).
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    dir: TempDir,
}

impl TestCa {
    pub fn generate() -> TestCa {
        let dir = TempDir::new("test-ca");
        let p = |name: &str| dir.path().join(name);
        std::fs::write(
            p("ca.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
             [dn]\nCN = angos webhook test CA\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
        )
        .unwrap();
        std::fs::write(
            p("server.ext"),
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n\
             subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
        )
        .unwrap();
        new_key(dir.path(), "ca.key");
        run(
            openssl_in(dir.path()).args([
                "req", "-x509", "-new", "-key", "ca.key", "-config", "ca.cnf", "-days", "2", "-sha256",
                "-out", "ca.pem",
            ]),
            "openssl req -x509 (CA)",
        );
        issue(dir.path(), "server", "localhost", "server.ext");
        TestCa {
            ca_pem: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            dir,
        }
    }

    /// A client certificate (`extendedKeyUsage = clientAuth`) for CN `name`,
    /// signed by this CA, as `NAME.pem` and `NAME.key` in the CA's directory.
    pub fn issue_client(&self, name: &str) -> ClientCert {
        let dir = self.dir.path();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = clientAuth\n\
             subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
        )
        .unwrap();
        issue(dir, name, name, "client.ext");
        ClientCert {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            cn: name.to_string(),
        }
    }
}

/// One request the HTTPS receiver recorded.
#[derive(Clone, Debug)]
pub struct HttpsRecord {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the seed's `verify_signature` answered; `None` when the receiver has no
    /// secret.
    pub signature_ok: Option<bool>,
    /// The CN of the client certificate the handshake verified, if any.
    pub client_cn: Option<String>,
}

impl HttpsRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Json {
        Json::parse(&String::from_utf8_lossy(&self.body))
            .unwrap_or_else(|e| panic!("HTTPS delivery body is not JSON ({e}): {:?}", self.body))
    }
}

/// The Python HTTPS receiver, a child process killed on drop.
pub struct HttpsReceiver {
    child: Child,
    pub port: u16,
    records: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

impl HttpsReceiver {
    /// Serves with `ca`'s server certificate; signed deliveries are checked with
    /// `secret` when given.
    pub fn start(ca: &TestCa, secret: Option<&str>) -> HttpsReceiver {
        HttpsReceiver::spawn(ca, secret, None)
    }

    /// Like `start`, and requires mutual TLS: a client certificate signed by
    /// `ca` (`TestCa::issue_client`), or the handshake fails.
    pub fn start_mtls(ca: &TestCa, secret: Option<&str>) -> HttpsReceiver {
        HttpsReceiver::spawn(ca, secret, Some(&ca.ca_pem))
    }

    fn spawn(ca: &TestCa, secret: Option<&str>, client_ca: Option<&Path>) -> HttpsReceiver {
        let dir = TempDir::new("https-receiver");
        let script = dir.path().join("receiver.py");
        std::fs::write(&script, format!("{SEED_VERIFY_SIGNATURE}{HTTPS_RECEIVER_TAIL}")).unwrap();
        let records = dir.path().join("records.jsonl");
        let stderr = dir.path().join("stderr.txt");
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(&script)
            .arg(&ca.server_cert)
            .arg(&ca.server_key)
            .arg(&records)
            .arg(secret.unwrap_or(""))
            .arg(client_ca.unwrap_or(Path::new("")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| tool_missing("python3", "python3", &e));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(TOOL_TIMEOUT).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the HTTPS receiver did not start (first line {line:?}); stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        HttpsReceiver {
            child,
            port,
            records,
            stderr,
            _dir: dir,
        }
    }

    /// `https://<host>:<port><path>`.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    /// Every complete record so far.
    pub fn records(&self) -> Vec<HttpsRecord> {
        let text = std::fs::read_to_string(&self.records).unwrap_or_default();
        text.lines()
            .filter(|line| line.ends_with('}'))
            .map(|line| {
                let json = Json::parse(line).unwrap_or_else(|e| panic!("bad record {line:?}: {e}"));
                let headers = json
                    .get("headers")
                    .and_then(Json::as_array)
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|pair| {
                                let pair = pair.as_array()?;
                                Some((
                                    pair.first()?.as_str()?.to_string(),
                                    pair.get(1)?.as_str()?.to_string(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                HttpsRecord {
                    path: json
                        .get("path")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    headers,
                    body: base64_decode(json.get("body_b64").and_then(Json::as_str).unwrap_or_default()),
                    signature_ok: match json.get("signature_ok") {
                        Some(Json::Bool(b)) => Some(*b),
                        _ => None,
                    },
                    client_cn: json.get("client_cn").and_then(Json::as_str).map(str::to_string),
                }
            })
            .collect()
    }

    /// Waits until at least `n` records exist; `None` on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Option<Vec<HttpsRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if records.len() >= n {
                return Some(records);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the receiver printed on stderr (its access log and TLS errors).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (RFC 4648 section 4), padding optional.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c:?}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for group in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in group.iter().enumerate() {
            acc |= value(c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}
