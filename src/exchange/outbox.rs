//! Store-and-forward delivery engine, independent of HTTP.
//!
//! Each destination (DVCQG, EMC, a partner agency…) has its own outbox rows; a worker leases due
//! rows ([`ExchangeStore::claim_due`]), hands them to a [`Deliverer`] (the HTTP adapters live
//! elsewhere), records the attempt and moves the row to `delivered`, `retrying` (exponential
//! backoff with full jitter, capped) or `dead` (permanent refusal or too many attempts).
//!
//! Guarantees and how they are obtained:
//! * At-least-once: a row leaves the queue only when a worker reports `Delivered`; a worker that
//!   dies keeps its lease until `lease_until`, after which any worker claims the row again. The
//!   counterpart de-duplicates by dossier code (MaHoSo), which every payload carries.
//! * Per-dossier order: a row is never claimed while an earlier row of the same dossier for the
//!   same destination is undelivered, so an update (CapNhatTienDoHoSoMC) never overtakes the
//!   creation (DongBoHoSoMC) — and a dead creation holds its updates until an admin acts.
//! * Poison protection: attempts are counted at claim time, so a payload that crashes or hangs
//!   the worker still reaches the dead letter after `max_attempts`.
//! * Time comes from an injectable [`Clock`]; tests simulate hours of outage without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::store::exchange::{Completion, ExchangeStore, OutboxItem, StoreError};

/// Result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Transient failure (timeout, 5xx, 429, connection refused): try again later.
    Retry(String),
    /// The counterpart refused the content (4xx): retrying cannot help → dead letter.
    Permanent(String),
}

/// Sends one outbox item to one destination. Implementations own their timeouts; the engine
/// also bounds each call by [`EngineConfig::delivery_timeout`].
pub trait Deliverer: Send + Sync {
    fn deliver(
        &self,
        dest: &str,
        item: &OutboxItem,
    ) -> Pin<Box<dyn Future<Output = DeliveryOutcome> + Send + '_>>;
}

/// Map an HTTP status of a counterpart to an outcome: 2xx delivered; 408, 425, 429 and 5xx
/// transient; so are 401 and 403 (an expired or early-revoked credential: the next attempt
/// logs in again) and 404 (a route missing while the receiver redeploys); any other 4xx
/// permanent (the request itself is wrong; 409 included, which lienthong's own intake
/// answers for a code already filed with other content). Counterparts that answer 200 with an `error_code` body (DVCQG) must be
/// classified by the adapter before calling this.
pub fn classify_http_status(status: u16, detail: &str) -> DeliveryOutcome {
    match status {
        200..=299 => DeliveryOutcome::Delivered,
        401 | 403 | 404 | 408 | 425 | 429 | 500..=599 => {
            DeliveryOutcome::Retry(format!("HTTP {status}: {detail}"))
        }
        400..=499 => DeliveryOutcome::Permanent(format!("HTTP {status}: {detail}")),
        _ => DeliveryOutcome::Retry(format!("unexpected HTTP {status}: {detail}")),
    }
}

/// Exponential backoff: the ceiling after attempt `n` is `min(cap, base · 2^(n-1))` and the
/// actual delay is uniform in `[0, ceiling]` ("full jitter"), which spreads the retries of many
/// items that failed together when a counterpart comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base_ms: i64,
    pub cap_ms: i64,
    /// Attempts after which a still-failing item goes to the dead letter.
    pub max_attempts: u32,
}

impl Default for BackoffPolicy {
    /// 2 s base, 1 h cap, 48 attempts: roughly a day of retries, so a weekend-long outage of a
    /// national system is bridged by an admin retry rather than silently lost.
    fn default() -> Self {
        BackoffPolicy {
            base_ms: 2_000,
            cap_ms: 3_600_000,
            max_attempts: 48,
        }
    }
}

impl BackoffPolicy {
    pub fn ceiling_ms(&self, attempt: u32) -> i64 {
        let exp = attempt.saturating_sub(1).min(62);
        self.base_ms
            .checked_mul(1i64 << exp)
            .map_or(self.cap_ms, |v| v.min(self.cap_ms))
    }

    pub fn delay_ms(&self, attempt: u32, jitter: &mut Jitter) -> i64 {
        jitter.up_to(self.ceiling_ms(attempt))
    }
}

/// Small deterministic PRNG (SplitMix64) for jitter: seedable in tests, seeded from the OS in
/// production. Not used for anything security-relevant.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn from_seed(seed: u64) -> Self {
        Jitter(seed)
    }

    pub fn from_entropy() -> Self {
        let mut b = [0u8; 8];
        if aws_lc_rs::rand::fill(&mut b).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9);
            b = t.to_le_bytes();
        }
        Jitter(u64::from_le_bytes(b))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]` (modulo bias is irrelevant at these ranges).
    pub fn up_to(&mut self, max: i64) -> i64 {
        if max <= 0 {
            return 0;
        }
        (self.next_u64() % (max as u64 + 1)) as i64
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Lease owner name; unique per worker process.
    pub worker_id: String,
    /// Lease length. Must exceed `delivery_timeout`, or a slow delivery could be duplicated.
    pub lease_ms: i64,
    /// Items claimed (and delivered concurrently) per tick.
    pub batch: usize,
    /// Deliveries this worker has in flight to one destination at most, so that a
    /// destination that hangs holds only part of the slots.
    pub per_destination: usize,
    pub delivery_timeout: Duration,
    pub backoff: BackoffPolicy,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            // Unique per process start, not only per pid: leases are fenced by owner,
            // and in containers every node's gateway may be pid 1.
            worker_id: {
                let mut r = [0u8; 8];
                let _ = aws_lc_rs::rand::fill(&mut r);
                let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
                format!("worker-{}-{hex}", std::process::id())
            },
            lease_ms: 120_000,
            batch: 32,
            per_destination: 16,
            delivery_timeout: Duration::from_secs(60),
            backoff: BackoffPolicy::default(),
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub claimed: usize,
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
    /// Completions refused because the lease had passed to another worker.
    pub lease_lost: usize,
    /// Deliveries whose task panicked; their lease simply expires.
    pub abandoned: usize,
}

pub struct OutboxEngine {
    store: Arc<dyn ExchangeStore>,
    deliverer: Arc<dyn Deliverer>,
    clock: Arc<dyn Clock>,
    cfg: EngineConfig,
    jitter: Mutex<Jitter>,
}

impl OutboxEngine {
    pub fn new(
        store: Arc<dyn ExchangeStore>,
        deliverer: Arc<dyn Deliverer>,
        clock: Arc<dyn Clock>,
        cfg: EngineConfig,
    ) -> Self {
        OutboxEngine {
            store,
            deliverer,
            clock,
            cfg,
            jitter: Mutex::new(Jitter::from_entropy()),
        }
    }

    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = Mutex::new(jitter);
        self
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Turn an attempt's outcome into the row's next state.
    pub fn decide(&self, item: &OutboxItem, outcome: DeliveryOutcome, now_ms: i64) -> Completion {
        let max = self.cfg.backoff.max_attempts;
        match outcome {
            DeliveryOutcome::Delivered => Completion::Delivered,
            DeliveryOutcome::Permanent(reason) => Completion::Dead {
                reason: format!("permanent failure: {reason}"),
            },
            DeliveryOutcome::Retry(reason) if item.attempts >= max => Completion::Dead {
                reason: format!(
                    "gave up after {} attempts; last error: {reason}",
                    item.attempts
                ),
            },
            DeliveryOutcome::Retry(reason) => {
                let delay = {
                    let mut j = self.jitter.lock().unwrap_or_else(|p| p.into_inner());
                    self.cfg.backoff.delay_ms(item.attempts, &mut j)
                };
                Completion::Retry {
                    reason,
                    next_attempt_at: now_ms + delay,
                }
            }
        }
    }

    /// Claim what is due, deliver it concurrently, record every outcome.
    pub async fn run_once(&self) -> Result<TickReport, StoreError> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut report = self.claim_into(self.cfg.batch, &mut tasks).await?;
        while let Some(joined) = tasks.join_next().await {
            self.record(joined, &mut report).await?;
        }
        Ok(report)
    }

    /// Claims up to `limit` due items and starts delivering them in `tasks`.
    async fn claim_into(
        &self,
        limit: usize,
        tasks: &mut Deliveries,
    ) -> Result<TickReport, StoreError> {
        let now = self.clock.now_ms();
        let items = self
            .store
            .claim_due(
                self.cfg.worker_id.clone(),
                now,
                self.cfg.lease_ms,
                limit,
                self.cfg.per_destination,
            )
            .await?;
        let mut report = TickReport {
            claimed: items.len(),
            ..TickReport::default()
        };
        for item in items {
            if item.attempts > self.cfg.backoff.max_attempts {
                // Only reachable when earlier attempts never finished (worker crash or hang
                // while holding the lease): stop feeding a poison message to workers.
                let c = Completion::Dead {
                    reason: format!(
                        "attempt {} exceeds the maximum of {}; earlier attempts did not finish",
                        item.attempts, self.cfg.backoff.max_attempts
                    ),
                };
                self.finish(&item, c, &mut report).await?;
                continue;
            }
            let deliverer = self.deliverer.clone();
            let timeout = self.cfg.delivery_timeout;
            tasks.spawn(async move {
                let outcome = match tokio::time::timeout(
                    timeout,
                    deliverer.deliver(&item.destination, &item),
                )
                .await
                {
                    Ok(o) => o,
                    Err(_) => DeliveryOutcome::Retry(format!("no answer within {timeout:?}")),
                };
                (item, outcome)
            });
        }
        Ok(report)
    }

    /// Stores the outcome of one finished delivery.
    async fn record(
        &self,
        joined: Result<(OutboxItem, DeliveryOutcome), tokio::task::JoinError>,
        report: &mut TickReport,
    ) -> Result<(), StoreError> {
        let Ok((item, outcome)) = joined else {
            report.abandoned += 1;
            return Ok(());
        };
        let c = self.decide(&item, outcome, self.clock.now_ms());
        self.finish(&item, c, report).await
    }

    async fn finish(
        &self,
        item: &OutboxItem,
        c: Completion,
        report: &mut TickReport,
    ) -> Result<(), StoreError> {
        let kind = match &c {
            Completion::Delivered => 0,
            Completion::Retry { .. } => 1,
            Completion::Dead { .. } => 2,
        };
        let applied = self
            .store
            .complete(
                item.id,
                item.attempts,
                self.cfg.worker_id.clone(),
                c,
                self.clock.now_ms(),
            )
            .await?;
        match (applied, kind) {
            (false, _) => report.lease_lost += 1,
            (true, 0) => report.delivered += 1,
            (true, 1) => report.retried += 1,
            _ => report.dead += 1,
        }
        Ok(())
    }

    /// Worker loop for the gateway. Up to `batch` deliveries are in flight at once, and a
    /// slot is refilled as soon as its delivery ends: one slow destination (a counterpart
    /// that times out instead of refusing) holds only the slots of its own items, not
    /// every other destination's deliveries behind a batch that waits for its slowest.
    /// With nothing due it sleeps `idle_poll` (real time). On `shutdown` it claims nothing
    /// more and waits for the deliveries in progress (each bounded by `delivery_timeout`)
    /// to be recorded. `on_tick` sees every claim's and every completion's result
    /// (logging, metrics); a store error only delays the next claim.
    pub async fn run(
        &self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        idle_poll: Duration,
        on_tick: &(dyn Fn(&Result<TickReport, StoreError>) + Send + Sync),
    ) {
        let mut tasks = Deliveries::new();
        let slots = self.cfg.batch.max(1);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut claimed = 0;
            if tasks.len() < slots {
                let r = self.claim_into(slots - tasks.len(), &mut tasks).await;
                claimed = r.as_ref().map_or(0, |t| t.claimed);
                on_tick(&r);
            }
            if claimed > 0 && tasks.len() < slots {
                continue; // more may be due
            }
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let mut report = TickReport::default();
                    let r = self.record(joined, &mut report).await.map(|()| report);
                    on_tick(&r);
                }
                _ = tokio::time::sleep(idle_poll), if tasks.len() < slots => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        while let Some(joined) = tasks.join_next().await {
            let mut report = TickReport::default();
            let r = self.record(joined, &mut report).await.map(|()| report);
            on_tick(&r);
        }
    }
}

/// Deliveries in flight: each task yields its item and outcome.
type Deliveries = tokio::task::JoinSet<(OutboxItem, DeliveryOutcome)>;

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::super::dossier::tests::sample_dossier;
    use super::super::dossier::{Event, StatusChange, TrangThaiHoSo};
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::exchange::tests::{open_with, TempDir, T0};
    use crate::store::exchange::{OutboxState, SqliteStore};

    #[test]
    fn worker_ids_differ_between_engines_of_one_process() {
        let (a, b) = (EngineConfig::default(), EngineConfig::default());
        assert_ne!(a.worker_id, b.worker_id);
        assert!(a
            .worker_id
            .starts_with(&format!("worker-{}-", std::process::id())));
    }

    const HOUR: i64 = 3_600_000;

    #[derive(Debug, Clone)]
    struct Call {
        dest: String,
        code: String,
        seq: i64,
        at: i64,
        ok: bool,
    }

    /// Simulated counterparts driven by the manual clock.
    struct Sim {
        clock: Arc<ManualClock>,
        /// Destination → down (503) until this time.
        down_until: Mutex<HashMap<String, i64>>,
        /// (dest, code, seq) → remaining transient failures.
        flaky: Mutex<HashMap<(String, String, i64), u32>>,
        /// (dest, code) refused with HTTP 400.
        refused: Mutex<HashSet<(String, String)>>,
        log: Mutex<Vec<Call>>,
    }

    impl Sim {
        fn new(clock: Arc<ManualClock>) -> Arc<Self> {
            Arc::new(Sim {
                clock,
                down_until: Mutex::new(HashMap::new()),
                flaky: Mutex::new(HashMap::new()),
                refused: Mutex::new(HashSet::new()),
                log: Mutex::new(Vec::new()),
            })
        }

        fn outcome(&self, dest: &str, item: &OutboxItem) -> DeliveryOutcome {
            let now = self.clock.now_ms();
            let key = (dest.to_string(), item.dossier_code.clone());
            if self
                .down_until
                .lock()
                .unwrap()
                .get(dest)
                .is_some_and(|t| now < *t)
            {
                return classify_http_status(503, "Service Unavailable");
            }
            if self.refused.lock().unwrap().contains(&key) {
                return classify_http_status(400, "MaTTHC không tồn tại");
            }
            let mut flaky = self.flaky.lock().unwrap();
            if let Some(n) = flaky.get_mut(&(key.0, key.1, item.event_seq)) {
                if *n > 0 {
                    *n -= 1;
                    return DeliveryOutcome::Retry("connection reset".into());
                }
            }
            DeliveryOutcome::Delivered
        }

        fn calls(&self) -> Vec<Call> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Deliverer for Sim {
        fn deliver(
            &self,
            dest: &str,
            item: &OutboxItem,
        ) -> Pin<Box<dyn Future<Output = DeliveryOutcome> + Send + '_>> {
            let outcome = self.outcome(dest, item);
            // Payload carries the dossier code: the counterpart's idempotency key.
            assert!(item.payload.contains(&item.dossier_code) || item.event_seq > 0);
            self.log.lock().unwrap().push(Call {
                dest: dest.to_string(),
                code: item.dossier_code.clone(),
                seq: item.event_seq,
                at: self.clock.now_ms(),
                ok: outcome == DeliveryOutcome::Delivered,
            });
            Box::pin(async move { outcome })
        }
    }

    fn engine(
        store: &Arc<SqliteStore>,
        sim: &Arc<Sim>,
        clock: &Arc<ManualClock>,
        worker: &str,
        backoff: BackoffPolicy,
    ) -> OutboxEngine {
        OutboxEngine::new(
            store.clone(),
            sim.clone(),
            clock.clone(),
            EngineConfig {
                worker_id: worker.into(),
                lease_ms: 60_000,
                batch: 16,
                per_destination: 16,
                delivery_timeout: Duration::from_secs(5),
                backoff,
            },
        )
        .with_jitter(Jitter::from_seed(7))
    }

    /// Run the engine in simulated time: when nothing is due, jump to the next due instant.
    /// Returns when nothing claimable is left (delivered, dead, or blocked behind a dead item).
    async fn drain(engine: &OutboxEngine, store: &SqliteStore, clock: &ManualClock, limit_ms: i64) {
        for _ in 0..100_000 {
            let r = engine.run_once().await.unwrap();
            if r.claimed > 0 {
                continue;
            }
            match store.next_due().await.unwrap() {
                None => return,
                Some(t) => {
                    assert!(t <= limit_ms, "still queued at the simulation limit");
                    clock.set_ms(t.max(clock.now_ms()));
                }
            }
        }
        panic!("simulation did not settle");
    }

    fn dests() -> Vec<String> {
        vec!["dvcqg".into(), "emc".into()]
    }

    fn status(at: &str, s: u8) -> Event {
        Event::Status(StatusChange {
            status: TrangThaiHoSo::from_code(s).unwrap(),
            at: at.into(),
            comment: None,
            fees: vec![],
        })
    }

    fn dossier_code(i: usize) -> String {
        format!("000.00.01.H22-250715-{:04}", i + 1)
    }

    async fn accept_n(store: &SqliteStore, n: usize, with_events: bool) -> Vec<String> {
        let mut codes = Vec::new();
        for i in 0..n {
            let mut d = sample_dossier();
            d.code = Some(dossier_code(i));
            let code = store
                .accept_dossier(d, None, dests())
                .await
                .unwrap()
                .receipt
                .dossier_code;
            if with_events {
                store
                    .append_event(code.clone(), status("20250715100000", 4), None, dests())
                    .await
                    .unwrap();
                store
                    .append_event(code.clone(), status("20250716100000", 9), None, dests())
                    .await
                    .unwrap();
            }
            codes.push(code);
        }
        codes
    }

    /// For each (destination, dossier): no call for seq k happens before seq k-1 succeeded.
    fn assert_in_order(calls: &[Call]) {
        let mut delivered: HashMap<(String, String), i64> = HashMap::new();
        for c in calls {
            let key = (c.dest.clone(), c.code.clone());
            let done = delivered.get(&key).copied().unwrap_or(-1);
            assert_eq!(c.seq, done + 1, "out of order call {c:?}");
            if c.ok {
                delivered.insert(key, c.seq);
            }
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = BackoffPolicy {
            base_ms: 1_000,
            cap_ms: 60_000,
            max_attempts: 1_000,
        };
        let ceilings: Vec<i64> = (1..=8).map(|a| p.ceiling_ms(a)).collect();
        assert_eq!(
            ceilings,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
        assert_eq!(p.ceiling_ms(500), 60_000, "no overflow far past the cap");
        let mut j = Jitter::from_seed(42);
        let mut means = Vec::new();
        for attempt in 1..=9 {
            let samples: Vec<i64> = (0..4_000).map(|_| p.delay_ms(attempt, &mut j)).collect();
            let ceiling = p.ceiling_ms(attempt);
            assert!(samples.iter().all(|d| (0..=ceiling).contains(d)));
            let distinct: HashSet<i64> = samples.iter().copied().collect();
            assert!(distinct.len() > 500, "jitter spreads retries");
            let mean = samples.iter().sum::<i64>() as f64 / samples.len() as f64;
            let expected = ceiling as f64 / 2.0;
            assert!(
                (mean - expected).abs() < expected * 0.1,
                "attempt {attempt}: mean {mean}"
            );
            means.push(mean);
        }
        assert!(
            means.windows(2).take(6).all(|w| w[1] > w[0] * 1.6),
            "{means:?}"
        );
        assert!(
            (means[8] - means[7]).abs() < 60_000.0 * 0.1,
            "capped: {means:?}"
        );
    }

    #[tokio::test]
    async fn engine_schedules_retries_inside_the_backoff_window() {
        let dir = TempDir::new("window");
        let clock = Arc::new(ManualClock::at_ms(T0));
        let store = open_with(&dir, clock.clone(), 1_000);
        let sim = Sim::new(clock.clone());
        sim.down_until
            .lock()
            .unwrap()
            .insert("dvcqg".into(), i64::MAX);
        let policy = BackoffPolicy {
            base_ms: 1_000,
            cap_ms: 10_000,
            max_attempts: 8,
        };
        let eng = engine(&store, &sim, &clock, "w", policy);
        accept_n(&store, 1, false).await;
        for attempt in 1..=7u32 {
            clock.set_ms(store.next_due().await.unwrap().unwrap().max(clock.now_ms()));
            let now = clock.now_ms();
            let r = eng.run_once().await.unwrap();
            assert!(r.retried >= 1);
            let retrying = store
                .list_outbox(Some(OutboxState::Retrying), 0, 10)
                .await
                .unwrap();
            let it = retrying.iter().find(|i| i.destination == "dvcqg").unwrap();
            assert_eq!(it.attempts, attempt);
            assert!(
                it.next_attempt_at >= now && it.next_attempt_at <= now + policy.ceiling_ms(attempt)
            );
        }
        clock.set_ms(store.next_due().await.unwrap().unwrap().max(clock.now_ms()));
        assert_eq!(eng.run_once().await.unwrap().dead, 1);
        let dead = store
            .list_outbox(Some(OutboxState::Dead), 0, 10)
            .await
            .unwrap();
        assert!(dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("gave up after 8 attempts"));
        assert_eq!(store.attempts(dead[0].id).await.unwrap().len(), 8);
    }

    #[tokio::test]
    async fn update_never_overtakes_creation() {
        let dir = TempDir::new("order");
        let clock = Arc::new(ManualClock::at_ms(T0));
        let store = open_with(&dir, clock.clone(), 10_000);
        let sim = Sim::new(clock.clone());
        let codes = accept_n(&store, 5, true).await;
        // The creation of the first dossier fails 5 times at DVCQG while its updates wait.
        sim.flaky
            .lock()
            .unwrap()
            .insert(("dvcqg".into(), codes[0].clone(), 0), 5);
        sim.flaky
            .lock()
            .unwrap()
            .insert(("emc".into(), codes[1].clone(), 1), 3);
        let eng = engine(&store, &sim, &clock, "w", BackoffPolicy::default());
        // Whatever is claimed while the creation is retrying never includes its updates.
        eng.run_once().await.unwrap();
        let leased = store
            .claim_due("probe".into(), clock.now_ms() + HOUR, 1, 100, usize::MAX)
            .await
            .unwrap();
        assert!(leased
            .iter()
            .all(|i| !(i.destination == "dvcqg" && i.dossier_code == codes[0] && i.event_seq > 0)));
        // Let the probe's 1 ms leases lapse, then run to completion.
        clock.advance_ms(HOUR + 10);
        drain(&eng, &store, &clock, T0 + 24 * HOUR).await;
        let calls = sim.calls();
        assert_in_order(&calls);
        let delivered = store
            .list_outbox(Some(OutboxState::Delivered), 0, 1_000)
            .await
            .unwrap();
        assert_eq!(delivered.len(), 5 * 3 * 2);
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.dest == "dvcqg" && c.code == codes[0] && c.seq == 0)
                .count(),
            6
        );
    }

    #[tokio::test]
    async fn counterpart_down_for_long_then_everything_delivered() {
        let dir = TempDir::new("outage");
        let clock = Arc::new(ManualClock::at_ms(T0));
        let store = open_with(&dir, clock.clone(), 10_000);
        let sim = Sim::new(clock.clone());
        // DVCQG is down for 30 simulated hours; EMC is up.
        sim.down_until
            .lock()
            .unwrap()
            .insert("dvcqg".into(), T0 + 30 * HOUR);
        let codes = accept_n(&store, 20, true).await;
        let policy = BackoffPolicy {
            base_ms: 2_000,
            cap_ms: HOUR,
            max_attempts: 100,
        };
        let eng = engine(&store, &sim, &clock, "w", policy);
        // More intake arrives during the outage.
        eng.run_once().await.unwrap();
        clock.advance_ms(5 * HOUR);
        for (i, code) in codes.iter().enumerate().take(5) {
            store
                .append_event(
                    code.clone(),
                    status(&format!("2025071{}100000", 7 + i % 2), 10),
                    None,
                    dests(),
                )
                .await
                .unwrap();
        }
        drain(&eng, &store, &clock, T0 + 72 * HOUR).await;
        let calls = sim.calls();
        assert_in_order(&calls);
        let all = store.list_outbox(None, 0, 10_000).await.unwrap();
        assert_eq!(all.len(), 20 * 3 * 2 + 5 * 2);
        assert!(
            all.iter().all(|i| i.state == OutboxState::Delivered),
            "all delivered, none dead"
        );
        let last_ok = calls
            .iter()
            .filter(|c| c.dest == "dvcqg")
            .map(|c| c.at)
            .max()
            .unwrap();
        assert!(last_ok >= T0 + 30 * HOUR);
        // EMC did not wait for DVCQG.
        let emc_done = calls
            .iter()
            .filter(|c| c.dest == "emc")
            .map(|c| c.at)
            .max()
            .unwrap();
        assert!(emc_done < T0 + 6 * HOUR);
        let dvcqg_calls = calls.iter().filter(|c| c.dest == "dvcqg").count();
        eprintln!(
            "outage: {} DVCQG calls for 70 items over {:.1} simulated hours; finished {:.2} h \
             after recovery",
            dvcqg_calls,
            (clock.now_ms() - T0) as f64 / HOUR as f64,
            (last_ok - (T0 + 30 * HOUR)) as f64 / HOUR as f64
        );
        // Every attempt is on record.
        let mut logged = 0;
        for i in &all {
            logged += store.attempts(i.id).await.unwrap().len();
        }
        assert_eq!(logged, calls.len());
        assert_eq!(store.stats().spool_used, 0);
    }

    #[tokio::test]
    async fn permanent_4xx_goes_to_dead_letter() {
        let dir = TempDir::new("permanent");
        let clock = Arc::new(ManualClock::at_ms(T0));
        let store = open_with(&dir, clock.clone(), 1_000);
        let sim = Sim::new(clock.clone());
        let codes = accept_n(&store, 2, true).await;
        sim.refused
            .lock()
            .unwrap()
            .insert(("dvcqg".into(), codes[0].clone()));
        let eng = engine(&store, &sim, &clock, "w", BackoffPolicy::default());
        drain(&eng, &store, &clock, T0 + 24 * HOUR).await;
        let dead = store
            .list_outbox(Some(OutboxState::Dead), 0, 100)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].dossier_code.as_str(), dead[0].event_seq),
            (codes[0].as_str(), 0)
        );
        assert_eq!(dead[0].attempts, 1, "a 4xx is not retried");
        let reason = dead[0].last_error.clone().unwrap();
        assert!(
            reason.contains("HTTP 400") && reason.contains("MaTTHC"),
            "{reason}"
        );
        // Its updates wait behind the dead creation; everything else went through.
        let timeline = store.timeline(codes[0].clone()).await.unwrap().unwrap();
        let dvcqg: Vec<OutboxState> = timeline
            .deliveries
            .iter()
            .filter(|d| d.destination == "dvcqg")
            .map(|d| d.state)
            .collect();
        assert_eq!(
            dvcqg,
            [
                OutboxState::Dead,
                OutboxState::Pending,
                OutboxState::Pending
            ]
        );
        assert!(timeline
            .deliveries
            .iter()
            .filter(|d| d.destination == "emc")
            .all(|d| d.state == OutboxState::Delivered));
        assert_eq!(
            store
                .list_outbox(Some(OutboxState::Delivered), 0, 100)
                .await
                .unwrap()
                .len(),
            9
        );
        // Classification of counterpart statuses.
        assert_eq!(classify_http_status(201, ""), DeliveryOutcome::Delivered);
        // Passing conditions: a credential expired early, a receiver redeploying.
        for s in [401, 403, 404, 408, 425, 429, 500, 503] {
            assert!(matches!(
                classify_http_status(s, ""),
                DeliveryOutcome::Retry(_)
            ));
        }
        // The request itself is wrong.
        for s in [400, 405, 409, 410, 413, 415, 422] {
            assert!(matches!(
                classify_http_status(s, ""),
                DeliveryOutcome::Permanent(_)
            ));
        }
    }

    #[tokio::test]
    async fn dead_letter_retry_from_admin() {
        let dir = TempDir::new("admin");
        let clock = Arc::new(ManualClock::at_ms(T0));
        let store = open_with(&dir, clock.clone(), 1_000);
        let sim = Sim::new(clock.clone());
        let codes = accept_n(&store, 2, true).await;
        sim.refused
            .lock()
            .unwrap()
            .insert(("dvcqg".into(), codes[0].clone()));
        let eng = engine(&store, &sim, &clock, "w", BackoffPolicy::default());
        drain(&eng, &store, &clock, T0 + 24 * HOUR).await;
        let dead = store
            .list_outbox(Some(OutboxState::Dead), 0, 100)
            .await
            .unwrap();
        let id = dead[0].id;
        let spool_before = store.stats().spool_used;

        // The integrator fixes the procedure mapping; an admin re-queues the dead letter.
        sim.refused.lock().unwrap().clear();
        clock.advance_ms(HOUR);
        assert!(store.retry_dead(id, clock.now_ms()).await.unwrap());
        assert!(
            !store.retry_dead(id, clock.now_ms()).await.unwrap(),
            "only dead items"
        );
        assert_eq!(store.stats().spool_used, spool_before + 1);
        drain(&eng, &store, &clock, T0 + 48 * HOUR).await;
        let all = store.list_outbox(None, 0, 100).await.unwrap();
        assert!(all.iter().all(|i| i.state == OutboxState::Delivered));
        assert_in_order(&sim.calls());
        let log = store.attempts(id).await.unwrap();
        let outcomes: Vec<Option<&str>> = log.iter().map(|a| a.outcome.as_deref()).collect();
        assert_eq!(outcomes, [Some("dead"), Some("delivered")]);
        assert_eq!(
            log[1].attempt, 1,
            "attempt counter restarts after an admin retry"
        );

        // Cancel: an undelivered item leaves the queue and frees the spool; delivered cannot be.
        store
            .append_event(
                codes[1].clone(),
                status("20250717100000", 10),
                None,
                dests(),
            )
            .await
            .unwrap();
        let pending = store
            .list_outbox(Some(OutboxState::Pending), 0, 10)
            .await
            .unwrap();
        assert_eq!(pending.len(), 2);
        assert!(store
            .cancel(pending[0].id, "sent by hand".into(), clock.now_ms())
            .await
            .unwrap());
        assert!(!store
            .cancel(all[0].id, "x".into(), clock.now_ms())
            .await
            .unwrap());
        drain(&eng, &store, &clock, T0 + 72 * HOUR).await;
        let cancelled = store
            .list_outbox(Some(OutboxState::Cancelled), 0, 10)
            .await
            .unwrap();
        assert_eq!(cancelled.len(), 1);
        assert!(cancelled[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("sent by hand"));
        assert_eq!(store.stats().spool_used, 0);
        assert!(!sim
            .calls()
            .iter()
            .any(|c| c.code == codes[1] && c.seq == 3 && c.dest == cancelled[0].destination));
    }

    #[tokio::test]
    async fn crash_after_commit_redelivers_after_restart() {
        let dir = TempDir::new("crash");
        let clock = Arc::new(ManualClock::at_ms(T0));
        let id;
        {
            let store = open_with(&dir, clock.clone(), 1_000);
            let receipt = store
                .accept_dossier(sample_dossier(), None, vec!["dvcqg".into()])
                .await
                .unwrap()
                .receipt;
            assert_eq!(receipt.destinations, ["dvcqg"]);
            // A worker leases the item, then the process dies before recording anything.
            let leased = store
                .claim_due("w-old".into(), T0, 60_000, 10, usize::MAX)
                .await
                .unwrap();
            assert_eq!(leased.len(), 1);
            id = leased[0].id;
            // A second worker cannot take the leased item.
            assert!(store
                .claim_due("w-2".into(), T0, 60_000, 10, usize::MAX)
                .await
                .unwrap()
                .is_empty());
        } // dropped without completing the lease or any cleanup

        let store = open_with(&dir, clock.clone(), 1_000);
        let sim = Sim::new(clock.clone());
        let eng = engine(&store, &sim, &clock, "w-new", BackoffPolicy::default());
        assert_eq!(
            eng.run_once().await.unwrap().claimed,
            0,
            "lease still valid"
        );
        assert_eq!(store.next_due().await.unwrap(), Some(T0 + 60_001));
        drain(&eng, &store, &clock, T0 + HOUR).await;
        let item = &store.list_outbox(None, 0, 10).await.unwrap()[0];
        assert_eq!(item.state, OutboxState::Delivered);
        assert_eq!(sim.calls().len(), 1);
        let log = store.attempts(id).await.unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(
            (log[0].worker.as_str(), log[0].outcome.as_deref()),
            ("w-old", None)
        );
        assert_eq!(
            (log[1].worker.as_str(), log[1].outcome.as_deref()),
            ("w-new", Some("delivered"))
        );
        // The old worker's late answer cannot overwrite the new owner's result.
        assert!(!store
            .complete(
                id,
                1,
                "w-old".into(),
                Completion::Dead {
                    reason: "late".into()
                },
                clock.now_ms()
            )
            .await
            .unwrap());
        assert_eq!(
            store.list_outbox(None, 0, 10).await.unwrap()[0].state,
            OutboxState::Delivered
        );
    }

    /// A deliverer for which `dvcqg` never answers (until the delivery times out) and
    /// every other destination takes its items at once, counting them.
    struct HalfStuck(std::sync::atomic::AtomicUsize);

    impl Deliverer for HalfStuck {
        fn deliver(
            &self,
            dest: &str,
            _item: &OutboxItem,
        ) -> Pin<Box<dyn Future<Output = DeliveryOutcome> + Send + '_>> {
            if dest == "dvcqg" {
                return Box::pin(std::future::pending());
            }
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { DeliveryOutcome::Delivered })
        }
    }

    /// Files `dossiers` dossiers (one item each for `dvcqg` and `emc`) and runs the
    /// worker loop with `batch` slots and `per_destination`; every `emc` item must be
    /// delivered while the `dvcqg` ones hang.
    async fn emc_delivered_beside_a_hanging_dvcqg(
        dossiers: usize,
        batch: usize,
        per_destination: usize,
    ) {
        let dir = TempDir::new("hol");
        let clock = Arc::new(ManualClock::at_ms(T0));
        let store = open_with(&dir, clock.clone(), 1_000);
        accept_n(&store, dossiers, false).await;
        let sink = Arc::new(HalfStuck(std::sync::atomic::AtomicUsize::new(0)));
        let eng = OutboxEngine::new(
            store.clone(),
            sink.clone(),
            clock.clone(),
            EngineConfig {
                worker_id: "w".into(),
                lease_ms: 600_000,
                batch,
                per_destination,
                delivery_timeout: Duration::from_secs(300),
                backoff: BackoffPolicy::default(),
            },
        );
        let (tx, rx) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(async move {
            eng.run(rx, Duration::from_millis(1), &|_| {}).await;
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.load(Ordering::SeqCst) < dossiers {
            assert!(
                std::time::Instant::now() < deadline,
                "the emc items waited behind the hanging dvcqg ones"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tx.send(true);
        worker.abort();
    }

    /// A counterpart that never answers (until its deliveries time out) holds only the
    /// slots of its own items: the loop refills the others as they finish.
    #[tokio::test]
    async fn a_hanging_destination_does_not_hold_back_the_others() {
        // Four slots for six items: the third dossier's items wait for a slot.
        emc_delivered_beside_a_hanging_dvcqg(3, 4, 4).await;
    }

    /// More hanging items than slots: without a bound per destination, they would take
    /// every slot and the rest of `emc` would wait for the delivery timeout.
    #[tokio::test]
    async fn a_hanging_destination_holds_only_its_share_of_the_slots() {
        emc_delivered_beside_a_hanging_dvcqg(6, 4, 2).await;
    }

    #[tokio::test]
    async fn worker_loop_stops_on_shutdown() {
        let dir = TempDir::new("loop");
        let clock = Arc::new(ManualClock::at_ms(T0));
        let store = open_with(&dir, clock.clone(), 1_000);
        let sim = Sim::new(clock.clone());
        accept_n(&store, 3, false).await;
        let eng = engine(&store, &sim, &clock, "w", BackoffPolicy::default());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let ticks = AtomicI64::new(0);
        let on_tick = |r: &Result<TickReport, StoreError>| {
            assert!(r.is_ok());
            if ticks.fetch_add(1, Ordering::SeqCst) >= 2 {
                let _ = tx.send(true);
            }
        };
        eng.run(rx, Duration::from_millis(1), &on_tick).await;
        assert_eq!(
            store
                .list_outbox(Some(OutboxState::Delivered), 0, 10)
                .await
                .unwrap()
                .len(),
            6
        );
    }
}
