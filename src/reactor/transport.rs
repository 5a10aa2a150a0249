//! A connection's byte stream: plain TCP, or TLS through rustls on the same
//! non-blocking socket, for inbound connections (server side) and outbound
//! ones (webhooks, client side) alike: the one TLS record pump. Callers read
//! and write plaintext; the TLS side pumps records (`read_tls`,
//! `process_new_packets`, `write_tls`) as the socket allows, and bounds what
//! it buffers, so back-pressure still reaches the caller.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use mio::net::TcpStream;

/// Plaintext rustls may buffer before `write` accepts less (back-pressure).
const TLS_BUFFER_BYTES: usize = 64 * 1024;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

pub struct TlsStream {
    socket: TcpStream,
    tls: rustls::Connection,
}

impl Transport {
    /// The server side of TLS on an accepted socket.
    pub fn tls(socket: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Transport> {
        let tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Transport::with_tls(socket, tls.into()))
    }

    /// The client side of TLS on a connected socket, checking the server's
    /// certificate against `server_name`.
    pub fn tls_client(
        socket: TcpStream,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Transport, rustls::Error> {
        let tls = rustls::ClientConnection::new(config, server_name)?;
        Ok(Transport::with_tls(socket, tls.into()))
    }

    fn with_tls(socket: TcpStream, mut tls: rustls::Connection) -> Transport {
        tls.set_buffer_limit(Some(TLS_BUFFER_BYTES));
        Transport::Tls(Box::new(TlsStream { socket, tls }))
    }

    /// The plain socket, taken back (for a TLS upgrade or a close).
    pub fn into_socket(self) -> TcpStream {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(stream) => stream.socket,
        }
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(stream) => &mut stream.socket,
        }
    }

    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Transport::Plain(socket) => socket.peer_addr().ok(),
            Transport::Tls(stream) => stream.socket.peer_addr().ok(),
        }
    }

    /// Reads plaintext: `Ok(0)` at the end of the stream, `WouldBlock` when
    /// nothing is available yet.
    pub fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let stream = match self {
            Transport::Plain(socket) => return socket.read(buffer),
            Transport::Tls(stream) => stream,
        };
        loop {
            match stream.tls.reader().read(buffer) {
                Ok(n) => return Ok(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: a truncation, reported as EOF.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) => return Err(error),
            }
            match stream.tls.read_tls(&mut stream.socket) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    if let Err(error) = stream.tls.process_new_packets() {
                        // Send the alert that explains the failure, then give up.
                        let _ = stream.tls.write_tls(&mut stream.socket);
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("TLS: {error}"),
                        ));
                    }
                    // Handshake messages may be due (ServerHello, tickets).
                    stream.flush()?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Writes plaintext; returns how much was taken (less than asked when
    /// the TLS buffer is full, `WouldBlock` when nothing was).
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write(data),
            Transport::Tls(stream) => {
                // Twice at most: a full TLS buffer that then drains completely
                // into the socket gets no writable edge later, so retry now.
                for _ in 0..2 {
                    let taken = stream.tls.writer().write(data)?;
                    stream.flush()?;
                    if taken > 0 || data.is_empty() {
                        return Ok(taken);
                    }
                    if stream.tls.wants_write() {
                        break; // The socket is full: its writable edge resumes us.
                    }
                }
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }

    /// Sends up to `count` bytes of `file` from `offset`: `sendfile` on plain
    /// TCP (zero copy); read and encrypt through TLS.
    pub fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        count: usize,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => {
                let mut off = offset as libc::off_t;
                // SAFETY: both descriptors are open for the duration of the call;
                // `off` is a valid pointer that sendfile advances.
                let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(n as usize)
            }
            Transport::Tls(_) => {
                let want = count.min(scratch.len());
                let read = file.read_at(&mut scratch[..want], offset)?;
                if read == 0 {
                    return Ok(0);
                }
                self.write(&scratch[..read])
            }
        }
    }

    /// `true` when nothing encrypted waits for the socket.
    pub fn flushed(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            Transport::Tls(stream) => {
                stream.flush()?;
                Ok(!stream.tls.wants_write())
            }
        }
    }

    /// Ends our sending side: close_notify first on TLS.
    pub fn shutdown_write(&mut self) {
        if let Transport::Tls(stream) = self {
            stream.tls.send_close_notify();
            let _ = stream.flush();
        }
        let _ = self.socket().shutdown(std::net::Shutdown::Write);
    }
}

impl TlsStream {
    /// Writes pending TLS records until the socket would block.
    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}
