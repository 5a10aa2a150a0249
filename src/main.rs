//! The `angos` command: parse arguments, load configuration, start the
//! logger, open storage and the event journal, and run the reactor; or send
//! one test ping to a webhook.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use angos::clock::{Clock, SystemClock};
use angos::config;
use angos::event_webhook::journal::{Journal, JournalLimits};
use angos::reactor::Reactor;
use angos::registry::{Limits, Registry};
use angos::storage::Storage;

const USAGE: &str = "usage: angos [-c FILE]... server
       angos [-c FILE]... webhook test NAME
       angos [-c FILE]... scrub [--commit]
       angos [-c FILE]... prune [--dry-run]
       angos [-c FILE]... storage check
       angos webhook secret
       angos hash-password < PASSWORD_FILE

  server              serve the registry
  webhook test NAME   send one ping event to webhook NAME and print the outcome
  scrub [--commit]    garbage collection: report what is unreferenced and older
                      than [global] gc_grace_secs; with --commit, remove it. When
                      a server runs on the data, it asks that server to collect
  prune [--dry-run]   retention: remove the tags and manifests no rule of
                      retention_policy keeps (--dry-run lists them); also
                      `scrub --retention` and `policy --retention` (upstream's)
  storage check       try what the registry needs of the [blob_store.s3] bucket
                      (signed writes and reads, If-None-Match, ranges, listings,
                      multipart, copies, presigned URLs) under a scratch prefix,
                      and say what works
  webhook secret      print a new Standard Webhooks secret (whsec_...) for
                      [event_webhook.NAME] signing_secrets
  hash-password       read a password (first line of standard input) and print
                      its hash for [auth.identity.NAME] password

  -c, --config FILE   configuration file (repeatable; default ./config.toml when present)
  -h, --help          this help
  -V, --version       print the version";

fn main() -> ExitCode {
    let mut files = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut flags: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => match args.next() {
                Some(file) => files.push(PathBuf::from(file)),
                None => return usage_error("-c needs a file"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("angos {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other if !other.starts_with('-') => words.push(other.to_string()),
            "--commit" | "--dry-run" | "-d" | "--retention" | "-r" => flags.push(arg),
            other => return usage_error(&format!("unexpected argument {other:?}")),
        }
    }
    if words == ["hash-password"] {
        return hash_password();
    }
    if words == ["webhook", "secret"] {
        println!("{}", angos::event_webhook::signature::new_signing_secret());
        return ExitCode::SUCCESS;
    }
    angos::logger::init();
    let files = if files.is_empty() {
        config::default_files()
    } else {
        files
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["server"] if flags.is_empty() => serve(files),
        ["scrub"] | ["policy"] if flags.iter().any(|flag| flag == "--retention" || flag == "-r") => {
            let flags: Vec<String> = flags
                .into_iter()
                .filter(|flag| flag != "--retention" && flag != "-r")
                .collect();
            prune(&files, &flags)
        }
        ["scrub"] => scrub(&files, &flags),
        ["prune"] => prune(&files, &flags),
        ["webhook", "test", name] => test_webhook(&files, name),
        ["storage", "check"] if flags.is_empty() => check_storage(&files),
        ["storage", ..] => usage_error("the storage command is: angos [-c FILE]... storage check"),
        ["webhook", ..] => usage_error(
            "the webhook commands are: angos [-c FILE]... webhook test NAME, angos webhook secret",
        ),
        [_, ..] if !flags.is_empty() => usage_error(&format!("unexpected argument {:?}", flags[0])),
        [other, ..] => usage_error(&format!("unknown command {other:?}")),
        [] => usage_error("a command is required"),
    }
}

/// `angos hash-password`: prints a PBKDF2 hash of the password on standard input.
fn hash_password() -> ExitCode {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // The password is echoed as typed; say so rather than read silently.
        eprintln!("angos: type the password and press Enter (it is shown as you type), or pipe it in");
    }
    match angos::auth::password::hash_password_from(&mut std::io::stdin().lock()) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("angos: hash-password: {message}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("angos: {message}\n{USAGE}");
    ExitCode::from(2)
}

/// The configuration for the commands that work on the filesystem layout
/// (`scrub`, `prune`): they refuse a bucket rather than look at `root_dir`.
fn load(files: &[PathBuf]) -> Option<config::Config> {
    let config = load_with_s3(files)?;
    if config.storage.s3.is_some() {
        log::error!(
            "this command works on [blob_store.fs] only; with [blob_store.s3] ask the running server (its admin API)"
        );
        return None;
    }
    Some(config)
}

/// The configuration, `[blob_store.s3]` included (for `storage check`).
fn load_with_s3(files: &[PathBuf]) -> Option<config::Config> {
    match config::load_files(files) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                log::warn!("{warning}");
            }
            Some(loaded.config)
        }
        Err(error) => {
            log::error!("invalid configuration: {error}");
            None
        }
    }
}

/// The storage of a server whose content is in `s3`'s bucket (`root_dir`
/// keeps this replica's own state: its event journal and lock).
fn on_bucket(s3: &config::s3::S3Config, config: &config::Config) -> Storage {
    use angos::storage::bucket::{BucketStore, CopyPlan, objects::Objects};
    log::info!(
        "content in bucket {} at {} (region {}, key prefix {:?}); this replica's journal in {}",
        s3.bucket,
        s3.endpoint.text,
        s3.region,
        s3.key_prefix,
        config.storage.root_dir.display()
    );
    let client = angos::s3::client::Client::new(s3, Box::new(angos::entropy::OsEntropy));
    let objects = Objects::new(client, s3.metadata_max_age_ms, config.storage.manifest_cache_size);
    let mut store = BucketStore::new(objects, s3.multipart_part_size).with_copy_plan(CopyPlan {
        threshold: s3.multipart_copy_threshold,
        chunk: s3.multipart_copy_chunk_size,
        jobs: s3.multipart_copy_jobs,
    });
    if s3.redirect_downloads {
        store = store.with_redirects(s3.redirect_expires_secs);
    }
    Storage::on_bucket(store, config.storage.max_upload_sessions)
}

/// `angos storage check`: runs the bucket check and prints a line per step.
fn check_storage(files: &[PathBuf]) -> ExitCode {
    let Some(config) = load_with_s3(files) else {
        return ExitCode::FAILURE;
    };
    let Some(s3) = &config.storage.s3 else {
        log::error!("no [blob_store.s3] is configured: there is no bucket to check");
        return ExitCode::FAILURE;
    };
    println!(
        "checking bucket {:?} at {} (region {:?})",
        s3.bucket, s3.endpoint.text, s3.region
    );
    let reports = match angos::reactor::check_storage(s3, &SystemClock::new()) {
        Ok(reports) => reports,
        Err(error) => {
            log::error!("storage check: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut passed = 0;
    for report in &reports {
        let mark = if report.ok { "ok  " } else { "FAIL" };
        if report.ok {
            passed += 1;
        }
        if report.detail.is_empty() {
            println!("{mark} {}", report.name);
        } else {
            println!("{mark} {}: {}", report.name, report.detail);
        }
    }
    let failed = reports.len() - passed;
    println!("{passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `angos scrub [--commit]`: one garbage collection, report-only unless
/// `--commit` (upstream Angos's default). A running server on the same data
/// is asked to run it (`POST /v2/_angos/gc`), so the two never race;
/// otherwise it runs here.
fn scrub(files: &[PathBuf], flags: &[String]) -> ExitCode {
    let commit = flags.iter().any(|flag| flag == "--commit");
    if commit && flags.iter().any(|flag| flag != "--commit") {
        return usage_error("--commit and --dry-run exclude each other");
    }
    let Some(config) = load(files) else {
        return ExitCode::FAILURE;
    };
    let root = &config.storage.root_dir;
    let _lock = match angos::storage::lock_root(root) {
        Ok(Some(lock)) => lock,
        Ok(None) => return scrub_on_server(&config, commit),
        Err(error) => {
            log::error!("cannot lock {}: {error}", root.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(mut storage) = open_storage(&config) else {
        return ExitCode::FAILURE;
    };
    let now_secs = angos::clock::Clock::unix_micros(&SystemClock::new()) / 1_000_000;
    let report =
        angos::maintenance::offline::collect(&mut storage, now_secs, config.global.gc_grace_secs, !commit);
    let mut summary = angos::maintenance::report_json(&report);
    summary["mode"] = (if commit { "commit" } else { "report-only" }).into();
    println!("{summary}");
    if report.manifests_unreachable > 0 {
        eprintln!(
            "angos: {} unreachable manifests are left for the server's collection (webhooks hear of their removal)",
            report.manifests_unreachable
        );
    }
    if report.errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// The store for a command working without a server (it holds the lock).
fn open_storage(config: &config::Config) -> Option<Storage> {
    let root = &config.storage.root_dir;
    match Storage::open(
        root,
        config.storage.sync_to_disk,
        config.storage.max_upload_sessions,
    ) {
        Ok(storage) => Some(storage),
        Err(error) => {
            log::error!("cannot open storage at {}: {error}", root.display());
            None
        }
    }
}

/// Asks the server holding the data directory to collect, waits for the
/// run to end and prints its report.
fn scrub_on_server(config: &config::Config, commit: bool) -> ExitCode {
    let mode = if commit { "commit" } else { "report-only" };
    match run_on_server(config, "gc", mode) {
        Ok(status) => {
            println!("{}", status["last"]);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Starts the server's maintenance job `job` (`gc`, `prune`) in `mode`
/// through the admin API, and waits for it to end (its removals made too);
/// the job's final status.
fn run_on_server(config: &config::Config, job: &str, mode: &str) -> Result<serde_json::Value, ExitCode> {
    let address = admin_address(config);
    let path = format!("/v2/_angos/{job}");
    let started = match admin_request(address, "POST", &format!("{path}?mode={mode}")) {
        Ok((202, _)) => true,
        // One is running already: report on that one when it ends.
        Ok((409, body)) if body.contains("already") => false,
        Ok((status, body)) => {
            log::error!("the server at {address} refused ({status}): {body}");
            return Err(ExitCode::FAILURE);
        }
        Err(error) => {
            log::error!(
                "a server holds {} but does not answer at {address}: {error}",
                config.storage.root_dir.display()
            );
            return Err(ExitCode::FAILURE);
        }
    };
    log::info!(
        "asked the server at {address} to run {job} ({})",
        if started {
            mode
        } else {
            "one was running: its report follows"
        }
    );
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let body = match admin_request(address, "GET", &path) {
            Ok((200, body)) => body,
            Ok((status, body)) => {
                log::error!("GET {path} answered {status}: {body}");
                return Err(ExitCode::FAILURE);
            }
            Err(error) => {
                log::error!("lost the server at {address}: {error}");
                return Err(ExitCode::FAILURE);
            }
        };
        let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
            log::error!("GET {path} answered something else than JSON: {body}");
            return Err(ExitCode::FAILURE);
        };
        if status["running"] == false && status["removals_pending"] == 0 {
            return Ok(status);
        }
    }
}

/// `angos prune [--dry-run]` (also upstream's `scrub --retention` and
/// `policy --retention`): one retention run. Its removals are events
/// webhooks must hear of, so a running server makes them; without one it
/// runs here only when no webhook is configured (or as a dry run).
fn prune(files: &[PathBuf], flags: &[String]) -> ExitCode {
    let dry_run = flags.iter().any(|flag| flag == "--dry-run" || flag == "-d");
    let Some(config) = load(files) else {
        return ExitCode::FAILURE;
    };
    let root = &config.storage.root_dir;
    let _lock = match angos::storage::lock_root(root) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            let mode = if dry_run { "dry-run" } else { "commit" };
            return match run_on_server(&config, "prune", mode) {
                Ok(status) => print_prune(&status["last"]),
                Err(code) => code,
            };
        }
        Err(error) => {
            log::error!("cannot lock {}: {error}", root.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(why) = angos::maintenance::prune::check_pull_times(&config) {
        log::error!("{why}");
        return ExitCode::FAILURE;
    }
    if !dry_run && !config.webhooks.is_empty() {
        log::error!(
            "retention removals are events for the configured webhooks, and only a running server delivers \
             them: start `angos server` and run this again (it asks the server), or use --dry-run"
        );
        return ExitCode::FAILURE;
    }
    let Some(storage) = open_storage(&config) else {
        return ExitCode::FAILURE;
    };
    let mut registry = Registry::new(storage, Limits::of(&config.global));
    let now_secs = angos::clock::Clock::unix_micros(&SystemClock::new()) / 1_000_000;
    let report = angos::maintenance::offline::prune(&mut registry, &config, now_secs, dry_run);
    print_prune(&report)
}

fn print_prune(report: &serde_json::Value) -> ExitCode {
    if let Some(lines) = report["listed"].as_array() {
        for line in lines {
            println!("{}", line.as_str().unwrap_or_default());
        }
    }
    let mut summary = report.clone();
    if let Some(object) = summary.as_object_mut() {
        object.remove("listed");
    }
    eprintln!("{summary}");
    ExitCode::SUCCESS
}

/// Where this host reaches the server holding the data directory: the
/// address it noted in the `.lock`, else the configured one.
fn admin_address(config: &config::Config) -> std::net::SocketAddr {
    if let Some(address) = angos::storage::noted_server_address(&config.storage.root_dir) {
        return loopback_for(address);
    }
    loopback_for(std::net::SocketAddr::new(
        config.server.bind_address,
        config.server.port,
    ))
}

/// `address`, with an unspecified IP replaced by the loopback one.
fn loopback_for(address: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::IpAddr::from([127, 0, 0, 1]),
        ip if ip.is_unspecified() => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, address.port())
}

/// One plain HTTP/1.1 request to the local server; its status and body.
/// Blocking is fine here: this is a command, not the server's loop.
fn admin_request(
    address: std::net::SocketAddr,
    method: &str,
    target: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `angos webhook test NAME`: one ping, its outcome spelled out, exit 0 on 2xx.
fn test_webhook(files: &[PathBuf], name: &str) -> ExitCode {
    let Some(config) = load(files) else {
        return ExitCode::FAILURE;
    };
    match angos::reactor::ping(&config, name, &SystemClock::new()) {
        Ok(Ok(done)) => {
            let url = &config.webhooks[name].url.text;
            let status = done
                .status
                .map_or("no HTTP answer".to_string(), |status| format!("HTTP {status}"));
            if done.success {
                println!(
                    "webhook {name:?}: POST {url} -> {status} in {} ms (delivery {})",
                    done.duration_ms, done.delivery_id
                );
                ExitCode::SUCCESS
            } else {
                let error = done.error.unwrap_or_default();
                println!(
                    "webhook {name:?}: POST {url} failed after {} ms: {error} ({status})",
                    done.duration_ms
                );
                ExitCode::FAILURE
            }
        }
        Ok(Err(message)) => {
            eprintln!("angos: {message}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("angos: cannot test the webhook: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Counts the content for the metrics, and says how full the disk is, at
/// start: an operator reading the log sees the guard's setting in bytes.
fn report_space(storage: &Storage) {
    // Timed in the log line: the count is one stat per content file, before serving.
    let clock = SystemClock::new();
    match storage.count_content() {
        Ok(count) => log::info!(
            "storage: {} content files, {} (counted in {} ms)",
            count.files,
            angos::storage::space::human_bytes(count.bytes),
            clock.now_ms()
        ),
        Err(error) => log::warn!("storage: cannot count the content under blobs/: {error}"),
    }
    let report = storage.space_report();
    let Some(disk) = report.disk else {
        return;
    };
    let human = angos::storage::space::human_bytes;
    let guard = if report.min_free_bytes == 0 {
        "min_free_space is 0: pushes are never refused for space".to_string()
    } else {
        format!(
            "pushes are refused below {} free (min_free_space)",
            human(report.min_free_bytes)
        )
    };
    log::info!(
        "storage: {} free of {}; {guard}",
        human(disk.free_bytes),
        human(disk.total_bytes)
    );
}

fn serve(files: Vec<PathBuf>) -> ExitCode {
    let Some(config) = load_with_s3(&files) else {
        return ExitCode::FAILURE;
    };
    // Held until the process exits.
    let _lock = match angos::storage::lock_root(&config.storage.root_dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            log::error!(
                "another angos process is using {} (its .lock is held)",
                config.storage.root_dir.display()
            );
            return ExitCode::FAILURE;
        }
        Err(error) => {
            log::error!("cannot lock {}: {error}", config.storage.root_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let storage = match &config.storage.s3 {
        Some(s3) => on_bucket(s3, &config).with_spool_dir(&config.storage.root_dir),
        None => Storage::open(
            &config.storage.root_dir,
            config.storage.sync_to_disk,
            config.storage.max_upload_sessions,
        ),
    };
    let storage = match storage {
        Ok(storage) if storage.bucket().is_some() => storage,
        Ok(storage) => storage
            .with_manifest_cache(config.storage.manifest_cache_size)
            .with_listing_index(config.storage.listing_index_size)
            .with_upload_sessions_per_namespace(config.storage.max_upload_sessions_per_namespace)
            .with_space_guard(
                config.storage.min_free_space,
                Box::new(angos::reactor::disk_space),
            ),
        Err(error) => {
            log::error!(
                "cannot open storage at {}: {error}",
                config.storage.root_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if storage.bucket().is_none() {
        report_space(&storage);
    }
    let mut registry = Registry::new(storage, Limits::of(&config.global));
    registry.set_tag_immutability(config::TagImmutability::of(&config));
    let journal_dir = config.storage.root_dir.join("_journal");
    let journal_bytes = config.global.event_webhook_journal_size;
    let journal_limits = JournalLimits {
        // Small enough that reclaiming the oldest segment drops few events.
        segment_bytes_max: (journal_bytes / 8).clamp(64 << 10, 4 << 20),
        total_bytes_max: journal_bytes,
        dead_letters_max: config.global.event_webhook_dead_letters,
        reserve_bytes: angos::event_webhook::journal::RESERVE_BYTES_DEFAULT,
    };
    let journal = match Journal::open(&journal_dir, config.storage.sync_to_disk, journal_limits) {
        Ok(opened) => opened,
        Err(error) => {
            log::error!(
                "cannot open the event journal at {}: {error}",
                journal_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut reactor = match Reactor::bind(config, files, registry, Some(journal), SystemClock::new()) {
        Ok(reactor) => reactor,
        Err(error) => {
            log::error!("cannot listen: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Where commands on the same data (`angos scrub`, `angos prune`) find
    // this server: the configured port may be 0, the address unspecified.
    if let Err(error) = angos::storage::note_server_address(&_lock, reactor.local_addr()) {
        log::warn!("cannot write the server's address into the data directory's .lock: {error}");
    }
    match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("reactor failed: {error}");
            ExitCode::FAILURE
        }
    }
}
