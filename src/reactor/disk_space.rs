//! The one `statvfs` call: how much of the disk under a path is free. Here
//! because `unsafe` is allowed only in the reactor; storage's full-disk
//! guard is handed this function as its probe, so storage stays free of
//! system calls it would have to fake in tests.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::storage::DiskSpace;

/// Free space an unprivileged writer may use (`f_bavail`: the blocks ext4
/// keeps for root are not ours to count on) and the filesystem's size, both
/// in bytes of `f_frsize`, the unit POSIX gives those block counts in.
// The fields are 64 bits here but `c_ulong` (32 bits) on 32-bit targets:
// the conversions are no-ops only on this one.
#[allow(clippy::useless_conversion)]
pub fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs only writes the struct it is given; an all-zero
    // `statvfs` is a valid value of that plain C struct.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and
    // `stats` is a valid, writable `statvfs`.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = u64::from(stats.f_frsize);
    Ok(DiskSpace {
        free_bytes: u64::from(stats.f_bavail).saturating_mul(unit),
        total_bytes: u64::from(stats.f_blocks).saturating_mul(unit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_disk_and_reports_a_missing_path() {
        let space = disk_space(Path::new("/")).unwrap();
        assert!(space.total_bytes > 0);
        assert!(space.free_bytes <= space.total_bytes);
        let error = disk_space(Path::new("/no/such/directory/here")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
