//! Refused pushes fail at once and say why, with the clients users have:
//! docker itself (a `dockerd` of our own on a private socket and data root,
//! skipped with a message where it cannot run), podman and skopeo. Before,
//! docker retried a refused push for 50 s and printed a bare `unauthorized`.
// End-to-end tests time the real binary and the clients from outside.
#![allow(clippy::disallowed_methods)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How soon a refused push must fail (docker took 50 s before).
const FAIL_FAST: Duration = Duration::from_secs(5);

/// Anyone may pull; any identity may push, except to `locked`, where only
/// ci-bot may.
fn registry() -> Server {
    Server::start_with(
        &Options::default()
            .global_line("pull = [\"*\"]")
            .global_line("push = [\"authenticated\"]")
            .table(&identity_table("alice", "alice", "wonderland"))
            .table(&identity_table("ci", "ci-bot", "pipeline"))
            .table("[repository.\"locked\"]\npush = [\"ci\"]\n"),
    )
}

/// Runs `command`, returning its output and how long it took.
fn timed(command: &mut Command) -> (Output, Duration) {
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("run {command:?}: {error}"));
    (output, started.elapsed())
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[track_caller]
fn assert_refused(what: &str, (output, took): &(Output, Duration), says: &str) {
    let printed = text(output);
    assert!(!output.status.success(), "{what} succeeded:\n{printed}");
    assert!(took < &FAIL_FAST, "{what} took {took:?} to fail:\n{printed}");
    assert!(printed.contains(says), "{what} does not say {says:?}:\n{printed}");
    eprintln!(
        "{what}: failed in {took:?}: {}",
        printed.trim().lines().last().unwrap_or("")
    );
}

/// A docker-archive of a one-layer image, made with `tar` (no daemon needed).
fn image_tarball(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello from a refused push\n").unwrap();
    let tarball = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success());
    tarball
}

#[test]
fn skopeo_refusals_fail_at_once_and_name_the_cause() {
    let server = registry();
    let dir = TempDir::new("refusals-skopeo");
    let tarball = image_tarball(dir.path());
    let archive = dir.path().join("image.tar");
    make_docker_archive(&tarball, &archive);
    let target = |repo: &str| format!("docker://{}/{repo}:v1", server.addr);
    let copy = |creds: Option<&str>, repo: &str| {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            command.args(["--dest-creds", creds]);
        }
        command.arg(format!("docker-archive:{}", archive.display()));
        command.arg(target(repo));
        timed(&mut command)
    };
    assert_refused(
        "skopeo anonymous push",
        &copy(None, "team/app"),
        "authentication required to push to team/app",
    );
    assert_refused(
        "skopeo push without the right",
        &copy(Some("alice:wonderland"), "locked/app"),
        "alice may not push to locked/app",
    );
    assert_refused(
        "skopeo push with a wrong password",
        &copy(Some("alice:wrong"), "team/app"),
        "incorrect username or password",
    );
    let (output, _) = copy(Some("ci-bot:pipeline"), "locked/app");
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn podman_refusals_fail_at_once_and_name_the_cause() {
    let server = registry();
    let dir = TempDir::new("refusals-podman");
    let tarball = image_tarball(dir.path());
    let archive = dir.path().join("image.tar");
    make_docker_archive(&tarball, &archive);
    // Podman's own storage for this test only (its run root must be a
    // short path: podman refuses one over 50 characters).
    let storage = PathBuf::from(format!("/tmp/angos-podman-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(storage.clone());
    let podman = |args: &[&str]| {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        timed(&mut command)
    };
    let image = format!("{}/team/app:v1", server.addr);
    let (loaded, _) = podman(&["pull", &format!("docker-archive:{}", archive.display())]);
    assert!(loaded.status.success(), "{}", text(&loaded));
    let id = String::from_utf8_lossy(&loaded.stdout)
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let (tagged, _) = podman(&["tag", &id, &image]);
    assert!(tagged.status.success(), "{}", text(&tagged));
    assert_refused(
        "podman anonymous push",
        &podman(&["push", "--tls-verify=false", &image]),
        "authentication required to push to team/app",
    );
    let locked = format!("{}/locked/app:v1", server.addr);
    assert_refused(
        "podman push without the right",
        &podman(&[
            "push",
            "--tls-verify=false",
            "--creds",
            "alice:wonderland",
            &id,
            &locked,
        ]),
        "alice may not push to locked/app",
    );
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wraps a root filesystem tarball into a docker-archive (what `docker save`
/// writes: manifest.json, the image config, one layer), for skopeo and podman.
fn make_docker_archive(rootfs: &Path, archive: &Path) {
    let layer = std::fs::read(rootfs).unwrap();
    let layer_hex = sha256_hex(&layer);
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{layer_hex}\"]}}}}"
    );
    let config_hex = sha256_hex(config.as_bytes());
    let staging = archive.with_extension("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join(format!("{layer_hex}.tar")), &layer).unwrap();
    std::fs::write(staging.join(format!("{config_hex}.json")), &config).unwrap();
    std::fs::write(
        staging.join("manifest.json"),
        format!("[{{\"Config\":\"{config_hex}.json\",\"RepoTags\":[],\"Layers\":[\"{layer_hex}.tar\"]}}]"),
    )
    .unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(&staging)
        .arg("-cf")
        .arg(archive)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success());
}

/// A `dockerd` of the test's own: private socket, data root and exec root,
/// no iptables or bridge, vfs storage, any loopback registry insecure.
/// Stopped (with its containerd) on drop.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    config_dir: PathBuf,
    _dir: TempDir,
}

impl Dockerd {
    /// `None`, with the reason, where no `dockerd` can run here.
    fn start() -> Result<Dockerd, String> {
        if Command::new("dockerd").arg("--version").output().is_err() {
            return Err("dockerd is not installed (scripts/test.sh installs Debian's docker.io)".into());
        }
        let dir = TempDir::new("dockerd");
        // Unix socket paths are limited to 108 bytes: keep it short.
        let socket = PathBuf::from(format!("/tmp/angos-dockerd-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let daemon_json = dir.path().join("daemon.json");
        std::fs::write(&daemon_json, "{\"insecure-registries\": [\"127.0.0.0/8\"]}").unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let mut command = Command::new("dockerd");
        command
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .arg(format!("--host=unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.path().join("root"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--config-file")
            .arg(&daemon_json)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .map_err(|error| format!("cannot start dockerd: {error}"))?;
        let config_dir = dir.path().join("client");
        std::fs::create_dir_all(&config_dir).unwrap();
        let mut dockerd = Dockerd {
            child,
            socket,
            config_dir,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if dockerd.docker(&["version"]).0.status.success() {
                return Ok(dockerd);
            }
            if let Ok(Some(status)) = dockerd.child.try_wait() {
                let log =
                    std::fs::read_to_string(dockerd._dir.path().join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("dockerd exited ({status}): {}", tail.join(" | ")));
            }
            if Instant::now() > deadline {
                return Err("dockerd did not answer within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the docker client against this daemon, with its own credential store.
    fn docker(&self, args: &[&str]) -> (Output, Duration) {
        let mut command = Command::new("docker");
        command
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", &self.config_dir)
            .args(args);
        timed(&mut command)
    }

    fn login(&self, registry: &str, username: &str, password: &str) -> (Output, Duration) {
        let mut command = Command::new("docker");
        command
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", &self.config_dir)
            .args(["login", "--username", username, "--password-stdin", registry]);
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker login");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        (output, started.elapsed())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // The whole process group: dockerd and the containerd it started.
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[test]
fn docker_refusals_fail_at_once_and_name_the_cause() {
    let dockerd = match Dockerd::start() {
        Ok(dockerd) => dockerd,
        Err(why) => {
            eprintln!("SKIPPED docker_refusals_fail_at_once_and_name_the_cause: {why}");
            return;
        }
    };
    let server = registry();
    let host = server.addr.to_string();
    let dir = TempDir::new("refusals-docker");
    let tarball = image_tarball(dir.path());
    let team = format!("{host}/team/app:v1");
    let locked = format!("{host}/locked/app:v1");
    let (imported, _) = dockerd.docker(&["import", &tarball.display().to_string(), &team]);
    assert!(imported.status.success(), "{}", text(&imported));
    let (tagged, _) = dockerd.docker(&["tag", &team, &locked]);
    assert!(tagged.status.success(), "{}", text(&tagged));

    assert_refused(
        "docker anonymous push",
        &dockerd.docker(&["push", &team]),
        "authentication required to push to team/app",
    );
    assert_refused(
        "docker login with a wrong password",
        &dockerd.login(&host, "alice", "not-her-password"),
        "incorrect username or password",
    );
    let (login, _) = dockerd.login(&host, "alice", "wonderland");
    assert!(login.status.success(), "{}", text(&login));
    assert_refused(
        "docker push without the right",
        &dockerd.docker(&["push", &locked]),
        "alice may not push to locked/app",
    );

    let (login, _) = dockerd.login(&host, "ci-bot", "pipeline");
    assert!(login.status.success(), "{}", text(&login));
    let (pushed, _) = dockerd.docker(&["push", &locked]);
    assert!(pushed.status.success(), "{}", text(&pushed));
    let (removed, _) = dockerd.docker(&["rmi", &locked]);
    assert!(removed.status.success(), "{}", text(&removed));
    let (pulled, _) = dockerd.docker(&["pull", &locked]);
    assert!(pulled.status.success(), "{}", text(&pulled));
    let tags = server.get("/v2/locked/app/tags/list").json().string_list("tags");
    assert_eq!(tags, ["v1"]);
    server.get("/v2/team/app/tags/list").assert_status(404);
}
