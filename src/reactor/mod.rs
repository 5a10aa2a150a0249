//! The reactor: the only module that touches mio, sockets and the real clock.
