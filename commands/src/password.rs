//! Passwords: argon2id hashes (PHC strings, default parameters, a fresh salt each),
//! computed and verified on tokio's blocking pool, a bounded number at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use domain::{Password, PasswordHash};
use tokio::sync::Semaphore;

use crate::error::CommandError;

/// Hashes and verifies passwords. Each hash takes tens of milliseconds and 19 MiB,
/// so at most `parallel_max` run at once; the rest wait their turn.
#[derive(Debug, Clone)]
pub(crate) struct Hasher {
    permits: Arc<Semaphore>,
    /// A hash of a password no one has, verified when a login names an unknown
    /// email so that the answer takes as long as for a known one.
    dummy: Arc<str>,
    /// How many hashes and verifications were asked for.
    counts: Arc<[AtomicU64; 2]>,
}

/// How much password work the service was asked for since it started (each is
/// tens of milliseconds of a core): for `/metrics`, where a jump shows a
/// password-guessing or sign-up flood.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PasswordStats {
    /// New hashes: registrations.
    pub hashes: u64,
    /// Verifications: logins, an unknown email's included.
    pub verifications: u64,
}

impl Hasher {
    /// Computes the dummy hash on the calling thread (one hash).
    pub(crate) fn new(parallel_max: usize) -> Result<Self, CommandError> {
        let dummy = hash(b"no-one's password, for timing")?;
        Ok(Hasher {
            permits: Arc::new(Semaphore::new(parallel_max.max(1))),
            dummy: dummy.into(),
            counts: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        })
    }

    pub(crate) fn stats(&self) -> PasswordStats {
        let [hashes, verifications] = &*self.counts;
        PasswordStats { hashes: hashes.load(Ordering::Relaxed), verifications: verifications.load(Ordering::Relaxed) }
    }

    /// A fresh argon2id hash of `password`.
    pub(crate) async fn hash(&self, password: Password) -> Result<PasswordHash, CommandError> {
        self.counts[0].fetch_add(1, Ordering::Relaxed);
        let phc = self.blocking(move || hash(password.as_str().as_bytes())).await??;
        PasswordHash::new(phc).map_err(|error| CommandError::Hasher { reason: error.to_string() })
    }

    /// A hash that stands in for one not computed, in a command that is refused
    /// whatever its password (the dummy's: no one's password).
    pub(crate) fn placeholder(&self) -> Result<PasswordHash, CommandError> {
        PasswordHash::new(self.dummy.to_string()).map_err(|error| CommandError::Hasher { reason: error.to_string() })
    }

    /// Whether `password` matches `stored`; `None` verifies against the dummy hash
    /// (and answers false), taking the same time.
    pub(crate) async fn verify(&self, password: Password, stored: Option<PasswordHash>) -> Result<bool, CommandError> {
        self.counts[1].fetch_add(1, Ordering::Relaxed);
        let known = stored.is_some();
        let phc = stored.map_or_else(|| self.dummy.to_string(), |stored| stored.as_str().to_owned());
        let matches = self
            .blocking(move || match Argon2::default().verify_password(password.as_str().as_bytes(), phc.as_str()) {
                Ok(()) => true,
                Err(argon2::password_hash::Error::PasswordInvalid) => false,
                Err(error) => {
                    tracing::error!(%error, "a stored password hash cannot be verified");
                    false
                }
            })
            .await?;
        Ok(known && matches)
    }

    /// Run `work` on the blocking pool inside the caller's span, once a permit is
    /// free. The permit goes with the work, not with the caller: a caller that
    /// gives up (a request timed out) leaves its hash running, and the permit is
    /// free only once that hash is done, so never more than `parallel_max` run.
    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, CommandError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| CommandError::Hasher { reason: "the hasher is shut down".to_owned() })?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(work)
        })
        .await
        .map_err(|error| CommandError::Hasher { reason: error.to_string() })
    }
}

fn hash(password: &[u8]) -> Result<String, CommandError> {
    Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|error| CommandError::Hasher { reason: error.to_string() })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// On a runtime of one thread, a hash that ran on that thread would finish
    /// before anything else could run; run on the blocking pool, the other
    /// future runs while the hash is still going.
    #[tokio::test(flavor = "current_thread")]
    async fn hashing_and_verifying_leave_the_async_thread_free() {
        let hasher = Hasher::new(2).expect("hasher");
        let password = || Password::parse("correct horse battery").expect("a valid password");

        let hashed = AtomicBool::new(false);
        let (phc, hashed_before_the_other_ran) = tokio::join!(
            async {
                let phc = hasher.hash(password()).await;
                hashed.store(true, Ordering::SeqCst);
                phc
            },
            async { hashed.load(Ordering::SeqCst) },
        );
        let phc = phc.expect("hashes");
        assert!(!hashed_before_the_other_ran, "the hash ran on the async thread");

        let verified = AtomicBool::new(false);
        let (matches, verified_before_the_other_ran) = tokio::join!(
            async {
                let matches = hasher.verify(password(), Some(phc)).await;
                verified.store(true, Ordering::SeqCst);
                matches
            },
            async { verified.load(Ordering::SeqCst) },
        );
        assert!(matches.expect("verifies"), "the password matches its own hash");
        assert!(!verified_before_the_other_ran, "the verification ran on the async thread");
    }

    /// A caller that gives up on its hash (a request that timed out) does not
    /// free its place: the next hash starts only once the abandoned one is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_hash_keeps_its_place_until_it_is_done() {
        let hasher = Hasher::new(1).expect("hasher");
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let work = || {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(200));
                running.fetch_sub(1, Ordering::SeqCst);
            }
        };
        // Given up on 20 ms in, while its work goes on for 200.
        let abandoned = tokio::time::timeout(std::time::Duration::from_millis(20), hasher.blocking(work())).await;
        assert!(abandoned.is_err(), "the first caller gave up");
        hasher.blocking(work()).await.expect("the second runs");
        assert_eq!(most.load(Ordering::SeqCst), 1, "two hashes ran at once with one permit");
    }

    #[tokio::test]
    async fn an_unknown_email_is_verified_against_the_dummy_and_never_matches() {
        let hasher = Hasher::new(1).expect("hasher");
        let password = Password::parse("not the password").expect("a valid password");
        assert!(!hasher.verify(password, None).await.expect("verifies"), "no stored hash: no match");
    }
}
