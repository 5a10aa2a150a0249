//! SIGTERM and SIGINT as a readable pipe: the handler only writes one byte
//! (async-signal-safe), the reactor polls the read end like any socket.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // The handler may interrupt code between a failing call and its read
        // of errno; a write that fails here (a full pipe gives EAGAIN) must
        // not change what that code sees.
        // SAFETY: __errno_location returns this thread's errno slot.
        let errno = unsafe { libc::__errno_location() };
        // SAFETY: reading and writing this thread's errno is async-signal-safe.
        let saved = unsafe { *errno };
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe just drops the byte,
        // which is fine because one pending byte already wakes the reactor.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        // SAFETY: as above.
        unsafe { *errno = saved };
    }
}

/// The read end of the signal pipe.
pub struct SignalPipe {
    read: std::fs::File,
    _write: OwnedFd,
}

impl Drop for SignalPipe {
    /// Runs before the fields close the descriptors: once the write end is
    /// closed its number may be reused by any file the process opens next,
    /// and a late signal must not write a byte into that.
    fn drop(&mut self) {
        WRITE_FD.store(-1, Ordering::SeqCst);
    }
}

impl SignalPipe {
    /// Installs handlers for SIGTERM and SIGINT, and ignores SIGPIPE (a peer
    /// that goes away must give EPIPE on write, not kill the process).
    pub fn install() -> io::Result<SignalPipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (read, write) = unsafe { (std::fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        WRITE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: a zeroed sigaction with a plain handler is valid.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // SAFETY: setting SIGPIPE to SIG_IGN is always valid.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        Ok(SignalPipe { read, _write: write })
    }

    pub fn raw_fd(&self) -> i32 {
        self.read.as_raw_fd()
    }

    /// Empties the pipe; `true` when a signal arrived.
    pub fn drain(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let mut any = false;
        while let Ok(n) = self.read.read(&mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, because the handler and `WRITE_FD` are process-wide.
    #[test]
    fn the_handler_keeps_errno_and_stops_writing_once_the_pipe_is_closed() {
        let mut pipe = SignalPipe::install().unwrap();
        // Fill the pipe so the handler's write fails (EAGAIN).
        let write_fd = WRITE_FD.load(Ordering::SeqCst);
        let chunk = [0u8; 4096];
        // SAFETY: writing to the pipe's own non-blocking write end.
        while unsafe { libc::write(write_fd, chunk.as_ptr().cast(), chunk.len()) } > 0 {}
        const SENTINEL: i32 = libc::ENOTTY;
        // SAFETY: this thread's errno; raise(3) runs the handler on this thread.
        unsafe {
            *libc::__errno_location() = SENTINEL;
            assert_eq!(libc::raise(libc::SIGTERM), 0);
            assert_eq!(*libc::__errno_location(), SENTINEL, "the handler changed errno");
        }
        assert!(pipe.drain());
        let old_write_end = WRITE_FD.load(Ordering::SeqCst);
        drop(pipe);

        // New descriptors take the lowest free numbers, so a new pipe's write
        // end gets the old one's number: the handler must leave it alone.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors this test owns.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
            0
        );
        // SAFETY: raise(3) runs the handler on this thread.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        let mut byte = [0u8; 1];
        // SAFETY: reading from the pipe just made.
        let read = unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) };
        // SAFETY: closing the descriptors this test made.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        if fds[1] != old_write_end {
            // Another test thread took the number first; nothing to observe.
            eprintln!("descriptor {old_write_end} was not reused by this test ({fds:?})");
            return;
        }
        assert_eq!(
            read, -1,
            "a signal after the pipe closed wrote into a reused descriptor"
        );
    }
}
