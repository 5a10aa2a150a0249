//! A bucket on the in-memory S3 (`s3::fake`) with a hand-driven clock, for
//! the backend's tests: requests go out and their answers come back when
//! the test pumps.

use crate::entropy::SeededEntropy;
use crate::http::exchange::Outgoing;
use crate::s3::client::Client;
use crate::s3::fake::{FakeS3, Faults};

use super::objects::Objects;

pub const UNIX_SECS: u64 = 1_700_000_000;

pub fn config(max_attempts: u32) -> crate::config::s3::S3Config {
    let text = format!(
        "[blob_store.s3]\nendpoint = \"http://10.0.0.5:3900\"\nbucket = \"reg\"\nregion = \"r\"\n\
         access_key_id = \"AK\"\nsecret_key = \"SK\"\nmax_attempts = {max_attempts}\n\
         operation_timeout_secs = 600\noperation_attempt_timeout_secs = 5\n"
    );
    crate::config::load_sources(&[("t.toml".into(), text)])
        .unwrap()
        .config
        .storage
        .s3
        .unwrap()
}

pub fn client(max_attempts: u32, seed: u64) -> Client {
    Client::new(&config(max_attempts), Box::new(SeededEntropy::new(seed)))
}

pub struct Rig {
    pub fake: FakeS3,
    pub now_ms: u64,
}

impl Rig {
    pub fn new(faults: Faults, seed: u64) -> Rig {
        Rig {
            fake: FakeS3::new("reg", faults, seed),
            now_ms: 1_000,
        }
    }

    /// Carries every request out to the fake and its answer back; when
    /// nothing is left to send, moves the clock to the next timer (a retry
    /// or a timed-out attempt) while `objects` still has work.
    pub fn pump(&mut self, objects: &Objects) {
        for _ in 0..100_000 {
            objects.set_time(self.now_ms, UNIX_SECS);
            let mut sent = false;
            while let Some(outgoing) = objects.poll_outgoing() {
                if let Outgoing::Send {
                    exchange,
                    mut request,
                    body,
                    ..
                } = outgoing
                {
                    sent = true;
                    request.extend_from_slice(&body);
                    for piece in self.fake.handle(&request) {
                        objects.handle_answer(exchange, piece);
                    }
                }
            }
            if sent {
                continue;
            }
            match objects.poll_timeout() {
                Some(at) => {
                    self.now_ms = self.now_ms.max(at);
                    objects.set_time(self.now_ms, UNIX_SECS);
                    objects.handle_timeout();
                }
                None => return,
            }
        }
        panic!("the bucket never settled");
    }
}
