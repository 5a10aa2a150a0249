//! A bucket on the in-memory S3 (`s3::fake`) with a hand-driven clock, for
//! the backend's tests: requests go out and their answers come back when
//! the test pumps.

use crate::entropy::SeededEntropy;
use crate::http::exchange::Outgoing;
use crate::s3::client::Client;
use crate::s3::fake::{FakeS3, Faults};

use super::objects::{Holder, Objects};
use super::{BucketError, BucketStore};

pub const UNIX_SECS: u64 = 1_700_000_000;

pub fn client(max_attempts: u32, seed: u64) -> Client {
    Client::new(
        &crate::s3::fake::config(max_attempts),
        Box::new(SeededEntropy::new(seed)),
    )
}

/// A replica of the bucket with parts of `part_size` bytes.
pub fn replica(seed: u64, part_size: u64) -> BucketStore {
    BucketStore::new(Objects::new(client(20, seed), 0, 1 << 20), part_size)
}

/// Runs `operation` as a request of `holder` on `store`, again each time
/// it waited, until it answers (the app's loop, by hand); the request
/// arrives after the one before.
pub fn run<T>(
    rig: &mut Rig,
    store: &BucketStore,
    holder: Holder,
    operation: impl Fn(&BucketStore) -> Result<T, BucketError>,
) -> Result<T, BucketError> {
    rig.now_ms += 1;
    let arrived_ms = rig.now_ms;
    for _ in 0..10_000 {
        store.objects().set_time(rig.now_ms, UNIX_SECS);
        store.objects().enter(holder, arrived_ms);
        let result = operation(store);
        let waits = store.objects().leave();
        if !matches!(result, Err(BucketError::Pending)) {
            store.objects().release(holder);
            return result;
        }
        assert!(waits, "a pending run waits on something");
        rig.pump(store.objects());
        assert!(store.objects().take_woken().contains(&holder));
    }
    panic!("never answered");
}

/// A seeded xorshift: `next(n)` is below `n`, the same for a seed each run.
pub fn seeded(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}

pub struct Rig {
    pub fake: FakeS3,
    pub now_ms: u64,
}

impl Rig {
    /// A rig whose bucket throttles and loses answers (per mille each).
    pub fn faulty(throttled: u32, lost: u32, seed: u64) -> Rig {
        Rig::new(Faults { throttled, lost }, seed)
    }

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
