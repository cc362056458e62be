//! Background delivery of durable jobs (billing calls to Maestrano, Connec! deliveries to
//! the app): claim from the store's queue, run, retry with backoff, acknowledge.
//!
//! A job is acknowledged only after its handler says it is done (or can never be), so a
//! crash or a restart loses nothing: the job stays pending in the store, and once its
//! holder has stopped touching it for [`STALE_AFTER`], the next replica to claim takes it
//! over. While a replica holds a job it touches it, so no other replica runs it at the
//! same time.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{EphemeralStore, Job, JobQueue, Store};

/// How long a job may go untouched before another replica takes it over.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// How often held jobs are touched.
const KEEP_EVERY: Duration = Duration::from_secs(2);
/// Pause between polls when there is nothing to do.
const POLL: Duration = Duration::from_millis(200);
/// First retry delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most jobs one replica holds at a time per queue.
const HOLD: usize = 64;
/// How often the loop reads its queue's backlog for the metrics. Alerts on a backlog
/// look at minutes; the oldest job's age grows between reads on its own.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// What a handler made of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge it.
    Done,
    /// Failed for now (the other side is down or busy): try again later.
    Retry(String),
    /// Can never succeed (malformed, refused for good): log and acknowledge it.
    Drop(String),
}

struct Held {
    job: Job,
    attempts: u32,
    due: Instant,
    /// The handler finished; only the acknowledgement is still to be made.
    done: bool,
}

fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempts.min(16))
        .min(MAX_BACKOFF)
}

/// Runs `handler` over queue `queue` until `stop` turns true. Jobs of one queue run one
/// at a time on this replica, in the order they were claimed. Jobs held when it stops
/// stay pending in the store for another replica (after [`STALE_AFTER`]).
///
/// Held jobs are touched by a task of their own, every [`KEEP_EVERY`], however long a
/// handler takes; a job another replica took over meanwhile (this one was cut off from
/// the store for longer than [`STALE_AFTER`]) is let go, not run again.
///
/// Every [`STATS_EVERY`] the loop also reads the queue's backlog into the store's
/// metrics (`idgate_job_queue_depth`, `idgate_job_queue_oldest_age_seconds`), so that a
/// scrape never waits on the store.
pub fn spawn<H, F>(
    store: Store,
    queue: &'static str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Job) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let consumer = format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "idgate".into()),
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    );
    let handler = Arc::new(handler);
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let lost: Arc<Mutex<HashSet<String>>> = Arc::default();
    {
        let (store, consumer, ids, lost, mut stop) = (
            store.clone(),
            consumer.clone(),
            ids.clone(),
            lost.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(KEEP_EVERY) => {}
                    _ = stop.changed() => return,
                }
                let held: Vec<String> = ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match store.keep(queue, &consumer, &held).await {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::warn!(
                            queue,
                            jobs = gone.len(),
                            "jobs were taken over by another replica; letting them go"
                        );
                        lost.lock().unwrap_or_else(|p| p.into_inner()).extend(gone);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(queue, error = %e, "cannot keep held jobs; another replica may take them over")
                    }
                }
            }
        });
    }
    let gauges = store.metrics().queue(queue);
    tokio::spawn(async move {
        let mut held: Vec<Held> = Vec::new();
        let mut stats_due = Instant::now();
        let publish = |held: &Vec<Held>| {
            *ids.lock().unwrap_or_else(|p| p.into_inner()) =
                held.iter().map(|h| h.job.id.clone()).collect();
        };
        loop {
            if *stop.borrow() {
                return;
            }
            if Instant::now() >= stats_due {
                match store.stats(queue).await {
                    Ok(s) => gauges.set(s.depth, s.oldest),
                    // Counted as a store error; the gauges keep the last reading.
                    Err(e) => tracing::debug!(queue, error = %e, "cannot read the queue's backlog"),
                }
                stats_due = Instant::now() + STATS_EVERY;
            }
            {
                let mut gone = lost.lock().unwrap_or_else(|p| p.into_inner());
                if !gone.is_empty() {
                    held.retain(|h| !gone.contains(&h.job.id));
                    gone.clear();
                }
            }
            if held.len() < HOLD {
                match store
                    .claim(queue, &consumer, HOLD - held.len(), STALE_AFTER)
                    .await
                {
                    Ok(jobs) => {
                        let now = Instant::now();
                        for job in jobs {
                            if held.iter().any(|h| h.job.id == job.id) {
                                continue;
                            }
                            held.push(Held {
                                job,
                                attempts: 0,
                                due: now,
                                done: false,
                            });
                        }
                    }
                    Err(e) => tracing::warn!(queue, error = %e, "cannot claim jobs; retrying"),
                }
                publish(&held);
            }
            let now = Instant::now();
            let mut i = 0;
            while i < held.len() {
                if held[i].due > now {
                    i += 1;
                    continue;
                }
                if !held[i].done {
                    match handler(held[i].job.clone()).await {
                        Outcome::Done => held[i].done = true,
                        Outcome::Drop(reason) => {
                            tracing::error!(queue, job = %held[i].job.id, reason, "job dropped: it cannot succeed");
                            held[i].done = true;
                        }
                        Outcome::Retry(reason) => {
                            let h = &mut held[i];
                            h.attempts += 1;
                            let wait = backoff(h.attempts);
                            h.due = Instant::now() + wait;
                            tracing::warn!(queue, job = %h.job.id, attempts = h.attempts, retry_in_ms = wait.as_millis() as u64, reason, "job failed; will retry");
                            i += 1;
                            continue;
                        }
                    }
                }
                match store.ack(queue, &held[i].job.id).await {
                    Ok(()) => {
                        held.remove(i);
                        publish(&held);
                    }
                    Err(e) => {
                        // Done but not acknowledged: only the acknowledgement is tried
                        // again; the handler is not run twice by this replica.
                        tracing::warn!(queue, error = %e, "cannot acknowledge a finished job");
                        held[i].due = Instant::now() + FIRST_BACKOFF;
                        i += 1;
                    }
                }
            }
            let next_due = held.iter().map(|h| h.due).min();
            let pause = next_due
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(POLL)
                .clamp(Duration::from_millis(10), POLL);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    });
}

/// Why [`under_lease`] did not run its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLost {
    /// Another holder has it.
    Held,
    /// The store did not answer the claim.
    Store(String),
}

/// A lease as its holder knows it, for the work done under it (see [`under_lease`]) to
/// ask before each step that must not overlap another holder's.
pub struct Lease {
    ttl: Duration,
    /// When the store last confirmed the lease (a renewal's sending time, so never
    /// later than the store's own clock started the new term), and whether it has
    /// answered that the lease is someone else's.
    state: Mutex<(Instant, bool)>,
}

impl Lease {
    /// A lease of `ttl` per term, not yet claimed.
    pub fn new(ttl: Duration) -> Lease {
        Lease {
            ttl,
            state: Mutex::new((Instant::now(), true)),
        }
    }

    /// Whether the lease stays this holder's for at least `needed` whatever happens
    /// next: the store confirmed it less than `ttl - needed` ago and has never said it
    /// is another's. A step that takes at most `needed` and starts only then ends
    /// before anyone else can hold the lease, even if this holder is cut off from the
    /// store meanwhile.
    pub fn holds_for(&self, needed: Duration) -> bool {
        let (confirmed, lost) = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        !lost && confirmed.elapsed() + needed < self.ttl
    }

    fn confirmed(&self, at: Instant) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (at, false);
    }

    fn lost(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
    }
}

/// Runs `work` holding the lease `key` (an ephemeral value with a random holder token):
/// `Err` if the lease is another's. The lease is renewed every `renew_every` while
/// `work` runs and lapses `lease`'s ttl after the last renewal, so a holder that dies
/// holds it up for one ttl at most, however long the work may take. The work is never
/// cut short from outside (a call half made is worse than one made or not made); it
/// asks [`Lease::holds_for`] before each step that must not overlap another holder's,
/// and so stops at the next step once the lease is lost or unconfirmed for too long.
/// Released at the end if still held.
pub async fn under_lease<F: Future>(
    store: &Store,
    key: &str,
    lease: &Lease,
    renew_every: Duration,
    work: F,
) -> Result<F::Output, LeaseLost> {
    let token = hex::encode(rand::random::<[u8; 8]>());
    let claimed_at = Instant::now();
    match store.put_once(key, &token, lease.ttl).await {
        Ok(true) => lease.confirmed(claimed_at),
        Ok(false) => return Err(LeaseLost::Held),
        Err(e) => return Err(LeaseLost::Store(e.to_string())),
    }
    tokio::pin!(work);
    let mut renew = tokio::time::interval_at(Instant::now() + renew_every, renew_every);
    let outcome = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = renew.tick() => {
                let sent = Instant::now();
                match store.renew(key, &token, lease.ttl).await {
                    Ok(true) => lease.confirmed(sent),
                    Ok(false) => {
                        tracing::warn!(lease = key, "a lease lapsed while its work ran; the work stops at its next step");
                        lease.lost();
                    }
                    Err(e) => tracing::warn!(lease = key, error = %e, "cannot renew a lease; it lapses if the store stays away"),
                }
            }
        }
    };
    if let Err(e) = store.release(key, &token).await {
        tracing::warn!(lease = key, error = %e, "cannot release a lease; it lapses by itself");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FailMode, StoreConfig, StoreUrl};

    fn memory() -> Store {
        Store::open(&StoreConfig {
            url: StoreUrl::Memory,
            key_prefix: "t".into(),
            fail_mode: FailMode::Closed,
            ca_certificate: None,
        })
        .unwrap()
    }

    const TTL: Duration = Duration::from_millis(300);
    const EVERY: Duration = Duration::from_millis(60);

    #[tokio::test]
    async fn a_lease_is_held_for_as_long_as_its_work_runs_and_freed_after() {
        let store = memory();
        let lease = Lease::new(TTL);
        let work = async {
            // Three TTLs: held only because it is renewed.
            tokio::time::sleep(TTL * 3).await;
            (
                store.put_once("l", "other", TTL).await.unwrap(),
                lease.holds_for(TTL / 3),
            )
        };
        let r = under_lease(&store, "l", &lease, EVERY, work).await;
        assert_eq!(
            r,
            Ok((false, true)),
            "held through the work, and known to be"
        );
        assert!(
            store.put_once("l", "other", TTL).await.unwrap(),
            "freed at the end"
        );
        let again = under_lease(&store, "l", &Lease::new(TTL), EVERY, async { 1 }).await;
        assert_eq!(again, Err(LeaseLost::Held), "another's lease is not taken");
    }

    #[tokio::test]
    async fn work_whose_lease_was_taken_over_is_told_and_runs_to_its_end() {
        let store = memory();
        let lease = Lease::new(TTL);
        let steal = async {
            assert!(lease.holds_for(TTL / 3));
            // The holder's token is gone: as if the lease lapsed and another took it.
            store.take("l").await.unwrap();
            assert!(store.put_once("l", "thief", TTL * 10).await.unwrap());
            tokio::time::sleep(EVERY * 3).await;
            lease.holds_for(Duration::ZERO)
        };
        let r = under_lease(&store, "l", &lease, EVERY, steal).await;
        assert_eq!(r, Ok(false), "told at the next renewal, not cut short");
        assert_eq!(
            store.take("l").await.unwrap().as_deref(),
            Some("thief"),
            "not released: it is the thief's"
        );
    }

    #[tokio::test]
    async fn a_lease_the_store_stops_confirming_runs_out_for_its_holder() {
        let lease = Lease::new(TTL);
        lease.confirmed(Instant::now());
        assert!(lease.holds_for(TTL / 2));
        tokio::time::sleep(TTL / 2).await;
        assert!(
            !lease.holds_for(TTL / 2),
            "a step this long could outlast it"
        );
        assert!(lease.holds_for(Duration::ZERO));
        tokio::time::sleep(TTL / 2).await;
        assert!(
            !lease.holds_for(Duration::ZERO),
            "lapsed, as the store would have it"
        );
    }
}
