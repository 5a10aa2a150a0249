//! A blob the cache fetches onto a bucket: the upstream's bytes go to a
//! local spool file (its readers stream it, `fill::Fill`) and through the
//! hasher; once every byte is in and the digest holds, the spool is pushed
//! into the bucket as a monolithic upload, a bounded stretch per loop turn,
//! pausing while the upload's part is being sent. Wrong bytes are never
//! pushed, so they never become the blob.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::digest::{Digest, Hasher};
use crate::registry::{Exchange, Finished, Holder, Outcome, Registry};

/// Bytes read from the spool at a time.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Bytes pushed in one loop turn at most, so no fill holds the loop (a
/// bucket's part is sent between turns anyway).
const TURN_BYTES_MAX: u64 = 4 << 20;

/// Where the push into the bucket is.
enum Push {
    /// Bytes are still arriving from the upstream.
    Receiving,
    /// The upload session is being opened.
    Starting,
    /// The spool's bytes go in: `sent` of them so far.
    Sending { exchange: Exchange, sent: u64 },
    /// Every byte is in: the upload is verified and committed.
    Finishing(Exchange),
    /// Over (answered, failed or abandoned).
    Ended,
}

/// What one step of the push came to.
pub enum Step {
    /// The bucket is being waited on: step again when the holder is woken.
    Wait,
    /// This turn's share is pushed: step again next turn.
    Again,
    /// The upload's answer (staged when webhooks want its event).
    Done(Box<Outcome>),
    Failed(String),
}

pub struct Spool {
    file: File,
    size: u64,
    written: u64,
    hasher: Hasher,
    push: Push,
    /// When the push's current stage began: each of its runs on the bucket
    /// arrives then, so what an earlier run read stays fresh for it.
    arrived_ms: u64,
}

impl Spool {
    /// A spool for `size` bytes hashing to `digest` (its algorithm).
    pub fn new(file: File, size: u64, digest: &Digest) -> Spool {
        Spool {
            file,
            size,
            written: 0,
            hasher: Hasher::for_digest(digest),
            push: Push::Receiving,
            arrived_ms: 0,
        }
    }

    /// Appends upstream bytes.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, self.written)?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// The upstream's answer ended: whether its bytes are the blob (then
    /// the push may start).
    pub fn verify(&mut self, digest: &Digest, now_ms: u64) -> Result<(), String> {
        if self.written != self.size {
            return Err("the blob ended early".into());
        }
        let hasher = std::mem::replace(&mut self.hasher, Hasher::for_digest(digest));
        if hasher.digest() != *digest {
            return Err("the upstream's bytes do not match the blob's digest".into());
        }
        self.push = Push::Starting;
        self.arrived_ms = now_ms;
        Ok(())
    }

    /// Moves the push on as `holder` (the fill's own), at most a turn's
    /// share of bytes.
    pub fn step(
        &mut self,
        registry: &mut Registry,
        name: &str,
        digest: &Digest,
        holder: Holder,
        now_ms: u64,
    ) -> Step {
        loop {
            match std::mem::replace(&mut self.push, Push::Ended) {
                Push::Receiving => {
                    self.push = Push::Receiving;
                    return Step::Wait;
                }
                Push::Ended => return Step::Failed("the push is over".into()),
                Push::Starting => {
                    registry.enter(holder, self.arrived_ms);
                    let begun = registry.begin_fill_upload(name, digest);
                    if registry.leave() {
                        self.push = Push::Starting;
                        return Step::Wait;
                    }
                    // Its reads (the new session) are of no more use.
                    registry.release(holder);
                    match begun {
                        Ok(exchange) => {
                            self.push = Push::Sending { exchange, sent: 0 };
                            self.arrived_ms = now_ms;
                        }
                        Err(reason) => return Step::Failed(reason),
                    }
                }
                Push::Sending {
                    mut exchange,
                    mut sent,
                } => {
                    registry.enter(holder, self.arrived_ms);
                    let sending = self.send(registry, &mut exchange, &mut sent);
                    registry.leave();
                    match sending {
                        Ok(None) => {
                            self.push = Push::Finishing(exchange);
                            self.arrived_ms = now_ms;
                        }
                        Ok(Some(step)) => {
                            self.push = Push::Sending { exchange, sent };
                            return step;
                        }
                        Err(reason) => {
                            abort(registry, exchange, holder, now_ms);
                            return Step::Failed(reason);
                        }
                    }
                }
                Push::Finishing(exchange) => {
                    registry.enter(holder, self.arrived_ms);
                    let finished = registry.finish(exchange);
                    let waits = registry.leave();
                    match finished {
                        Finished::Wait(exchange) => {
                            self.push = Push::Finishing(exchange);
                            return Step::Wait;
                        }
                        Finished::Answer(_) if waits => {
                            return Step::Failed("the upload's answer came while it waited".into());
                        }
                        Finished::Answer(outcome) => {
                            registry.release(holder);
                            return Step::Done(Box::new(outcome));
                        }
                    }
                }
            }
        }
    }

    /// Feeds the upload from the spool until every byte is in (`None`), the
    /// upload pauses (`Wait`) or the turn's share is used (`Again`).
    fn send(
        &self,
        registry: &mut Registry,
        exchange: &mut Exchange,
        sent: &mut u64,
    ) -> Result<Option<Step>, String> {
        let mut buffer = vec![0; READ_CHUNK_BYTES];
        let mut budget = TURN_BYTES_MAX;
        while *sent < self.size {
            if registry.body_paused(exchange) {
                return Ok(Some(Step::Wait));
            }
            if budget == 0 {
                return Ok(Some(Step::Again));
            }
            let want = (self.size - *sent).min(READ_CHUNK_BYTES as u64) as usize;
            self.file
                .read_exact_at(&mut buffer[..want], *sent)
                .map_err(|error| format!("reading the spool: {error}"))?;
            registry
                .body(exchange, &buffer[..want])
                .map_err(|response| format!("the bucket refused the blob ({})", response.status))?;
            *sent += want as u64;
            budget = budget.saturating_sub(want as u64);
        }
        Ok(None)
    }

    /// The fill will not complete: an upload begun in the bucket goes (what
    /// a lost answer leaves there, the session sweep removes).
    pub fn abandon(&mut self, registry: &mut Registry, holder: Holder, now_ms: u64) {
        match std::mem::replace(&mut self.push, Push::Ended) {
            Push::Sending { exchange, .. } | Push::Finishing(exchange) => {
                abort(registry, exchange, holder, now_ms)
            }
            Push::Starting => registry.release(holder),
            Push::Receiving | Push::Ended => {}
        }
    }
}

fn abort(registry: &mut Registry, exchange: Exchange, holder: Holder, now_ms: u64) {
    registry.enter(holder, now_ms);
    registry.abort(exchange);
    registry.leave();
    registry.release(holder);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::Limits;
    use crate::storage::Storage;
    use crate::storage::bucket::testing::{Rig, replica, run, seeded};
    use crate::test_support::TempDir;

    const HOLDER: Holder = (super::super::CACHE_SLOT, 7);

    fn registry(seed: u64, spool: &TempDir) -> Registry {
        let storage = Storage::on_bucket(replica(seed, 5 << 20), 8)
            .with_spool_dir(spool.path())
            .unwrap();
        Registry::new(storage, Limits::of(&Config::default().global))
    }

    fn blob(seed: u64, len: usize) -> Vec<u8> {
        let mut next = seeded(seed);
        (0..len).map(|_| next(256) as u8).collect()
    }

    /// Spools `bytes` as an upstream would send them, in pieces.
    fn spooled(registry: &mut Registry, bytes: &[u8], digest: &Digest) -> Spool {
        let file = registry.start_spool(bytes.len() as u64).unwrap();
        let mut spool = Spool::new(file, bytes.len() as u64, digest);
        for piece in bytes.chunks(100_000) {
            spool.write(piece).unwrap();
        }
        spool
    }

    /// Steps the push until it ends, pumping the bucket whenever it waits:
    /// its outcome, and how many turns ran out of their share.
    fn push(rig: &mut Rig, registry: &mut Registry, spool: &mut Spool, digest: &Digest) -> (Outcome, usize) {
        let mut turns = 0;
        for _ in 0..10_000 {
            rig.now_ms += 1;
            registry.set_clock(rig.now_ms, crate::storage::bucket::testing::UNIX_SECS);
            match spool.step(registry, "mirror/app", digest, HOLDER, rig.now_ms) {
                Step::Done(outcome) => return (*outcome, turns),
                Step::Failed(reason) => panic!("the push failed: {reason}"),
                Step::Again => turns += 1,
                Step::Wait => {
                    let objects = registry.storage().bucket().unwrap().objects();
                    rig.pump(objects);
                    assert!(
                        objects.take_woken().contains(&HOLDER),
                        "a wait ends with a wake-up"
                    );
                }
            }
        }
        panic!("the push never ended");
    }

    #[test]
    fn a_verified_spool_becomes_the_blob_a_share_per_turn_through_throttling_and_lost_answers() {
        let dir = TempDir::new("spool");
        for seed in 1..=4 {
            let mut rig = Rig::faulty(100, 50, seed);
            let mut registry = registry(seed, &dir);
            let bytes = blob(seed, (12 << 20) + 3);
            let digest = Digest::sha256_of(&bytes);
            let mut spool = spooled(&mut registry, &bytes, &digest);
            spool.verify(&digest, rig.now_ms).unwrap();
            let (outcome, turns) = push(&mut rig, &mut registry, &mut spool, &digest);
            assert_eq!(outcome.response.status, 201, "seed {seed}");
            assert!(outcome.staged.is_none(), "no webhook wants the event: applied");
            assert!(turns >= 1, "seed {seed}: 12 MiB went in one turn");
            let store = registry.storage().bucket().unwrap();
            let size = run(&mut rig, store, (1, 1), |store| {
                store.blob_size("mirror/app", &digest)
            });
            assert_eq!(size.unwrap(), Some(bytes.len() as u64), "seed {seed}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("_spool")).unwrap().count(),
            0,
            "spools are unlinked"
        );
    }

    #[test]
    fn wrong_or_short_bytes_are_never_pushed() {
        let dir = TempDir::new("spool-wrong");
        let mut registry = registry(9, &dir);
        let bytes = blob(9, 1 << 20);
        let digest = Digest::sha256_of(&bytes);
        let mut wrong = bytes.clone();
        wrong[1000] ^= 1;
        let mut spool = spooled(&mut registry, &wrong, &digest);
        let refused = spool.verify(&digest, 0).unwrap_err();
        assert!(refused.contains("do not match"), "{refused}");
        assert!(matches!(
            spool.step(&mut registry, "mirror/app", &digest, HOLDER, 0),
            Step::Wait
        ));
        assert!(
            !registry.storage().bucket().unwrap().objects().has_work(),
            "nothing was sent"
        );

        let mut short = spooled(&mut registry, &bytes[..1000], &digest);
        short.size = bytes.len() as u64;
        assert_eq!(short.verify(&digest, 0).unwrap_err(), "the blob ended early");
    }
}
