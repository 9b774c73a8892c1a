//! Time as the parts with expiry, freshness or retry policies see it, injectable so that
//! their tests run hours of policy in simulated time without sleeping: JWKS refresh and
//! token expiry (`auth`), lookup and response freshness (`cache`), delivery retries and
//! leases (`store::exchange`, `exchange::outbox`).
//!
//! One trait serves them all: `now` is monotonic (intervals, freshness), `wall` is the
//! calendar (token `exp`/`nbf`, timestamps stored or reported); the Unix forms are derived
//! from `wall`.
//!
//! [`mono_ms`] is the request path's cheap millisecond clock (idle stamps, pool ages,
//! breaker and budget windows): read on every proxied request, not simulated.
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic now: for ages, intervals and freshness.
    fn now(&self) -> Instant;

    /// The wall clock.
    fn wall(&self) -> SystemTime;

    /// The wall clock as time since the Unix epoch (zero before it).
    fn since_epoch(&self) -> Duration {
        self.wall()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }

    /// The wall clock in Unix milliseconds.
    fn now_ms(&self) -> i64 {
        i64::try_from(self.since_epoch().as_millis()).unwrap_or(i64::MAX)
    }
}

/// Milliseconds on a monotonic clock, never 0 (so that 0 can stand for "never"): the
/// request path's own millisecond bookkeeping — connection idle stamps, pool idle ages,
/// breaker and retry-budget windows, passive ejections. Only differences of its
/// readings mean anything.
///
/// On Linux it is the kernel's coarse clock (`CLOCK_MONOTONIC_COARSE`), which moves in
/// ticks of 1–4 ms and is read without the timestamp counter: a proxied request takes
/// about ten of these readings, and each precise one cost ~25 ns on the benchmark VM
/// (`__vdso_clock_gettime` was 6% of the gateway's user time). Everything measured in
/// microseconds (latencies in logs, metrics and audit records) uses [`Instant`].
#[cfg(target_os = "linux")]
pub fn mono_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let ms = u64::try_from(t.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000;
    ms + 1
}

/// Milliseconds on a monotonic clock, never 0 (see the Linux version).
#[cfg(not(target_os = "linux"))]
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to (tests, simulations). `advance` moves both
/// readings; `set_*` move the wall clock to a given time (backwards too, as a wall clock
/// may be set back), and the monotonic reading forward by as much, never back.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    state: Mutex<ManualState>,
}

#[derive(Debug)]
struct ManualState {
    /// How far the monotonic reading is past `start`.
    elapsed: Duration,
    /// The wall clock, since the Unix epoch.
    wall: Duration,
}

impl ManualClock {
    /// Starting at the real wall-clock time.
    pub fn new() -> Self {
        Self::at(SystemClock.since_epoch())
    }

    /// Starting at `since_epoch` on the wall clock.
    pub fn at(since_epoch: Duration) -> Self {
        ManualClock {
            start: Instant::now(),
            state: Mutex::new(ManualState {
                elapsed: Duration::ZERO,
                wall: since_epoch,
            }),
        }
    }

    /// Starting at Unix millisecond `ms` (negative: the epoch).
    pub fn at_ms(ms: i64) -> Self {
        Self::at(millis(ms))
    }

    pub fn advance(&self, by: Duration) {
        let mut s = self.lock();
        s.elapsed += by;
        s.wall += by;
    }

    /// [`ManualClock::advance`] by `ms` milliseconds (negative: not at all).
    pub fn advance_ms(&self, ms: i64) {
        self.advance(millis(ms));
    }

    /// Sets the wall clock to `since_epoch`.
    pub fn set(&self, since_epoch: Duration) {
        let mut s = self.lock();
        let forward = since_epoch.saturating_sub(s.wall);
        s.elapsed += forward;
        s.wall = since_epoch;
    }

    /// Sets the wall clock to Unix millisecond `ms`.
    pub fn set_ms(&self, ms: i64) {
        self.set(millis(ms));
    }

    fn lock(&self) -> MutexGuard<'_, ManualState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `ms` milliseconds as a duration; a negative count is none.
fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.lock().elapsed
    }
    fn wall(&self) -> SystemTime {
        UNIX_EPOCH + self.lock().wall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_never_back_monotonically() {
        let c = ManualClock::at_ms(10_000);
        let t0 = c.now();
        assert_eq!(c.now_ms(), 10_000);
        assert_eq!(c.since_epoch(), Duration::from_secs(10));
        c.advance(Duration::from_millis(1_000));
        c.advance_ms(500);
        assert_eq!(c.now_ms(), 11_500);
        assert_eq!(c.now() - t0, Duration::from_millis(1_500));
        c.set_ms(20_000);
        assert_eq!(c.now_ms(), 20_000);
        assert_eq!(c.now() - t0, Duration::from_millis(10_000));
        // The wall clock may be set back; the monotonic reading stays.
        c.set_ms(5_000);
        assert_eq!(c.now_ms(), 5_000);
        assert_eq!(c.now() - t0, Duration::from_millis(10_000));
        assert_eq!(c.wall(), UNIX_EPOCH + Duration::from_secs(5));
    }

    #[test]
    fn system_clock_unix_forms_agree_with_the_wall_clock() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let ms = SystemClock.now_ms();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(before <= ms && ms <= after, "{before} {ms} {after}");
    }
}
