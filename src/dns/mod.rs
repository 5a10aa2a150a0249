//! Non-blocking DNS: a sans-IO stub resolver over UDP, plus /etc/hosts and /etc/resolv.conf.
//! It owns query construction, response validation and the lookup machine (retries, search
//! list, cache); it must never touch a socket or read a clock (`now_ms` is handed in), and
//! nothing here may block: getaddrinfo would stall the single-threaded reactor.
//!
//! Call order for the owner (the reactor): after every input (`resolve`, `handle_datagram`,
//! `handle_timeout`, `cancel`) drain `poll_transmit` (send each datagram from the UDP socket)
//! and `poll_result`, then re-arm the timer from `poll_timeout`.
//!
//! Not supported, on purpose: TCP fallback (a truncated answer is `DnsError::Truncated`;
//! webhook hosts fit in 512 bytes), EDNS0, DNSSEC, negative caching, `options rotate`.

use crate::entropy::{Entropy, OsEntropy};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// glibc's MAXNS: nameservers beyond the third are ignored.
pub const NAMESERVERS_MAX: usize = 3;
/// glibc's MAXDNSRCH: search domains beyond the sixth are ignored.
pub const SEARCH_DOMAINS_MAX: usize = 6;
/// Lookups waiting on the network at once (each costs up to two outstanding queries).
pub const LOOKUPS_IN_FLIGHT_MAX: usize = 64;
/// Names kept in the answer cache.
pub const CACHE_NAMES_MAX: usize = 256;
/// Upper bound on how long an answer is cached, whatever its TTL says: a webhook host
/// that moves should be followed within minutes.
pub const CACHE_TTL_SECS_MAX: u32 = 300;

/// Defaults from resolv.conf(5).
const NDOTS_DEFAULT: u8 = 1;
const TIMEOUT_MS_DEFAULT: u64 = 5_000;
const ATTEMPTS_DEFAULT: u8 = 2;
/// glibc's RES_MAXNDOTS, RES_MAXRETRANS (seconds) and RES_MAXRETRY.
const NDOTS_MAX: u8 = 15;
const TIMEOUT_SECS_MAX: u64 = 30;
const ATTEMPTS_MAX: u8 = 5;

/// Largest /etc/hosts or /etc/resolv.conf read at start; bigger files are cut here.
const CONFIG_FILE_BYTES_MAX: u64 = 4 << 20;
/// Names kept from /etc/hosts (ad-blocking hosts files run to 100k+ lines).
const HOSTS_NAMES_MAX: usize = 200_000;
/// Addresses kept per name from /etc/hosts.
const HOSTS_ADDRESSES_PER_NAME_MAX: usize = 16;

/// RFC 1035 section 4.1.1: the fixed header.
const HEADER_BYTES: usize = 12;
/// RFC 1035 section 2.3.4: labels are 63 octets or less, names 255 octets or less on the
/// wire, which is 253 characters of dotted text.
const LABEL_BYTES_MAX: usize = 63;
const NAME_WIRE_BYTES_MAX: usize = 255;
const NAME_TEXT_BYTES_MAX: usize = 253;
/// Compression pointers followed while reading one name. Pointers must also move strictly
/// backwards (see `read_name`), so this is a second fence, not the only one.
const POINTER_JUMPS_MAX: usize = 32;
/// CNAMEs followed within one answer; real chains are 1-3 long.
const CNAME_HOPS_MAX: usize = 8;
/// Answer records examined; a 512-byte answer holds at most ~46.
const ANSWER_RECORDS_MAX: usize = 256;
/// Addresses kept from one answer.
const ANSWER_ADDRESSES_MAX: usize = 32;

/// RFC 1035 section 3.2.2 / RFC 3596 section 2.1: the record types we read.
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
/// RFC 1035 section 3.2.4: the Internet class.
const CLASS_IN: u16 = 1;

/// RFC 1035 section 4.1.1 header flag bits.
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const RCODE_NXDOMAIN: u8 = 3;

/// Why a lookup failed. Hand-written `Display` so operators read a sentence, not a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN (RCODE 3) for every name tried.
    NameNotFound,
    /// The server answered with this RCODE (SERVFAIL, REFUSED, FORMERR, ...).
    ServerFailure(u8),
    /// No name server answered within `attempts` rounds.
    Timeout,
    /// The answer did not fit in a UDP datagram (TC bit) and we do not fall back to TCP.
    Truncated,
    /// The response broke the wire format.
    Malformed(&'static str),
    /// Not a host name we would put on the wire.
    InvalidName,
    /// `LOOKUPS_IN_FLIGHT_MAX` lookups are already waiting on the network.
    TooManyLookups,
    /// The name exists but has neither A nor AAAA records.
    NoAddresses,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NameNotFound => f.write_str("DNS: name not found"),
            DnsError::ServerFailure(rcode) => {
                // RFC 1035 section 4.1.1 and RFC 6895 section 2.3 name the common codes.
                let name = match rcode {
                    1 => "FORMERR",
                    2 => "SERVFAIL",
                    4 => "NOTIMP",
                    5 => "REFUSED",
                    _ => "unknown",
                };
                write!(f, "DNS: name server failure (rcode {rcode}, {name})")
            }
            DnsError::Timeout => f.write_str("DNS: no response from any name server"),
            DnsError::Truncated => f.write_str("DNS: response truncated (TCP fallback not supported)"),
            DnsError::Malformed(what) => write!(f, "DNS: malformed response: {what}"),
            DnsError::InvalidName => f.write_str("DNS: invalid host name"),
            DnsError::TooManyLookups => f.write_str("DNS: too many lookups in flight"),
            DnsError::NoAddresses => f.write_str("DNS: name has no IPv4 or IPv6 address"),
        }
    }
}

impl std::error::Error for DnsError {}

/// The address record type asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    A,
    Aaaa,
}

impl QueryType {
    fn code(self) -> u16 {
        match self {
            QueryType::A => TYPE_A,
            QueryType::Aaaa => TYPE_AAAA,
        }
    }
}

mod conf;
mod wire;

use conf::*;
pub use conf::{Hosts, ResolverConfig, parse_hosts, parse_resolv_conf};
use wire::*;
pub use wire::{Answer, build_query, parse_response};

/// Handle to one `resolve` call; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(u64);

/// One outstanding question (A or AAAA) for the candidate name being tried.
struct Query {
    qtype: QueryType,
    id: u16,
    /// The datagram as sent. Retransmissions reuse it, id included (as glibc does), so a
    /// late answer from a server we already gave up on still counts.
    packet: Vec<u8>,
    state: QueryState,
}

enum QueryState {
    Waiting {
        /// Sends scheduled so far, the current one included; try `t` (0-based) goes to
        /// nameserver `t % nameservers`.
        tries: u8,
        /// Bit `i`: sent to nameserver `i`; answers from others are not ours.
        sent_to: u8,
        /// `poll_transmit` still has to send the current try.
        unsent: bool,
        deadline_ms: u64,
        /// The last error a server actually answered with, reported if all tries run out.
        last_error: Option<DnsError>,
    },
    Done(Result<Answer, DnsError>),
}

impl Query {
    fn new(qtype: QueryType, id: u16, qname: &[u8], deadline_ms: u64) -> Query {
        Query {
            qtype,
            id,
            packet: query_packet(id, qname, qtype),
            state: QueryState::Waiting {
                tries: 1,
                sent_to: 0,
                unsent: true,
                deadline_ms,
                last_error: None,
            },
        }
    }

    fn result(&self) -> Option<&Result<Answer, DnsError>> {
        match &self.state {
            QueryState::Done(result) => Some(result),
            QueryState::Waiting { .. } => None,
        }
    }

    /// Index of the nameserver the current try goes to.
    fn current_server(&self, nameservers: usize) -> Option<usize> {
        match self.state {
            QueryState::Waiting { tries, .. } => Some(usize::from(tries - 1) % nameservers),
            QueryState::Done(_) => None,
        }
    }

    fn deadline_ms(&self) -> Option<u64> {
        match self.state {
            QueryState::Waiting { deadline_ms, .. } => Some(deadline_ms),
            QueryState::Done(_) => None,
        }
    }

    /// Moves on to the next nameserver (resolv.conf(5): each round tries every server in
    /// order), or gives up when `tries_max` sends were made. `error` is what the server
    /// said, `None` for a timeout.
    fn retry(&mut self, error: Option<DnsError>, tries_max: u8, timeout_ms: u64, now_ms: u64) {
        let QueryState::Waiting {
            tries,
            unsent,
            deadline_ms,
            last_error,
            ..
        } = &mut self.state
        else {
            return;
        };
        if error.is_some() {
            *last_error = error;
        }
        if *tries >= tries_max {
            self.state = QueryState::Done(Err(last_error.unwrap_or(DnsError::Timeout)));
            return;
        }
        *tries += 1;
        *unsent = true;
        *deadline_ms = now_ms.saturating_add(timeout_ms);
    }
}

/// What one candidate name's pair of queries amounts to so far.
enum Outcome {
    Pending,
    Found {
        addresses: Vec<IpAddr>,
        ttl_secs: u32,
    },
    /// NXDOMAIN, or NOERROR without addresses (`nodata`): try the next search candidate.
    NotFound {
        nodata: bool,
    },
    /// glibc keeps searching after SERVFAIL too, remembering it for the final error.
    ServerFailure(u8),
    /// Timeout, truncation, garbage: stop searching (glibc's res_nsearch does the same,
    /// lest a dead server turn every lookup into a walk down the search list).
    Fatal(DnsError),
}

fn outcome(queries: &[Query; 2]) -> Outcome {
    let has_addresses =
        |result: Option<&Result<Answer, DnsError>>| matches!(result, Some(Ok(a)) if !a.addresses.is_empty());
    let nxdomain =
        |result: Option<&Result<Answer, DnsError>>| matches!(result, Some(Err(DnsError::NameNotFound)));
    let (a, aaaa) = (queries[0].result(), queries[1].result());
    // RFC 8020: NXDOMAIN says the name does not exist at all, whatever the type, so there
    // is no point waiting for the other query.
    if (nxdomain(a) && !has_addresses(aaaa)) || (nxdomain(aaaa) && !has_addresses(a)) {
        return Outcome::NotFound { nodata: false };
    }
    let (Some(a), Some(aaaa)) = (a, aaaa) else {
        return Outcome::Pending;
    };
    // IPv4 first, then IPv6: A answers only hold IPv4, AAAA answers only IPv6.
    let mut addresses = Vec::new();
    let mut ttl_secs = u32::MAX;
    for answer in [a, aaaa].into_iter().flatten() {
        if !answer.addresses.is_empty() {
            addresses.extend_from_slice(&answer.addresses);
            ttl_secs = ttl_secs.min(answer.ttl_secs);
        }
    }
    if !addresses.is_empty() {
        return Outcome::Found { addresses, ttl_secs };
    }
    let mut nodata = false;
    let mut server_failure = None;
    for result in [a, aaaa] {
        match result {
            Ok(_) => nodata = true,
            Err(DnsError::NameNotFound) => {}
            Err(DnsError::ServerFailure(rcode)) => server_failure = Some(*rcode),
            Err(error) => return Outcome::Fatal(*error),
        }
    }
    match server_failure {
        Some(rcode) => Outcome::ServerFailure(rcode),
        None => Outcome::NotFound { nodata },
    }
}

/// One name being resolved on the network, shared by every `resolve` call that asked for
/// it while it runs.
struct Job {
    /// The name as asked (lowercase, trailing dot kept): the cache and sharing key.
    key: String,
    /// Fully qualified names to try, in order (search list applied).
    candidates: Vec<String>,
    /// Index into `candidates` of the name `queries` ask about.
    candidate: usize,
    /// Lowercase wire form of that name, for the question echo check.
    qname: Vec<u8>,
    queries: [Query; 2],
    waiters: Vec<LookupId>,
    nodata_seen: bool,
    server_failure_seen: Option<u8>,
}

struct CacheEntry {
    addresses: Vec<IpAddr>,
    expires_at_ms: u64,
}

/// The stub resolver machine. See the module docs for the call order.
pub struct Resolver {
    config: ResolverConfig,
    hosts: Hosts,
    next_lookup: u64,
    /// In creation order, so transmissions and results never depend on hash order.
    jobs: Vec<Job>,
    cache: BTreeMap<String, CacheEntry>,
    results: VecDeque<(LookupId, Result<Vec<IpAddr>, DnsError>)>,
    /// Where query ids come from: the kernel, or a seed in a simulation.
    entropy: Box<dyn Entropy>,
}

impl Resolver {
    /// A resolver over `config` (limits enforced: at most three nameservers, six search
    /// domains, timeout at least 1 ms, 1..=5 attempts) and `hosts`.
    pub fn new(mut config: ResolverConfig, hosts: Hosts) -> Resolver {
        config.nameservers.truncate(NAMESERVERS_MAX);
        if config.nameservers.is_empty() {
            config.nameservers.push(default_nameserver());
        }
        config.search.truncate(SEARCH_DOMAINS_MAX);
        config.timeout_ms = config.timeout_ms.max(1);
        config.attempts = config.attempts.clamp(1, ATTEMPTS_MAX);
        config.ndots = config.ndots.min(NDOTS_MAX);
        Resolver {
            config,
            hosts,
            next_lookup: 0,
            jobs: Vec::new(),
            cache: BTreeMap::new(),
            results: VecDeque::new(),
            entropy: Box::new(OsEntropy),
        }
    }

    /// Draws query ids from `entropy` (a seeded one replays a run).
    pub fn with_entropy(mut self, entropy: Box<dyn Entropy>) -> Resolver {
        self.entropy = entropy;
        self
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Lookups waiting on the network.
    pub fn in_flight(&self) -> usize {
        self.jobs.iter().map(|job| job.waiters.len()).sum()
    }

    /// Starts resolving `name` (a host name or an IP literal, IPv6 optionally in brackets).
    /// The result always comes out of `poll_result`, even when known at once.
    pub fn resolve(&mut self, name: &str, now_ms: u64) -> LookupId {
        let lookup = LookupId(self.next_lookup);
        self.next_lookup += 1;
        let name = name.trim();
        if let Some(address) = parse_ip_literal(name) {
            self.results.push_back((lookup, Ok(vec![address])));
            return lookup;
        }
        if encode_name(name).is_err() {
            self.results.push_back((lookup, Err(DnsError::InvalidName)));
            return lookup;
        }
        // nsswitch's usual `files dns`: /etc/hosts first, never searched.
        if let Some(addresses) = self.hosts.lookup(name) {
            let mut addresses = addresses.to_vec();
            addresses.sort_by_key(|address| address.is_ipv6());
            self.results.push_back((lookup, Ok(addresses)));
            return lookup;
        }
        let key = name.to_ascii_lowercase();
        if let Some(entry) = self.cache.get(&key) {
            if now_ms < entry.expires_at_ms {
                self.results.push_back((lookup, Ok(entry.addresses.clone())));
                return lookup;
            }
            self.cache.remove(&key);
        }
        if self.in_flight() >= LOOKUPS_IN_FLIGHT_MAX {
            self.results.push_back((lookup, Err(DnsError::TooManyLookups)));
            return lookup;
        }
        if let Some(job) = self.jobs.iter_mut().find(|job| job.key == key) {
            job.waiters.push(lookup);
            return lookup;
        }
        let candidates = self.candidates(&key);
        let Some(first) = candidates.first() else {
            self.results.push_back((lookup, Err(DnsError::InvalidName)));
            return lookup;
        };
        let Ok(qname) = encode_name(first) else {
            self.results.push_back((lookup, Err(DnsError::InvalidName)));
            return lookup;
        };
        let queries = self.new_queries(&qname, now_ms);
        self.jobs.push(Job {
            key,
            candidates,
            candidate: 0,
            qname,
            queries,
            waiters: vec![lookup],
            nodata_seen: false,
            server_failure_seen: None,
        });
        lookup
    }

    /// Forgets `lookup`: its result will not be reported. Queries another lookup shares go
    /// on; a query nobody waits for any more is dropped and its late answer ignored.
    pub fn cancel(&mut self, lookup: LookupId) {
        self.results.retain(|(id, _)| *id != lookup);
        for job in &mut self.jobs {
            job.waiters.retain(|id| *id != lookup);
        }
        self.jobs.retain(|job| !job.waiters.is_empty());
    }

    /// The next datagram to send, and where to.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let nameservers = &self.config.nameservers;
        for job in &mut self.jobs {
            for query in &mut job.queries {
                if let QueryState::Waiting {
                    tries,
                    sent_to,
                    unsent,
                    ..
                } = &mut query.state
                    && *unsent
                {
                    let server = usize::from(*tries - 1) % nameservers.len();
                    *unsent = false;
                    *sent_to |= 1 << server;
                    return Some((nameservers[server], query.packet.clone()));
                }
            }
        }
        None
    }

    /// Feeds a datagram received on the resolver's socket. Datagrams from addresses we did
    /// not send that query to, with unknown ids, or not echoing our question are dropped
    /// silently (RFC 5452 section 9.1), so a spoofer must guess the source address, the
    /// 16-bit random id, the source port and the name together.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now_ms: u64) {
        let Some(server) = self
            .config
            .nameservers
            .iter()
            .position(|ns| same_endpoint(*ns, from))
        else {
            log::debug!("dns: dropping datagram from unexpected address {from}");
            return;
        };
        let Some(id) = bytes.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            return;
        };
        let mut matched = None;
        'search: for (index, job) in self.jobs.iter().enumerate() {
            for (slot, query) in job.queries.iter().enumerate() {
                let QueryState::Waiting { sent_to, .. } = query.state else {
                    continue;
                };
                if query.id != id || sent_to & (1 << server) == 0 {
                    continue;
                }
                match parse_response_wire(bytes, id, &job.qname, query.qtype) {
                    // Ids are unique among queries in flight but not guaranteed: keep
                    // looking for a query whose question this datagram does echo.
                    Err(Rejection::NotOurs(why)) => log::debug!("dns: dropping datagram from {from}: {why}"),
                    Err(Rejection::Failed(error)) => {
                        matched = Some((index, slot, Err(error)));
                        break 'search;
                    }
                    Ok(answer) => {
                        matched = Some((index, slot, Ok(answer)));
                        break 'search;
                    }
                }
            }
        }
        let Some((index, slot, parsed)) = matched else {
            log::debug!("dns: dropping datagram from {from}: no query in flight matches");
            return;
        };
        let tries_max = self.tries_max();
        let timeout_ms = self.config.timeout_ms;
        let nameservers = self.config.nameservers.len();
        let query = &mut self.jobs[index].queries[slot];
        match parsed {
            Ok(answer) => query.state = QueryState::Done(Ok(answer)),
            Err(error @ (DnsError::ServerFailure(_) | DnsError::Malformed(_))) => {
                // Another server may do better; don't wait out the timeout. Only the server
                // of the current try moves us on: a duplicated or late error from one we
                // already left must not burn a second try.
                if query.current_server(nameservers) == Some(server) {
                    query.retry(Some(error), tries_max, timeout_ms, now_ms);
                }
            }
            Err(error) => query.state = QueryState::Done(Err(error)),
        }
        self.advance(index, now_ms);
    }

    /// Retransmits or gives up on every query whose deadline is at or before `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let tries_max = self.tries_max();
        let timeout_ms = self.config.timeout_ms;
        let mut index = 0;
        while index < self.jobs.len() {
            let mut expired = false;
            for query in &mut self.jobs[index].queries {
                if query.deadline_ms().is_some_and(|deadline| deadline <= now_ms) {
                    query.retry(None, tries_max, timeout_ms, now_ms);
                    expired = true;
                }
            }
            let jobs_before = self.jobs.len();
            if expired {
                self.advance(index, now_ms);
            }
            // `advance` removes at most this job; the next one then slid into `index`.
            if self.jobs.len() == jobs_before {
                index += 1;
            }
        }
        // A deadline at or before `now_ms` left behind would make the reactor spin.
        debug_assert!(self.poll_timeout().is_none_or(|deadline| deadline > now_ms));
    }

    /// The earliest retransmission deadline (absolute ms), if any query is outstanding.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.jobs
            .iter()
            .flat_map(|job| job.queries.iter().filter_map(Query::deadline_ms))
            .min()
    }

    /// The next finished lookup: IPv4 addresses first, then IPv6.
    pub fn poll_result(&mut self) -> Option<(LookupId, Result<Vec<IpAddr>, DnsError>)> {
        self.results.pop_front()
    }

    fn tries_max(&self) -> u8 {
        // At most 5 attempts x 3 servers.
        self.config.attempts * self.config.nameservers.len() as u8
    }

    /// glibc's res_nsearch order: a trailing dot means absolute (tried alone); a name with
    /// at least `ndots` dots is tried as-is first, then with each search domain; a name with
    /// fewer is tried with the search domains first and as-is last. Candidates too long for
    /// the wire are skipped.
    fn candidates(&self, key: &str) -> Vec<String> {
        if let Some(absolute) = key.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self
            .config
            .search
            .iter()
            .map(|domain| format!("{key}.{domain}"))
            .filter(|candidate| encode_name(candidate).is_ok());
        let mut candidates = Vec::with_capacity(self.config.search.len() + 1);
        let dots = key.bytes().filter(|&b| b == b'.').count();
        if dots >= usize::from(self.config.ndots) {
            candidates.push(key.to_string());
            candidates.extend(searched);
        } else {
            candidates.extend(searched);
            candidates.push(key.to_string());
        }
        let mut unique: Vec<String> = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            if !unique.contains(&candidate) {
                unique.push(candidate);
            }
        }
        unique
    }

    fn new_queries(&mut self, qname: &[u8], now_ms: u64) -> [Query; 2] {
        let deadline_ms = now_ms.saturating_add(self.config.timeout_ms);
        let a = self.fresh_id(None);
        let aaaa = self.fresh_id(Some(a));
        [
            Query::new(QueryType::A, a, qname, deadline_ms),
            Query::new(QueryType::Aaaa, aaaa, qname, deadline_ms),
        ]
    }

    /// A random query id (RFC 5452 section 4.3: unpredictable ids are half the spoofing
    /// defence, the random source port the other), distinct from those in flight if
    /// possible. With at most 128 of 65536 in use, a repeat is rare, and harmless anyway
    /// since `handle_datagram` also matches the question.
    fn fresh_id(&mut self, also_avoid: Option<u16>) -> u16 {
        let mut id = 0;
        for _ in 0..16 {
            let mut bytes = [0u8; 2];
            self.entropy.fill(&mut bytes);
            id = u16::from_be_bytes(bytes);
            let in_use = also_avoid == Some(id)
                || self
                    .jobs
                    .iter()
                    .any(|job| job.queries.iter().any(|query| query.id == id));
            if !in_use {
                break;
            }
        }
        id
    }

    /// Acts on the current candidate's outcome: finish the job, or move to the next
    /// search candidate.
    fn advance(&mut self, index: usize, now_ms: u64) {
        // Each turn either returns or moves to the next candidate.
        loop {
            let job = &mut self.jobs[index];
            match outcome(&job.queries) {
                Outcome::Pending => return,
                Outcome::Found { addresses, ttl_secs } => {
                    let job = self.jobs.remove(index);
                    self.cache_insert(&job.key, &addresses, ttl_secs, now_ms);
                    self.finish(job, Ok(addresses));
                    return;
                }
                Outcome::NotFound { nodata } => job.nodata_seen |= nodata,
                Outcome::ServerFailure(rcode) => job.server_failure_seen = Some(rcode),
                Outcome::Fatal(error) => {
                    let job = self.jobs.remove(index);
                    self.finish(job, Err(error));
                    return;
                }
            }
            job.candidate += 1;
            let Some(candidate) = job.candidates.get(job.candidate) else {
                // glibc's precedence: NODATA somewhere beats SERVFAIL beats NXDOMAIN.
                let error = if job.nodata_seen {
                    DnsError::NoAddresses
                } else if let Some(rcode) = job.server_failure_seen {
                    DnsError::ServerFailure(rcode)
                } else {
                    DnsError::NameNotFound
                };
                let job = self.jobs.remove(index);
                self.finish(job, Err(error));
                return;
            };
            // Candidates were validated when built, so this holds; if not, skip it.
            let Ok(qname) = encode_name(candidate) else {
                job.queries[0].state = QueryState::Done(Err(DnsError::NameNotFound));
                continue;
            };
            let queries = self.new_queries(&qname, now_ms);
            let job = &mut self.jobs[index];
            job.qname = qname;
            job.queries = queries;
        }
    }

    fn finish(&mut self, job: Job, result: Result<Vec<IpAddr>, DnsError>) {
        for waiter in job.waiters {
            self.results.push_back((waiter, result.clone()));
        }
    }

    fn cache_insert(&mut self, key: &str, addresses: &[IpAddr], ttl_secs: u32, now_ms: u64) {
        let ttl_secs = ttl_secs.min(CACHE_TTL_SECS_MAX);
        if ttl_secs == 0 {
            return;
        }
        if !self.cache.contains_key(key) && self.cache.len() >= CACHE_NAMES_MAX {
            self.cache.retain(|_, entry| entry.expires_at_ms > now_ms);
            if self.cache.len() >= CACHE_NAMES_MAX {
                // Evict whichever expires first (ties: the smallest name, deterministic).
                let oldest = self
                    .cache
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires_at_ms)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    self.cache.remove(&oldest);
                }
            }
        }
        self.cache.insert(
            key.to_string(),
            CacheEntry {
                addresses: addresses.to_vec(),
                expires_at_ms: now_ms.saturating_add(u64::from(ttl_secs) * 1000),
            },
        );
    }
}

/// An IP literal as a host: `192.0.2.1`, `2001:db8::1` or `[2001:db8::1]` (URL form).
fn parse_ip_literal(name: &str) -> Option<IpAddr> {
    if let Some(inner) = name.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    name.parse::<IpAddr>().ok()
}

/// Whether a datagram's source is this nameserver; a dual-stack IPv6 socket reports IPv4
/// peers as `::ffff:a.b.c.d`, which must still match.
fn same_endpoint(nameserver: SocketAddr, from: SocketAddr) -> bool {
    let canonical = |address: SocketAddr| (address.ip().to_canonical(), address.port());
    canonical(nameserver) == canonical(from)
}

/// Reads a configuration file, up to `CONFIG_FILE_BYTES_MAX`; missing or unreadable is
/// empty, which means the defaults.
fn read_config_file(path: &str) -> String {
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(path)
        && file
            .take(CONFIG_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .is_err()
    {
        log::warn!("dns: could not read {path} as text; using defaults");
        text.clear();
    }
    text
}

/// A resolver configured from /etc/resolv.conf and /etc/hosts, read once, at start (the
/// only blocking I/O this module does, before the reactor runs).
pub fn system_resolver() -> Resolver {
    let config = parse_resolv_conf(&read_config_file("/etc/resolv.conf"));
    let hosts = parse_hosts(&read_config_file("/etc/hosts"));
    Resolver::new(config, hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- packet building helpers -------------------------------------------------------

    fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
        let mut packet = Vec::new();
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&flags.to_be_bytes());
        for count in counts {
            packet.extend_from_slice(&count.to_be_bytes());
        }
        packet
    }

    fn wire(name: &str) -> Vec<u8> {
        encode_name(name).unwrap()
    }

    fn record(packet: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
        packet.extend_from_slice(owner);
        packet.extend_from_slice(&rtype.to_be_bytes());
        packet.extend_from_slice(&CLASS_IN.to_be_bytes());
        packet.extend_from_slice(&ttl.to_be_bytes());
        packet.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        packet.extend_from_slice(rdata);
    }

    /// Pointer to the question name, which always starts at offset 12.
    const AT_QNAME: [u8; 2] = [0xC0, 12];
    const RESPONSE: u16 = FLAG_QR | FLAG_RD | 0x0080;

    /// A response to `query` (id and question copied) with `rcode`, answers appended by
    /// the caller via `record`; `ancount` must match.
    fn reply(query: &[u8], rcode: u8, ancount: u16) -> Vec<u8> {
        let mut packet = query.to_vec();
        packet[2..4].copy_from_slice(&(RESPONSE | u16::from(rcode)).to_be_bytes());
        packet[6..8].copy_from_slice(&ancount.to_be_bytes());
        packet
    }

    /// Id, name and type of a query we sent.
    fn query_info(packet: &[u8]) -> (u16, String, QueryType) {
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        let (name, end) = read_name(packet, HEADER_BYTES).unwrap();
        let mut labels = Vec::new();
        let mut pos = 0;
        while name[pos] != 0 {
            let length = usize::from(name[pos]);
            labels.push(String::from_utf8(name[pos + 1..pos + 1 + length].to_vec()).unwrap());
            pos += 1 + length;
        }
        let qtype = match u16::from_be_bytes([packet[end], packet[end + 1]]) {
            TYPE_A => QueryType::A,
            TYPE_AAAA => QueryType::Aaaa,
            other => panic!("unexpected qtype {other}"),
        };
        (id, labels.join("."), qtype)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// A response for `name` with the given A addresses, TTL 60.
    fn a_response(id: u16, name: &str, addresses: &[[u8; 4]]) -> Vec<u8> {
        let query = build_query(id, name, QueryType::A).unwrap();
        let mut packet = reply(&query, 0, addresses.len() as u16);
        for address in addresses {
            record(&mut packet, &AT_QNAME, TYPE_A, 60, address);
        }
        packet
    }

    /// xorshift64: deterministic, std-only randomness for the property tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    // ---- configuration files -----------------------------------------------------------

    #[test]
    fn resolv_conf_parses_glibc_subset() {
        let config = parse_resolv_conf(
            "# comment\n\
             nameserver 10.0.0.1\n\
             nameserver 2001:db8::53 # trailing comment\n\
             nameserver fe80::1%2\n\
             nameserver 10.0.0.4\n\
             nameserver not-an-address\n\
             domain ignored.example\n\
             search Corp.Example. example.net .\n\
             options ndots:3 timeout:2 attempts:4 rotate\n",
        );
        assert_eq!(
            config.nameservers,
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ]
        );
        assert_eq!(config.search, vec!["corp.example", "example.net"]);
        assert_eq!((config.ndots, config.timeout_ms, config.attempts), (3, 2000, 4));
    }

    #[test]
    fn resolv_conf_defaults_and_clamps() {
        let config = parse_resolv_conf("");
        assert_eq!(config, ResolverConfig::default());
        assert_eq!(config.nameservers, vec!["127.0.0.1:53".parse().unwrap()]);
        let config = parse_resolv_conf("options ndots:99 timeout:0 attempts:100\ndomain Example.COM\n");
        assert_eq!((config.ndots, config.timeout_ms, config.attempts), (15, 1000, 5));
        assert_eq!(config.search, vec!["example.com"]);
        let config = parse_resolv_conf("search a b c d e f g h\nnameserver fe80::1%eth0\n");
        assert_eq!(config.search.len(), SEARCH_DOMAINS_MAX);
        assert_eq!(config.nameservers, vec![default_nameserver()]);
    }

    #[test]
    fn hosts_parse_and_lookup() {
        let hosts = parse_hosts(
            "127.0.0.1 localhost\n\
             # 10.9.9.9 commented.example\n\
             192.0.2.10 Web.Example web # alias\n\
             2001:db8::10 web.example\n\
             192.0.2.10 web.example\n\
             bogus line.example\n\
             192.0.2.11 bad!name ok.example.\n",
        );
        assert_eq!(
            hosts.lookup("WEB.example."),
            Some(&[ip("192.0.2.10"), ip("2001:db8::10")][..])
        );
        assert_eq!(hosts.lookup("web"), Some(&[ip("192.0.2.10")][..]));
        assert_eq!(hosts.lookup("ok.example"), Some(&[ip("192.0.2.11")][..]));
        assert_eq!(hosts.lookup("commented.example"), None);
        assert_eq!(hosts.lookup("line.example"), None);
        // The file's own localhost entry wins over the RFC 6761 fallback.
        assert_eq!(hosts.lookup("localhost"), Some(&[ip("127.0.0.1")][..]));
        assert_eq!(hosts.len(), 4);
    }

    #[test]
    fn localhost_resolves_without_hosts_entry() {
        let hosts = parse_hosts("");
        assert!(hosts.is_empty());
        assert_eq!(hosts.lookup("localhost"), Some(&LOOPBACK[..]));
        assert_eq!(hosts.lookup("LocalHost."), Some(&LOOPBACK[..]));
        assert_eq!(hosts.lookup("api.localhost"), Some(&LOOPBACK[..]));
        assert_eq!(hosts.lookup("localhost.example"), None);
    }

    // ---- queries ----------------------------------------------------------------------

    #[test]
    fn build_query_matches_rfc_1035_layout() {
        let packet = build_query(0xBEEF, "Example.COM.", QueryType::Aaaa).unwrap();
        let mut expected = vec![0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x07example\x03com\x00");
        expected.extend_from_slice(&[0, 28, 0, 1]);
        assert_eq!(packet, expected);
    }

    #[test]
    fn build_query_validates_names() {
        let ok = ["a", "_dmarc.example.com", "xn--bcher-kva.example", "a-b.c_d.e"];
        for name in ok {
            assert!(build_query(1, name, QueryType::A).is_ok(), "{name}");
        }
        let label_63 = "a".repeat(63);
        assert!(build_query(1, &label_63, QueryType::A).is_ok());
        let label_64 = "a".repeat(64);
        // 4 labels of 63 = 255 chars; cut to 253.
        let long = [label_63.as_str(); 4].join(".");
        let bad = [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a/b",
            "é.example",
            label_64.as_str(),
            &long[..254],
        ];
        for name in bad {
            assert_eq!(
                build_query(1, name, QueryType::A),
                Err(DnsError::InvalidName),
                "{name:?}"
            );
        }
        assert!(build_query(1, &long[..253], QueryType::A).is_ok());
        // A trailing dot does not count towards the 253.
        assert!(build_query(1, &format!("{}.", &long[..253]), QueryType::A).is_ok());
    }

    // ---- responses --------------------------------------------------------------------

    #[test]
    fn parses_simple_answer() {
        let packet = a_response(7, "example.com", &[[192, 0, 2, 1], [192, 0, 2, 2]]);
        let answer = parse_response(&packet, 7, "EXAMPLE.com", QueryType::A).unwrap();
        assert_eq!(answer.addresses, vec![ip("192.0.2.1"), ip("192.0.2.2")]);
        assert_eq!(answer.ttl_secs, 60);
    }

    #[test]
    fn parses_aaaa_with_uncompressed_owner_and_ignores_other_types() {
        let query = build_query(9, "v6.example", QueryType::Aaaa).unwrap();
        let mut packet = reply(&query, 0, 3);
        let address = ip("2001:db8::1");
        let IpAddr::V6(octets) = address else {
            unreachable!()
        };
        record(&mut packet, &wire("V6.Example"), TYPE_AAAA, 100, &octets.octets());
        // A records in an AAAA answer, and TXT, are not ours to use.
        record(&mut packet, &AT_QNAME, TYPE_A, 5, &[1, 2, 3, 4]);
        record(&mut packet, &AT_QNAME, 16, 5, b"\x03txt");
        let answer = parse_response(&packet, 9, "v6.example", QueryType::Aaaa).unwrap();
        assert_eq!(
            answer,
            Answer {
                addresses: vec![address],
                ttl_secs: 100
            }
        );
    }

    #[test]
    fn follows_compressed_cname_chain_with_min_ttl() {
        // www.example.com CNAME web.example.com (compressed onto the question's
        // "example.com"), web CNAME cdn.example.net, cdn A x2.
        let query = build_query(0x1234, "www.example.com", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 4);
        // Decoy first: an A record for an unrelated name must not be used.
        record(&mut packet, &wire("evil.example"), TYPE_A, 999, &[6, 6, 6, 6]);
        let web_at = packet.len() + 12; // after owner (2) + fixed fields (10)
        let mut target = b"\x03web".to_vec();
        target.extend_from_slice(&[0xC0, 16]); // "example.com" inside the question
        record(&mut packet, &AT_QNAME, TYPE_CNAME, 300, &target);
        let cdn_at = packet.len() + 12;
        record(
            &mut packet,
            &[0xC0, web_at as u8],
            TYPE_CNAME,
            120,
            b"\x03cdn\x07example\x03net\x00",
        );
        record(&mut packet, &[0xC0, cdn_at as u8], TYPE_A, 30, &[198, 51, 100, 7]);
        let answer = parse_response(&packet, 0x1234, "www.example.com", QueryType::A);
        // Four records declared, four written (decoy, two CNAMEs, one A).
        assert_eq!(
            answer,
            Ok(Answer {
                addresses: vec![ip("198.51.100.7")],
                ttl_secs: 30
            })
        );

        // The same chain ending in an A with a larger TTL: the CNAME's 120 wins.
        let last = packet.len() - 16;
        packet[last + 6..last + 10].copy_from_slice(&3600u32.to_be_bytes());
        let answer = parse_response(&packet, 0x1234, "www.example.com", QueryType::A).unwrap();
        assert_eq!(answer.ttl_secs, 120);
    }

    #[test]
    fn cname_without_target_data_is_nodata_and_loops_are_errors() {
        let query = build_query(1, "a.example", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 1);
        record(&mut packet, &AT_QNAME, TYPE_CNAME, 60, &wire("b.example"));
        let answer = parse_response(&packet, 1, "a.example", QueryType::A).unwrap();
        assert_eq!(
            answer,
            Answer {
                addresses: vec![],
                ttl_secs: 0
            }
        );

        // a -> b -> a.
        let mut packet = reply(&query, 0, 2);
        record(&mut packet, &AT_QNAME, TYPE_CNAME, 60, &wire("b.example"));
        record(&mut packet, &wire("b.example"), TYPE_CNAME, 60, &AT_QNAME);
        assert!(matches!(
            parse_response(&packet, 1, "a.example", QueryType::A),
            Err(DnsError::Malformed(_))
        ));

        // CNAME RDLENGTH longer than the name inside it.
        let mut packet = reply(&query, 0, 1);
        let mut rdata = wire("b.example");
        rdata.push(0);
        record(&mut packet, &AT_QNAME, TYPE_CNAME, 60, &rdata);
        assert_eq!(
            parse_response(&packet, 1, "a.example", QueryType::A),
            Err(DnsError::Malformed("CNAME data length mismatch"))
        );
    }

    #[test]
    fn rcodes_map_to_errors() {
        let query = build_query(3, "gone.example", QueryType::A).unwrap();
        let packet = reply(&query, 3, 0);
        assert_eq!(
            parse_response(&packet, 3, "gone.example", QueryType::A),
            Err(DnsError::NameNotFound)
        );
        for rcode in [1, 2, 4, 5] {
            let packet = reply(&query, rcode, 0);
            let result = parse_response(&packet, 3, "gone.example", QueryType::A);
            assert_eq!(result, Err(DnsError::ServerFailure(rcode)));
        }
        // REFUSED without the question echoed is still understood.
        let packet = header(3, RESPONSE | 5, [0, 0, 0, 0]);
        assert_eq!(
            parse_response(&packet, 3, "gone.example", QueryType::A),
            Err(DnsError::ServerFailure(5))
        );
        // But NXDOMAIN must echo it: it would end the lookup.
        let packet = header(3, RESPONSE | 3, [0, 0, 0, 0]);
        assert!(matches!(
            parse_response(&packet, 3, "gone.example", QueryType::A),
            Err(DnsError::Malformed(_))
        ));
    }

    #[test]
    fn empty_noerror_is_ok_without_addresses() {
        let query = build_query(4, "noaddr.example", QueryType::Aaaa).unwrap();
        let packet = reply(&query, 0, 0);
        let answer = parse_response(&packet, 4, "noaddr.example", QueryType::Aaaa).unwrap();
        assert!(answer.addresses.is_empty());
    }

    #[test]
    fn truncated_flag_is_an_error() {
        let mut packet = a_response(5, "big.example", &[[192, 0, 2, 1]]);
        packet[2] |= (FLAG_TC >> 8) as u8;
        assert_eq!(
            parse_response(&packet, 5, "big.example", QueryType::A),
            Err(DnsError::Truncated)
        );
    }

    #[test]
    fn header_checks_reject_foreign_packets() {
        let packet = a_response(5, "x.example", &[[192, 0, 2, 1]]);
        let malformed = |result| matches!(result, Err(DnsError::Malformed(_)));
        assert!(
            malformed(parse_response(&packet, 6, "x.example", QueryType::A)),
            "id mismatch"
        );
        assert!(
            malformed(parse_response(&packet, 5, "y.example", QueryType::A)),
            "other name"
        );
        assert!(
            malformed(parse_response(&packet, 5, "x.example", QueryType::Aaaa)),
            "other type"
        );
        let mut query_echo = packet.clone();
        query_echo[2] &= 0x7F;
        assert!(
            malformed(parse_response(&query_echo, 5, "x.example", QueryType::A)),
            "QR clear"
        );
        let mut opcode = packet.clone();
        opcode[2] |= 0x10; // opcode 2 (STATUS)
        assert!(
            malformed(parse_response(&opcode, 5, "x.example", QueryType::A)),
            "opcode"
        );
        let mut two_questions = packet.clone();
        two_questions[5] = 2;
        assert!(
            malformed(parse_response(&two_questions, 5, "x.example", QueryType::A)),
            "qdcount"
        );
        let mut chaos = packet.clone();
        let class_at = HEADER_BYTES + wire("x.example").len() + 3;
        chaos[class_at] = 3;
        assert!(
            malformed(parse_response(&chaos, 5, "x.example", QueryType::A)),
            "class CH"
        );
        assert_eq!(
            parse_response_wire(&packet, 6, &wire("x.example"), QueryType::A),
            Err(Rejection::NotOurs("unexpected query id"))
        );
    }

    #[test]
    fn compression_pointer_loops_and_bounds_are_errors() {
        let query = build_query(8, "loop.example", QueryType::A).unwrap();
        let base = reply(&query, 0, 1);
        let at = base.len() as u8;
        let backwards = "compression pointer does not point backwards";
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![0xC0, at], backwards),
            (vec![0xC0, at + 2, 0], backwards),
            // A label, then a pointer to that label: the classic one-name loop.
            (vec![1, b'x', 0xC0, at], backwards),
            (vec![0xFF, 0xFF], backwards),
            (vec![0x40, 0], "unsupported label type"),
            (vec![63, b'x'], "label runs past the end"),
        ];
        for (owner, expected) in cases {
            let mut packet = base.clone();
            record(&mut packet, &owner, TYPE_A, 60, &[1, 2, 3, 4]);
            if expected == "label runs past the end" {
                packet.truncate(base.len() + owner.len());
            }
            let result = parse_response(&packet, 8, "loop.example", QueryType::A);
            assert_eq!(result, Err(DnsError::Malformed(expected)), "owner {owner:?}");
        }

        // Two names pointing at each other (X = "a" -> Y, Y = "b" -> X), stored in the RDATA
        // of a TXT record we skip, then used as the owner of an A record.
        let mut packet = header(8, RESPONSE, [1, 2, 0, 0]);
        packet.extend_from_slice(&wire("loop.example"));
        packet.extend_from_slice(&[0, 1, 0, 1]);
        let x = packet.len() + 12;
        let y = x + 4;
        record(
            &mut packet,
            &AT_QNAME,
            16,
            60,
            &[1, b'a', 0xC0, y as u8, 1, b'b', 0xC0, x as u8],
        );
        record(&mut packet, &[0xC0, y as u8], TYPE_A, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&packet, 8, "loop.example", QueryType::A),
            Err(DnsError::Malformed(backwards))
        );

        // A chain of backward pointers longer than the jump cap, kept in the RDATA of a
        // TXT record (which we skip), then used as the owner of an A record.
        let pointer = |offset: usize| [0xC0 | (offset >> 8) as u8, offset as u8];
        let mut packet = header(8, RESPONSE, [1, 2, 0, 0]);
        packet.extend_from_slice(&wire("loop.example"));
        packet.extend_from_slice(&[0, 1, 0, 1]);
        let chain_start = packet.len() + 12;
        let mut chain = vec![0u8];
        for step in 0..40 {
            let previous = chain_start + if step == 0 { 0 } else { 1 + 2 * (step - 1) };
            chain.extend_from_slice(&pointer(previous));
        }
        let last = chain_start + chain.len() - 2;
        record(&mut packet, &AT_QNAME, 16, 60, &chain);
        record(&mut packet, &pointer(last), TYPE_A, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&packet, 8, "loop.example", QueryType::A),
            Err(DnsError::Malformed("too many compression pointers"))
        );
    }

    #[test]
    fn rdata_lengths_are_checked() {
        let query = build_query(2, "len.example", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 1);
        record(&mut packet, &AT_QNAME, TYPE_A, 60, &[1, 2, 3]);
        assert_eq!(
            parse_response(&packet, 2, "len.example", QueryType::A),
            Err(DnsError::Malformed("A record not 4 bytes"))
        );
        // RDLENGTH claiming more than the packet holds.
        let mut packet = reply(&query, 0, 1);
        record(&mut packet, &AT_QNAME, TYPE_A, 60, &[1, 2, 3, 4]);
        let rdlength_at = packet.len() - 6;
        packet[rdlength_at..rdlength_at + 2].copy_from_slice(&0xFFFFu16.to_be_bytes());
        assert!(matches!(
            parse_response(&packet, 2, "len.example", QueryType::A),
            Err(DnsError::Malformed(_))
        ));
    }

    #[test]
    fn ttl_with_top_bit_is_zero() {
        let query = build_query(2, "ttl.example", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 1);
        record(&mut packet, &AT_QNAME, TYPE_A, 0x8000_0000, &[1, 2, 3, 4]);
        let answer = parse_response(&packet, 2, "ttl.example", QueryType::A).unwrap();
        assert_eq!(answer.ttl_secs, 0);
    }

    /// Every strict prefix of a valid response (with records in all three sections) is an
    /// error, never a panic and never a shorter answer.
    #[test]
    fn every_prefix_of_a_valid_response_is_an_error() {
        let query = build_query(0xABCD, "www.example.com", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 2);
        packet[9] = 1; // NSCOUNT
        packet[11] = 1; // ARCOUNT
        record(
            &mut packet,
            &AT_QNAME,
            TYPE_CNAME,
            60,
            &[3, b'w', b'e', b'b', 0xC0, 16],
        );
        let web = (packet.len() - 6) as u8;
        record(&mut packet, &[0xC0, web], TYPE_A, 60, &[192, 0, 2, 80]);
        record(&mut packet, &[0xC0, 16], 2, 60, &[2, b'n', b's', 0xC0, 16]);
        record(&mut packet, &[0xC0, 16], TYPE_A, 60, &[192, 0, 2, 53]);
        let full = parse_response(&packet, 0xABCD, "www.example.com", QueryType::A);
        assert_eq!(
            full,
            Ok(Answer {
                addresses: vec![ip("192.0.2.80")],
                ttl_secs: 60
            })
        );
        for length in 0..packet.len() {
            let result = parse_response(&packet[..length], 0xABCD, "www.example.com", QueryType::A);
            assert!(result.is_err(), "prefix of {length} bytes parsed: {result:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let name = "fuzz.example";
        let qname = wire(name);
        for round in 0..20_000 {
            let length = (rng.next() % 600) as usize;
            let mut packet: Vec<u8> = (0..length).map(|_| rng.next() as u8).collect();
            // Half the time give it a plausible header and question so the fuzz reaches
            // the record parser.
            if round % 2 == 0 && packet.len() >= HEADER_BYTES {
                packet[..2].copy_from_slice(&7u16.to_be_bytes());
                packet[2] = 0x81;
                packet[3] &= 0xF0;
                packet[4..6].copy_from_slice(&[0, 1]);
                packet[6] = 0;
                let tail = packet.split_off(HEADER_BYTES);
                packet.extend_from_slice(&qname);
                packet.extend_from_slice(&[0, 1, 0, 1]);
                packet.extend_from_slice(&tail);
            }
            let _ = parse_response(&packet, 7, name, QueryType::A);
        }
    }

    #[test]
    fn mutated_valid_responses_never_panic() {
        let mut rng = XorShift(42);
        let query = build_query(7, "m.example", QueryType::A).unwrap();
        let mut base = reply(&query, 0, 3);
        record(&mut base, &AT_QNAME, TYPE_CNAME, 60, &[1, b'n', 0xC0, 14]);
        let n = (base.len() - 4) as u8;
        record(&mut base, &[0xC0, n], TYPE_CNAME, 60, &[1, b'o', 0xC0, 14]);
        let o = (base.len() - 4) as u8;
        record(&mut base, &[0xC0, o], TYPE_A, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&base, 7, "m.example", QueryType::A)
                .unwrap()
                .addresses,
            vec![ip("1.2.3.4")]
        );
        for _ in 0..20_000 {
            let mut packet = base.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % packet.len();
                packet[at] = rng.next() as u8;
            }
            let _ = parse_response(&packet, 7, "m.example", QueryType::A);
        }
    }

    #[test]
    fn error_messages_read_well() {
        assert_eq!(DnsError::NameNotFound.to_string(), "DNS: name not found");
        assert_eq!(
            DnsError::ServerFailure(2).to_string(),
            "DNS: name server failure (rcode 2, SERVFAIL)"
        );
        assert_eq!(DnsError::Malformed("x").to_string(), "DNS: malformed response: x");
        assert_eq!(
            DnsError::Timeout.to_string(),
            "DNS: no response from any name server"
        );
    }

    // ---- the machine ------------------------------------------------------------------

    const NS1: &str = "192.0.2.53:53";
    const NS2: &str = "198.51.100.53:53";

    fn resolver(nameservers: &[&str], search: &[&str], hosts: &str) -> Resolver {
        let config = ResolverConfig {
            nameservers: nameservers.iter().map(|ns| ns.parse().unwrap()).collect(),
            search: search.iter().map(|s| s.to_string()).collect(),
            ndots: 1,
            timeout_ms: 1000,
            attempts: 2,
        };
        Resolver::new(config, parse_hosts(hosts))
    }

    fn sent(resolver: &mut Resolver) -> Vec<(SocketAddr, u16, String, QueryType)> {
        let mut out = Vec::new();
        while let Some((to, packet)) = resolver.poll_transmit() {
            let (id, name, qtype) = query_info(&packet);
            out.push((to, id, name, qtype));
        }
        out
    }

    #[test]
    fn a_seeded_resolver_sends_the_same_query_ids() {
        let seeded = || {
            resolver(&["192.0.2.53:53"], &[], "")
                .with_entropy(Box::new(crate::entropy::SeededEntropy::new(42)))
        };
        let (mut one, mut two) = (seeded(), seeded());
        one.resolve("hooks.example.com", 0);
        two.resolve("hooks.example.com", 0);
        let sent_one = sent(&mut one);
        assert_eq!(sent_one.len(), 2, "A and AAAA");
        assert_eq!(sent_one, sent(&mut two));
        assert_ne!(sent_one[0].1, sent_one[1].1, "distinct ids for A and AAAA");
    }

    fn results(resolver: &mut Resolver) -> Vec<(LookupId, Result<Vec<IpAddr>, DnsError>)> {
        std::iter::from_fn(|| resolver.poll_result()).collect()
    }

    /// Answer for one sent query: A/AAAA records, or an rcode.
    fn answer(id: u16, name: &str, qtype: QueryType, rcode: u8, addresses: &[IpAddr], ttl: u32) -> Vec<u8> {
        let query = build_query(id, name, qtype).unwrap();
        let mut packet = reply(&query, rcode, addresses.len() as u16);
        for address in addresses {
            match address {
                IpAddr::V4(a) => record(&mut packet, &AT_QNAME, TYPE_A, ttl, &a.octets()),
                IpAddr::V6(a) => record(&mut packet, &AT_QNAME, TYPE_AAAA, ttl, &a.octets()),
            }
        }
        packet
    }

    #[test]
    fn ip_literals_and_hosts_complete_immediately() {
        let mut r = resolver(
            &[NS1],
            &[],
            "192.0.2.9 hooks.internal\n2001:db8::9 hooks.internal\n",
        );
        let a = r.resolve("203.0.113.5", 0);
        let b = r.resolve("[2001:db8::1]", 0);
        let c = r.resolve("::1", 0);
        let d = r.resolve("HOOKS.internal", 0);
        let e = r.resolve("localhost", 0);
        let f = r.resolve("bad..name", 0);
        assert!(r.poll_transmit().is_none());
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(
            results(&mut r),
            vec![
                (a, Ok(vec![ip("203.0.113.5")])),
                (b, Ok(vec![ip("2001:db8::1")])),
                (c, Ok(vec![ip("::1")])),
                (d, Ok(vec![ip("192.0.2.9"), ip("2001:db8::9")])),
                (e, Ok(vec![ip("127.0.0.1"), ip("::1")])),
                (f, Err(DnsError::InvalidName)),
            ]
        );
    }

    #[test]
    fn hosts_ipv6_listed_first_still_comes_out_after_ipv4() {
        let mut r = resolver(&[NS1], &[], "2001:db8::9 h.internal\n192.0.2.9 h.internal\n");
        let id = r.resolve("h.internal", 0);
        assert_eq!(
            results(&mut r),
            vec![(id, Ok(vec![ip("192.0.2.9"), ip("2001:db8::9")]))]
        );
    }

    #[test]
    fn a_and_aaaa_merge_ipv4_first_and_cache_until_ttl() {
        let mut r = resolver(&[NS1], &[], "");
        let lookup = r.resolve("hooks.example", 1_000);
        let queries = sent(&mut r);
        assert_eq!(queries.len(), 2);
        assert_eq!(r.poll_timeout(), Some(2_000));
        assert_ne!(queries[0].1, queries[1].1, "ids must differ");
        let ns: SocketAddr = NS1.parse().unwrap();
        let (a, aaaa) = (&queries[0], &queries[1]);
        assert_eq!((a.0, a.2.as_str(), a.3), (ns, "hooks.example", QueryType::A));
        assert_eq!(
            (aaaa.0, aaaa.2.as_str(), aaaa.3),
            (ns, "hooks.example", QueryType::Aaaa)
        );
        // AAAA answers first; the result must still list IPv4 first.
        r.handle_datagram(
            ns,
            &answer(
                aaaa.1,
                "hooks.example",
                QueryType::Aaaa,
                0,
                &[ip("2001:db8::7")],
                600,
            ),
            1_010,
        );
        assert!(results(&mut r).is_empty());
        r.handle_datagram(
            ns,
            &answer(a.1, "hooks.example", QueryType::A, 0, &[ip("192.0.2.7")], 600),
            1_020,
        );
        assert_eq!(
            results(&mut r),
            vec![(lookup, Ok(vec![ip("192.0.2.7"), ip("2001:db8::7")]))]
        );
        assert_eq!(r.poll_timeout(), None);

        // Cached (TTL 600 capped to 300 s): no datagram until expiry, case-insensitive.
        let again = r.resolve("Hooks.Example", 300_000);
        assert!(r.poll_transmit().is_none());
        assert_eq!(
            results(&mut r),
            vec![(again, Ok(vec![ip("192.0.2.7"), ip("2001:db8::7")]))]
        );
        let _ = r.resolve("hooks.example", 301_020);
        assert_eq!(sent(&mut r).len(), 2, "expired entry must be asked again");
    }

    #[test]
    fn timeouts_rotate_through_nameservers_then_fail() {
        let mut r = resolver(&[NS1, NS2], &[], "");
        let (ns1, ns2): (SocketAddr, SocketAddr) = (NS1.parse().unwrap(), NS2.parse().unwrap());
        let lookup = r.resolve("slow.example", 0);
        let first = sent(&mut r);
        assert!(first.iter().all(|q| q.0 == ns1));
        let mut now = 0;
        let mut destinations = vec![ns1];
        // attempts 2 x 2 servers = 4 tries per query, 1 s each.
        for _ in 0..3 {
            // Nothing happens before the deadline.
            r.handle_timeout(now + 999);
            assert!(r.poll_transmit().is_none());
            now = r.poll_timeout().unwrap();
            r.handle_timeout(now);
            assert!(r.poll_timeout().unwrap() > now);
            let retries = sent(&mut r);
            assert_eq!(retries.len(), 2);
            assert_eq!(retries[0].0, retries[1].0);
            // Same ids and names as the first try: a late answer still counts.
            assert_eq!(retries[0].1, first[0].1);
            destinations.push(retries[0].0);
            assert!(results(&mut r).is_empty());
        }
        assert_eq!(destinations, vec![ns1, ns2, ns1, ns2]);
        assert_eq!(now, 3_000);
        r.handle_timeout(4_000);
        assert_eq!(r.poll_timeout(), None);
        assert!(r.poll_transmit().is_none());
        assert_eq!(results(&mut r), vec![(lookup, Err(DnsError::Timeout))]);
    }

    #[test]
    fn late_answer_from_first_server_is_accepted_after_retry() {
        let mut r = resolver(&[NS1, NS2], &[], "");
        let (ns1, ns2): (SocketAddr, SocketAddr) = (NS1.parse().unwrap(), NS2.parse().unwrap());
        let lookup = r.resolve("late.example", 0);
        let queries = sent(&mut r);
        r.handle_timeout(1_000);
        assert_eq!(sent(&mut r).len(), 2);
        // The same answers from an address we never asked are ignored.
        let spoof: SocketAddr = "203.0.113.66:53".parse().unwrap();
        for q in &queries {
            r.handle_datagram(spoof, &answer(q.1, &q.2, q.3, 0, &[ip("6.6.6.6")], 60), 1_100);
        }
        assert!(results(&mut r).is_empty());
        r.handle_datagram(
            ns1,
            &answer(
                queries[0].1,
                "late.example",
                QueryType::A,
                0,
                &[ip("192.0.2.1")],
                60,
            ),
            1_200,
        );
        r.handle_datagram(
            ns2,
            &answer(queries[1].1, "late.example", QueryType::Aaaa, 0, &[], 60),
            1_300,
        );
        assert_eq!(results(&mut r), vec![(lookup, Ok(vec![ip("192.0.2.1")]))]);
    }

    #[test]
    fn spoofed_and_stray_datagrams_are_ignored() {
        let mut r = resolver(&[NS1, NS2], &[], "");
        let (ns1, ns2): (SocketAddr, SocketAddr) = (NS1.parse().unwrap(), NS2.parse().unwrap());
        let lookup = r.resolve("target.example", 0);
        let queries = sent(&mut r);
        let (a_id, aaaa_id) = (queries[0].1, queries[1].1);
        let evil = [ip("6.6.6.6")];
        // Wrong id.
        r.handle_datagram(
            ns1,
            &answer(a_id.wrapping_add(1), "target.example", QueryType::A, 0, &evil, 60),
            1,
        );
        // Right id, wrong question.
        r.handle_datagram(ns1, &answer(a_id, "other.example", QueryType::A, 0, &evil, 60), 2);
        // Right id and question, but NS2 was never asked.
        r.handle_datagram(
            ns2,
            &answer(a_id, "target.example", QueryType::A, 0, &evil, 60),
            3,
        );
        // Wrong port.
        let wrong_port: SocketAddr = "192.0.2.53:5353".parse().unwrap();
        r.handle_datagram(
            wrong_port,
            &answer(a_id, "target.example", QueryType::A, 0, &evil, 60),
            4,
        );
        // Garbage.
        r.handle_datagram(ns1, &[], 5);
        r.handle_datagram(ns1, &[0xFF; 7], 5);
        assert!(results(&mut r).is_empty());
        // The real answers, one via an IPv4-mapped source (dual-stack socket).
        let mapped: SocketAddr = "[::ffff:192.0.2.53]:53".parse().unwrap();
        r.handle_datagram(
            mapped,
            &answer(a_id, "TARGET.example", QueryType::A, 0, &[ip("192.0.2.2")], 60),
            6,
        );
        r.handle_datagram(
            ns1,
            &answer(aaaa_id, "target.example", QueryType::Aaaa, 0, &[], 60),
            7,
        );
        assert_eq!(results(&mut r), vec![(lookup, Ok(vec![ip("192.0.2.2")]))]);
        // A duplicate after completion is ignored.
        r.handle_datagram(
            ns1,
            &answer(a_id, "target.example", QueryType::A, 0, &evil, 60),
            8,
        );
        assert!(results(&mut r).is_empty());
    }

    #[test]
    fn servfail_moves_to_next_server_at_once() {
        let mut r = resolver(&[NS1, NS2], &[], "");
        let (ns1, ns2): (SocketAddr, SocketAddr) = (NS1.parse().unwrap(), NS2.parse().unwrap());
        let lookup = r.resolve("flaky.example", 0);
        let queries = sent(&mut r);
        r.handle_datagram(
            ns1,
            &answer(queries[0].1, "flaky.example", QueryType::A, 2, &[], 0),
            10,
        );
        let retry = sent(&mut r);
        assert_eq!(retry.len(), 1);
        assert_eq!((retry[0].0, retry[0].3), (ns2, QueryType::A));
        // The retry's deadline counts from the SERVFAIL, the AAAA's from the start.
        assert_eq!(r.poll_timeout(), Some(1_000));
        r.handle_datagram(
            ns2,
            &answer(
                queries[0].1,
                "flaky.example",
                QueryType::A,
                0,
                &[ip("192.0.2.3")],
                60,
            ),
            20,
        );
        // The AAAA never answers: after all its tries the A alone carries the lookup.
        let mut now = 20;
        while let Some(deadline) = r.poll_timeout() {
            assert!(deadline > now);
            now = deadline;
            r.handle_timeout(now);
            let _ = sent(&mut r);
        }
        assert_eq!(now, 4_000);
        assert_eq!(results(&mut r), vec![(lookup, Ok(vec![ip("192.0.2.3")]))]);
    }

    #[test]
    fn duplicated_servfail_burns_one_try_only() {
        let mut r = resolver(&[NS1, NS2], &[], "");
        let (ns1, ns2): (SocketAddr, SocketAddr) = (NS1.parse().unwrap(), NS2.parse().unwrap());
        let _ = r.resolve("dup.example", 0);
        let queries = sent(&mut r);
        let servfail = answer(queries[0].1, "dup.example", QueryType::A, 2, &[], 0);
        r.handle_datagram(ns1, &servfail, 10);
        r.handle_datagram(ns1, &servfail, 11);
        let retry = sent(&mut r);
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].0, ns2);
        // Still on try 2 of 4: the next timeouts move both queries on, none gives up.
        r.handle_timeout(1_010);
        let next = sent(&mut r);
        assert_eq!(next.iter().map(|q| q.0).collect::<Vec<_>>(), vec![ns1, ns2]);
    }

    #[test]
    fn servfail_everywhere_reports_server_failure() {
        let mut r = resolver(&[NS1], &[], "");
        let ns1: SocketAddr = NS1.parse().unwrap();
        let lookup = r.resolve("broken.example", 0);
        for _ in 0..2 {
            for q in sent(&mut r) {
                r.handle_datagram(ns1, &answer(q.1, &q.2, q.3, 2, &[], 0), 5);
            }
        }
        assert_eq!(results(&mut r), vec![(lookup, Err(DnsError::ServerFailure(2)))]);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn nxdomain_ends_without_waiting_for_the_other_type() {
        let mut r = resolver(&[NS1], &[], "");
        let ns1: SocketAddr = NS1.parse().unwrap();
        let lookup = r.resolve("nope.example", 0);
        let queries = sent(&mut r);
        r.handle_datagram(
            ns1,
            &answer(queries[1].1, "nope.example", QueryType::Aaaa, 3, &[], 0),
            5,
        );
        assert_eq!(results(&mut r), vec![(lookup, Err(DnsError::NameNotFound))]);
        assert_eq!(r.poll_timeout(), None);
        // The A answer arriving later is a stray.
        r.handle_datagram(
            ns1,
            &answer(queries[0].1, "nope.example", QueryType::A, 3, &[], 0),
            6,
        );
        assert!(results(&mut r).is_empty());
    }

    #[test]
    fn nodata_for_both_types_is_no_addresses_and_truncation_is_reported() {
        let mut r = resolver(&[NS1], &[], "");
        let ns1: SocketAddr = NS1.parse().unwrap();
        let lookup = r.resolve("mx-only.example", 0);
        for q in sent(&mut r) {
            r.handle_datagram(ns1, &answer(q.1, &q.2, q.3, 0, &[], 60), 5);
        }
        assert_eq!(results(&mut r), vec![(lookup, Err(DnsError::NoAddresses))]);

        let lookup = r.resolve("huge.example", 10);
        for q in sent(&mut r) {
            let mut packet = answer(q.1, &q.2, q.3, 0, &[], 60);
            packet[2] |= 0x02;
            r.handle_datagram(ns1, &packet, 15);
        }
        assert_eq!(results(&mut r), vec![(lookup, Err(DnsError::Truncated))]);
    }

    #[test]
    fn search_list_order_follows_ndots() {
        let mut r = resolver(&[NS1], &["corp.example", "example.net"], "");
        let ns1: SocketAddr = NS1.parse().unwrap();
        // "hooks" has 0 dots < ndots 1: search domains first, then as-is.
        let lookup = r.resolve("hooks", 0);
        let mut tried = Vec::new();
        for _ in 0..3 {
            let queries = sent(&mut r);
            assert_eq!(queries.len(), 2);
            tried.push(queries[0].2.clone());
            // NXDOMAIN on the A query alone moves on.
            r.handle_datagram(
                ns1,
                &answer(queries[0].1, &queries[0].2, QueryType::A, 3, &[], 0),
                1,
            );
        }
        assert_eq!(tried, vec!["hooks.corp.example", "hooks.example.net", "hooks"]);
        assert_eq!(results(&mut r), vec![(lookup, Err(DnsError::NameNotFound))]);

        // "api.svc" has 1 dot >= ndots 1: as-is first; the second candidate answers.
        let lookup = r.resolve("api.svc", 0);
        let queries = sent(&mut r);
        assert_eq!(queries[0].2, "api.svc");
        r.handle_datagram(ns1, &answer(queries[0].1, "api.svc", QueryType::A, 3, &[], 0), 1);
        let queries = sent(&mut r);
        assert_eq!(queries[0].2, "api.svc.corp.example");
        let (a, aaaa) = (&queries[0], &queries[1]);
        r.handle_datagram(ns1, &answer(a.1, &a.2, a.3, 0, &[ip("10.1.1.1")], 60), 2);
        r.handle_datagram(ns1, &answer(aaaa.1, &aaaa.2, aaaa.3, 0, &[], 60), 2);
        assert_eq!(results(&mut r), vec![(lookup, Ok(vec![ip("10.1.1.1")]))]);

        // A trailing dot is absolute: no search at all.
        let lookup = r.resolve("hooks.", 0);
        let queries = sent(&mut r);
        assert_eq!(queries[0].2, "hooks");
        r.handle_datagram(ns1, &answer(queries[0].1, "hooks", QueryType::A, 3, &[], 0), 1);
        assert_eq!(results(&mut r), vec![(lookup, Err(DnsError::NameNotFound))]);
    }

    #[test]
    fn search_stops_on_timeout_but_continues_after_servfail() {
        let mut r = resolver(&[NS1], &["a.example", "b.example"], "");
        let ns1: SocketAddr = NS1.parse().unwrap();
        let lookup = r.resolve("svc", 0);
        let queries = sent(&mut r);
        for q in &queries {
            for _ in 0..2 {
                r.handle_datagram(ns1, &answer(q.1, &q.2, q.3, 2, &[], 0), 1);
            }
        }
        let _ = sent(&mut r);
        let queries = sent(&mut r);
        assert!(queries.is_empty(), "servfail retries were drained above");
        // Candidate two started after the SERVFAILs; let it time out.
        let mut now = 1;
        while let Some(deadline) = r.poll_timeout() {
            now = deadline;
            r.handle_timeout(now);
            let _ = sent(&mut r);
        }
        assert_eq!(results(&mut r), vec![(lookup, Err(DnsError::Timeout))]);
        assert_eq!(now, 2_001);
    }

    #[test]
    fn identical_concurrent_lookups_share_queries_and_cancel_is_per_lookup() {
        let mut r = resolver(&[NS1], &[], "");
        let ns1: SocketAddr = NS1.parse().unwrap();
        let first = r.resolve("shared.example", 0);
        let second = r.resolve("SHARED.example", 0);
        let third = r.resolve("shared.example", 0);
        let queries = sent(&mut r);
        assert_eq!(queries.len(), 2);
        assert_eq!(r.in_flight(), 3);
        r.cancel(second);
        assert_eq!(r.in_flight(), 2);
        for q in &queries {
            let addresses = if q.3 == QueryType::A {
                vec![ip("192.0.2.5")]
            } else {
                vec![]
            };
            r.handle_datagram(ns1, &answer(q.1, &q.2, q.3, 0, &addresses, 0), 1);
        }
        let done = results(&mut r);
        assert_eq!(
            done,
            vec![
                (first, Ok(vec![ip("192.0.2.5")])),
                (third, Ok(vec![ip("192.0.2.5")]))
            ]
        );
        // TTL 0: not cached.
        let _ = r.resolve("shared.example", 2);
        assert_eq!(sent(&mut r).len(), 2);

        // Cancelling the only waiter drops the queries and their deadline.
        let mut r = resolver(&[NS1], &[], "");
        let only = r.resolve("dropped.example", 0);
        let queries = sent(&mut r);
        r.cancel(only);
        assert_eq!(r.poll_timeout(), None);
        r.handle_datagram(
            ns1,
            &answer(queries[0].1, &queries[0].2, QueryType::A, 0, &[ip("1.1.1.1")], 60),
            1,
        );
        assert!(results(&mut r).is_empty());
        // Cancelling an immediate result removes it too.
        let literal = r.resolve("192.0.2.1", 0);
        r.cancel(literal);
        assert!(results(&mut r).is_empty());
    }

    #[test]
    fn lookups_in_flight_are_bounded() {
        let mut r = resolver(&[NS1], &[], "");
        let ids: Vec<LookupId> = (0..LOOKUPS_IN_FLIGHT_MAX)
            .map(|i| r.resolve(&format!("host{i}.example"), 0))
            .collect();
        assert!(results(&mut r).is_empty());
        let over = r.resolve("one-too-many.example", 0);
        let shared_over = r.resolve("host0.example", 0);
        assert_eq!(
            results(&mut r),
            vec![
                (over, Err(DnsError::TooManyLookups)),
                (shared_over, Err(DnsError::TooManyLookups))
            ]
        );
        assert_eq!(sent(&mut r).len(), 2 * LOOKUPS_IN_FLIGHT_MAX);
        // Literals and hosts never wait on the network, so they are not refused.
        let literal = r.resolve("192.0.2.1", 0);
        assert_eq!(results(&mut r), vec![(literal, Ok(vec![ip("192.0.2.1")]))]);
        r.cancel(ids[0]);
        let room = r.resolve("room.example", 0);
        assert!(results(&mut r).is_empty());
        assert_eq!(r.in_flight(), LOOKUPS_IN_FLIGHT_MAX);
        let _ = room;
    }

    #[test]
    fn cache_is_bounded() {
        let mut r = resolver(&[NS1], &[], "");
        let ns1: SocketAddr = NS1.parse().unwrap();
        for i in 0..CACHE_NAMES_MAX + 10 {
            let name = format!("c{i}.example");
            let _ = r.resolve(&name, i as u64);
            for q in sent(&mut r) {
                let addresses = if q.3 == QueryType::A {
                    vec![ip("192.0.2.1")]
                } else {
                    vec![]
                };
                r.handle_datagram(ns1, &answer(q.1, &q.2, q.3, 0, &addresses, 100), i as u64);
            }
            assert!(r.cache.len() <= CACHE_NAMES_MAX);
        }
        assert_eq!(results(&mut r).len(), CACHE_NAMES_MAX + 10);
        // The earliest-expiring names were evicted, the latest kept.
        assert!(!r.cache.contains_key("c0.example"));
        assert!(r.cache.contains_key(&format!("c{}.example", CACHE_NAMES_MAX + 9)));
    }

    #[test]
    fn config_limits_are_enforced_by_new() {
        let config = ResolverConfig {
            nameservers: vec![],
            search: vec![],
            ndots: 200,
            timeout_ms: 0,
            attempts: 0,
        };
        let r = Resolver::new(config, Hosts::default());
        assert_eq!(r.config().nameservers, vec![default_nameserver()]);
        assert_eq!(
            (r.config().ndots, r.config().timeout_ms, r.config().attempts),
            (15, 1, 1)
        );
    }

    /// A seeded run of random lookups, answers, spoofs and clock jumps: every lookup ends
    /// exactly once, deadlines always move forward, nothing panics.
    #[test]
    fn simulation_every_lookup_finishes_once() {
        let (mut successes, mut failures) = (0, 0);
        for seed in 1..40u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut r = resolver(&[NS1, NS2], &["corp.example"], "192.0.2.200 pinned\n");
            let servers: [SocketAddr; 2] = [NS1.parse().unwrap(), NS2.parse().unwrap()];
            let mut now = 0u64;
            let mut open = std::collections::BTreeSet::new();
            let mut finished = std::collections::BTreeSet::new();
            let mut wire_log: Vec<(SocketAddr, u16, String, QueryType)> = Vec::new();
            for _ in 0..400 {
                match rng.next() % 6 {
                    0 => {
                        let names = ["a", "b.example", "pinned", "10.0.0.1", "c.example.", "a"];
                        let name = names[(rng.next() % names.len() as u64) as usize];
                        open.insert(r.resolve(name, now));
                    }
                    1 | 2 if !wire_log.is_empty() => {
                        let (to, id, name, qtype) =
                            wire_log.swap_remove((rng.next() as usize) % wire_log.len());
                        let rcode = [0, 0, 0, 2, 3, 5][(rng.next() % 6) as usize];
                        let addresses = match (rcode, qtype) {
                            (0, QueryType::A) => vec![ip("192.0.2.1")],
                            (0, QueryType::Aaaa) => vec![ip("2001:db8::1")],
                            _ => vec![],
                        };
                        let from = if rng.next().is_multiple_of(8) {
                            servers[1 - servers.iter().position(|s| *s == to).unwrap()]
                        } else {
                            to
                        };
                        let mut packet =
                            answer(id, &name, qtype, rcode, &addresses, (rng.next() % 400) as u32);
                        if rng.next().is_multiple_of(10) {
                            packet.truncate((rng.next() as usize) % packet.len());
                        }
                        r.handle_datagram(from, &packet, now);
                    }
                    3 => {
                        now += rng.next() % 1500;
                        r.handle_timeout(now);
                        if let Some(deadline) = r.poll_timeout() {
                            assert!(deadline > now);
                        }
                    }
                    4 if !open.is_empty() && rng.next().is_multiple_of(4) => {
                        let victim = *open.iter().next().unwrap();
                        r.cancel(victim);
                        open.remove(&victim);
                    }
                    _ => {}
                }
                while let Some((to, packet)) = r.poll_transmit() {
                    let (id, name, qtype) = query_info(&packet);
                    wire_log.push((to, id, name, qtype));
                }
                while let Some((id, result)) = r.poll_result() {
                    assert!(
                        open.remove(&id),
                        "seed {seed}: {id:?} reported twice or after cancel"
                    );
                    assert!(finished.insert(id));
                    match result {
                        Ok(_) => successes += 1,
                        Err(_) => failures += 1,
                    }
                }
            }
            // Drain: with no more answers, everything ends by timeout.
            for _ in 0..1000 {
                let Some(deadline) = r.poll_timeout() else { break };
                now = deadline;
                r.handle_timeout(now);
                while r.poll_transmit().is_some() {}
            }
            while let Some((id, result)) = r.poll_result() {
                assert!(open.remove(&id), "seed {seed}: {id:?} reported twice");
                assert!(result.is_err(), "seed {seed}: nothing answers during the drain");
                failures += 1;
            }
            assert!(open.is_empty(), "seed {seed}: unfinished lookups {open:?}");
            assert_eq!(r.in_flight(), 0);
        }
        // The run must exercise both endings, or it proves little.
        assert!(
            successes > 100 && failures > 20,
            "{successes} successes, {failures} failures"
        );
    }
}
