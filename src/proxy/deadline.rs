//! Response deadlines for upstream requests on a coarse, per-worker clock.
//!
//! `tokio::time::timeout` reads the clock, inserts into the timer wheel and removes the
//! entry again on every request; on the proxied path that was about 5% of idgate's own
//! instructions (measured with callgrind). A deadline of seconds needs no millisecond
//! precision, so each worker's [`Deadlines`] keeps a ticker task that advances a tick
//! count every [`TICK`] and wakes the requests whose deadline has passed. A request
//! costs a slot in a vector, taken on its first pending poll and given back when it
//! ends or is dropped: no clock read and no timer.
//!
//! A deadline fires no earlier than asked and at most two ticks later.
//!
//! [`Deadlines::sleep_until`] gives the same clock to the server's header-read timeout,
//! which hyper arms for every request on a connection and drops as soon as the
//! request's head has arrived.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The clock's resolution.
pub const TICK: Duration = Duration::from_millis(100);

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

struct Slot {
    due: u64,
    waker: Waker,
    expired: bool,
}

struct Inner {
    /// Ticks since `start`, as of the ticker's last run.
    now: u64,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    ticking: bool,
}

/// One worker's deadlines. Cheap to share; the ticker task holds only a weak
/// reference, so it ends with the last owner.
pub struct Deadlines {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Deadlines {
    /// An empty set; the ticker starts with the first deadline, inside a runtime.
    pub fn new() -> Arc<Deadlines> {
        Arc::new(Deadlines {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                now: 0,
                slots: Vec::new(),
                free: Vec::new(),
                ticking: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here can leave the state half-changed, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ticks_since_start(&self) -> u64 {
        (self.start.elapsed().as_nanos() / TICK.as_nanos()) as u64
    }

    /// The first tick at or after `at`.
    fn tick_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start)
            .as_nanos()
            .div_ceil(TICK.as_nanos()) as u64
    }

    /// Wraps `future` so that it resolves to `Err(Elapsed)` once `after` has passed.
    pub fn run<F: Future>(self: &Arc<Self>, after: Duration, future: F) -> Deadline<F> {
        // Rounded up, plus one tick: the current tick may be nearly over.
        let ticks = after.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
        Deadline {
            inner: future,
            guard: Registration {
                deadlines: self.clone(),
                due: Due::After(ticks),
                slot: None,
            },
        }
    }

    /// A sleep until `at` (no earlier, at most two ticks later). It costs nothing until
    /// first polled; callers compute `at` from the system clock, so a deadline computed
    /// after an idle spell is right even though the tick count stood still.
    pub fn sleep_until(self: &Arc<Self>, at: Instant) -> CoarseSleep {
        CoarseSleep(Registration {
            deadlines: self.clone(),
            due: Due::At(self.tick_at(at)),
            slot: None,
        })
    }

    fn register(self: &Arc<Self>, due: Due, waker: Waker) -> usize {
        let mut inner = self.lock();
        if !inner.ticking {
            // The count stood still while nothing was waiting: bring it up to date.
            inner.now = self.ticks_since_start();
            inner.ticking = true;
            tokio::spawn(tick(Arc::downgrade(self)));
        }
        let slot = Slot {
            due: match due {
                Due::After(ticks) => inner.now + ticks,
                // The ticker expires a slot once `now` (rounded down) reaches it, and
                // `tick_at` rounds up: never early.
                Due::At(tick) => tick,
            },
            waker,
            expired: false,
        };
        match inner.free.pop() {
            Some(i) => {
                inner.slots[i] = Some(slot);
                i
            }
            None => {
                inner.slots.push(Some(slot));
                inner.slots.len() - 1
            }
        }
    }

    /// `Some(true)` once expired; otherwise refreshes the waker.
    fn check(&self, index: usize, waker: &Waker) -> bool {
        let mut inner = self.lock();
        match inner.slots.get_mut(index).and_then(Option::as_mut) {
            Some(slot) if slot.expired => true,
            Some(slot) => {
                if !slot.waker.will_wake(waker) {
                    slot.waker = waker.clone();
                }
                false
            }
            None => false,
        }
    }

    fn release(&self, index: usize) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get_mut(index)
            && slot.take().is_some()
        {
            inner.free.push(index);
        }
    }

    /// How many deadlines are pending (for tests).
    pub fn pending(&self) -> usize {
        let inner = self.lock();
        inner.slots.len() - inner.free.len()
    }
}

/// The ticker: advances the count and wakes what expired; stops when nothing waits, so
/// an idle worker has no timer firing.
async fn tick(deadlines: Weak<Deadlines>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let Some(deadlines) = deadlines.upgrade() else {
            return;
        };
        let now = deadlines.ticks_since_start();
        let mut expired = Vec::new();
        {
            let mut inner = deadlines.lock();
            inner.now = now;
            let mut waiting = false;
            for slot in inner.slots.iter_mut().flatten() {
                if slot.expired {
                    continue;
                }
                if slot.due <= now {
                    slot.expired = true;
                    expired.push(slot.waker.clone());
                } else {
                    waiting = true;
                }
            }
            if !waiting {
                inner.ticking = false;
            }
        }
        // Woken outside the lock: a woken task may poll (and lock) at once.
        for waker in expired {
            waker.wake();
        }
        if !deadlines.lock().ticking {
            return;
        }
    }
}

/// When a registration expires.
#[derive(Clone, Copy)]
enum Due {
    /// This many ticks after the current one: known without reading the clock.
    After(u64),
    /// At this tick (since [`Deadlines`]' start).
    At(u64),
}

/// A slot held by one [`Deadline`] or [`CoarseSleep`]; given back on drop, however the
/// future ends.
struct Registration {
    deadlines: Arc<Deadlines>,
    due: Due,
    slot: Option<usize>,
}

impl Registration {
    /// Registers on the first call; afterwards, whether the deadline has passed.
    fn expired(&mut self, cx: &Context<'_>) -> bool {
        match self.slot {
            None => {
                self.slot = Some(self.deadlines.register(self.due, cx.waker().clone()));
                false
            }
            Some(i) => {
                if self.deadlines.check(i, cx.waker()) {
                    self.slot = None;
                    self.deadlines.release(i);
                    true
                } else {
                    false
                }
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            self.deadlines.release(i);
        }
    }
}

pin_project_lite::pin_project! {
    /// A future with a deadline; see [`Deadlines::run`].
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        guard: Registration,
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            if let Some(i) = this.guard.slot.take() {
                this.guard.deadlines.release(i);
            }
            return Poll::Ready(Ok(out));
        }
        if this.guard.expired(cx) {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    }
}

/// A sleep on the coarse clock; see [`Deadlines::sleep_until`].
pub struct CoarseSleep(Registration);

impl CoarseSleep {
    /// Moves the deadline to `at`, reusing the sleep (and its clock reference).
    pub fn reset(&mut self, at: Instant) {
        if let Some(i) = self.0.slot.take() {
            self.0.deadlines.release(i);
        }
        self.0.due = Due::At(self.0.deadlines.tick_at(at));
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.expired(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests run on real time (pausing tokio's clock needs a feature that would
    /// also slow the benched binary); an outer bound turns a deadline that never fires
    /// into a failure instead of a hang.
    async fn bounded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("the deadline fired")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_future_expires_no_earlier_than_asked() {
        let deadlines = Deadlines::new();
        let start = Instant::now();
        let out =
            bounded(deadlines.run(Duration::from_millis(250), std::future::pending::<()>())).await;
        assert_eq!(out, Err(Elapsed));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert_eq!(deadlines.pending(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_fast_future_keeps_its_output_and_frees_its_slot() {
        let deadlines = Deadlines::new();
        let out = bounded(deadlines.run(Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        }))
        .await;
        assert_eq!(out, Ok(7));
        assert_eq!(deadlines.pending(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sleeps_end_at_their_deadline_and_free_their_slot() {
        let deadlines = Deadlines::new();
        let start = Instant::now();
        bounded(deadlines.sleep_until(start + Duration::from_millis(250))).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert_eq!(deadlines.pending(), 0);
        // A deadline already past ends at the next tick; a dropped sleep gives its slot back.
        bounded(deadlines.sleep_until(Instant::now() - Duration::from_secs(1))).await;
        let mut far = Box::pin(deadlines.sleep_until(Instant::now() + Duration::from_secs(60)));
        assert!(futures_util::poll!(far.as_mut()).is_pending());
        assert_eq!(deadlines.pending(), 1);
        drop(far);
        assert_eq!(deadlines.pending(), 0);
    }

    /// A reset sleep gives its slot back and ends at its new deadline, not its old one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reset_sleep_ends_at_its_new_deadline() {
        let deadlines = Deadlines::new();
        let start = Instant::now();
        let mut sleep = Box::pin(deadlines.sleep_until(start + Duration::from_millis(100)));
        assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        assert_eq!(deadlines.pending(), 1);
        sleep.reset(start + Duration::from_millis(450));
        assert_eq!(deadlines.pending(), 0);
        bounded(sleep.as_mut()).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(450), "{waited:?}");
        assert_eq!(deadlines.pending(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropped_futures_free_their_slots_and_the_ticker_restarts() {
        let deadlines = Deadlines::new();
        let mut slow =
            Box::pin(deadlines.run(Duration::from_secs(5), std::future::pending::<()>()));
        assert!(futures_util::poll!(slow.as_mut()).is_pending());
        assert_eq!(deadlines.pending(), 1);
        drop(slow);
        assert_eq!(deadlines.pending(), 0);
        // Several at once: the quick ones finish, the stuck ones expire, and every slot
        // comes back.
        let mut tasks = Vec::new();
        for i in 0..10u64 {
            let d = deadlines.clone();
            tasks.push(tokio::spawn(async move {
                let work = async move {
                    if i % 2 == 0 {
                        i
                    } else {
                        std::future::pending().await
                    }
                };
                bounded(d.run(Duration::from_millis(200), async move {
                    tokio::task::yield_now().await;
                    work.await
                }))
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let expected = if i % 2 == 0 {
                Ok(i as u64)
            } else {
                Err(Elapsed)
            };
            assert_eq!(t.await.unwrap(), expected, "task {i}");
        }
        assert_eq!(deadlines.pending(), 0);
        // Once nothing waits the ticker stops; a later deadline starts it again.
        tokio::time::sleep(3 * TICK).await;
        assert!(!deadlines.lock().ticking);
        let out =
            bounded(deadlines.run(Duration::from_millis(100), std::future::pending::<()>())).await;
        assert_eq!(out, Err(Elapsed));
    }
}
