//! SIGTERM and SIGINT as a readable pipe: the handler only writes one byte
//! (async-signal-safe), the reactor polls the read end like any socket.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe just drops the byte,
        // which is fine because one pending byte already wakes the reactor.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// The read end of the signal pipe.
pub struct SignalPipe {
    read: std::fs::File,
    _write: OwnedFd,
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
        WRITE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
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
