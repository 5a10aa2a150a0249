//! Crash-safe file commits: write to a temporary file, fsync, rename into
//! place, fsync the directory. Knows nothing of the registry layout beyond
//! the temporary directory it is handed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `dest` so that readers see either the old file or the
/// whole new one. The temporary file lives in `tmp_dir`, which must be on the
/// same filesystem as `dest` for the rename to be atomic (both are under the
/// storage root).
pub fn write_file(tmp_dir: &Path, dest: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let tmp = tmp_dir.join(super::random_hex(super::RANDOM_ID_BYTES));
    let result = write_then_rename(&tmp, dest, bytes, sync);
    if result.is_err() {
        // Best effort: `open` wipes `_tmp` at the next start anyway.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(tmp: &Path, dest: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    // `create_new` so two writers can never share a temporary file, even if
    // the random names collided.
    let mut file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
    file.write_all(bytes)?;
    if sync {
        // Without this the rename may reach the disk before the data, and a
        // crash would leave an empty or torn file under the final name.
        file.sync_all()?;
    }
    drop(file);
    rename(tmp, dest, sync)
}

/// Writes the same `bytes` to every path of `dests`, each replaced
/// atomically, with a cost in flushes that does not grow with their number:
/// one temporary file is written and fsync'd once, then hard-linked and
/// renamed into each place, and each distinct directory is fsync'd once at
/// the end. (Used for the tags of one manifest push: a file and two fsyncs
/// per tag made a push with a thousand tags hold the loop for seconds.)
pub fn write_file_to_many(tmp_dir: &Path, dests: &[PathBuf], bytes: &[u8], sync: bool) -> io::Result<()> {
    if dests.is_empty() {
        return Ok(());
    }
    let source = tmp_dir.join(super::random_hex(super::RANDOM_ID_BYTES));
    let result = link_into_each(tmp_dir, &source, dests, bytes, sync);
    // The source's name is only scaffolding; its content lives on in the links.
    let _ = fs::remove_file(&source);
    result
}

fn link_into_each(
    tmp_dir: &Path,
    source: &Path,
    dests: &[PathBuf],
    bytes: &[u8],
    sync: bool,
) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(source)?;
    file.write_all(bytes)?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    let mut directories: Vec<&Path> = Vec::new();
    for dest in dests {
        let dir = parent(dest)?;
        create_dirs(dir, sync)?;
        let link = tmp_dir.join(super::random_hex(super::RANDOM_ID_BYTES));
        fs::hard_link(source, &link)?;
        if let Err(error) = fs::rename(&link, dest) {
            let _ = fs::remove_file(&link);
            return Err(error);
        }
        if !directories.contains(&dir) {
            directories.push(dir);
        }
    }
    if sync {
        for dir in directories {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Renames `src` (already written, and fsync'd when `sync`) to `dest`,
/// creating `dest`'s directory if needed, then makes the new entry durable.
pub fn rename(src: &Path, dest: &Path, sync: bool) -> io::Result<()> {
    let dir = parent(dest)?;
    create_dirs(dir, sync)?;
    fs::rename(src, dest)?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Removes a file; `false` when it did not exist. When `sync`, the removal is
/// made durable so a deleted tag or link does not come back after a crash.
pub fn remove_file(path: &Path, sync: bool) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    }
    if sync {
        sync_dir(parent(path)?)?;
    }
    Ok(true)
}

/// `create_dir_all`, plus (when `sync`) an fsync of the parent of every
/// directory it created: a new directory entry is only durable once its
/// parent directory is flushed, and a file renamed into a directory whose own
/// entry was lost would vanish with it.
pub fn create_dirs(dir: &Path, sync: bool) -> io::Result<()> {
    // Collect the missing ancestors, deepest first. Bounded by the number of
    // components of `dir`.
    let mut missing = Vec::new();
    let mut current = dir;
    loop {
        match fs::metadata(current) {
            Ok(metadata) if metadata.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", current.display()),
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                missing.push(current);
                current = parent(current)?;
            }
            Err(error) => return Err(error),
        }
    }
    for created in missing.iter().rev() {
        match fs::create_dir(created) {
            Ok(()) => {}
            // Someone else (another process on the same root) won the race;
            // the directory is what we wanted either way.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        if sync {
            sync_dir(parent(created)?)?;
        }
    }
    Ok(())
}

/// Flushes a directory's entries (creations, renames, removals) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        // A relative root one component deep: its parent is the working directory.
        Some(parent) if parent.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(parent) => Ok(parent),
        // Only `/` has no parent, and the storage never writes it.
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no parent directory", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_content_lands_in_many_files_and_replaces_old_ones() {
        let scratch = crate::test_support::TempDir::new("atomic");
        let root = scratch.path();
        let tmp = root.join("_tmp");
        fs::create_dir_all(&tmp).unwrap();
        let tags = root.join("tags");
        fs::create_dir_all(&tags).unwrap();
        fs::write(tags.join("old"), b"before\n").unwrap();
        let dests: Vec<PathBuf> = ["old", "a", "b", "nested/c"]
            .iter()
            .map(|name| tags.join(name))
            .collect();
        write_file_to_many(&tmp, &dests, b"sha256:abc\n", true).unwrap();
        for dest in &dests {
            assert_eq!(fs::read(dest).unwrap(), b"sha256:abc\n", "{}", dest.display());
        }
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "no scaffolding left");
    }
}
