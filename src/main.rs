//! The `angos` command: parse arguments, load configuration, start the
//! logger, open storage and run the reactor.

use std::path::PathBuf;
use std::process::ExitCode;

use angos::clock::SystemClock;
use angos::config;
use angos::reactor::Reactor;
use angos::registry::{Limits, Registry};
use angos::storage::Storage;

const USAGE: &str = "usage: angos [-c FILE]... server\n\n  -c, --config FILE   configuration file (repeatable; default ./config.toml when present)\n  -h, --help          this help\n  -V, --version       print the version";

fn main() -> ExitCode {
    let mut files = Vec::new();
    let mut command = None;
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
            other if command.is_none() && !other.starts_with('-') => command = Some(other.to_string()),
            other => return usage_error(&format!("unexpected argument {other:?}")),
        }
    }
    angos::logger::init();
    match command.as_deref() {
        Some("server") => serve(files),
        Some(other) => usage_error(&format!("unknown command {other:?}")),
        None => usage_error("a command is required"),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("angos: {message}\n{USAGE}");
    ExitCode::from(2)
}

fn serve(files: Vec<PathBuf>) -> ExitCode {
    let files = if files.is_empty() {
        config::default_files()
    } else {
        files
    };
    let loaded = match config::load_files(&files) {
        Ok(loaded) => loaded,
        Err(error) => {
            log::error!("invalid configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &loaded.warnings {
        log::warn!("{warning}");
    }
    let config = loaded.config;
    let storage = match Storage::open(
        &config.storage.root_dir,
        config.storage.sync_to_disk,
        config.storage.max_upload_sessions,
    ) {
        Ok(storage) => storage,
        Err(error) => {
            log::error!(
                "cannot open storage at {}: {error}",
                config.storage.root_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let limits = Limits {
        max_manifest_size: config.global.max_manifest_size,
        max_blob_size: config.global.max_blob_size,
    };
    let registry = Registry::new(storage, limits);
    let mut reactor = match Reactor::bind(config, files, registry, SystemClock::new()) {
        Ok(reactor) => reactor,
        Err(error) => {
            log::error!("cannot listen: {error}");
            return ExitCode::FAILURE;
        }
    };
    match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("reactor failed: {error}");
            ExitCode::FAILURE
        }
    }
}
