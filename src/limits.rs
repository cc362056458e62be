//! Per-client limits on the public listener. Each is keyed so that it hurts only the
//! client that earns it (SPEC §7): login starts per client address *and* tenant, and
//! credential failures per client address, shared by every machine credential (SCIM
//! tokens, Maestrano's Basic auth) so that guessing one kind buys no attempts at
//! another. A valid credential always passes, whatever the count.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed authentications allowed per client address per [`FAILURE_WINDOW`].
pub const FAILURES_PER_WINDOW: u32 = 20;
/// See [`FAILURES_PER_WINDOW`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// Clients tracked at most by each limiter; the least recently seen go first.
const CAPACITY: u64 = 100_000;

/// The key a client is counted under: its IPv4 address (an IPv4-mapped IPv6 address
/// too), or its IPv6 /64, since one host commonly holds a whole /64 and could otherwise
/// rotate through it.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

/// Login starts: a token bucket per (client address, tenant) holding `per_minute`
/// starts and refilled at that rate. Each start stores a pending request for ten
/// minutes, so this also bounds what one client can make the store hold.
pub struct LoginStarts {
    per_minute: u32,
    buckets: moka::sync::Cache<(IpAddr, String), Arc<Mutex<Bucket>>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl LoginStarts {
    /// A limiter allowing `per_minute` starts per client and tenant, in a burst or
    /// spread out.
    pub fn new(per_minute: u32) -> LoginStarts {
        LoginStarts {
            per_minute: per_minute.max(1),
            // A bucket unused for a minute is full again: forgetting it changes nothing.
            buckets: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }

    /// Takes one start for `client` on `tenant`, or says in how many seconds the next
    /// one will be allowed.
    pub fn take(&self, client: IpAddr, tenant: &str) -> Result<(), u64> {
        let full = f64::from(self.per_minute);
        let bucket = self
            .buckets
            .get_with((client_key(client), tenant.to_owned()), || {
                Arc::new(Mutex::new(Bucket {
                    tokens: full,
                    at: Instant::now(),
                }))
            });
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let per_second = full / 60.0;
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_second).min(full);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

/// Failed machine authentications per client address, in fixed windows.
pub struct Failures {
    counts: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

/// What one more failure amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; the client may try again.
    Counted,
    /// Over the limit: answer 429 until the window ends. `first` is true for the
    /// failure that crossed it (log that one, not every one after it).
    Limited {
        /// The first failure over the limit.
        first: bool,
    },
}

impl Default for Failures {
    fn default() -> Self {
        Failures {
            counts: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(FAILURE_WINDOW)
                .build(),
        }
    }
}

impl Failures {
    /// An empty limiter.
    pub fn new() -> Arc<Failures> {
        Arc::new(Failures::default())
    }

    /// Counts a failed authentication from `client`.
    pub fn fail(&self, client: IpAddr) -> Failure {
        let n = self
            .counts
            .get_with(client_key(client), || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if n > FAILURES_PER_WINDOW {
            Failure::Limited {
                first: n == FAILURES_PER_WINDOW + 1,
            }
        } else {
            Failure::Counted
        }
    }

    /// Seconds to suggest in `Retry-After` once limited.
    pub fn retry_after(&self) -> u64 {
        FAILURE_WINDOW.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_starts_are_a_burst_then_a_rate_per_client_and_tenant() {
        let l = LoginStarts::new(30);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..30 {
            assert_eq!(l.take(a, "acme"), Ok(()));
        }
        let wait = l.take(a, "acme").unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        // Another tenant, another client: untouched.
        assert_eq!(l.take(a, "beta"), Ok(()));
        assert_eq!(l.take(b, "acme"), Ok(()));
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let l = LoginStarts::new(1);
        assert_eq!(l.take("2001:db8::1".parse().unwrap(), "acme"), Ok(()));
        assert!(l.take("2001:db8::ffff:2".parse().unwrap(), "acme").is_err());
        assert_eq!(l.take("2001:db8:0:1::1".parse().unwrap(), "acme"), Ok(()));
        assert_eq!(l.take("192.0.2.7".parse().unwrap(), "acme"), Ok(()));
        assert!(l.take("::ffff:192.0.2.7".parse().unwrap(), "acme").is_err());
    }

    #[test]
    fn failures_are_limited_per_client_and_the_crossing_one_is_marked() {
        let f = Failures::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..FAILURES_PER_WINDOW {
            assert_eq!(f.fail(a), Failure::Counted);
        }
        assert_eq!(f.fail(a), Failure::Limited { first: true });
        assert_eq!(f.fail(a), Failure::Limited { first: false });
        assert_eq!(f.fail("192.0.2.9".parse().unwrap()), Failure::Counted);
    }
}
