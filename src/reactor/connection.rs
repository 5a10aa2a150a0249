//! One inbound connection's socket side: moves bytes between the transport
//! (plain or TLS) and the sans-IO `http::server::ServerConnection`, within a
//! per-turn byte budget, and tells the reactor what the machine decided. The
//! read buffer is shared by all connections (one thread).

use std::io::{self, Read};
use std::net::SocketAddr;

use super::output::{self, Flush, Scratch};
use super::transport::Transport;
use crate::app::{Application, Request};
use crate::http::Response;
use crate::http::server::{ServerConnection, State, Timeouts};

/// Bytes one connection may write per wake-up before others get a turn
/// (what it reads is the machine's budget, `INPUT_BYTES_PER_TURN`): 4 MiB
/// of `sendfile` costs under a millisecond, but through TLS every byte is
/// encrypted on the loop (about 1.5 GB/s here), so a TLS turn writes 1 MiB.
const OUTPUT_BUDGET_BYTES: usize = 4 << 20;
const TLS_OUTPUT_BUDGET_BYTES: usize = 1 << 20;

/// What the reactor should do with the connection after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait for readiness or the deadline.
    Wait,
    /// Work remains that the budget cut short; run again this loop turn.
    Again,
    Close,
}

pub struct Connection {
    pub transport: Transport,
    pub machine: ServerConnection<Request>,
    /// The peer's address, for the client address and trusted proxies.
    pub peer: Option<SocketAddr>,
    scratch: Scratch,
}

impl Connection {
    pub fn new(transport: Transport, max_header_size: usize, now_ms: u64, timeouts: Timeouts) -> Connection {
        Connection {
            peer: transport.peer_addr(),
            transport,
            machine: ServerConnection::new(max_header_size, timeouts, now_ms),
            scratch: Scratch::default(),
        }
    }

    /// Reads, processes and writes as far as the budget allows.
    pub fn run(&mut self, app: &mut Application, read_buffer: &mut [u8], now_ms: u64) -> Next {
        match self.run_inner(app, read_buffer, now_ms) {
            Ok(next) => next,
            Err(error) => {
                log::debug!(target: "angos::reactor", "connection error: {error}");
                Next::Close
            }
        }
    }

    fn run_inner(&mut self, app: &mut Application, read_buffer: &mut [u8], now_ms: u64) -> io::Result<Next> {
        if self.machine.phase() == crate::http::server::Phase::Lingering {
            return Ok(self.linger(app, read_buffer, now_ms));
        }
        self.machine.begin_turn();
        self.machine.wake(app, now_ms);
        let mut again = false;
        loop {
            let progressed = self.machine.process(app, now_ms);
            match self.flush()? {
                // Writable readiness resumes us; buffered requests wait for it.
                Flush::Blocked => break,
                // The fill of the blob being sent wakes us when it wrote more.
                Flush::Starved(growing) => {
                    growing.wait(app.waiter.slot, app.waiter.generation);
                    self.machine.handle_starved(now_ms);
                    break;
                }
                Flush::Budget => {
                    again = true;
                    break;
                }
                Flush::Done => {}
            }
            if !self.machine.wants_input() {
                break;
            }
            if progressed {
                // Answers went out; pipelined requests may already be buffered.
                continue;
            }
            match self.transport.read(read_buffer) {
                Ok(0) => {
                    self.machine.handle_eof(app, now_ms);
                    self.flush()?;
                    break;
                }
                Ok(n) => self.machine.handle_input(&read_buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(match self.machine.poll_state(now_ms) {
            State::Open { again: due } => {
                if again || due {
                    Next::Again
                } else {
                    Next::Wait
                }
            }
            State::Linger => {
                self.transport.shutdown_write();
                self.linger(app, read_buffer, now_ms)
            }
            State::Close => Next::Close,
        })
    }

    /// Reads and drops what the peer still sends after our answer (the
    /// machine counts it), until it closes, sends too much, or would block.
    fn linger(&mut self, app: &mut Application, read_buffer: &mut [u8], now_ms: u64) -> Next {
        loop {
            match self.transport.socket().read(read_buffer) {
                Ok(0) => self.machine.handle_eof(app, now_ms),
                Ok(n) => self.machine.handle_input(&read_buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return match self.machine.poll_state(now_ms) {
                        State::Open { .. } => Next::Wait,
                        _ => Next::Close,
                    };
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            }
            if !matches!(self.machine.poll_state(now_ms), State::Open { .. }) {
                return Next::Close;
            }
        }
    }

    fn flush(&mut self) -> io::Result<Flush> {
        let budget = if self.transport.is_tls() {
            TLS_OUTPUT_BUDGET_BYTES
        } else {
            OUTPUT_BUDGET_BYTES
        };
        let (flush, written) = output::flush(
            self.machine.output(),
            &mut self.transport,
            &mut self.scratch,
            budget,
        )?;
        self.machine.handle_written(written);
        Ok(flush)
    }

    /// The machine's deadline passed.
    pub fn on_timeout(&mut self, app: &mut Application, read_buffer: &mut [u8], now_ms: u64) -> Next {
        self.machine.handle_timeout(app, now_ms);
        self.run(app, read_buffer, now_ms)
    }

    /// The outside work a held request waited on is done.
    pub fn continue_held(&mut self, app: &mut Application, read_buffer: &mut [u8], now_ms: u64) -> Next {
        self.machine.continue_held(app, now_ms);
        self.run(app, read_buffer, now_ms)
    }

    /// The answer of a held request arrived.
    pub fn resume(
        &mut self,
        response: Response,
        app: &mut Application,
        read_buffer: &mut [u8],
        now_ms: u64,
    ) -> Next {
        self.machine.resume(response, app, now_ms);
        self.run(app, read_buffer, now_ms)
    }
}
