//! Authentication and access control over real sockets: Basic credentials,
//! per-repository pull/push/delete lists, the administrator-only API, the
//! actor in event payloads (with `X-Forwarded-For` from trusted proxies
//! only), failed logins counted and slowed per client address, password
//! checks that never stall other clients, and `angos hash-password`.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use angos::auth::password::PasswordHash;
use common::*;
use webhook_support::receiver::Receiver;

/// Cheap enough for a debug build; production hashes use the default cost.
const TEST_ITERATIONS: u32 = 10_000;

fn hash(password: &str, iterations: u32) -> String {
    PasswordHash::generate(password.as_bytes(), b"test-salt-1234", iterations).to_string()
}

fn identity(name: &str, username: &str, password: &str) -> String {
    format!(
        "[auth.identity.{name}]\nusername = \"{username}\"\npassword = \"{}\"\n",
        hash(password, TEST_ITERATIONS)
    )
}

fn basic(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        common::hostile::base64_encode(format!("{username}:{password}").as_bytes())
    )
}

/// alice (no special rights), ci-bot (pushes to production), admin (deletes
/// there, uses the admin API); `public` is readable anonymously, the rest
/// needs a login.
fn team_options() -> Options {
    Options::default()
        .table(&identity("alice", "alice", "wonderland"))
        .table(&identity("ci", "ci-bot", "pipeline"))
        .table(&identity("admin", "root", "hunter2"))
        .table("[auth]\nrealm = \"Test registry\"\nadministrators = [\"admin\"]\n")
        .table("[repository.\"public\"]\npull = [\"*\"]\n")
        .table("[repository.\"production\"]\npush = [\"ci\"]\ndelete = [\"admin\"]\n")
}

struct Client<'a> {
    server: &'a Server,
    authorization: Option<String>,
}

impl Client<'_> {
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(value) = &self.authorization {
            all.push(("Authorization", value));
        }
        self.server.request(method, path, &all, body)
    }

    fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    fn post_blob(&self, repo: &str, data: &[u8]) -> Response {
        let path = format!(
            "/v2/{repo}/blobs/uploads/?digest={}",
            percent_encode(&digest(data))
        );
        self.request(
            "POST",
            &path,
            &[("Content-Type", "application/octet-stream")],
            data,
        )
    }

    fn put_manifest(&self, repo: &str, tag: &str, body: &[u8]) -> Response {
        let path = format!("/v2/{repo}/manifests/{tag}");
        self.request("PUT", &path, &[("Content-Type", OCI_MANIFEST)], body)
    }

    /// Pushes a one-layer image; the statuses of the three requests.
    fn push_image(&self, repo: &str, tag: &str, seed: &str) -> (Vec<u16>, Vec<u8>) {
        let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
        let layer = format!("layer of {seed}").into_bytes();
        let manifest = ManifestSpec::oci(
            descriptor(OCI_CONFIG, &config),
            vec![descriptor(OCI_LAYER, &layer)],
        )
        .to_json()
        .into_bytes();
        let statuses = vec![
            self.post_blob(repo, &config).status,
            self.post_blob(repo, &layer).status,
            self.put_manifest(repo, tag, &manifest).status,
        ];
        (statuses, manifest)
    }
}

fn as_user<'a>(server: &'a Server, username: &str, password: &str) -> Client<'a> {
    Client {
        server,
        authorization: Some(basic(username, password)),
    }
}

fn anonymous(server: &Server) -> Client<'_> {
    Client {
        server,
        authorization: None,
    }
}

/// A 401 that sends the client to our token endpoint, at the address it used.
#[track_caller]
fn assert_challenge(response: &Response) {
    response.assert_error(401, "UNAUTHORIZED");
    let challenge = response.header("www-authenticate").expect("a challenge");
    assert!(
        challenge.starts_with("Bearer realm=\"http://127.0.0.1")
            && challenge.contains("/v2/token\",service=\"angos\""),
        "{challenge}"
    );
}

fn metric(server: &Server, line_prefix: &str) -> u64 {
    let text = server.get("/metrics").text();
    text.lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_prefix} in\n{text}"))
}

#[test]
fn access_lists_decide_who_pulls_pushes_and_deletes() {
    let server = Server::start_with(&team_options());
    let alice = as_user(&server, "alice", "wonderland");
    let ci = as_user(&server, "ci-bot", "pipeline");
    let admin = as_user(&server, "root", "hunter2");
    let nobody = anonymous(&server);

    // The ping challenges anonymous clients (they fetch a token, see below);
    // credentials are welcome.
    assert_challenge(&nobody.get("/v2/"));
    alice.get("/v2/").assert_status(200);

    // ci-bot pushes to production; alice may not: 403, and nothing is stored.
    let (statuses, production_manifest) = ci.push_image("production/api", "v1", "prod");
    assert_eq!(statuses, [201, 201, 201]);
    let (statuses, _) = alice.push_image("production/api", "evil", "evil");
    assert_eq!(statuses, [403, 403, 403]);
    alice
        .post_blob("production/api", b"sneaky")
        .assert_error(403, "DENIED");
    admin
        .get(&format!("/v2/production/api/blobs/{}", digest(b"layer of evil")))
        .assert_status(404);
    admin.get("/v2/production/api/manifests/evil").assert_status(404);

    // Wrong password, unknown user, anonymous push: 401 with the challenge.
    let wrong = as_user(&server, "ci-bot", "guess");
    assert_challenge(&wrong.post_blob("production/api", b"by wrong password"));
    let unknown = as_user(&server, "mallory", "pipeline");
    assert_challenge(&unknown.post_blob("production/api", b"by unknown user"));
    assert_challenge(&nobody.post_blob("production/api", b"by nobody"));
    assert_challenge(&nobody.request("GET", "/v2/", &[("Authorization", "Basic !!notbase64")], b""));
    for data in [
        &b"by wrong password"[..],
        b"by unknown user",
        b"by nobody",
        b"sneaky",
    ] {
        admin
            .get(&format!("/v2/production/api/blobs/{}", digest(data)))
            .assert_status(404);
    }
    assert!(metric(&server, "auth_failures_total{reason=\"wrong_password\"}") >= 1);
    assert!(metric(&server, "auth_failures_total{reason=\"unknown_user\"}") >= 1);
    assert!(metric(&server, "auth_failures_total{reason=\"malformed\"}") >= 1);

    // Pulls: production needs a login; anyone logged in may pull there.
    assert_challenge(&nobody.get("/v2/production/api/manifests/v1"));
    let pulled = alice.get("/v2/production/api/manifests/v1");
    pulled.assert_status(200);
    assert_eq!(pulled.body, production_manifest);

    // Anonymous pull works where configured, and only there.
    let (statuses, public_manifest) = alice.push_image("public/tools", "latest", "tools");
    assert_eq!(
        statuses,
        [201, 201, 201],
        "push defaults to any logged-in identity"
    );
    let public = nobody.get("/v2/public/tools/manifests/latest");
    public.assert_status(200);
    assert_eq!(public.body, public_manifest);
    assert_challenge(&nobody.get("/v2/production/api/tags/list"));

    // The catalog lists what the client may pull.
    let listed = |client: &Client| client.get("/v2/_catalog").json().string_list("repositories");
    assert_eq!(listed(&nobody), ["public/tools"]);
    assert_eq!(listed(&alice), ["production/api", "public/tools"]);

    // Deleting in production is for admin only.
    let delete = |client: &Client| client.request("DELETE", "/v2/production/api/manifests/v1", &[], b"");
    delete(&ci).assert_error(403, "DENIED");
    delete(&alice).assert_error(403, "DENIED");
    assert_challenge(&delete(&nobody));
    delete(&admin).assert_status(202);

    // The administration API needs an administrator.
    assert_challenge(&nobody.get("/v2/_angos/webhooks"));
    alice.get("/v2/_angos/webhooks").assert_error(403, "DENIED");
    admin.get("/v2/_angos/webhooks").assert_status(200);

    // Health checks and metrics stay open for probes and scrapers.
    nobody.get("/healthz").assert_status(200);
    nobody.get("/metrics").assert_status(200);
}

/// Follows a bearer challenge the way container clients do: asks the realm
/// for a token (with `basic` credentials or none); the token.
fn fetch_token(server: &Server, challenge: &str, basic: Option<&str>) -> String {
    let realm = challenge
        .strip_prefix("Bearer realm=\"")
        .and_then(|rest| rest.split('"').next())
        .expect("a bearer challenge");
    let path = realm
        .split_once("/v2/")
        .map(|(_, rest)| format!("/v2/{rest}"))
        .unwrap();
    let mut headers = Vec::new();
    if let Some(value) = basic {
        headers.push(("Authorization", value));
    }
    let response = server.request(
        "GET",
        &format!("{path}?service=angos&scope=repository:x:pull"),
        &headers,
        b"",
    );
    response.assert_status(200);
    let json = response.json();
    let token = json
        .get("token")
        .and_then(Json::as_str)
        .expect("a token")
        .to_string();
    assert_eq!(
        json.get("access_token").and_then(Json::as_str),
        Some(token.as_str())
    );
    assert_eq!(json.get("expires_in").and_then(Json::as_u64), Some(300));
    token
}

#[test]
fn the_token_handshake_serves_anonymous_pulls_and_authenticated_pushes() {
    let server = Server::start_with(&team_options());
    let with = |token: &str| Client {
        server: &server,
        authorization: Some(format!("Bearer {token}")),
    };
    // The ping challenges; the realm is this server's token endpoint.
    // (Clients send the port they connected to in `Host`.)
    let host = server.addr.to_string();
    let ping = server.request("GET", "/v2/", &[("Host", &host)], b"");
    assert_challenge(&ping);
    let challenge = ping.header("www-authenticate").unwrap().to_string();
    assert_eq!(
        challenge,
        format!("Bearer realm=\"http://{host}/v2/token\",service=\"angos\"")
    );

    // ci-bot logs in once at the token endpoint and pushes with the token.
    let ci_token = fetch_token(&server, &challenge, Some(&basic("ci-bot", "pipeline")));
    let ci = with(&ci_token);
    ci.get("/v2/").assert_status(200);
    let (statuses, manifest) = ci.push_image("production/api", "v1", "token");
    assert_eq!(statuses, [201, 201, 201]);

    // An anonymous token is enough for the ping and for public pulls, and
    // for nothing else.
    let (statuses, _) = ci.push_image("public/tools", "v1", "public");
    assert_eq!(statuses, [201, 201, 201]);
    let anonymous_token = fetch_token(&server, &challenge, None);
    let nobody = with(&anonymous_token);
    nobody.get("/v2/").assert_status(200);
    nobody.get("/v2/public/tools/manifests/v1").assert_status(200);
    let refused = nobody.get("/v2/production/api/manifests/v1");
    assert_challenge(&refused);
    // The token was valid but is not enough: RFC 6750's insufficient_scope.
    assert!(
        refused.header("www-authenticate").unwrap().contains(
            ",scope=\"repository:production/api:pull\",error=\"insufficient_scope\",error_description=\""
        ),
        "{}",
        refused.describe()
    );
    assert_challenge(&nobody.post_blob("public/tools", b"anonymous push"));
    // alice's token does not give her ci's rights.
    let alice = with(&fetch_token(
        &server,
        &challenge,
        Some(&basic("alice", "wonderland")),
    ));
    assert_eq!(alice.get("/v2/production/api/manifests/v1").body, manifest);
    alice
        .post_blob("production/api", b"alice")
        .assert_error(403, "DENIED");

    // A wrong password gets no token: 401 with a Basic challenge, as `docker login` expects.
    let refused = server.request(
        "GET",
        "/v2/token?service=angos",
        &[("Authorization", &basic("ci-bot", "guess"))],
        b"",
    );
    refused.assert_error(401, "UNAUTHORIZED");
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Basic realm=\"Test registry\", charset=\"UTF-8\"")
    );
    // Forged or altered tokens are refused and counted.
    let forged = ci_token.replacen("v1.6369", "v1.6164", 1);
    assert_ne!(forged, ci_token);
    assert_challenge(&with(&forged).get("/v2/"));
    assert_challenge(&with("v1.00.1.00").get("/v2/"));
    assert!(metric(&server, "auth_failures_total{reason=\"invalid_token\"}") >= 2);

    // Behind a proxy the operator names the realm.
    let mut options = team_options();
    for table in options
        .tables
        .iter_mut()
        .filter(|table| table.starts_with("[auth]\n"))
    {
        table.push_str("token_realm = \"https://registry.example.com/v2/token\"\n");
    }
    let pinned = Server::start_with(&options);
    assert_eq!(
        pinned.get("/v2/").header("www-authenticate"),
        Some("Bearer realm=\"https://registry.example.com/v2/token\",service=\"angos\"")
    );
}

#[test]
fn a_login_on_a_kept_alive_connection_is_checked_at_once() {
    // Regression: a check that began on a reused connection waited for a
    // readiness event that never came, until the client gave up.
    let server = Server::start_with(&team_options());
    let mut conn = server.connect();
    conn.set_read_timeout(Duration::from_secs(5));
    conn.request("GET", "/v2/", &[], b"").assert_status(401);
    for (password, status) in [("wonderland", 404), ("guess", 401)] {
        let started = Instant::now();
        let response = conn
            .try_request(
                "HEAD",
                "/v2/production/api/manifests/v1",
                &[("Authorization", &basic("alice", password))],
                b"",
            )
            .expect("the login is answered on the same connection");
        assert_eq!(response.status, status, "{}", response.describe());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_mount_needs_pull_rights_on_its_source() {
    let options = team_options().table("[repository.\"secret\"]\npull = [\"ci\"]\npush = [\"ci\"]\n");
    let server = Server::start_with(&options);
    let ci = as_user(&server, "ci-bot", "pipeline");
    let alice = as_user(&server, "alice", "wonderland");
    let secret = b"a secret layer";
    assert_eq!(ci.post_blob("secret/app", secret).status, 201);
    let mount = |client: &Client| {
        let path = format!(
            "/v2/alice/app/blobs/uploads/?mount={}&from=secret/app",
            percent_encode(&digest(secret))
        );
        client.request("POST", &path, &[], b"")
    };
    // alice cannot read the source: the mount becomes a plain upload.
    mount(&alice).assert_status(202);
    // Nor can she have it found for her by leaving `from` out.
    let automatic = format!(
        "/v2/alice/app/blobs/uploads/?mount={}",
        percent_encode(&digest(secret))
    );
    alice.request("POST", &automatic, &[], b"").assert_status(202);
    alice
        .get(&format!("/v2/alice/app/blobs/{}", digest(secret)))
        .assert_status(404);
    mount(&ci).assert_status(201);
}

#[test]
fn without_identities_the_registry_stays_open_unless_lists_close_it() {
    let open = Server::start();
    let (statuses, _) = anonymous(&open).push_image("any/repo", "v1", "open");
    assert_eq!(statuses, [201, 201, 201]);
    // Credentials are ignored when nobody is configured.
    let (statuses, _) = as_user(&open, "someone", "anything").push_image("any/repo", "v2", "open2");
    assert_eq!(statuses, [201, 201, 201]);
    assert!(open.get("/v2/").header("www-authenticate").is_none());
    open.get("/v2/_angos/webhooks").assert_status(200);

    // A read-only mirror: no one to log in as, so 403 rather than a challenge.
    let mirror = Server::start_with(
        &Options::default()
            .global_line("push = []")
            .global_line("delete = []"),
    );
    anonymous(&mirror)
        .post_blob("any/repo", b"x")
        .assert_error(403, "DENIED");
    anonymous(&mirror).get("/v2/").assert_status(200);
}

#[test]
fn events_carry_the_actor_and_trust_forwarded_addresses_only_from_proxies() {
    let receiver = Receiver::ok();
    let webhook = format!(
        "[event_webhook.audit]\nurl = \"{}\"\npolicy = \"required\"\nevents = [\"manifest.push\"]\n",
        receiver.url("/events")
    );
    let options = team_options()
        .global_line("event_webhooks = [\"audit\"]")
        .server_line("trusted_proxies = [\"127.0.0.1\"]")
        .table(&webhook);
    let server = Server::start_with(&options);
    let ci = as_user(&server, "ci-bot", "pipeline");
    let (statuses, _) = ci.push_image("production/api", "v1", "actor");
    assert_eq!(statuses, [201, 201, 201]);
    let forwarded = Client {
        server: &server,
        authorization: ci.authorization.clone(),
    };
    let config = b"{}";
    forwarded.post_blob("production/api", config);
    let manifest = ManifestSpec::oci(descriptor(OCI_CONFIG, config), vec![])
        .to_json()
        .into_bytes();
    forwarded
        .request(
            "PUT",
            "/v2/production/api/manifests/v2",
            &[
                ("Content-Type", OCI_MANIFEST),
                ("X-Forwarded-For", "198.51.100.23, 127.0.0.1"),
            ],
            &manifest,
        )
        .assert_status(201);
    let events = receiver.wait_for(2, Duration::from_secs(10)).expect("two events");
    assert_eq!(
        actor(&events[0].json()),
        [("id", "ci"), ("username", "ci-bot"), ("client_ip", "127.0.0.1")]
    );
    assert_eq!(
        actor(&events[1].json()),
        [
            ("id", "ci"),
            ("username", "ci-bot"),
            ("client_ip", "198.51.100.23")
        ],
        "the trusted proxy's hop is skipped"
    );

    // Without trusted proxies, the header is the client's own claim: ignored.
    let receiver = Receiver::ok();
    let webhook = format!(
        "[event_webhook.audit]\nurl = \"{}\"\npolicy = \"required\"\nevents = [\"manifest.push\"]\n",
        receiver.url("/events")
    );
    let server = Server::start_with(
        &Options::default()
            .global_line("event_webhooks = [\"audit\"]")
            .table(&webhook),
    );
    anonymous(&server).post_blob("x", config);
    server
        .request(
            "PUT",
            "/v2/x/manifests/v1",
            &[
                ("Content-Type", OCI_MANIFEST),
                ("X-Forwarded-For", "198.51.100.23"),
            ],
            &manifest,
        )
        .assert_status(201);
    let events = receiver.wait_for(1, Duration::from_secs(10)).expect("one event");
    assert_eq!(
        actor(&events[0].json()),
        [("client_ip", "127.0.0.1")],
        "anonymous: no id or username"
    );
}

/// The payload's `actor` fields, in order.
fn actor(payload: &Json) -> Vec<(&str, &str)> {
    payload
        .get("actor")
        .and_then(Json::as_object)
        .expect("an actor object")
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str().expect("string fields")))
        .collect()
}

#[test]
fn failed_logins_are_slowed_per_client_address() {
    // The proxy setting lets one loopback test speak for several addresses.
    let options = team_options().server_line("trusted_proxies = [\"127.0.0.0/8\"]");
    let server = Server::start_with(&options);
    let attempt = |from: &str, password: &str| {
        let started = Instant::now();
        let response = server.request(
            "GET",
            "/v2/production/api/tags/list",
            &[
                ("Authorization", &basic("alice", password)),
                ("X-Forwarded-For", from),
            ],
            b"",
        );
        (response.status, started.elapsed())
    };
    // Three failures are free (typos happen).
    for _ in 0..3 {
        let (status, _) = attempt("203.0.113.1", "guess");
        assert_eq!(status, 401);
    }
    // The fourth waits (500 ms, then doubling), even with the right password.
    let (status, waited) = attempt("203.0.113.1", "guess");
    assert_eq!(status, 401);
    assert!(waited >= Duration::from_millis(450), "waited only {waited:?}");
    let (status, waited) = attempt("203.0.113.1", "wonderland");
    assert!(waited >= Duration::from_millis(900), "waited only {waited:?}");
    assert_eq!(status, 404, "the right password still works, after the wait");
    // Another address is not held back, and success cleared the record.
    let (status, waited) = attempt("203.0.113.2", "wonderland");
    assert_eq!(status, 404);
    assert!(waited < Duration::from_millis(450), "{waited:?}");
    let (_, waited) = attempt("203.0.113.1", "guess");
    assert!(waited < Duration::from_millis(450), "{waited:?}");
    assert!(metric(&server, "auth_delayed_total") >= 2);
    assert!(metric(&server, "auth_failures_total{reason=\"wrong_password\"}") >= 5);
    // Failures are logged with the address, never with the password.
    let logs = server.logs().join("\n");
    assert!(
        logs.contains("failed login from 203.0.113.1: wrong password"),
        "{logs}"
    );
    assert!(!logs.contains("guess"));
}

#[test]
fn a_slow_password_check_does_not_stall_other_clients() {
    // A deliberately dear hash: a second or more of CPU in a debug build.
    let options = Options::default().global_line("pull = [\"*\"]").table(&format!(
        "[auth.identity.slow]\nusername = \"slow\"\npassword = \"{}\"\n",
        hash("patience", 400_000)
    ));
    let server = Server::start_with(&options);
    let mut login = server.connect();
    let started = Instant::now();
    login.send(&Conn::request_bytes(
        "POST",
        "/v2/slow/app/blobs/uploads/",
        &[
            ("Authorization", &basic("slow", "patience")),
            ("Content-Length", "0"),
        ],
        b"",
    ));
    // While the check runs, others are served (the check runs in slices).
    let mut others = Vec::new();
    login.stream().set_nonblocking(true).unwrap();
    let answered = |login: &Conn| login.stream().peek(&mut [0; 1]).is_ok_and(|n| n > 0);
    while !answered(&login) {
        let probe = Instant::now();
        server.get("/v2/").assert_status(401);
        others.push(probe.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the login was never answered"
        );
    }
    let check = started.elapsed();
    login.stream().set_nonblocking(false).unwrap();
    let response = login.read_response("POST").expect("the login is answered");
    response.assert_status(202);
    others.sort();
    let slowest = *others.last().expect("probes ran during the check");
    eprintln!(
        "password check {check:?}; {} requests meanwhile, median {:?}, slowest {slowest:?}",
        others.len(),
        others[others.len() / 2]
    );
    assert!(
        others.len() >= 5,
        "only {} requests were answered during the check",
        others.len()
    );
    assert!(
        slowest < check / 2,
        "a request waited for much of the password check ({slowest:?} of {check:?})"
    );
}

#[test]
fn hash_password_prints_a_hash_the_server_accepts() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_angos"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"correct horse\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$pbkdf2-sha256$i=600000,"), "{hash}");
    let server = Server::start_with(&Options::default().table(&format!(
        "[auth.identity.horse]\nusername = \"horse\"\npassword = \"{hash}\"\n"
    )));
    as_user(&server, "horse", "correct horse")
        .get("/v2/")
        .assert_status(200);
    as_user(&server, "horse", "correct horse\n")
        .get("/v2/")
        .assert_error(401, "UNAUTHORIZED");

    // An empty password is refused.
    let mut child = Command::new(env!("CARGO_BIN_EXE_angos"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("hash-password"));
}

#[test]
fn configuration_errors_name_the_file_and_key() {
    let cases = [
        (
            "[global]\npush = [\"nobody\"]\n".to_string(),
            "global.push: identity \"nobody\" is not defined",
        ),
        (
            "[auth.identity.x]\nusername = \"x\"\npassword = \"plain-text\"\n".to_string(),
            "auth.identity.x.password:",
        ),
        (
            format!("{}[auth]\nadministrators = [\"*\"]\n", identity("a", "a", "b")),
            "auth.administrators:",
        ),
        (
            "[server]\nbind_address = \"127.0.0.1\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n".to_string(),
            "server.trusted_proxies:",
        ),
    ];
    for (text, expected) in cases {
        let dir = TempDir::new("auth-config");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_angos"))
            .arg("-c")
            .arg(&path)
            .arg("server")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("bad.toml") && stderr.contains(expected),
            "{text}\n{stderr}"
        );
    }
}

#[test]
fn access_changes_apply_on_reload_without_a_restart() {
    let dir = TempDir::new("auth-reload");
    let server = Server::start_in(dir.path(), &team_options());
    let alice = as_user(&server, "alice", "wonderland");
    alice
        .post_blob("production/api", b"by alice")
        .assert_error(403, "DENIED");
    // Give alice push rights in production, atomically, as an operator would.
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("push = [\"ci\"]", "push = [\"ci\", \"alice\"]");
    replace_file(&path, &text);
    wait_for_reload(&server, (403, 201), || {
        alice.post_blob("production/api", b"by alice").status
    });
    // And a removed identity can no longer log in, even though its password
    // was verified (and remembered) before.
    let ci = as_user(&server, "ci-bot", "pipeline");
    ci.get("/v2/production/api/tags/list").assert_status(200);
    let start = text.find("[auth.identity.ci]").unwrap();
    let end = start + text[start..].find("[auth.identity.admin]").unwrap();
    let without_ci = format!("{}{}", &text[..start], &text[end..])
        .replace("push = [\"ci\", \"alice\"]", "push = [\"alice\"]")
        + "\n# without ci\n";
    replace_file(&path, &without_ci);
    wait_for_reload(&server, (200, 401), || {
        ci.get("/v2/production/api/tags/list").status
    });
}

#[test]
fn a_token_stops_working_when_its_password_or_user_name_changes() {
    let dir = TempDir::new("auth-token-credential");
    let server = Server::start_in(dir.path(), &team_options());
    let challenge = "Bearer realm=\"http://127.0.0.1/v2/token\"";
    let bearer = |token: &str| Client {
        server: &server,
        authorization: Some(format!("Bearer {token}")),
    };
    let alice_token = fetch_token(&server, challenge, Some(&basic("alice", "wonderland")));
    let ci_token = fetch_token(&server, challenge, Some(&basic("ci-bot", "pipeline")));
    let tags = "/v2/production/api/tags/list";
    let ci = as_user(&server, "ci-bot", "pipeline");
    let (statuses, _) = ci.push_image("production/api", "v1", "credential-bound");
    assert_eq!(statuses, [201, 201, 201]);
    bearer(&alice_token).get(tags).assert_status(200);
    bearer(&ci_token).get(tags).assert_status(200);
    // alice gets a new password; ci-bot a new user name.
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            &identity("alice", "alice", "wonderland"),
            &identity("alice", "alice", "looking-glass"),
        )
        .replace("username = \"ci-bot\"", "username = \"ci-robot\"");
    replace_file(&path, &text);
    wait_for_reload(&server, (200, 401), || bearer(&alice_token).get(tags).status);
    let refused = bearer(&ci_token).get(tags);
    refused.assert_error(401, "UNAUTHORIZED");
    assert!(
        refused
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""),
        "{}",
        refused.describe()
    );
    // New credentials, new tokens.
    let alice_token = fetch_token(&server, challenge, Some(&basic("alice", "looking-glass")));
    bearer(&alice_token).get(tags).assert_status(200);
    let ci_token = fetch_token(&server, challenge, Some(&basic("ci-robot", "pipeline")));
    bearer(&ci_token).get(tags).assert_status(200);
}

/// Writes `text` to `path` by renaming a finished file into place.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `status` until the server's configuration watcher applies a change:
/// the answer goes from `before` to `after`, and is never anything else.
fn wait_for_reload(server: &Server, (before, after): (u16, u16), status: impl Fn() -> u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status();
        if now == after {
            return;
        }
        assert_eq!(now, before);
        assert!(
            Instant::now() < deadline,
            "the reload never applied: {:?}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// oras-py follows the bearer challenge on its own: a login and a push, an
/// anonymous pull where `"*"` allows it, and a refusal where it does not.
const ORAS_SCRIPT: &str = r#"
import os, sys, oras.client
host, work, user, password = sys.argv[1:5]
os.chdir(work)
with open("artifact.txt", "wb") as f:
    f.write(b"pushed through a token\n" * 10)
ci = oras.client.OrasClient(hostname=host, insecure=True)
ci.login(username=user, password=password, hostname=host)
for target in (f"{host}/production/oras:v1", f"{host}/public/oras:v1"):
    print("push_status=%d" % ci.push(files=["artifact.txt"], target=target).status_code)
# A client with no credentials anywhere (the login above wrote them under HOME).
os.environ["HOME"] = os.path.join(work, "anonymous-home")
anonymous = oras.client.OrasClient(hostname=host, insecure=True)
files = anonymous.pull(target=f"{host}/public/oras:v1", outdir="public-copy")
with open(files[0], "rb") as f:
    print("public_pull=" + f.read().decode().splitlines()[0])
try:
    anonymous.pull(target=f"{host}/production/oras:v1", outdir="production-copy")
    print("production_pull=allowed")
except Exception as error:
    print("production_pull=refused " + str(error).splitlines()[0])
"#;

#[test]
fn oras_logs_in_through_the_token_handshake() {
    let available = Command::new("python3")
        .args(["-c", "import oras.client"])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        available,
        "oras-py is required (scripts/test.sh installs it: pip install oras)"
    );
    let server = Server::start_with(&team_options());
    let work = TempDir::new("oras-auth");
    std::fs::create_dir_all(work.path().join("anonymous-home")).unwrap();
    let script = work.path().join("driver.py");
    std::fs::write(&script, ORAS_SCRIPT).unwrap();
    let output = Command::new("python3")
        .arg(&script)
        .arg(server.addr.to_string())
        .arg(work.path())
        .args(["ci-bot", "pipeline"])
        .env("HOME", work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.iter().filter(|line| **line == "push_status=201").count(),
        2,
        "{stdout}"
    );
    assert!(lines.contains(&"public_pull=pushed through a token"), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("production_pull=refused")),
        "{stdout}"
    );
    // The token endpoint did the work: one password check, then tokens.
    assert!(
        metric(
            &server,
            "http_requests_total{route=\"token\",method=\"GET\",status=\"200\"}"
        ) >= 1
    );
}
