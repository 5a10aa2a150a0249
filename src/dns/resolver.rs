//! The lookup machine: one job per name being resolved (shared by every lookup that asks for
//! it), its search candidates, the A and AAAA queries in flight with their retries across the
//! nameservers and their timeouts, and the answer cache. Sans-IO: names, datagrams and `now_ms`
//! come in; datagrams to send, a deadline and results go out.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::conf::{ATTEMPTS_MAX, Hosts, NDOTS_MAX, ResolverConfig, default_nameserver};
use super::wire::{Answer, Rejection, encode_name, parse_response_wire, query_packet};
use super::{
    CACHE_NAMES_MAX, CACHE_TTL_SECS_MAX, DnsError, LOOKUPS_IN_FLIGHT_MAX, NAMESERVERS_MAX, QueryType,
    SEARCH_DOMAINS_MAX,
};
use crate::entropy::{Entropy, OsEntropy};

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

/// The stub resolver machine. See the `dns` module docs for the call order.
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

#[cfg(test)]
mod tests {
    use super::super::conf::parse_hosts;
    use super::super::testing::{AT_QNAME, ip, record, reply};
    use super::super::wire::{HEADER_BYTES, TYPE_A, TYPE_AAAA, build_query, read_name};
    use super::*;
    use crate::test_support::Rng;

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
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
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
                // No answer arrives during the drain, but a lookup whose A (or
                // AAAA) query was answered before it ends with those addresses
                // once the other query times out.
                match result {
                    Ok(addresses) => assert!(!addresses.is_empty(), "seed {seed}: an empty success"),
                    Err(_) => failures += 1,
                }
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
