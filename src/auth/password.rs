//! Salted, deliberately slow password hashes: PBKDF2-HMAC-SHA256 (RFC 8018
//! section 5.2) with a 32-byte key, stored as PHC strings or read from
//! passlib's format. Pure apart from `random_salt` and the reader handed to
//! `hash_password_from`; checking runs in slices (`Verification`) so that one
//! login does not stall the single-threaded reactor for its whole cost.

use std::fmt;
use std::io::Read;

use sha2::block_api::compress256;
use sha2::{Digest as _, Sha256};

use crate::base64::{self, Alphabet, Padding};

/// OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Below this a stolen hash falls to guessing too cheaply to be worth storing.
pub const MIN_ITERATIONS: u32 = 10_000;
/// Bounds the CPU one login may cost: a hash string is configuration, but a
/// typo must not turn every login into minutes of work.
pub const MAX_ITERATIONS: u32 = 10_000_000;

const SALT_MIN: usize = 8;
const SALT_MAX: usize = 64;
const PASSWORD_MAX: usize = 4096;

const PREFIX: &str = "$pbkdf2-sha256$";
const NOT_PBKDF2: &str = "not a pbkdf2-sha256 hash (expected $pbkdf2-sha256$i=...)";

/// SHA-256's block size: the HMAC key block and the unit of one compression.
const BLOCK: usize = 64;
/// SHA-256's initial state (FIPS 180-4 section 5.3.3); the hot loop drives
/// the compression function directly, so it starts from these words itself.
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A PBKDF2-HMAC-SHA256 hash with its salt and iteration count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl PasswordHash {
    /// Parses `$pbkdf2-sha256$i=600000,l=32$<salt>$<hash>` (PHC string
    /// format, standard base64 without padding; `l=32` optional) and
    /// passlib's `$pbkdf2-sha256$600000$<salt>$<hash>` (passlib's "ab64":
    /// base64 with '.' for '+', no padding). An error is a sentence saying
    /// what is wrong, fit to show next to the configuration key.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let rest = text.strip_prefix(PREFIX).ok_or_else(|| NOT_PBKDF2.to_string())?;
        let fields: Vec<&str> = rest.split('$').collect();
        let [parameters, salt, hash] = fields[..] else {
            return Err(format!(
                "a pbkdf2-sha256 hash has 3 fields after {PREFIX} (parameters, salt, hash), found {}",
                fields.len()
            ));
        };

        let (iterations, alphabet) = if parameters.starts_with(|c: char| c.is_ascii_digit()) {
            (parse_iterations(parameters)?, Alphabet::Ab64)
        } else {
            (parse_phc_parameters(parameters)?, Alphabet::Standard)
        };
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(iterations_out_of_range());
        }

        let salt = base64::decode(salt, alphabet, Padding::Forbidden)
            .ok_or_else(|| format!("the salt is not valid base64 ({})", alphabet_name(alphabet)))?;
        if !(SALT_MIN..=SALT_MAX).contains(&salt.len()) {
            return Err(format!(
                "the salt must be {SALT_MIN} to {SALT_MAX} bytes, found {}",
                salt.len()
            ));
        }
        let hash = base64::decode(hash, alphabet, Padding::Forbidden)
            .ok_or_else(|| format!("the hash is not valid base64 ({})", alphabet_name(alphabet)))?;
        let hash: [u8; 32] = hash
            .as_slice()
            .try_into()
            .map_err(|_| format!("the hash must be 32 bytes, found {}", hash.len()))?;
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Hashes in one go, blocking for the whole cost: for the CLI and tests.
    /// Any count from 1 is accepted so that the published test vectors can be
    /// checked, though `parse` refuses counts below `MIN_ITERATIONS`.
    pub fn generate(password: &[u8], salt: &[u8], iterations: u32) -> PasswordHash {
        assert!(iterations >= 1, "PBKDF2 needs at least one iteration");
        let mut run = Pbkdf2::start(password, salt, iterations);
        run.step(iterations);
        PasswordHash {
            iterations,
            salt: salt.to_vec(),
            hash: run.block,
        }
    }

    /// A hash no password matches in practice (its digest is all zeros), at
    /// the cost of `iterations`: checked for unknown user names so that the
    /// answer's timing does not tell which names exist.
    pub fn decoy(iterations: u32) -> PasswordHash {
        PasswordHash {
            iterations,
            salt: b"decoy-salt".to_vec(),
            hash: [0; 32],
        }
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// A check of `password` against this hash, to run in slices.
    pub fn verify(&self, password: &[u8]) -> Verification {
        Verification {
            run: Pbkdf2::start(password, &self.salt, self.iterations),
            expected: self.hash,
            outcome: None,
        }
    }
}

impl fmt::Display for PasswordHash {
    /// The PHC form, whatever form was parsed: `$pbkdf2-sha256$i=N,l=32$salt$hash`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}i={},l=32${}${}",
            self.iterations,
            base64::encode(&self.salt, Alphabet::Standard),
            base64::encode(&self.hash, Alphabet::Standard)
        )
    }
}

fn iterations_out_of_range() -> String {
    format!("iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}")
}

fn alphabet_name(alphabet: Alphabet) -> &'static str {
    match alphabet {
        Alphabet::Standard => "standard alphabet, no padding",
        Alphabet::Ab64 => "passlib's ab64 alphabet, no padding",
    }
}

/// A decimal count as PHC writes numbers: digits only, no leading zero.
fn parse_iterations(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("the iteration count {text:?} is not a decimal number"));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(format!("the iteration count {text:?} has a leading zero"));
    }
    // All digits, so the only failure left is overflow: far above the maximum.
    text.parse().map_err(|_| iterations_out_of_range())
}

/// `i=N` with an optional `l=32`, in either order, each at most once.
fn parse_phc_parameters(text: &str) -> Result<u32, String> {
    let mut iterations = None;
    let mut length_seen = false;
    for parameter in text.split(',') {
        let Some((name, value)) = parameter.split_once('=') else {
            return Err(format!(
                "the parameter {parameter:?} is not name=value (expected i=...)"
            ));
        };
        match name {
            "i" if iterations.is_none() => iterations = Some(parse_iterations(value)?),
            "l" if !length_seen => {
                if value != "32" {
                    return Err(format!(
                        "only 32-byte hashes are supported (l=32), found l={value}"
                    ));
                }
                length_seen = true;
            }
            "i" | "l" => return Err(format!("the parameter {name} appears twice")),
            _ => {
                return Err(format!(
                    "unknown parameter {name:?} (expected i= and optionally l=32)"
                ));
            }
        }
    }
    iterations.ok_or_else(|| "the iteration count i= is missing".to_string())
}

/// A password check that runs a bounded number of iterations per call, so the
/// single-threaded reactor can interleave it with I/O instead of stalling for
/// the whole cost.
pub struct Verification {
    run: Pbkdf2,
    expected: [u8; 32],
    outcome: Option<bool>,
}

impl Verification {
    /// Runs at most `max_iterations` more iterations; Some(matches) once
    /// finished, and the same answer on every later call. The comparison
    /// takes the same time wherever the bytes differ.
    pub fn step(&mut self, max_iterations: u32) -> Option<bool> {
        if self.outcome.is_none() {
            self.run.step(max_iterations);
            if self.run.remaining == 0 {
                self.outcome = Some(constant_time_eq(&self.run.block, &self.expected));
            }
        }
        self.outcome
    }

    /// Iterations still to run.
    pub fn remaining(&self) -> u32 {
        self.run.remaining
    }
}

impl fmt::Debug for Verification {
    /// Leaves out the HMAC states: each is as good as the password for guessing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verification")
            .field("remaining", &self.run.remaining)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

/// Whether `a == b`, looking at every byte whatever the first difference, so
/// that the time taken does not tell an attacker how much of a guess matched.
pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(difference) == 0
}

/// The one block PBKDF2 needs for a 32-byte key, T_1 = U_1 ^ U_2 ^ ... ^ U_c
/// (RFC 8018 section 5.2), computed a slice at a time.
///
/// HMAC hashes a 64-byte key block before each message, the same block on
/// every iteration; so the states after the inner and outer key blocks are
/// computed once and copied, and every U after the first costs two
/// compressions: the previous U into the inner state, the inner digest into
/// the outer.
struct Pbkdf2 {
    inner: [u32; 8],
    outer: [u32; 8],
    /// The U counted last; before the first iteration, U_1 waiting to be counted.
    last: [u8; 32],
    /// Whether `last` has been counted yet.
    started: bool,
    /// The xor of every U so far: T_1 once `remaining` reaches 0.
    block: [u8; 32],
    remaining: u32,
}

impl Pbkdf2 {
    fn start(password: &[u8], salt: &[u8], iterations: u32) -> Pbkdf2 {
        // RFC 2104 section 3: keys longer than a block are hashed first,
        // shorter ones zero-padded.
        let mut key = [0u8; BLOCK];
        if password.len() > BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(password));
        } else {
            key[..password.len()].copy_from_slice(password);
        }
        let inner_pad = key.map(|byte| byte ^ 0x36);
        let outer_pad = key.map(|byte| byte ^ 0x5c);
        let mut inner = SHA256_IV;
        compress256(&mut inner, &[inner_pad]);
        let mut outer = SHA256_IV;
        compress256(&mut outer, &[outer_pad]);

        // U_1 = PRF(P, S || INT(1)). The salt's length varies, so its inner
        // hash goes through the buffered hasher; it costs a few compressions,
        // whatever the iteration count.
        let mut first = Sha256::new();
        first.update(inner_pad);
        first.update(salt);
        first.update(1u32.to_be_bytes());
        let first = finish(&outer, &first.finalize().into());
        Pbkdf2 {
            inner,
            outer,
            last: first,
            started: false,
            block: [0; 32],
            remaining: iterations,
        }
    }

    fn step(&mut self, max_iterations: u32) {
        let count = max_iterations.min(self.remaining);
        for _ in 0..count {
            if self.started {
                self.last = finish(&self.outer, &finish(&self.inner, &self.last));
            }
            self.started = true;
            for (total, byte) in self.block.iter_mut().zip(self.last) {
                *total ^= byte;
            }
        }
        self.remaining -= count;
    }
}

/// SHA-256 of a 64-byte prefix already absorbed into `state`, followed by the
/// 32-byte `message`: one compression, since the message and its padding
/// fill exactly one block.
fn finish(state: &[u32; 8], message: &[u8; 32]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    block[..32].copy_from_slice(message);
    block[32] = 0x80;
    // FIPS 180-4 section 5.1.1: the total length in bits, big-endian, at the end.
    block[56..].copy_from_slice(&(((BLOCK + 32) * 8) as u64).to_be_bytes());
    let mut state = *state;
    compress256(&mut state, &[block]);
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// A fresh random 16-byte salt from the kernel (getrandom(2)).
///
/// # Panics
/// If the kernel has no getrandom(2) (Linux before 3.17): without a random
/// source there is no safe salt to fall back on.
pub fn random_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    crate::storage::random_bytes(&mut salt);
    salt
}

/// What `angos hash-password` does: reads a password from the first line of
/// `input` (without its "\n" or "\r\n") and returns its hash string, with
/// `DEFAULT_ITERATIONS` and a random salt. Refuses passwords that could never
/// log in: empty, longer than 4096 bytes, not UTF-8, or holding control
/// characters, which HTTP Basic credentials cannot carry.
pub fn hash_password_from(input: &mut impl Read) -> Result<String, String> {
    let password = read_password(input)?;
    Ok(PasswordHash::generate(&password, &random_salt(), DEFAULT_ITERATIONS).to_string())
}

/// The password `hash_password_from` hashes, checked.
fn read_password(input: &mut impl Read) -> Result<Vec<u8>, String> {
    let too_long = || format!("the password is longer than {PASSWORD_MAX} bytes");
    let mut line = Vec::new();
    let mut ended = false;
    // Byte by byte, so nothing past the first line is consumed and a
    // terminal needs only Enter, not end-of-file; it is a few KiB at most.
    #[expect(
        clippy::unbuffered_bytes,
        reason = "a buffer would consume input past the line"
    )]
    let bytes = input.bytes();
    for byte in bytes {
        let byte = byte.map_err(|error| format!("cannot read the password: {error}"))?;
        if byte == b'\n' {
            ended = true;
            break;
        }
        // One byte over the limit is still read: it may be a '\r' the line
        // ending removes.
        if line.len() > PASSWORD_MAX {
            return Err(too_long());
        }
        line.push(byte);
    }
    if ended && line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.is_empty() {
        return Err("the password is empty".to_string());
    }
    if line.len() > PASSWORD_MAX {
        return Err(too_long());
    }
    if std::str::from_utf8(&line).is_err() {
        return Err("the password is not UTF-8, which HTTP Basic credentials need".to_string());
    }
    if line.iter().any(|&byte| byte < 0x20 || byte == 0x7f) {
        return Err("the password contains control characters, which HTTP Basic cannot carry".to_string());
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::digest::to_lower_hex as hex;

    /// A cheap hash for tests that are not about the cost.
    fn cheap(password: &[u8]) -> PasswordHash {
        PasswordHash::generate(password, b"saltsalt", MIN_ITERATIONS)
    }

    #[test]
    fn matches_the_rfc_7914_vector() {
        // RFC 7914 section 11, PBKDF2-HMAC-SHA256 with dkLen 64: our 32-byte
        // key is the first half.
        let hash = PasswordHash::generate(b"passwd", b"salt", 1);
        assert_eq!(
            hex(&hash.hash),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn matches_the_published_password_salt_vectors() {
        let vectors = [
            (
                1,
                "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b",
            ),
            (
                2,
                "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43",
            ),
            (
                4096,
                "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a",
            ),
        ];
        for (iterations, expected) in vectors {
            let hash = PasswordHash::generate(b"password", b"salt", iterations);
            assert_eq!(hex(&hash.hash), expected, "c={iterations}");
        }
    }

    #[test]
    fn keys_longer_than_a_block_are_hashed_first() {
        // HMAC treats a key over 64 bytes as its SHA-256, so both derive the same.
        let long = [b'k'; 65];
        let hashed: [u8; 32] = Sha256::digest(long).into();
        assert_eq!(
            PasswordHash::generate(&long, b"salt", 3),
            PasswordHash::generate(&hashed, b"salt", 3)
        );
        // A key of exactly one block is used as it is.
        assert_ne!(
            PasswordHash::generate(&[b'k'; 64], b"salt", 3),
            PasswordHash::generate(&Sha256::digest([b'k'; 64]), b"salt", 3)
        );
    }

    #[test]
    fn display_writes_phc_and_parse_reads_it_back() {
        let hash = PasswordHash::generate(b"password", b"0123456789abcdef", MIN_ITERATIONS);
        let text = hash.to_string();
        assert_eq!(
            text,
            format!(
                "$pbkdf2-sha256$i=10000,l=32$MDEyMzQ1Njc4OWFiY2RlZg${}",
                base64::encode(&hash.hash, Alphabet::Standard)
            )
        );
        assert_eq!(PasswordHash::parse(&text), Ok(hash.clone()));
        // l=32 may be left out or come first.
        let short = text.replace(",l=32", "");
        assert_eq!(PasswordHash::parse(&short), Ok(hash.clone()));
        let swapped = text.replace("i=10000,l=32", "l=32,i=10000");
        assert_eq!(PasswordHash::parse(&swapped), Ok(hash.clone()));
        assert_eq!(hash.iterations(), MIN_ITERATIONS);
    }

    #[test]
    fn parses_the_passlib_form() {
        // passlib writes the count bare and base64 with '.' for '+'. The salt
        // is chosen to encode as sixteen 62s: "++++..." in PHC, "...." in passlib.
        let salt = [0xfb, 0xef, 0xbe].repeat(4);
        let hash = PasswordHash::generate(b"hunter2", &salt, 29_000);
        let passlib = format!(
            "$pbkdf2-sha256$29000${}${}",
            base64::encode(&salt, Alphabet::Ab64),
            base64::encode(&hash.hash, Alphabet::Ab64)
        );
        assert!(passlib.contains("$29000$................$"));
        let parsed = PasswordHash::parse(&passlib).unwrap();
        assert_eq!(parsed, hash);
        assert_eq!(parsed.iterations(), 29_000);
        assert_eq!(parsed.verify(b"hunter2").step(u32::MAX), Some(true));
        // Its Display is the PHC form, which parses to the same hash.
        assert!(parsed.to_string().starts_with("$pbkdf2-sha256$i=29000,l=32$++++"));
        assert_eq!(PasswordHash::parse(&parsed.to_string()), Ok(hash));
    }

    #[test]
    fn agrees_with_an_independent_implementation() {
        // Python's hashlib.pbkdf2_hmac("sha256", b"password", salt, 29000, 32)
        // with salt fbefbe00112233445566778899aabbcc, written out in passlib's
        // form (ab64: '.' for '+') and in the PHC form.
        let passlib =
            "$pbkdf2-sha256$29000$....ABEiM0RVZneImaq7zA$K5a/NbBVmt/Nz0xWVtxnCf1FNNawMdxa3mpk4vw/PMA";
        let phc =
            "$pbkdf2-sha256$i=29000,l=32$++++ABEiM0RVZneImaq7zA$K5a/NbBVmt/Nz0xWVtxnCf1FNNawMdxa3mpk4vw/PMA";
        let parsed = PasswordHash::parse(passlib).unwrap();
        assert_eq!(PasswordHash::parse(phc), Ok(parsed.clone()));
        assert_eq!(parsed.to_string(), phc);
        assert_eq!(parsed.verify(b"password").step(u32::MAX), Some(true));
        assert_eq!(parsed.verify(b"Password").step(u32::MAX), Some(false));
        // And a key longer than a block, which HMAC hashes first.
        assert_eq!(
            hex(&PasswordHash::generate(&[b'x'; 100], b"saltsalt", 10_000).hash),
            "511a522e167f38185655954a904f2e10d1d94d9a4aa76e6e1b08e13e7e42c8ba"
        );
    }

    #[test]
    fn stepwise_verification_equals_generate_for_any_slice_size() {
        let iterations = MIN_ITERATIONS + 7;
        let hash = PasswordHash::generate(b"correct horse", b"battery staple", iterations);
        for slice in [
            1,
            2,
            3,
            999,
            1000,
            4096,
            iterations - 1,
            iterations,
            iterations + 1,
            u32::MAX,
        ] {
            let mut check = hash.verify(b"correct horse");
            assert_eq!(check.remaining(), iterations);
            let mut calls = 0;
            let outcome = loop {
                calls += 1;
                let before = check.remaining();
                match check.step(slice) {
                    Some(outcome) => break outcome,
                    None => assert_eq!(check.remaining(), before - slice, "slice {slice}"),
                }
            };
            assert!(outcome, "slice {slice}");
            assert_eq!(check.remaining(), 0);
            assert_eq!(calls, iterations.div_ceil(slice), "slice {slice}");
            // A finished check keeps its answer.
            assert_eq!(check.step(1), Some(true));
            assert_eq!(check.step(0), Some(true));
        }
    }

    #[test]
    fn a_step_of_zero_makes_no_progress() {
        let hash = PasswordHash::generate(b"pw", b"saltsalt", 3);
        let mut check = hash.verify(b"pw");
        assert_eq!(check.step(0), None);
        assert_eq!(check.remaining(), 3);
        assert_eq!(check.step(2), None);
        assert_eq!(check.remaining(), 1);
        assert_eq!(check.step(0), None);
        assert_eq!(check.step(1), Some(true));
    }

    #[test]
    fn a_wrong_password_fails() {
        let hash = cheap(b"secret");
        for wrong in [
            &b""[..],
            b"Secret",
            b"secret ",
            b"secre",
            b"secret\n",
            &[b's'; 100],
        ] {
            assert_eq!(hash.verify(wrong).step(u32::MAX), Some(false), "{wrong:?}");
        }
        assert_eq!(hash.verify(b"secret").step(u32::MAX), Some(true));
        // In slices too: the answer comes only at the end, and it is no.
        let mut check = hash.verify(b"secreT");
        for _ in 0..MIN_ITERATIONS / 1000 - 1 {
            assert_eq!(check.step(1000), None);
        }
        assert_eq!(check.step(1000), Some(false));
    }

    #[test]
    fn the_same_password_with_another_salt_or_count_differs() {
        let hash = cheap(b"secret");
        assert_ne!(
            hash,
            PasswordHash::generate(b"secret", b"saltsalT", MIN_ITERATIONS)
        );
        assert_ne!(
            hash.hash,
            PasswordHash::generate(b"secret", b"saltsalt", MIN_ITERATIONS + 1).hash
        );
    }

    #[test]
    fn rejects_malformed_strings_with_a_reason() {
        let good = cheap(b"pw").to_string();
        let hash = good.rsplit('$').next().unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "not a pbkdf2-sha256 hash"),
            ("password".into(), "not a pbkdf2-sha256 hash"),
            (
                good.replace("pbkdf2-sha256", "pbkdf2-sha512"),
                "not a pbkdf2-sha256 hash",
            ),
            (good.replace("$pbkdf2", "pbkdf2"), "not a pbkdf2-sha256 hash"),
            ("$2b$12$abcdefghijklmnopqrstuv".into(), "not a pbkdf2-sha256 hash"),
            (format!("{good}$"), "3 fields"),
            ("$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHQ".into(), "3 fields"),
            (
                good.replace("i=10000", "i=9999"),
                "iterations must be between 10000 and 10000000",
            ),
            (
                good.replace("i=10000", "i=10000001"),
                "iterations must be between 10000 and 10000000",
            ),
            (
                good.replace("i=10000", "i=99999999999999999999"),
                "iterations must be between",
            ),
            (good.replace("i=10000", "i=0"), "iterations must be between"),
            (good.replace("i=10000", "i=010000"), "leading zero"),
            (good.replace("i=10000", "i=+10000"), "not a decimal number"),
            (good.replace("i=10000", "i=1e5"), "not a decimal number"),
            (good.replace("i=10000", "i="), "not a decimal number"),
            (good.replace("i=10000,", ""), "i= is missing"),
            (good.replace("l=32", "l=64"), "only 32-byte hashes"),
            (good.replace("l=32", "l=32,l=32"), "appears twice"),
            (good.replace("l=32", "i=10000"), "appears twice"),
            (good.replace("l=32", "r=8"), "unknown parameter"),
            (good.replace("l=32", "l"), "not name=value"),
            (good.replace("i=10000,l=32", ""), "not name=value"),
            (
                format!("$pbkdf2-sha256$i=10000,l=32$c2FsdA${hash}"),
                "salt must be 8 to 64 bytes, found 4",
            ),
            (
                format!("$pbkdf2-sha256$i=10000,l=32${}${}", "A".repeat(88), hash),
                "salt must be 8 to 64 bytes",
            ),
            (
                format!("$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHQ==${hash}"),
                "salt is not valid base64",
            ),
            (
                format!("$pbkdf2-sha256$i=10000,l=32$c2Fsd.NhbHQ${hash}"),
                "salt is not valid base64",
            ),
            (
                format!("$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHQ${}", "A".repeat(42)),
                "hash must be 32 bytes, found 31",
            ),
            (
                "$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHQ$".into(),
                "hash must be 32 bytes, found 0",
            ),
            (format!("{good}="), "hash is not valid base64"),
            (format!("{good} "), "hash is not valid base64"),
            // passlib's alphabet has no '+'; PHC's has no '.'.
            (
                "$pbkdf2-sha256$29000$c2Fsd+NhbHQ$AAAA".into(),
                "salt is not valid base64",
            ),
            (
                "$pbkdf2-sha256$29000x$c2FsdHNhbHQ$AAAA".into(),
                "not a decimal number",
            ),
            (
                "$pbkdf2-sha256$9999$c2FsdHNhbHQ$AAAA".into(),
                "iterations must be between",
            ),
        ];
        for (text, reason) in cases {
            let error = PasswordHash::parse(&text).expect_err(&text);
            assert!(error.contains(reason), "{text:?}: {error:?} lacks {reason:?}");
        }
    }

    #[test]
    fn hash_password_from_reads_the_first_line() {
        let text = hash_password_from(&mut &b"secret\n"[..]).unwrap();
        let hash = PasswordHash::parse(&text).unwrap();
        assert_eq!(hash.iterations(), DEFAULT_ITERATIONS);
        assert_eq!(hash.salt.len(), 16);
        // The only default-cost check here: seconds in a debug build.
        assert_eq!(hash.verify(b"secret").step(u32::MAX), Some(true));
    }

    #[test]
    fn reading_strips_exactly_one_line_ending() {
        for (input, password) in [
            (&b"pa ss\r\n"[..], &b"pa ss"[..]),
            (b"pa ss\n", b"pa ss"),
            (b"pa ss", b"pa ss"),
            (b"p\xc3\xa4ss:w\xc3\xb6rd\n", "päss:wörd".as_bytes()),
        ] {
            assert_eq!(
                read_password(&mut &input[..]).as_deref(),
                Ok(password),
                "{input:?}"
            );
        }
    }

    #[test]
    fn reading_stops_after_the_first_line() {
        let mut reader = &b"first\nsecond line\n"[..];
        assert_eq!(read_password(&mut reader).as_deref(), Ok(&b"first"[..]));
        assert_eq!(reader, b"second line\n");
    }

    #[test]
    fn reading_refuses_unusable_passwords() {
        let cases: [(&[u8], &str); 10] = [
            (b"", "empty"),
            (b"\n", "empty"),
            (b"\r\n", "empty"),
            (b"\nsecret\n", "empty"),
            (&[b'a'; 4097], "longer than 4096 bytes"),
            (b"\xff\xfe\n", "not UTF-8"),
            (b"tab\there\n", "control characters"),
            (b"cr\rhere\n", "control characters"),
            (b"del\x7f\n", "control characters"),
            // A '\r' without its '\n' is not a line ending.
            (b"pw\r", "control characters"),
        ];
        for (input, reason) in cases {
            let error = read_password(&mut &input[..]).expect_err(&format!("{input:?}"));
            assert!(error.contains(reason), "{input:?}: {error:?} lacks {reason:?}");
        }
    }

    #[test]
    fn reading_takes_exactly_the_limit() {
        for ending in [&b"\n"[..], b"\r\n", b""] {
            let mut input = vec![b'a'; PASSWORD_MAX];
            input.extend_from_slice(ending);
            assert_eq!(
                read_password(&mut &input[..]).map(|line| line.len()),
                Ok(PASSWORD_MAX)
            );
            input.insert(0, b'a');
            assert!(
                read_password(&mut &input[..])
                    .unwrap_err()
                    .contains("longer than")
            );
        }
        // A long input stops being read soon after the limit.
        let mut endless = std::io::repeat(b'a');
        assert!(read_password(&mut endless).unwrap_err().contains("longer than"));
    }

    #[test]
    fn reading_reports_errors() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("device gone"))
            }
        }
        let error = hash_password_from(&mut Broken).unwrap_err();
        assert!(
            error.contains("cannot read the password") && error.contains("device gone"),
            "{error}"
        );
    }

    #[test]
    fn random_salts_differ() {
        let first = random_salt();
        let second = random_salt();
        assert_ne!(first, second);
        assert_ne!(first, [0; 16]);
    }

    #[test]
    fn debug_output_leaves_the_key_out() {
        let hash = PasswordHash::generate(b"pw", b"saltsalt", 3);
        let mut check = hash.verify(b"pw");
        check.step(1);
        assert_eq!(
            format!("{check:?}"),
            "Verification { remaining: 2, outcome: None, .. }"
        );
    }

    #[test]
    fn comparison_is_exact() {
        let a = [7u8; 32];
        for at in 0..32 {
            let mut b = a;
            b[at] ^= 1;
            assert!(!constant_time_eq(&a, &b));
        }
        assert!(constant_time_eq(&a, &a));
    }

    /// Not a test: prints how fast one default-cost verification runs, to size
    /// the slices the reactor gives it. `cargo test --release -- --ignored --nocapture verification_speed`
    #[test]
    #[ignore = "a measurement, not a check; run with --release"]
    fn verification_speed() {
        use crate::clock::{Clock as _, SystemClock};
        let hash = PasswordHash::generate(b"secret", b"saltsalt", DEFAULT_ITERATIONS);
        let clock = SystemClock::new();
        let mut check = hash.verify(b"secret");
        let start = clock.now_ms();
        assert_eq!(check.step(u32::MAX), Some(true));
        let elapsed = clock.now_ms() - start;
        println!(
            "{DEFAULT_ITERATIONS} iterations in {elapsed} ms: {} iterations per ms",
            u64::from(DEFAULT_ITERATIONS) / elapsed.max(1)
        );
    }
}
