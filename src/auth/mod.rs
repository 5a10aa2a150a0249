//! Authentication and access control, sans-IO: `Authorization` headers in,
//! principals and decisions out. Password checks are deliberately slow, so
//! they run in slices the reactor interleaves with other clients' I/O, and
//! a recently verified password is remembered (as a keyed digest, never in
//! clear) so a client sending credentials on every request pays once.

pub mod access;
pub mod basic;
pub mod password;
pub mod refusal;
pub mod throttle;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::config::Config;
pub use access::{AccessPolicy, Action, Decision, Need, Principal};
use basic::Credentials;
use password::{PasswordHash, Verification};
use throttle::FailedLogins;
use token::TokenKey;

/// How long a verified password is trusted without hashing it again.
const VERIFIED_TTL_MS: u64 = 15 * 60 * 1000;
/// Verified credentials remembered at once.
const VERIFIED_MAX: usize = 1024;
/// Password checks that hash at once; more wait for a turn. Bounds the CPU
/// that guesses from many addresses can take from everyone else.
const CHECKS_RUNNING_MAX: usize = 4;
/// A running check not stepped for this long was abandoned (its client
/// went away) and gives its place up.
const CHECK_ABANDONED_MS: u64 = 1_000;

/// Why a login failed, as counted in `auth_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    UnknownUser,
    WrongPassword,
    /// An `Authorization` header that is not valid Basic credentials.
    Malformed,
    /// A bearer token that is not ours, was altered, expired, or names an
    /// identity that no longer exists.
    InvalidToken,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::UnknownUser => "unknown_user",
            Failure::WrongPassword => "wrong_password",
            Failure::Malformed => "malformed",
            Failure::InvalidToken => "invalid_token",
        }
    }
}

/// The first step of a login.
pub enum Login {
    /// Known at once: no credentials (or auth off), or recently verified ones.
    Done(Principal),
    /// The password must be checked: call `Authenticator::step` until it answers.
    Verify(Box<PendingLogin>),
    Failed(Failure),
}

/// A password check in progress.
pub struct PendingLogin {
    username: String,
    password: String,
    identity: Option<usize>,
    verification: Verification,
    cache_key: [u8; 32],
    client: Option<IpAddr>,
    /// Earlier failures from this address: nothing is checked before then.
    pub not_before_ms: u64,
    /// The policy this login resolved the user against.
    generation: u64,
    /// Identifies the check among the running ones.
    id: u64,
}

pub struct Authenticator {
    policy: AccessPolicy,
    /// `[auth] realm`, for Basic challenges.
    realm: String,
    tokens: TokenKey,
    /// Bumped when the policy is replaced, so a login begun before a reload
    /// does not finish with an identity index of the old policy.
    generation: u64,
    verified: HashMap<[u8; 32], (usize, u64)>,
    failures: FailedLogins,
    /// Checked for unknown user names, at the cost of a real identity, so the
    /// answer's timing does not tell which names exist.
    decoy: PasswordHash,
    /// Keys the verified-credentials digests, so the table is useless to
    /// anyone who reads this process's memory without it.
    cache_secret: [u8; 32],
    /// Checks hashing now (at most `CHECKS_RUNNING_MAX`), with when each
    /// last ran a slice.
    running: HashMap<u64, u64>,
    next_check_id: u64,
}

impl Authenticator {
    pub fn new(config: &Config) -> Authenticator {
        let mut cache_secret = [0u8; 32];
        crate::storage::random_bytes(&mut cache_secret);
        let policy = AccessPolicy::new(config);
        Authenticator {
            realm: config.auth.realm.clone(),
            tokens: TokenKey::random(),
            decoy: decoy(&policy),
            policy,
            generation: 0,
            verified: HashMap::new(),
            failures: FailedLogins::default(),
            cache_secret,
            running: HashMap::new(),
            next_check_id: 0,
        }
    }

    /// Takes a reloaded configuration. Remembered verifications are dropped
    /// (a password may have changed); failure records are kept.
    pub fn reconfigure(&mut self, config: &Config) {
        self.policy = AccessPolicy::new(config);
        self.decoy = decoy(&self.policy);
        self.realm = config.auth.realm.clone();
        self.generation += 1;
        self.verified.clear();
    }

    pub fn policy(&self) -> &AccessPolicy {
        &self.policy
    }

    /// A `WWW-Authenticate` value asking for Basic credentials.
    pub fn basic_challenge(&self) -> String {
        format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm)
    }

    /// A `WWW-Authenticate` value sending the client to the token endpoint
    /// at `realm_url`, with the access it needs when known.
    pub fn bearer_challenge(&self, realm_url: &str, scope: Option<&str>) -> String {
        let mut challenge = format!("Bearer realm=\"{realm_url}\",service=\"{TOKEN_SERVICE}\"");
        if let Some(scope) = scope {
            challenge.push_str(&format!(",scope=\"{scope}\""));
        }
        challenge
    }

    /// A token for `principal`, valid for `token::TOKEN_LIFETIME_SECS`.
    pub fn issue_token(&self, principal: Principal, now_ms: u64) -> String {
        match self.policy.identity(principal) {
            Some(identity) => self
                .tokens
                .issue(Some(&identity.id), &identity.credential, now_ms / 1000),
            None => self.tokens.issue(None, "", now_ms / 1000),
        }
    }

    /// Starts a login from a request's `Authorization` header.
    pub fn start(&mut self, authorization: Option<&str>, client: Option<IpAddr>, now_ms: u64) -> Login {
        if !self.policy.authentication_enabled() {
            // Nobody to be: credentials are ignored, as a registry without auth always did.
            return Login::Done(Principal::Anonymous);
        }
        if let Some(token) = token::bearer(authorization) {
            // Tokens live on the monotonic clock: only this process checks them.
            let policy = &self.policy;
            let credential_of = |id: &str| {
                let index = policy.find_id(id)?;
                Some(policy.identities()[index].credential.as_str())
            };
            return match self.tokens.verify(token, now_ms / 1000, credential_of) {
                Ok(None) => Login::Done(Principal::Anonymous),
                Ok(Some(id)) => match self.policy.find_id(&id) {
                    Some(index) => Login::Done(Principal::Identity(index)),
                    None => Login::Failed(Failure::InvalidToken),
                },
                Err(_) => Login::Failed(Failure::InvalidToken),
            };
        }
        let (username, password) = match basic::parse_authorization(authorization) {
            Ok(Credentials::Anonymous) => return Login::Done(Principal::Anonymous),
            Ok(Credentials::Basic { username, password }) => (username, password),
            Err(_) => return Login::Failed(Failure::Malformed),
        };
        self.check(username, password, client, now_ms)
    }

    /// Credentials known by a name and password: remembered, or to be checked.
    fn check(&mut self, username: String, password: String, client: Option<IpAddr>, now_ms: u64) -> Login {
        let cache_key = self.cache_key(&username, &password);
        if let Some(&(index, expires_ms)) = self.verified.get(&cache_key) {
            if now_ms < expires_ms {
                return Login::Done(Principal::Identity(index));
            }
            self.verified.remove(&cache_key);
        }
        let identity = self.policy.find_username(&username);
        let hash = match identity {
            Some(index) => &self.policy.identities()[index].password,
            None => &self.decoy,
        };
        let verification = hash.verify(password.as_bytes());
        let not_before_ms = client.map_or(now_ms, |client| self.failures.reserve(client, now_ms));
        self.next_check_id += 1;
        Login::Verify(Box::new(PendingLogin {
            username,
            password,
            identity,
            verification,
            cache_key,
            client,
            not_before_ms,
            generation: self.generation,
            id: self.next_check_id,
        }))
    }

    /// Whether `login` may hash now: it already runs, or there is room
    /// (after giving up the places of abandoned checks).
    fn admit(&mut self, login: &PendingLogin, now_ms: u64) -> bool {
        if let Some(last_ms) = self.running.get_mut(&login.id) {
            *last_ms = now_ms;
            return true;
        }
        if self.running.len() >= CHECKS_RUNNING_MAX {
            self.running
                .retain(|_, last_ms| now_ms.saturating_sub(*last_ms) < CHECK_ABANDONED_MS);
        }
        if self.running.len() >= CHECKS_RUNNING_MAX {
            return false;
        }
        self.running.insert(login.id, now_ms);
        true
    }

    /// Runs at most `budget` hash iterations of `login`; the outcome once
    /// the check is complete. Call only once `now_ms >= login.not_before_ms`.
    pub fn step(
        &mut self,
        login: &mut PendingLogin,
        budget: u32,
        now_ms: u64,
    ) -> Option<Result<Principal, Failure>> {
        if login.generation != self.generation {
            // The configuration changed under us: start over against the new one.
            let (username, password) = (login.username.clone(), login.password.clone());
            match self.check(username, password, login.client, now_ms) {
                Login::Done(principal) => return Some(Ok(principal)),
                Login::Failed(failure) => return Some(Err(failure)),
                Login::Verify(fresh) => {
                    let (not_before_ms, id) = (login.not_before_ms, login.id);
                    *login = *fresh;
                    login.not_before_ms = not_before_ms;
                    login.id = id;
                }
            }
        }
        if !self.admit(login, now_ms) {
            return None;
        }
        let matches = login.verification.step(budget)?;
        self.running.remove(&login.id);
        let outcome = match (login.identity, matches) {
            (Some(index), true) => {
                self.remember(login.cache_key, index, now_ms);
                if let Some(client) = login.client {
                    self.failures.record_success(client);
                }
                Ok(Principal::Identity(index))
            }
            // The failure was counted when the check started (`reserve`).
            (identity, _) => Err(if identity.is_some() {
                Failure::WrongPassword
            } else {
                Failure::UnknownUser
            }),
        };
        Some(outcome)
    }

    fn cache_key(&self, username: &str, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.cache_secret);
        hasher.update(username.as_bytes());
        hasher.update([0]);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    fn remember(&mut self, key: [u8; 32], index: usize, now_ms: u64) {
        if self.verified.len() >= VERIFIED_MAX {
            self.verified.retain(|_, (_, expires_ms)| now_ms < *expires_ms);
            if self.verified.len() >= VERIFIED_MAX {
                // All fresh: forgetting them all is simpler than an LRU and
                // costs only one slow check per active client.
                self.verified.clear();
            }
        }
        self.verified.insert(key, (index, now_ms + VERIFIED_TTL_MS));
    }
}

/// The `service` of bearer challenges and token requests.
pub const TOKEN_SERVICE: &str = "angos";

/// The decoy for unknown user names, as costly as the dearest configured hash.
fn decoy(policy: &AccessPolicy) -> PasswordHash {
    let iterations = policy
        .identities()
        .iter()
        .map(|identity| identity.password.iterations())
        .max()
        .unwrap_or(password::DEFAULT_ITERATIONS);
    PasswordHash::decoy(iterations)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITERATIONS: u32 = 10_000;

    fn config(extra: &str) -> Config {
        let salt = b"saltsaltsalt";
        let alice = PasswordHash::generate(b"wonderland", salt, ITERATIONS);
        let bob = PasswordHash::generate(b"builder", salt, ITERATIONS);
        let text = format!(
            "[auth.identity.alice]\nusername = \"alice\"\npassword = \"{alice}\"\n\
             [auth.identity.bob]\nusername = \"bob\"\npassword = \"{bob}\"\n{extra}"
        );
        crate::config::load_sources(&[("test.toml".into(), text)])
            .unwrap()
            .config
    }

    fn basic_header(username: &str, password: &str) -> String {
        let pair = format!("{username}:{password}");
        format!(
            "Basic {}",
            crate::base64::encode(pair.as_bytes(), crate::base64::Alphabet::Standard)
        )
    }

    fn run(auth: &mut Authenticator, header: &str, client: IpAddr, now: u64) -> Result<Principal, Failure> {
        match auth.start(Some(header), Some(client), now) {
            Login::Done(principal) => Ok(principal),
            Login::Failed(failure) => Err(failure),
            Login::Verify(mut login) => {
                let mut slices = 0;
                loop {
                    slices += 1;
                    if let Some(outcome) = auth.step(&mut login, 1000, now) {
                        assert!(slices >= ITERATIONS / 1000, "the check ran in slices");
                        return outcome;
                    }
                }
            }
        }
    }

    fn client() -> IpAddr {
        IpAddr::from([192, 0, 2, 1])
    }

    #[test]
    fn logins_succeed_fail_and_are_remembered() {
        let mut auth = Authenticator::new(&config(""));
        let alice = basic_header("alice", "wonderland");
        assert_eq!(run(&mut auth, &alice, client(), 0), Ok(Principal::Identity(0)));
        // The second time needs no hashing.
        assert!(matches!(
            auth.start(Some(&alice), Some(client()), 1),
            Login::Done(Principal::Identity(0))
        ));
        assert_eq!(
            run(&mut auth, &basic_header("alice", "wrong"), client(), 2),
            Err(Failure::WrongPassword)
        );
        assert_eq!(
            run(&mut auth, &basic_header("mallory", "x"), client(), 3),
            Err(Failure::UnknownUser)
        );
        assert_eq!(run(&mut auth, "Basic !!!", client(), 4), Err(Failure::Malformed));
        assert_eq!(
            run(&mut auth, "Basic Og==", client(), 5),
            Ok(Principal::Anonymous)
        );
        // Remembered verifications expire.
        assert!(matches!(
            auth.start(Some(&alice), Some(client()), VERIFIED_TTL_MS + 10),
            Login::Verify(_)
        ));
    }

    #[test]
    fn repeated_failures_make_the_address_wait() {
        let mut auth = Authenticator::new(&config(""));
        let wrong = basic_header("bob", "nope");
        for now in 0..3 {
            assert_eq!(run(&mut auth, &wrong, client(), now), Err(Failure::WrongPassword));
        }
        let Login::Verify(login) = auth.start(Some(&wrong), Some(client()), 3) else {
            panic!("expected a check");
        };
        assert_eq!(login.not_before_ms, 2 + throttle::delay_after(3));
        let Login::Verify(other) = auth.start(Some(&wrong), Some(IpAddr::from([192, 0, 2, 9])), 3) else {
            panic!("expected a check");
        };
        assert_eq!(other.not_before_ms, 3);
        // Success clears the record.
        run(&mut auth, &basic_header("bob", "builder"), client(), 10_000).unwrap();
        let Login::Verify(login) = auth.start(Some(&wrong), Some(client()), 10_001) else {
            panic!("expected a check");
        };
        assert_eq!(login.not_before_ms, 10_001);
    }

    #[test]
    fn parallel_guesses_from_one_address_wait_like_sequential_ones() {
        let mut auth = Authenticator::new(&config(""));
        let wrong = basic_header("bob", "nope");
        // Six checks started at once, none finished: each counts as a failure
        // from the moment it starts.
        let waits: Vec<u64> = (0..6)
            .map(|_| match auth.start(Some(&wrong), Some(client()), 0) {
                Login::Verify(login) => login.not_before_ms,
                _ => panic!("expected a check"),
            })
            .collect();
        assert_eq!(waits, [0, 0, 0, 500, 1500, 3500]);
    }

    #[test]
    fn checks_hash_a_few_at_a_time_and_abandoned_ones_give_way() {
        let mut auth = Authenticator::new(&config(""));
        let wrong = basic_header("bob", "nope");
        let mut logins: Vec<Box<PendingLogin>> = (0..=CHECKS_RUNNING_MAX as u8)
            .map(
                |n| match auth.start(Some(&wrong), Some(IpAddr::from([198, 51, 100, n])), 0) {
                    Login::Verify(login) => login,
                    _ => panic!("expected a check"),
                },
            )
            .collect();
        for login in &mut logins {
            assert_eq!(auth.step(login, 10, 0), None);
        }
        let last = logins.last().unwrap().id;
        assert_eq!(auth.running.len(), CHECKS_RUNNING_MAX);
        assert!(!auth.running.contains_key(&last), "the last check waits its turn");
        // The first four are dropped (their clients went away): after a
        // while the waiting one runs, and finishes.
        let mut waiting = logins.pop().unwrap();
        drop(logins);
        assert_eq!(auth.step(&mut waiting, 10, CHECK_ABANDONED_MS - 1), None);
        assert!(!auth.running.contains_key(&last));
        let outcome = loop {
            if let Some(outcome) = auth.step(&mut waiting, 1000, CHECK_ABANDONED_MS) {
                break outcome;
            }
        };
        assert_eq!(outcome, Err(Failure::WrongPassword));
        assert!(auth.running.is_empty(), "a finished check gives its place up");
    }

    #[test]
    fn without_identities_credentials_are_ignored() {
        let mut auth = Authenticator::new(&Config::default());
        assert!(matches!(
            auth.start(Some("Basic !!!"), None, 0),
            Login::Done(Principal::Anonymous)
        ));
    }

    #[test]
    fn a_reload_during_a_check_resolves_against_the_new_policy() {
        let mut auth = Authenticator::new(&config(""));
        let bob = basic_header("bob", "builder");
        let Login::Verify(mut login) = auth.start(Some(&bob), Some(client()), 0) else {
            panic!("expected a check");
        };
        assert_eq!(auth.step(&mut login, 10, 0), None);
        // A new identity sorts before bob: his index moves.
        auth.reconfigure(&config(&format!(
            "[auth.identity.aaron]\nusername = \"aaron\"\npassword = \"{}\"\n",
            PasswordHash::generate(b"x", b"saltsaltsalt", ITERATIONS)
        )));
        let outcome = loop {
            if let Some(outcome) = auth.step(&mut login, 1000, 1) {
                break outcome;
            }
        };
        let principal = outcome.unwrap();
        assert_eq!(auth.policy().identity(principal).unwrap().username, "bob");
    }

    #[test]
    fn challenges_name_the_realm_and_the_token_endpoint() {
        let auth = Authenticator::new(&config("[auth]\nrealm = \"Edge registry\"\n"));
        assert_eq!(
            auth.basic_challenge(),
            "Basic realm=\"Edge registry\", charset=\"UTF-8\""
        );
        assert_eq!(
            auth.bearer_challenge("https://r.example/v2/token", Some("repository:a/b:pull")),
            "Bearer realm=\"https://r.example/v2/token\",service=\"angos\",scope=\"repository:a/b:pull\""
        );
    }

    #[test]
    fn tokens_stand_for_their_login() {
        let mut auth = Authenticator::new(&config(""));
        let bob = auth.issue_token(Principal::Identity(1), 5_000);
        let nobody = auth.issue_token(Principal::Anonymous, 5_000);
        let login = |auth: &mut Authenticator, token: &str, now_ms: u64| match auth.start(
            Some(&format!("Bearer {token}")),
            Some(client()),
            now_ms,
        ) {
            Login::Done(principal) => Ok(principal),
            Login::Failed(failure) => Err(failure),
            Login::Verify(_) => panic!("a token needs no password check"),
        };
        assert_eq!(login(&mut auth, &bob, 6_000), Ok(Principal::Identity(1)));
        assert_eq!(login(&mut auth, &nobody, 6_000), Ok(Principal::Anonymous));
        let expired = 5_000 + token::TOKEN_LIFETIME_SECS * 1000;
        assert_eq!(login(&mut auth, &bob, expired), Err(Failure::InvalidToken));
        assert_eq!(login(&mut auth, "v1.00.1.00", 6_000), Err(Failure::InvalidToken));
        // A reload that removes bob voids his token.
        let alice_only = format!(
            "[auth.identity.alice]\nusername = \"alice\"\npassword = \"{}\"\n",
            PasswordHash::generate(b"wonderland", b"saltsaltsalt", ITERATIONS)
        );
        auth.reconfigure(
            &crate::config::load_sources(&[("t.toml".into(), alice_only)])
                .unwrap()
                .config,
        );
        assert_eq!(login(&mut auth, &bob, 6_000), Err(Failure::InvalidToken));
    }
}
