//! The S3 client machine, sans-IO and clock-explicit: operations go in
//! (`submit`), signed requests come out as `Outgoing` for the reactor's
//! outbound client, answers come back as `Answer`s, and each operation ends
//! once as an `Outcome`. Attempts that fail for the server's reasons (a
//! `5xx`, throttling, a lost connection, an attempt past
//! `operation_attempt_timeout_secs`) are tried again after a jittered,
//! growing pause, up to `max_attempts` and within `operation_timeout_secs`.
//! Answers are read whole up to a bound, except a streamed `GET`'s
//! (`submit_streamed`): its body comes out piece by piece as it arrives,
//! for a blob download, and once its head is in it is not tried again.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::api::{self, Bucket, Operation, S3Error};
use crate::config::s3::S3Config;
use crate::entropy::Entropy;
use crate::http::client::ResponseHead;
use crate::http::exchange::{Answer, ExchangeId, Outgoing, Target};

/// Largest answer body kept (listings of 1000 keys are about 300 KiB),
/// unless an upload's tail may be larger (`multipart_part_size`).
const ANSWER_BYTES_MAX: usize = 4 << 20;
/// The first pause before another attempt; it doubles per attempt.
const RETRY_BASE_MS: u64 = 100;
const RETRY_CAP_MS: u64 = 10_000;
/// Attempts on the wire at once, streamed answers aside: a maintenance run
/// reading a large namespace submits thousands of reads, and they must
/// neither open as many connections nor crowd out the requests' own.
pub const SENDING_MAX: usize = 64;

/// One submitted operation.
pub type OpId = u64;

/// How an operation ended.
#[derive(Debug)]
pub enum Outcome {
    /// A `2xx` (or, for a conditional put, the caller reads the 412 as an
    /// error): the head and the body read.
    Done {
        head: ResponseHead,
        body: Vec<u8>,
    },
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// S3 answered with an error (after the retries it deserved).
    S3(S3Error),
    /// No answer: the network, or time ran out.
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::S3(error) => error.fmt(f),
            Failure::Unreachable(why) => write!(f, "S3 unreachable: {why}"),
        }
    }
}

struct Op {
    operation: Operation,
    /// Bytes sent after the head (a small object's or part's body), shared
    /// with the attempt in flight rather than copied into it.
    body: std::rc::Rc<Vec<u8>>,
    attempts: u32,
    deadline_ms: u64,
    /// The attempt in flight and when it is abandoned.
    exchange: Option<(ExchangeId, u64)>,
    /// Waiting before the next attempt, until then.
    retry_at: Option<u64>,
    head: Option<ResponseHead>,
    answer: Vec<u8>,
    last_failure: Option<Failure>,
    /// The body goes out as `Piece`s (`submit_streamed`).
    streamed: bool,
    /// A streamed answer's `2xx` head came out: no other attempt now.
    streaming: bool,
}

/// A piece of a streamed operation's answer: its `2xx` head, then its
/// body in pieces; its end, or failure, is the operation's `Outcome`.
#[derive(Debug)]
pub enum Piece {
    Head(ResponseHead),
    Body(Vec<u8>),
}

pub struct Client {
    bucket: Bucket,
    target: Target,
    max_attempts: u32,
    operation_timeout_ms: u64,
    attempt_timeout_ms: u64,
    ops: BTreeMap<OpId, Op>,
    exchanges: HashMap<ExchangeId, OpId>,
    outgoing: VecDeque<Outgoing>,
    done: VecDeque<(OpId, Outcome)>,
    pieces: VecDeque<(OpId, Piece)>,
    /// An answer body read whole is at most this long.
    answer_bytes_max: usize,
    /// Attempts waiting for one of the `SENDING_MAX` places, in order.
    queued: VecDeque<OpId>,
    /// The clocks last seen, to start (and sign) attempts from the queue.
    now_ms: u64,
    unix_secs: u64,
    next_id: u64,
    entropy: Box<dyn Entropy>,
}

impl Client {
    pub fn new(config: &S3Config, entropy: Box<dyn Entropy>) -> Client {
        let bucket = Bucket {
            scheme: config.endpoint.scheme,
            host: config.endpoint.host.clone(),
            port: config.endpoint.port,
            name: config.bucket.clone(),
            key_prefix: config.key_prefix.clone(),
            credentials: super::sigv4::Credentials {
                access_key_id: config.access_key_id.clone(),
                secret_key: config.secret_key.clone(),
                region: config.region.clone(),
            },
        };
        let target = Target {
            scheme: bucket.scheme,
            host: bucket.host.clone(),
            port: bucket.port,
            ca_bundle: None,
            client_identity: None,
        };
        Client {
            bucket,
            target,
            max_attempts: config.max_attempts,
            operation_timeout_ms: config.operation_timeout_secs * 1000,
            attempt_timeout_ms: config.operation_attempt_timeout_secs * 1000,
            ops: BTreeMap::new(),
            exchanges: HashMap::new(),
            outgoing: VecDeque::new(),
            done: VecDeque::new(),
            pieces: VecDeque::new(),
            answer_bytes_max: ANSWER_BYTES_MAX
                .max(usize::try_from(config.multipart_part_size).unwrap_or(usize::MAX)),
            queued: VecDeque::new(),
            now_ms: 0,
            unix_secs: 0,
            next_id: 1,
            entropy,
        }
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// Starts `operation` (with `body` after its head, for a put or a part:
    /// its length must be the operation's).
    pub fn submit(&mut self, operation: Operation, body: Vec<u8>, now_ms: u64, unix_secs: u64) -> OpId {
        self.start(operation, body, false, now_ms, unix_secs)
    }

    /// Starts a `GET` whose body comes out in pieces (`poll_piece`) as it
    /// arrives; its attempts are timed until the head only (the body then
    /// goes at the reader's pace, which `pause` and `resume` follow).
    pub fn submit_streamed(&mut self, operation: Operation, now_ms: u64, unix_secs: u64) -> OpId {
        self.start(operation, Vec::new(), true, now_ms, unix_secs)
    }

    pub fn poll_piece(&mut self) -> Option<(OpId, Piece)> {
        self.pieces.pop_front()
    }

    /// Stops reading a streamed answer for now.
    pub fn pause(&mut self, id: OpId) {
        if let Some((exchange, _)) = self.ops.get(&id).and_then(|op| op.exchange) {
            self.outgoing.push_back(Outgoing::Pause { exchange });
        }
    }

    pub fn resume(&mut self, id: OpId) {
        if let Some((exchange, _)) = self.ops.get(&id).and_then(|op| op.exchange) {
            self.outgoing.push_back(Outgoing::Resume { exchange });
        }
    }

    /// Nobody wants the operation's answer any more: it ends without an
    /// `Outcome`, its connection closed.
    pub fn cancel(&mut self, id: OpId) {
        if let Some(op) = self.ops.remove(&id)
            && let Some((exchange, _)) = op.exchange
        {
            self.exchanges.remove(&exchange);
            self.outgoing.push_back(Outgoing::Cancel { exchange });
            self.start_queued(self.now_ms);
        }
    }

    fn start(
        &mut self,
        operation: Operation,
        body: Vec<u8>,
        streamed: bool,
        now_ms: u64,
        unix_secs: u64,
    ) -> OpId {
        let id = self.next_id;
        self.next_id += 1;
        self.ops.insert(
            id,
            Op {
                operation,
                body: std::rc::Rc::new(body),
                attempts: 0,
                deadline_ms: now_ms + self.operation_timeout_ms,
                exchange: None,
                retry_at: None,
                head: None,
                answer: Vec::new(),
                last_failure: None,
                streamed,
                streaming: false,
            },
        );
        self.attempt(id, now_ms, unix_secs);
        id
    }

    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outgoing.pop_front()
    }

    pub fn poll_done(&mut self) -> Option<(OpId, Outcome)> {
        self.done.pop_front()
    }

    /// The next time something is due: an attempt's end or a retry.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.ops
            .values()
            .filter_map(|op| op.retry_at.or(op.exchange.map(|(_, deadline)| deadline)))
            .min()
    }

    pub fn has_work(&self) -> bool {
        !self.outgoing.is_empty() || !self.done.is_empty()
    }

    /// Operations in progress.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Attempts on the wire whose answer is not streaming.
    fn sending(&self) -> usize {
        self.exchanges
            .values()
            .filter(|id| self.ops.get(id).is_some_and(|op| !op.streaming))
            .count()
    }

    /// Starts queued attempts while places are free.
    fn start_queued(&mut self, now_ms: u64) {
        while self.sending() < SENDING_MAX {
            let Some(id) = self.queued.pop_front() else {
                return;
            };
            let unix_secs = self.unix_secs;
            self.attempt(id, now_ms, unix_secs);
        }
    }

    fn attempt(&mut self, id: OpId, now_ms: u64, unix_secs: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.unix_secs = self.unix_secs.max(unix_secs);
        if !self.ops.contains_key(&id) {
            return;
        }
        if self.sending() >= SENDING_MAX {
            self.queued.push_back(id);
            return;
        }
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        op.attempts += 1;
        op.retry_at = None;
        op.head = None;
        op.answer.clear();
        let prepared = self.bucket.prepare(&op.operation, unix_secs);
        let exchange = self.next_id;
        self.next_id += 1;
        let attempt_deadline = (now_ms + self.attempt_timeout_ms).min(op.deadline_ms);
        op.exchange = Some((exchange, attempt_deadline));
        self.exchanges.insert(exchange, id);
        self.outgoing.push_back(Outgoing::Send {
            exchange,
            target: self.target.clone(),
            request: prepared.bytes,
            body: op.body.clone(),
            head_request: prepared.head_request,
        });
    }

    /// A piece of an attempt's answer.
    pub fn handle_answer(&mut self, exchange: ExchangeId, answer: Answer, now_ms: u64) {
        self.take_answer(exchange, answer, now_ms);
        // An attempt that ended (or went on streaming) frees its place.
        self.start_queued(now_ms);
    }

    fn take_answer(&mut self, exchange: ExchangeId, answer: Answer, now_ms: u64) {
        let Some(&id) = self.exchanges.get(&exchange) else {
            return;
        };
        let Some(op) = self.ops.get_mut(&id) else {
            self.exchanges.remove(&exchange);
            return;
        };
        match answer {
            Answer::Head(head) if op.streamed && (200..300).contains(&head.status) => {
                // The body is the reader's now: no deadline, no retry.
                op.streaming = true;
                op.exchange = Some((exchange, u64::MAX));
                op.deadline_ms = u64::MAX;
                op.head = Some(head.clone());
                self.pieces.push_back((id, Piece::Head(head)));
            }
            Answer::Head(head) => op.head = Some(head),
            Answer::Body(data) if op.streaming => self.pieces.push_back((id, Piece::Body(data))),
            Answer::Failed(reason) if op.streaming => {
                self.exchanges.remove(&exchange);
                op.exchange = None;
                self.finish(id, Outcome::Failed(Failure::Unreachable(reason)));
            }
            Answer::Body(data) => {
                if op.answer.len() + data.len() > self.answer_bytes_max {
                    self.exchanges.remove(&exchange);
                    self.outgoing.push_back(Outgoing::Cancel { exchange });
                    let failure = Failure::Unreachable(format!(
                        "an answer larger than {} bytes",
                        self.answer_bytes_max
                    ));
                    self.finish(id, Outcome::Failed(failure));
                    return;
                }
                op.answer.extend_from_slice(&data);
            }
            Answer::End => {
                self.exchanges.remove(&exchange);
                op.exchange = None;
                let head = op.head.take().unwrap_or(ResponseHead {
                    status: 0,
                    fields: Vec::new(),
                    content_length: None,
                });
                let body = std::mem::take(&mut op.answer);
                let result = if let Some(root) = api::result_element(&op.operation)
                    && head.status == 200
                {
                    api::parse_result(200, &body, root).map(|()| (head, body))
                } else if (200..300).contains(&head.status) {
                    Ok((head, body))
                } else {
                    Err(api::error_of(head.status, &body))
                };
                match result {
                    Ok((head, body)) => self.finish(id, Outcome::Done { head, body }),
                    Err(error) if error.is_retryable() => self.retry(id, Failure::S3(error), now_ms),
                    Err(error) => self.finish(id, Outcome::Failed(Failure::S3(error))),
                }
            }
            Answer::Failed(reason) => {
                self.exchanges.remove(&exchange);
                op.exchange = None;
                self.retry(id, Failure::Unreachable(reason), now_ms);
            }
        }
    }

    /// Attempts past their time are abandoned (and tried again); retries
    /// whose pause is over go out.
    pub fn handle_timeout(&mut self, now_ms: u64, unix_secs: u64) {
        let due: Vec<(OpId, Option<ExchangeId>)> = self
            .ops
            .iter()
            .filter_map(|(id, op)| match (op.retry_at, op.exchange) {
                (Some(at), _) if at <= now_ms => Some((*id, None)),
                (None, Some((exchange, deadline))) if deadline <= now_ms => Some((*id, Some(exchange))),
                _ => None,
            })
            .collect();
        for (id, expired) in due {
            match expired {
                Some(exchange) => {
                    self.exchanges.remove(&exchange);
                    self.outgoing.push_back(Outgoing::Cancel { exchange });
                    if let Some(op) = self.ops.get_mut(&id) {
                        op.exchange = None;
                    }
                    self.retry(id, Failure::Unreachable("the attempt timed out".into()), now_ms);
                }
                None => self.attempt(id, now_ms, unix_secs),
            }
        }
        self.start_queued(now_ms);
    }

    /// Another attempt after a pause, or the end when none is left.
    fn retry(&mut self, id: OpId, failure: Failure, now_ms: u64) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let pause = RETRY_BASE_MS
            .saturating_mul(1 << op.attempts.saturating_sub(1).min(16))
            .min(RETRY_CAP_MS);
        let pause = crate::event_webhook::backoff::jittered_delay_ms(pause, self.entropy.as_mut());
        let at = now_ms + pause;
        if op.attempts >= self.max_attempts || at >= op.deadline_ms {
            let attempts = op.attempts;
            let failure = match failure {
                Failure::Unreachable(why) => {
                    Failure::Unreachable(format!("{why} (after {attempts} attempts)"))
                }
                other => other,
            };
            self.finish(id, Outcome::Failed(failure));
            return;
        }
        op.last_failure = Some(failure);
        op.retry_at = Some(at);
    }

    fn finish(&mut self, id: OpId, outcome: Outcome) {
        if let Some(op) = self.ops.remove(&id)
            && let Some((exchange, _)) = op.exchange
        {
            self.exchanges.remove(&exchange);
        }
        self.done.push_back((id, outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;

    fn config() -> S3Config {
        let text = "[blob_store.s3]\nendpoint = \"http://10.0.0.5:3900\"\nbucket = \"reg\"\nregion = \"garage\"\n\
            access_key_id = \"AK\"\nsecret_key = \"SK\"\nmax_attempts = 3\n\
            operation_timeout_secs = 60\noperation_attempt_timeout_secs = 10\n";
        crate::config::load_sources(&[("t.toml".into(), text.into())])
            .unwrap()
            .config
            .storage
            .s3
            .unwrap()
    }

    fn client() -> Client {
        Client::new(&config(), Box::new(SeededEntropy::new(7)))
    }

    fn sent(client: &mut Client) -> (ExchangeId, String) {
        loop {
            match client.poll_outgoing().expect("a request") {
                Outgoing::Send {
                    exchange,
                    mut request,
                    body,
                    ..
                } => {
                    request.extend_from_slice(&body);
                    return (exchange, String::from_utf8_lossy(&request).into_owned());
                }
                Outgoing::Cancel { .. } | Outgoing::Pause { .. } | Outgoing::Resume { .. } => continue,
            }
        }
    }

    fn answer(client: &mut Client, exchange: ExchangeId, status: u16, body: &[u8], now: u64) {
        let head = ResponseHead {
            status,
            fields: Vec::new(),
            content_length: Some(body.len() as u64),
        };
        client.handle_answer(exchange, Answer::Head(head), now);
        if !body.is_empty() {
            client.handle_answer(exchange, Answer::Body(body.to_vec()), now);
        }
        client.handle_answer(exchange, Answer::End, now);
    }

    /// Thousands of reads submitted at once go out `SENDING_MAX` at a time,
    /// a streaming answer not counting, and each ends.
    #[test]
    fn attempts_on_the_wire_are_bounded_and_the_rest_wait_their_turn() {
        let mut client = client();
        let stream = client.submit_streamed(
            Operation::Get {
                key: "big".into(),
                range: None,
            },
            0,
            1_700_000_000,
        );
        let (streamed, _) = sent(&mut client);
        client.handle_answer(
            streamed,
            Answer::Head(ResponseHead {
                status: 200,
                fields: Vec::new(),
                content_length: Some(10),
            }),
            0,
        );
        let ops: Vec<OpId> = (0..1000)
            .map(|n| {
                client.submit(
                    Operation::Head { key: format!("k{n}") },
                    Vec::new(),
                    0,
                    1_700_000_000,
                )
            })
            .collect();
        let mut done = 0;
        let mut most = 0;
        while done < ops.len() {
            let mut wire = Vec::new();
            while let Some(Outgoing::Send { exchange, .. }) = client.poll_outgoing() {
                wire.push(exchange);
            }
            most = most.max(wire.len());
            assert!(!wire.is_empty(), "queued reads never went out");
            for exchange in wire {
                answer(&mut client, exchange, 200, b"", 1);
            }
            while let Some((id, outcome)) = client.poll_done() {
                assert!(matches!(outcome, Outcome::Done { .. }), "{id}: {outcome:?}");
                done += 1;
            }
        }
        assert_eq!(most, SENDING_MAX, "the streaming answer takes no place");
        assert_eq!(client.in_flight(), 1, "the stream goes on");
        client.cancel(stream);
    }

    #[test]
    fn a_put_carries_its_body_and_ends_done() {
        let mut client = client();
        let op = client.submit(
            Operation::Put {
                key: "k".into(),
                length: 3,
                sha256: Some(super::super::sigv4::payload_sha256(b"abc")),
                if_absent: true,
            },
            b"abc".to_vec(),
            0,
            1_700_000_000,
        );
        let (exchange, request) = sent(&mut client);
        assert!(
            request.starts_with("PUT /reg/k HTTP/1.1\r\nHost: 10.0.0.5:3900\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\nabc"), "{request}");
        answer(&mut client, exchange, 200, b"", 5);
        let (done, outcome) = client.poll_done().unwrap();
        assert_eq!(done, op);
        assert!(matches!(outcome, Outcome::Done { ref head, .. } if head.status == 200));
        assert_eq!(client.in_flight(), 0);
    }

    #[test]
    fn throttling_and_lost_connections_are_retried_after_growing_pauses() {
        let mut client = client();
        client.submit(Operation::Head { key: "k".into() }, Vec::new(), 0, 0);
        let (exchange, _) = sent(&mut client);
        answer(
            &mut client,
            exchange,
            503,
            b"<Error><Code>SlowDown</Code></Error>",
            10,
        );
        assert!(client.poll_outgoing().is_none(), "not before the pause");
        let retry_at = client.poll_timeout().unwrap();
        assert!(
            (60..=160).contains(&retry_at),
            "a jittered 100 ms pause: {retry_at}"
        );
        client.handle_timeout(retry_at - 1, 0);
        assert!(client.poll_outgoing().is_none());
        client.handle_timeout(retry_at, 0);
        let (exchange, _) = sent(&mut client);
        client.handle_answer(exchange, Answer::Failed("connection reset".into()), retry_at + 5);
        let second = client.poll_timeout().unwrap();
        assert!(second - (retry_at + 5) >= 100, "the pause grows");
        client.handle_timeout(second, 0);
        let (exchange, _) = sent(&mut client);
        client.handle_answer(exchange, Answer::Failed("connection reset".into()), second + 1);
        match client.poll_done() {
            Some((_, Outcome::Failed(Failure::Unreachable(why)))) => {
                assert!(
                    why.contains("connection reset") && why.contains("3 attempts"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_attempt_past_its_time_is_abandoned_and_tried_again() {
        let mut client = client();
        client.submit(Operation::Delete { key: "k".into() }, Vec::new(), 0, 0);
        let (first, _) = sent(&mut client);
        assert_eq!(client.poll_timeout(), Some(10_000));
        client.handle_timeout(10_000, 0);
        assert!(matches!(client.poll_outgoing(), Some(Outgoing::Cancel { exchange }) if exchange == first));
        let retry_at = client.poll_timeout().unwrap();
        client.handle_timeout(retry_at, 0);
        let (second, _) = sent(&mut client);
        assert_ne!(first, second);
        // A late answer to the abandoned attempt is nobody's.
        answer(&mut client, first, 204, b"", retry_at + 1);
        assert!(client.poll_done().is_none());
        answer(&mut client, second, 204, b"", retry_at + 2);
        assert!(matches!(client.poll_done(), Some((_, Outcome::Done { .. }))));
    }

    #[test]
    fn client_errors_are_not_retried_and_a_complete_that_reports_an_error_fails() {
        let mut client = client();
        client.submit(
            Operation::Get {
                key: "k".into(),
                range: None,
            },
            Vec::new(),
            0,
            0,
        );
        let (exchange, _) = sent(&mut client);
        answer(
            &mut client,
            exchange,
            404,
            b"<Error><Code>NoSuchKey</Code></Error>",
            1,
        );
        match client.poll_done() {
            Some((_, Outcome::Failed(Failure::S3(error)))) => assert!(error.is_not_found()),
            other => panic!("{other:?}"),
        }
        client.submit(
            Operation::CompleteMultipart {
                key: "k".into(),
                upload_id: "u".into(),
                parts: vec![(1, "e".into())],
                if_absent: false,
            },
            Vec::new(),
            0,
            0,
        );
        let (exchange, _) = sent(&mut client);
        answer(
            &mut client,
            exchange,
            200,
            b"<Error><Code>InvalidPart</Code></Error>",
            1,
        );
        match client.poll_done() {
            Some((_, Outcome::Failed(Failure::S3(error)))) => assert_eq!(error.code, "InvalidPart"),
            other => panic!("{other:?}"),
        }
    }
}
