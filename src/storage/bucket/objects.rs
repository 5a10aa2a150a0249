//! The bucket's objects as the registry's operations see them: reads that
//! either answer from what was fetched or say "not yet" (and start the
//! fetch), and writes recorded per request so that running the request
//! again finds them done. This is how a registry operation waits on the
//! network without being rewritten as a state machine: it runs on what is
//! known, stops at the first read or write that must wait (`Pending`), and
//! is run again, whole, when what it waited for has come (`take_woken`).
//! Each run reads more from memory and goes further, until it answers.
//!
//! Freshness: content (keys named by digest) never changes once written,
//! so what was read of it serves every later request. Anything else (tags,
//! links, listings) serves a request only if its fetch was sent no earlier
//! than `max_age_ms` before the request arrived: with 0, each request reads
//! what the bucket held when it arrived or later, whichever replica wrote
//! it. A request's own writes are visible to later requests at once.
//!
//! Repeatable: every run of one request reads what its first read of each
//! key gave, its own writes included (a check-then-write must take the same
//! path on the run after its write, to find that write done).
//!
//! Sans-IO: the S3 client inside takes answers and time from the caller.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::http::exchange::{Answer, ExchangeId, Outgoing};
use crate::s3::api::{Listed, Operation, parse_listing};
use crate::s3::client::{Client, Failure, OpId, Outcome};

/// A request that runs on the bucket: a connection's slot and generation,
/// or an internal job's pair (the caller's numbering).
pub type Holder = (usize, u64);

/// Why a read or write could not answer now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// What it needs is being fetched or written: run the request again
    /// when its holder is woken.
    Pending,
    /// The bucket failed this request (after the client's retries).
    Unavailable(String),
}

/// Listing pages one listing may collect (1,000 keys each): a bound on the
/// memory one listing takes.
pub const LISTING_PAGES_MAX: usize = 100;

/// What is known of one key or prefix.
#[derive(Debug, Clone)]
enum Known {
    Object(Rc<[u8]>),
    /// A `HEAD`: the object's size.
    Size(u64),
    /// A `HEAD`: the object's size and when it was last written.
    Stat(u64, u64),
    Absent,
    Listing(Rc<Vec<Listed>>),
}

#[derive(Debug, Clone)]
struct Entry {
    known: Known,
    /// When the request that learnt it was sent (monotonic ms).
    sent_ms: u64,
}

/// What a fetch asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Want {
    Object(String),
    Size(String),
    Stat(String),
    /// The object again, read apart from the request's first read of it
    /// and from anything known of it (after a write of its own whose
    /// outcome was unclear, or another replica may have undone): key,
    /// label, and whether only its size is wanted (a `HEAD`).
    Again(String, &'static str, bool),
    List(String),
    /// A listing read anew, like `Again`: prefix and label.
    ListAgain(String, &'static str),
    /// The object's digest under an algorithm, hashed as its bytes stream
    /// in (never held whole): key and algorithm.
    Digest(String, &'static str),
    /// A stretch of a listing: prefix, the key to start after, and at most
    /// how many pages.
    ListFrom(String, Option<String>, usize),
}

struct Fetch {
    want: Want,
    sent_ms: u64,
    holders: Vec<Holder>,
    /// A listing's pages so far.
    listed: Vec<Listed>,
    pages: usize,
}

/// A write one holder asked for, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    InFlight,
    Done(Rc<Performed>),
    /// A create-once put found the object already there.
    Exists,
    Failed(String),
}

/// What a finished write answered: the `ETag` (a part's) and the body (a
/// created multipart upload's id is in it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Performed {
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

/// What a write does to what this replica knows.
enum Effect {
    /// The object now holds these bytes.
    Put(Rc<[u8]>),
    Delete,
    /// The object at this key changed in a way not known here (a copy or
    /// a completed multipart upload): read it again.
    Changed(String),
    /// Nothing readable changes (a part, a new multipart upload).
    Nothing,
}

struct Write {
    holder: Holder,
    /// What the request calls it (`recall`).
    label: String,
    /// The object it writes.
    key: String,
    effect: Effect,
    if_absent: bool,
}

enum Job {
    Fetch(Fetch),
    Write(Write),
}

/// Mutable state behind `&self` reads (the registry reads through shared
/// references).
struct State {
    client: Client,
    now_ms: u64,
    unix_secs: u64,
    max_age_ms: u64,
    /// Known objects, listings and sizes.
    entries: HashMap<Want, Entry>,
    /// Bytes held by `Known::Object` entries and listings, and their bound.
    held_bytes: usize,
    budget_bytes: usize,
    /// Order of insertion, for eviction (oldest first).
    order: VecDeque<Want>,
    jobs: HashMap<OpId, Job>,
    /// The fetch in flight for each want, to join.
    fetching: HashMap<Want, OpId>,
    /// The request running now, and when it arrived.
    current: Option<(Holder, u64)>,
    /// Streamed reads, to their feeds.
    streams: HashMap<OpId, std::rc::Weak<super::feed::BlobFeed>>,
    /// Streamed reads hashed as they come (`Want::Digest`).
    hashing: HashMap<OpId, crate::digest::Hasher>,
    /// Connections whose streamed read moved on: run them again.
    readers: Vec<(usize, u64)>,
    /// Jobs each parked holder waits for.
    waiting: HashMap<Holder, usize>,
    /// Why a holder's fetch failed; its next run answers with it.
    failures: HashMap<Holder, String>,
    /// Writes each holder made, by key.
    writes: HashMap<Holder, HashMap<String, Written>>,
    /// What each holder read, so its next runs read the same.
    reads: HashMap<Holder, HashMap<Want, Known>>,
    /// Values each holder made up (a new upload's id), the same every run.
    memos: HashMap<Holder, HashMap<&'static str, String>>,
    woken: Vec<Holder>,
}

pub struct Objects {
    state: RefCell<State>,
    /// What the feeds of streamed reads ask (kept apart from `state`: a
    /// feed may be dropped while `state` is borrowed).
    signals: Rc<super::feed::Signals>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").finish_non_exhaustive()
    }
}

impl Objects {
    /// `budget_bytes`: what known objects and listings may hold in memory.
    pub fn new(client: Client, max_age_ms: u64, budget_bytes: usize) -> Objects {
        Objects {
            signals: Rc::default(),
            state: RefCell::new(State {
                client,
                now_ms: 0,
                unix_secs: 0,
                max_age_ms,
                entries: HashMap::new(),
                held_bytes: 0,
                budget_bytes,
                order: VecDeque::new(),
                jobs: HashMap::new(),
                fetching: HashMap::new(),
                current: None,
                streams: HashMap::new(),
                hashing: HashMap::new(),
                readers: Vec::new(),
                waiting: HashMap::new(),
                failures: HashMap::new(),
                writes: HashMap::new(),
                reads: HashMap::new(),
                memos: HashMap::new(),
                woken: Vec::new(),
            }),
        }
    }

    /// A URL that lets its holder `GET` `key` for `expires_secs` without
    /// credentials (signed now).
    pub fn presigned_get(&self, key: &str, expires_secs: u64) -> String {
        let state = self.state.borrow();
        state
            .client
            .bucket()
            .presigned_get(key, state.unix_secs, expires_secs)
    }

    /// The clock's monotonic milliseconds (`set_time`).
    pub fn now_ms(&self) -> u64 {
        self.state.borrow().now_ms
    }

    pub fn set_time(&self, now_ms: u64, unix_secs: u64) {
        let mut state = self.state.borrow_mut();
        state.now_ms = now_ms;
        state.unix_secs = unix_secs;
    }

    /// The request that runs next, arrived at `arrived_ms`: its reads and
    /// writes are charged to `holder` until `leave`.
    pub fn enter(&self, holder: Holder, arrived_ms: u64) {
        self.state.borrow_mut().current = Some((holder, arrived_ms));
    }

    /// The run is over: `true` when it waits (its holder will be woken).
    pub fn leave(&self) -> bool {
        let mut state = self.state.borrow_mut();
        let Some((holder, _)) = state.current.take() else {
            return false;
        };
        state.waiting.get(&holder).is_some_and(|&jobs| jobs > 0)
    }

    /// The value `name` had in the running request's first run (`make`
    /// makes it then): a random name must stay one name across runs.
    pub fn memo(&self, name: &'static str, make: impl FnOnce() -> String) -> String {
        let mut state = self.state.borrow_mut();
        let Some((holder, _)) = state.current else {
            return make();
        };
        state
            .memos
            .entry(holder)
            .or_default()
            .entry(name)
            .or_insert_with(make)
            .clone()
    }

    /// Forgets what the running request read so far: its next reads see
    /// the bucket anew (a body it received changed what it read before).
    pub fn forget_reads(&self) {
        let mut state = self.state.borrow_mut();
        if let Some((holder, _)) = state.current {
            state.reads.remove(&holder);
        }
    }

    /// Whether the running request waits on something already.
    pub fn waits(&self) -> bool {
        let state = self.state.borrow();
        state
            .current
            .is_some_and(|(holder, _)| state.waiting.get(&holder).is_some_and(|&jobs| jobs > 0))
    }

    /// Forgets what `holder`'s runs recorded (its request answered).
    pub fn release(&self, holder: Holder) {
        let mut state = self.state.borrow_mut();
        state.failures.remove(&holder);
        state.writes.remove(&holder);
        state.reads.remove(&holder);
        state.memos.remove(&holder);
        state.waiting.remove(&holder);
        for job in state.jobs.values_mut() {
            if let Job::Fetch(fetch) = job {
                fetch.holders.retain(|waiting| *waiting != holder);
            }
        }
    }

    /// Holders whose every job ended: run their requests again.
    pub fn take_woken(&self) -> Vec<Holder> {
        std::mem::take(&mut self.state.borrow_mut().woken)
    }

    // ---- reads ----------------------------------------------------------

    /// The object's bytes, `None` when absent. `immutable`: named by its
    /// digest, so any earlier read of it stands.
    pub fn get(&self, key: &str, immutable: bool) -> Result<Option<Rc<[u8]>>, Wait> {
        match self.read(Want::Object(key.to_string()), immutable)? {
            Known::Object(bytes) => Ok(Some(bytes)),
            Known::Absent => Ok(None),
            Known::Size(_) | Known::Stat(..) | Known::Listing(_) => {
                Err(Wait::Unavailable("not an object".into()))
            }
        }
    }

    /// The object's size (a `HEAD`), `None` when absent.
    pub fn size(&self, key: &str, immutable: bool) -> Result<Option<u64>, Wait> {
        let want = Want::Size(key.to_string());
        if self.recalled(&want).is_none() {
            // A known body answers too.
            if let Some(known @ (Known::Object(_) | Known::Absent)) =
                self.fresh(&Want::Object(key.to_string()), immutable)
            {
                let known = match known {
                    Known::Object(bytes) => Known::Size(bytes.len() as u64),
                    other => other,
                };
                self.record(&want, &known);
            }
        }
        match self.read(want, immutable)? {
            Known::Size(size) => Ok(Some(size)),
            Known::Absent => Ok(None),
            Known::Object(bytes) => Ok(Some(bytes.len() as u64)),
            Known::Stat(size, _) => Ok(Some(size)),
            Known::Listing(_) => Err(Wait::Unavailable("not an object".into())),
        }
    }

    /// The object's bytes read anew (apart from what this request read of
    /// it before, under `label`): to learn what its own write did.
    pub fn get_again(&self, key: &str, label: &'static str) -> Result<Option<Rc<[u8]>>, Wait> {
        match self.read(Want::Again(key.to_string(), label, false), false)? {
            Known::Object(bytes) => Ok(Some(bytes)),
            Known::Absent => Ok(None),
            _ => Err(Wait::Unavailable("not an object".into())),
        }
    }

    /// Whether the object is there, asked of the bucket now (a `HEAD`),
    /// whatever this replica knows of it.
    pub fn exists_again(&self, key: &str, label: &'static str) -> Result<bool, Wait> {
        match self.read(Want::Again(key.to_string(), label, true), false)? {
            Known::Absent => Ok(false),
            _ => Ok(true),
        }
    }

    /// The object's size and when it was last written (unix seconds), by a
    /// `HEAD` of its own (never from a body known): `None` when absent.
    pub fn stat(&self, key: &str) -> Result<Option<(u64, u64)>, Wait> {
        match self.read(Want::Stat(key.to_string()), false)? {
            Known::Stat(size, modified) => Ok(Some((size, modified))),
            Known::Absent => Ok(None),
            _ => Err(Wait::Unavailable("not an object".into())),
        }
    }

    /// Every object under `prefix`, in key order (every page).
    pub fn list(&self, prefix: &str) -> Result<Rc<Vec<Listed>>, Wait> {
        match self.read(Want::List(prefix.to_string()), false)? {
            Known::Listing(listed) => Ok(listed),
            _ => Err(Wait::Unavailable("not a listing".into())),
        }
    }

    /// The digest of object `key` under `algorithm` (`sha256`, `sha512`),
    /// its bytes hashed as they stream in (never held whole); `None` when
    /// absent. To check content stored under another algorithm than the
    /// one that ran while it was written.
    pub fn digest_of(
        &self,
        key: &str,
        algorithm: &'static str,
    ) -> Result<Option<crate::digest::Digest>, Wait> {
        match self.read(Want::Digest(key.to_string(), algorithm), false)? {
            Known::Object(text) => Ok(std::str::from_utf8(&text)
                .ok()
                .and_then(|text| crate::digest::Digest::parse(text).ok())),
            Known::Absent => Ok(None),
            _ => Err(Wait::Unavailable("not a digest".into())),
        }
    }

    /// Up to `pages` pages (1,000 keys each) of the objects under `prefix`
    /// after key `after`, and whether more may follow: a listing too long to
    /// hold at once, taken a stretch per request.
    pub fn list_from(
        &self,
        prefix: &str,
        after: Option<&str>,
        pages: usize,
    ) -> Result<(Rc<Vec<Listed>>, bool), Wait> {
        let pages = pages.clamp(1, LISTING_PAGES_MAX);
        let want = Want::ListFrom(prefix.to_string(), after.map(str::to_string), pages);
        match self.read(want, false)? {
            Known::Listing(listed) => {
                let more = listed.len() >= pages * crate::s3::api::LIST_PAGE_MAX as usize;
                Ok((listed, more))
            }
            _ => Err(Wait::Unavailable("not a listing".into())),
        }
    }

    /// The objects under `prefix` listed anew (apart from what this request
    /// listed before, under `label`): to see what another replica did
    /// after a write of this request's.
    pub fn list_again(&self, prefix: &str, label: &'static str) -> Result<Rc<Vec<Listed>>, Wait> {
        match self.read(Want::ListAgain(prefix.to_string(), label), false)? {
            Known::Listing(listed) => Ok(listed),
            _ => Err(Wait::Unavailable("not a listing".into())),
        }
    }

    fn fresh(&self, want: &Want, immutable: bool) -> Option<Known> {
        let state = self.state.borrow();
        let arrived_ms = state.current.map_or(0, |(_, arrived)| arrived);
        let entry = state.entries.get(want)?;
        let stands = match entry.known {
            // An absence is never final: the content may be written since.
            Known::Absent => false,
            _ => immutable,
        };
        (stands || entry.sent_ms.saturating_add(state.max_age_ms) >= arrived_ms).then(|| entry.known.clone())
    }

    /// What the running request read of `want` before.
    fn recalled(&self, want: &Want) -> Option<Known> {
        let state = self.state.borrow();
        let (holder, _) = state.current?;
        state.reads.get(&holder)?.get(want).cloned()
    }

    fn record(&self, want: &Want, known: &Known) {
        let mut state = self.state.borrow_mut();
        if let Some((holder, _)) = state.current {
            state
                .reads
                .entry(holder)
                .or_default()
                .insert(want.clone(), known.clone());
        }
    }

    fn read(&self, want: Want, immutable: bool) -> Result<Known, Wait> {
        if let Some(known) = self.recalled(&want) {
            return Ok(known);
        }
        let again = matches!(want, Want::Again(..) | Want::ListAgain(..));
        if !again && let Some(known) = self.fresh(&want, immutable) {
            self.record(&want, &known);
            return Ok(known);
        }
        let mut state = self.state.borrow_mut();
        let Some((holder, arrived_ms)) = state.current else {
            return Err(Wait::Unavailable("a bucket read outside a request".into()));
        };
        if let Some(reason) = state.failures.get(&holder) {
            return Err(Wait::Unavailable(reason.clone()));
        }
        // Join a fetch sent recently enough, or send one.
        let joinable = state
            .fetching
            .get(&want)
            .copied()
            .filter(|_| !again)
            .filter(|op| {
                matches!(state.jobs.get(op), Some(Job::Fetch(fetch))
                if fetch.sent_ms.saturating_add(state.max_age_ms) >= arrived_ms || immutable)
            });
        let op = match joinable {
            Some(op) => op,
            None => {
                let op = state.send(&want);
                state.fetching.insert(want.clone(), op);
                op
            }
        };
        if let Some(Job::Fetch(fetch)) = state.jobs.get_mut(&op)
            && !fetch.holders.contains(&holder)
        {
            fetch.holders.push(holder);
            *state.waiting.entry(holder).or_insert(0) += 1;
        }
        Err(Wait::Pending)
    }

    // ---- writes ---------------------------------------------------------

    /// Writes `bytes` at `key`; with `if_absent`, only if nothing is there
    /// (`Ok(false)`: something was). Done once per request: its next runs
    /// find the result.
    pub fn put(&self, key: &str, bytes: Rc<[u8]>, if_absent: bool) -> Result<bool, Wait> {
        let sha256 = crate::digest::Digest::sha256_of(&bytes).hex().to_string();
        // One request may write a key twice (an upload session's state):
        // each content is its own write.
        let label = format!("put {key} {sha256}");
        let operation = Operation::Put {
            key: key.to_string(),
            length: bytes.len() as u64,
            sha256: Some(sha256),
            if_absent,
        };
        let body = bytes.to_vec();
        self.write(&label, key, operation, body, Effect::Put(bytes), if_absent)
            .map(|written| written != Written::Exists)
    }

    /// Writes `bytes` at `key` once more, apart from this request's earlier
    /// write of the same bytes (`label` names it within the request): to
    /// put back what another replica removed after that write.
    pub fn put_again(&self, key: &str, bytes: Rc<[u8]>, label: &str) -> Result<(), Wait> {
        let operation = Operation::Put {
            key: key.to_string(),
            length: bytes.len() as u64,
            sha256: Some(crate::digest::Digest::sha256_of(&bytes).hex().to_string()),
            if_absent: false,
        };
        let body = bytes.to_vec();
        self.write(
            &format!("{label} {key}"),
            key,
            operation,
            body,
            Effect::Put(bytes),
            false,
        )
        .map(|_| ())
    }

    /// Removes `key` (absent already is fine). Not sent while the run waits
    /// on anything else: a run that waits goes on with made-up answers, and
    /// a removal must not be one of its consequences.
    pub fn delete(&self, key: &str) -> Result<(), Wait> {
        if self.waits() {
            return Err(Wait::Pending);
        }
        let operation = Operation::Delete { key: key.to_string() };
        self.write(
            &format!("delete {key}"),
            key,
            operation,
            Vec::new(),
            Effect::Delete,
            false,
        )
        .map(|_| ())
    }

    /// Any other write (`label` names it within the request: a part's
    /// number, say), done once per request like `put`. `changes`: the key
    /// whose object it replaces, if any.
    pub fn perform(
        &self,
        label: &str,
        operation: Operation,
        body: Vec<u8>,
        changes: Option<&str>,
    ) -> Result<Rc<Performed>, Wait> {
        let effect = match changes {
            Some(key) => Effect::Changed(key.to_string()),
            None => Effect::Nothing,
        };
        let key = changes.unwrap_or_default().to_string();
        match self.write(label, &key, operation, body, effect, false)? {
            Written::Done(performed) => Ok(performed),
            _ => Err(Wait::Unavailable(format!("{label}: not written"))),
        }
    }

    /// What the running request's write `label` came to, if it made one:
    /// `Err(Pending)` while in flight.
    pub fn recall(&self, label: &str) -> Option<Result<Rc<Performed>, Wait>> {
        let state = self.state.borrow();
        let (holder, _) = state.current?;
        Some(match state.writes.get(&holder)?.get(label)? {
            Written::InFlight => Err(Wait::Pending),
            Written::Done(performed) => Ok(performed.clone()),
            Written::Exists => Ok(Rc::default()),
            Written::Failed(reason) => Err(Wait::Unavailable(reason.clone())),
        })
    }

    fn write(
        &self,
        label: &str,
        key: &str,
        operation: Operation,
        body: Vec<u8>,
        effect: Effect,
        if_absent: bool,
    ) -> Result<Written, Wait> {
        let mut state = self.state.borrow_mut();
        let Some((holder, _)) = state.current else {
            return Err(Wait::Unavailable("a bucket write outside a request".into()));
        };
        match state.writes.get(&holder).and_then(|writes| writes.get(label)) {
            Some(Written::InFlight) => return Err(Wait::Pending),
            Some(Written::Failed(reason)) => return Err(Wait::Unavailable(reason.clone())),
            Some(done) => return Ok(done.clone()),
            None => {}
        }
        let (now_ms, unix_secs) = (state.now_ms, state.unix_secs);
        let op = state.client.submit(operation, body, now_ms, unix_secs);
        state.jobs.insert(
            op,
            Job::Write(Write {
                holder,
                label: label.to_string(),
                key: key.to_string(),
                effect,
                if_absent,
            }),
        );
        state
            .writes
            .entry(holder)
            .or_default()
            .insert(label.to_string(), Written::InFlight);
        *state.waiting.entry(holder).or_insert(0) += 1;
        Err(Wait::Pending)
    }

    // ---- streamed reads ----------------------------------------------------

    /// Starts reading `key` (bytes `range`, inclusive, when given) as a feed
    /// for an answer body.
    pub fn open_stream(&self, key: &str, range: Option<(u64, u64)>) -> Rc<super::feed::BlobFeed> {
        let mut state = self.state.borrow_mut();
        let (now_ms, unix_secs) = (state.now_ms, state.unix_secs);
        let operation = Operation::Get {
            key: key.to_string(),
            range,
        };
        let op = state.client.submit_streamed(operation, now_ms, unix_secs);
        let feed = Rc::new(super::feed::BlobFeed::new(self.signals.clone(), op));
        state.streams.insert(op, Rc::downgrade(&feed));
        feed
    }

    /// Connections whose streamed read has more for them.
    pub fn take_readers(&self) -> Vec<(usize, u64)> {
        std::mem::take(&mut self.state.borrow_mut().readers)
    }

    // ---- the client's side ------------------------------------------------

    pub fn poll_outgoing(&self) -> Option<Outgoing> {
        let signals = self.signals.take();
        let mut state = self.state.borrow_mut();
        for signal in signals {
            match signal {
                super::feed::Signal::Resume(op) => state.client.resume(op),
                super::feed::Signal::Dropped(op) => {
                    state.streams.remove(&op);
                    state.client.cancel(op);
                }
            }
        }
        state.client.poll_outgoing()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.state.borrow().client.poll_timeout()
    }

    pub fn has_work(&self) -> bool {
        let state = self.state.borrow();
        state.client.has_work()
            || !state.woken.is_empty()
            || !state.readers.is_empty()
            || !self.signals.is_empty()
    }

    pub fn handle_answer(&self, exchange: ExchangeId, answer: Answer) {
        let mut state = self.state.borrow_mut();
        let now_ms = state.now_ms;
        state.client.handle_answer(exchange, answer, now_ms);
        state.settle();
    }

    pub fn handle_timeout(&self) {
        let mut state = self.state.borrow_mut();
        let (now_ms, unix_secs) = (state.now_ms, state.unix_secs);
        state.client.handle_timeout(now_ms, unix_secs);
        state.settle();
    }
}

impl State {
    fn send(&mut self, want: &Want) -> OpId {
        let operation = match want {
            Want::Object(key) | Want::Again(key, _, false) => Operation::Get {
                key: key.clone(),
                range: None,
            },
            Want::Again(key, _, true) => Operation::Head { key: key.clone() },
            Want::Size(key) | Want::Stat(key) => Operation::Head { key: key.clone() },
            Want::List(prefix) | Want::ListAgain(prefix, _) => list_page(prefix, None),
            Want::ListFrom(prefix, after, _) => Operation::List {
                prefix: prefix.clone(),
                delimiter: None,
                continuation: None,
                start_after: after.clone(),
                max_keys: crate::s3::api::LIST_PAGE_MAX,
            },
            Want::Digest(key, _) => Operation::Get {
                key: key.clone(),
                range: None,
            },
        };
        let op = match want {
            Want::Digest(_, algorithm) => {
                let op = self
                    .client
                    .submit_streamed(operation, self.now_ms, self.unix_secs);
                let hasher = crate::digest::Hasher::for_algorithm(algorithm)
                    .unwrap_or_else(crate::digest::Hasher::sha256);
                self.hashing.insert(op, hasher);
                op
            }
            _ => self
                .client
                .submit(operation, Vec::new(), self.now_ms, self.unix_secs),
        };
        self.jobs.insert(
            op,
            Job::Fetch(Fetch {
                want: want.clone(),
                sent_ms: self.now_ms,
                holders: Vec::new(),
                listed: Vec::new(),
                pages: 0,
            }),
        );
        op
    }

    /// Takes the client's finished operations into entries and writes, and
    /// wakes the holders they were the last wait of.
    fn settle(&mut self) {
        while let Some((op, piece)) = self.client.poll_piece() {
            if let Some(hasher) = self.hashing.get_mut(&op) {
                if let crate::s3::client::Piece::Body(data) = &piece {
                    hasher.update(data);
                }
                continue;
            }
            let Some(feed) = self.streams.get(&op).and_then(std::rc::Weak::upgrade) else {
                continue;
            };
            if let crate::s3::client::Piece::Body(data) = piece
                && feed.push(data)
            {
                self.client.pause(op);
            }
            self.readers.extend(feed.take_reader());
        }
        while let Some((op, outcome)) = self.client.poll_done() {
            if let Some(feed) = self.streams.remove(&op) {
                if let Some(feed) = feed.upgrade() {
                    feed.end(match outcome {
                        Outcome::Done { .. } => None,
                        Outcome::Failed(failure) => Some(failure.to_string()),
                    });
                    self.readers.extend(feed.take_reader());
                }
                continue;
            }
            let Some(job) = self.jobs.remove(&op) else {
                continue;
            };
            // A hashed read's outcome is its digest, as text.
            let outcome = match (self.hashing.remove(&op), outcome) {
                (Some(hasher), Outcome::Done { head, .. }) => Outcome::Done {
                    head,
                    body: hasher.digest().to_string().into_bytes(),
                },
                (_, outcome) => outcome,
            };
            match job {
                Job::Fetch(fetch) => self.fetched(op, fetch, outcome),
                Job::Write(write) => self.written(write, outcome),
            }
        }
    }

    fn fetched(&mut self, op: OpId, mut fetch: Fetch, outcome: Outcome) {
        let known = match outcome {
            Outcome::Done { head, body } => match &fetch.want {
                Want::Object(_) | Want::Again(_, _, false) | Want::Digest(..) => {
                    Ok(Known::Object(body.into()))
                }
                Want::Again(_, _, true) => Ok(Known::Size(head.content_length.unwrap_or(0))),
                Want::Size(_) => head
                    .content_length
                    .map(Known::Size)
                    .ok_or_else(|| "S3 answered a HEAD without Content-Length".to_string()),
                Want::Stat(_) => head
                    .content_length
                    .map(|size| {
                        let modified = head
                            .field("last-modified")
                            .and_then(crate::clock::parse_http_date)
                            .unwrap_or(0);
                        Known::Stat(size, modified)
                    })
                    .ok_or_else(|| "S3 answered a HEAD without Content-Length".to_string()),
                Want::List(prefix) | Want::ListAgain(prefix, _) | Want::ListFrom(prefix, ..) => {
                    match parse_listing(self.client.bucket(), &body) {
                        Ok(page) => {
                            fetch.listed.extend(page.objects);
                            fetch.pages += 1;
                            let stretch = match &fetch.want {
                                Want::ListFrom(_, _, pages) => Some(*pages),
                                _ => None,
                            };
                            match page.next {
                                // A stretch ends at its last page.
                                Some(_) if stretch.is_some_and(|pages| fetch.pages >= pages) => {
                                    Ok(Known::Listing(Rc::new(std::mem::take(&mut fetch.listed))))
                                }
                                Some(_) if fetch.pages >= LISTING_PAGES_MAX => Err(format!(
                                    "more than {} keys under {prefix}",
                                    LISTING_PAGES_MAX * crate::s3::api::LIST_PAGE_MAX as usize
                                )),
                                Some(next) => {
                                    // The next page: the same fetch goes on.
                                    let operation = list_page(prefix, Some(next));
                                    let next_op = self.client.submit(
                                        operation,
                                        Vec::new(),
                                        self.now_ms,
                                        self.unix_secs,
                                    );
                                    let want = fetch.want.clone();
                                    self.jobs.insert(next_op, Job::Fetch(fetch));
                                    if self.fetching.get(&want) == Some(&op) {
                                        self.fetching.insert(want, next_op);
                                    }
                                    return;
                                }
                                None => Ok(Known::Listing(Rc::new(std::mem::take(&mut fetch.listed)))),
                            }
                        }
                        Err(why) => Err(format!("S3 listing of {prefix}: {why}")),
                    }
                }
            },
            Outcome::Failed(Failure::S3(error)) if error.is_not_found() => Ok(Known::Absent),
            Outcome::Failed(failure) => Err(failure.to_string()),
        };
        if self.fetching.get(&fetch.want) == Some(&op) {
            self.fetching.remove(&fetch.want);
        }
        match known {
            Ok(known) => {
                // The waiting requests read it now, whatever the budget
                // keeps of it for others (a tail larger than the budget).
                for holder in &fetch.holders {
                    self.reads
                        .entry(*holder)
                        .or_default()
                        .insert(fetch.want.clone(), known.clone());
                }
                self.remember(fetch.want.clone(), known, fetch.sent_ms)
            }
            Err(reason) => {
                for holder in &fetch.holders {
                    self.failures.insert(*holder, reason.clone());
                }
            }
        }
        for holder in fetch.holders {
            self.done_waiting(holder);
        }
    }

    fn written(&mut self, write: Write, outcome: Outcome) {
        let deleting = matches!(write.effect, Effect::Delete);
        let result = match outcome {
            Outcome::Done { head, body } => Written::Done(Rc::new(Performed {
                etag: head.field("etag").map(str::to_string),
                body,
            })),
            Outcome::Failed(Failure::S3(error)) if write.if_absent && error.is_precondition_failed() => {
                Written::Exists
            }
            // Removing what is not there is done.
            Outcome::Failed(Failure::S3(error)) if deleting && error.is_not_found() => {
                Written::Done(Rc::default())
            }
            Outcome::Failed(failure) => Written::Failed(failure.to_string()),
        };
        if matches!(result, Written::Done(_)) {
            // What this replica wrote is what its next reads see.
            let known = match &write.effect {
                Effect::Put(bytes) => Some((write.key.clone(), Some(Known::Object(bytes.clone())))),
                Effect::Delete => Some((write.key.clone(), Some(Known::Absent))),
                Effect::Changed(key) => Some((key.clone(), None)),
                Effect::Nothing => None,
            };
            if let Some((key, known)) = known {
                self.forget_listings_above(&key);
                self.entries.remove(&Want::Size(key.clone()));
                self.entries.remove(&Want::Stat(key.clone()));
                match known {
                    Some(known) => self.remember(Want::Object(key), known, self.now_ms),
                    None => {
                        self.entries.remove(&Want::Object(key));
                    }
                }
            }
        }
        if let Some(writes) = self.writes.get_mut(&write.holder) {
            writes.insert(write.label, result);
            self.done_waiting(write.holder);
        }
    }

    /// Listings that hold `key` are out of date once it is written.
    fn forget_listings_above(&mut self, key: &str) {
        self.entries
            .retain(|want, _| !matches!(want, Want::List(prefix) if key.starts_with(prefix.as_str())));
    }

    fn done_waiting(&mut self, holder: Holder) {
        if let Some(jobs) = self.waiting.get_mut(&holder) {
            *jobs = jobs.saturating_sub(1);
            if *jobs == 0 {
                self.waiting.remove(&holder);
                self.woken.push(holder);
            }
        }
    }

    fn remember(&mut self, want: Want, known: Known, sent_ms: u64) {
        let bytes = weight(&known);
        if let Some(old) = self.entries.remove(&want) {
            self.held_bytes -= weight(&old.known);
        } else {
            self.order.push_back(want.clone());
        }
        self.held_bytes += bytes;
        self.entries.insert(want, Entry { known, sent_ms });
        self.evict();
    }

    /// Oldest first, until the budget holds; what waiting requests need
    /// again is fetched again (slower, never wrong).
    fn evict(&mut self) {
        while self.held_bytes > self.budget_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&oldest) {
                self.held_bytes -= weight(&entry.known);
            }
        }
        // Keys removed by `forget_listings_above` leave stale order entries.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|want| entries.contains_key(want));
        }
    }
}

/// Memory an entry holds, roughly: its bytes and its keys.
fn weight(known: &Known) -> usize {
    const ENTRY_OVERHEAD: usize = 64;
    ENTRY_OVERHEAD
        + match known {
            Known::Object(bytes) => bytes.len(),
            Known::Listing(listed) => listed.iter().map(|item| item.key.len() + 48).sum(),
            Known::Size(_) | Known::Stat(..) | Known::Absent => 0,
        }
}

fn list_page(prefix: &str, continuation: Option<String>) -> Operation {
    Operation::List {
        prefix: prefix.to_string(),
        delimiter: None,
        continuation,
        start_after: None,
        max_keys: crate::s3::api::LIST_PAGE_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Rig, UNIX_SECS, client};
    use super::*;
    use crate::s3::fake::Faults;

    const A: Holder = (1, 1);
    const B: Holder = (2, 1);

    fn objects(max_age_ms: u64) -> Objects {
        Objects::new(client(3, 1), max_age_ms, 1 << 20)
    }

    /// Runs `read` as `holder` arrived at `arrived_ms` until it stops
    /// waiting, pumping the fake in between.
    fn settle<T>(
        rig: &mut Rig,
        objects: &Objects,
        holder: Holder,
        arrived_ms: u64,
        read: impl Fn() -> Result<T, Wait>,
    ) -> Result<T, Wait> {
        for _ in 0..50 {
            objects.set_time(rig.now_ms, UNIX_SECS);
            objects.enter(holder, arrived_ms);
            let result = read();
            let waits = objects.leave();
            match result {
                Err(Wait::Pending) => {
                    assert!(waits, "a pending read parks its holder");
                    rig.pump(objects);
                    assert!(objects.take_woken().contains(&holder));
                }
                other => {
                    objects.release(holder);
                    return other;
                }
            }
        }
        panic!("never settled");
    }

    #[test]
    fn a_read_waits_once_then_answers_and_a_write_is_seen_by_the_next_read() {
        let mut rig = Rig::new(Faults::default(), 1);
        let objects = objects(0);
        let got = settle(&mut rig, &objects, A, 1_000, || objects.get("k", false));
        assert_eq!(got, Ok(None));
        let bytes: Rc<[u8]> = Rc::from(&b"v1\n"[..]);
        let put = settle(&mut rig, &objects, A, 1_000, || {
            objects.put("k", bytes.clone(), false)
        });
        assert_eq!(put, Ok(true));
        assert_eq!(rig.fake.objects.get("k").map(Vec::as_slice), Some(&b"v1\n"[..]));
        // A request arriving once it is written reads it without asking
        // the bucket; the writer's own runs kept reading what they first read.
        let requests = rig.fake.requests;
        objects.enter(B, rig.now_ms);
        assert_eq!(objects.get("k", false), Ok(Some(bytes.clone())));
        assert!(!objects.leave());
        assert_eq!(rig.fake.requests, requests);
    }

    #[test]
    fn mutable_keys_are_read_again_for_a_later_request_unless_young_enough() {
        let mut rig = Rig::new(Faults::default(), 1);
        rig.fake.objects.insert("tag".into(), b"one".to_vec());
        let strict = objects(0);
        assert_eq!(
            settle(&mut rig, &strict, A, 1_000, || strict.get("tag", false)),
            Ok(Some(Rc::from(&b"one"[..])))
        );
        // Another replica moves the tag.
        rig.fake.objects.insert("tag".into(), b"two".to_vec());
        rig.now_ms += 10;
        let later = rig.now_ms;
        assert_eq!(
            settle(&mut rig, &strict, B, later, || strict.get("tag", false)),
            Ok(Some(Rc::from(&b"two"[..])))
        );
        // With a 5 s bound, a request within it is served what was read.
        let lenient = objects(5_000);
        rig.fake.objects.insert("tag".into(), b"one".to_vec());
        let now = rig.now_ms;
        settle(&mut rig, &lenient, A, now, || lenient.get("tag", false)).unwrap();
        rig.fake.objects.insert("tag".into(), b"two".to_vec());
        let soon = rig.now_ms + 4_000;
        objects_serve(&lenient, B, soon, "tag", b"one");
        let late = rig.now_ms + 6_000;
        lenient.enter(B, late);
        assert_eq!(lenient.get("tag", false), Err(Wait::Pending));
        lenient.leave();
    }

    fn objects_serve(objects: &Objects, holder: Holder, arrived_ms: u64, key: &str, bytes: &[u8]) {
        objects.enter(holder, arrived_ms);
        assert_eq!(objects.get(key, false), Ok(Some(Rc::from(bytes))));
        assert!(!objects.leave());
        objects.release(holder);
    }

    #[test]
    fn content_read_once_stands_and_an_absence_never_does() {
        let mut rig = Rig::new(Faults::default(), 1);
        let objects = objects(0);
        assert_eq!(
            settle(&mut rig, &objects, A, 1_000, || objects.get("blob", true)),
            Ok(None)
        );
        rig.fake.objects.insert("blob".into(), b"content".to_vec());
        let later = rig.now_ms + 60_000;
        assert_eq!(
            settle(&mut rig, &objects, B, later, || objects.get("blob", true)),
            Ok(Some(Rc::from(&b"content"[..])))
        );
        let requests = rig.fake.requests;
        objects.enter(A, later + 600_000);
        assert_eq!(objects.get("blob", true), Ok(Some(Rc::from(&b"content"[..]))));
        assert!(!objects.leave());
        objects.release(A);
        let size = settle(&mut rig, &objects, A, later + 600_000, || {
            objects.size("blob", true)
        });
        assert_eq!(size, Ok(Some(7)));
        assert_eq!(rig.fake.requests, requests, "content is not asked for again");
    }

    /// Found by a 64 MiB push whose 4 MiB tail filled the whole budget:
    /// the fetched object was evicted before the run it was for, fetched
    /// again, evicted again, and the request never answered.
    #[test]
    fn an_object_larger_than_the_budget_reaches_the_request_that_waited() {
        let mut rig = Rig::new(Faults::default(), 1);
        rig.fake.objects.insert("big".into(), vec![7; 4096]);
        let objects = Objects::new(client(3, 1), 0, 1024);
        let got = settle(&mut rig, &objects, A, 1_000, || objects.get("big", false));
        assert_eq!(got.unwrap().map(|bytes| bytes.len()), Some(4096));
        assert_eq!(rig.fake.requests, 1);
    }

    #[test]
    fn requests_for_one_key_share_one_fetch() {
        let mut rig = Rig::new(Faults::default(), 1);
        rig.fake.objects.insert("k".into(), b"v".to_vec());
        let objects = objects(0);
        objects.set_time(1_000, UNIX_SECS);
        for holder in [A, B] {
            objects.enter(holder, 1_000);
            assert_eq!(objects.get("k", false), Err(Wait::Pending));
            assert!(objects.leave());
        }
        rig.pump(&objects);
        assert_eq!(rig.fake.requests, 1);
        let mut woken = objects.take_woken();
        woken.sort();
        assert_eq!(woken, vec![A, B]);
        objects_serve(&objects, B, 1_000, "k", b"v");
    }

    #[test]
    fn a_listing_collects_every_page_in_key_order_and_a_write_beneath_it_is_listed_next_time() {
        let mut rig = Rig::new(Faults::default(), 1);
        for index in 0..2_500 {
            rig.fake.objects.insert(format!("p/{index:05}"), Vec::new());
        }
        rig.fake.objects.insert("q/other".into(), Vec::new());
        let objects = objects(60_000);
        let listed = settle(&mut rig, &objects, A, 1_000, || objects.list("p/")).unwrap();
        assert_eq!(listed.len(), 2_500);
        assert!(listed.windows(2).all(|pair| pair[0].key < pair[1].key));
        assert_eq!(rig.fake.requests, 3);
        settle(&mut rig, &objects, A, 1_000, || {
            objects.put("p/new", Rc::from(&b""[..]), false)
        })
        .unwrap();
        let listed = settle(&mut rig, &objects, B, 1_000, || objects.list("p/")).unwrap();
        assert_eq!(listed.len(), 2_501);
    }

    #[test]
    fn a_failed_fetch_fails_its_request_and_only_its_request() {
        let mut rig = Rig::new(
            Faults {
                throttled: 1000,
                lost: 0,
            },
            1,
        );
        let objects = objects(0);
        let got = settle(&mut rig, &objects, A, 1_000, || objects.get("k", false));
        let Err(Wait::Unavailable(reason)) = got else {
            panic!("{got:?}");
        };
        assert!(reason.contains("SlowDown"), "{reason}");
        objects.release(A);
        objects.enter(A, rig.now_ms);
        assert_eq!(
            objects.get("k", false),
            Err(Wait::Pending),
            "a new request tries again"
        );
        objects.leave();
    }

    #[test]
    fn a_create_once_put_reports_an_object_already_there() {
        let mut rig = Rig::new(Faults::default(), 1);
        rig.fake.objects.insert("lease".into(), b"theirs".to_vec());
        let objects = objects(0);
        let put = settle(&mut rig, &objects, A, 1_000, || {
            objects.put("lease", Rc::from(&b"mine"[..]), true)
        });
        assert_eq!(put, Ok(false));
        assert_eq!(rig.fake.objects["lease"], b"theirs");
        let deleted = settle(&mut rig, &objects, A, 1_000, || objects.delete("gone"));
        assert_eq!(deleted, Ok(()), "removing what is absent is done");
    }
}
