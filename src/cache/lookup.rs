//! Cached lookups over slow or flaky sources (catalogues, code lists, admin-unit tables).
//!
//! One [`Lookup`] serves one [`LookupSpec`]. Values are canonical JSON bytes produced by a
//! [`LookupSource`] (the gateway's upstream + translation layers, or a local
//! [`super::table::FileSource`]). The rules, in order of importance:
//!
//! * **Coalescing.** Concurrent requests for a key that is not cached make one source call:
//!   cold misses go through moka's `try_get_with`, which runs one init future per key and
//!   hands its result to every waiter; refreshes of an entry that is already cached go
//!   through a small per-key "flight" (a `tokio::sync::OnceCell`) because `try_get_with`
//!   only runs when the key is absent.
//! * **Errors are never cached, and a failing source never evicts good data.** A failed
//!   refresh leaves the old entry (and its original fetch time) in place; it is served,
//!   flagged `stale`, while its age is at most `ttl + max_stale`, and an error is returned
//!   after that. A brief `failure_backoff` keeps a dead source from being called on every
//!   request while stale data is being served; cold misses are never backed off.
//! * **A purge sticks.** A fetch that was in flight when a key (or the table) was purged
//!   answers those waiting on it but is not cached: the next request asks the source.
//! * **Freshness is decided on an injectable [`Clock`]**, so tests move time by hand. moka's
//!   own per-entry expiry (real time, `ttl + max_stale` plus a margin) only collects garbage.
//!
//! The module also holds [`response::ResponseCache`], the optional cache for plain GET proxy
//! routes (HTTP caching rules as pure logic plus a moka store).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use moka::future::Cache;
use moka::ops::compute::Op;
use serde::{Serialize, Serializer};
use tokio::sync::OnceCell;

/// Fixed per-entry bookkeeping added to the serialized size by the weigher, so that a
/// cache full of tiny values is still bounded by something close to its real memory use.
const ENTRY_OVERHEAD: usize = 96;
/// Keys longer than this are refused: a lookup key is a code, and unbounded keys would let
/// one caller fill the cache with junk.
const MAX_KEY_BYTES: usize = 256;
/// Extra real time moka keeps an entry past `ttl + max_stale`, so that its timer (which runs
/// on a different clock source than ours) never removes an entry we would still serve.
const GC_MARGIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Spec
// ---------------------------------------------------------------------------------------

/// Whether a lookup is one document (a whole catalogue) or one document per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// The source is called with `None`; `get(None)` is the only valid call.
    WholeTable,
    /// The source is called with `Some(key)`; `get(Some(key))` is the only valid call.
    ByKey,
}

/// What the gateway's config says about one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupSpec {
    /// Name used in errors, stats and moka's cache name.
    pub name: String,
    pub key_mode: KeyMode,
    /// A value younger than this is fresh and served without asking the source.
    pub ttl: Duration,
    /// When set, a request that finds a value older than `ttl - refresh_ahead` (but still
    /// fresh) is served at once and one background refresh is started.
    pub refresh_ahead: Option<Duration>,
    /// When the source fails, a value is served (flagged stale) up to `ttl + max_stale` old.
    pub max_stale: Duration,
    /// When set, "not found" answers are cached this long; otherwise every request for an
    /// unknown key asks the source (concurrent ones still share one call).
    pub negative_ttl: Option<Duration>,
    /// Bound on the summed weight (serialized value + key + overhead) of the entries.
    pub capacity_bytes: u64,
    /// After a failed refresh of a cached entry, requests within this interval serve the
    /// stale value (or skip the refresh-ahead) without calling the source again. Not part of
    /// the list; it exists so a dead source is not hammered by every request. Zero
    /// disables it.
    pub failure_backoff: Duration,
}

impl LookupSpec {
    /// A spec with the conservative defaults: no refresh-ahead, no stale serving, no
    /// negative caching, 64 MiB, 1 s failure backoff.
    pub fn new(name: impl Into<String>, key_mode: KeyMode, ttl: Duration) -> Self {
        LookupSpec {
            name: name.into(),
            key_mode,
            ttl,
            refresh_ahead: None,
            max_stale: Duration::ZERO,
            negative_ttl: None,
            capacity_bytes: 64 * 1024 * 1024,
            failure_backoff: Duration::from_secs(1),
        }
    }

    /// Checks the values a config file could get wrong.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |problem: &'static str| {
            Err(SpecError {
                name: self.name.clone(),
                problem,
            })
        };
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return err("name must be non-empty letters, digits, '-' or '_'");
        }
        if self.ttl.is_zero() {
            return err("ttl must be greater than zero");
        }
        if let Some(ra) = self.refresh_ahead {
            if ra.is_zero() || ra >= self.ttl {
                return err("refresh_ahead must be greater than zero and less than ttl");
            }
        }
        if self.negative_ttl.is_some_and(|n| n.is_zero()) {
            return err("negative_ttl must be greater than zero (omit it to disable)");
        }
        if self.capacity_bytes == 0 {
            return err("capacity_bytes must be greater than zero");
        }
        Ok(())
    }
}

/// A [`LookupSpec`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lookup {name:?}: {problem}")]
pub struct SpecError {
    pub name: String,
    pub problem: &'static str,
}

// ---------------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------------

/// What a source answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The value, as canonical JSON.
    Found(Bytes),
    /// The source is healthy and says the key does not exist.
    NotFound,
}

/// Why a source could not answer. These are never cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Connection refused, 5xx, breaker open, ...
    #[error("source unavailable: {0}")]
    Unavailable(String),
    #[error("source timed out")]
    Timeout,
    /// The source answered but translation to canonical JSON failed.
    #[error("source returned unusable data: {0}")]
    BadData(String),
}

/// The boxed future a [`LookupSource`] returns (spelled out in the trait for readers).
pub type SourceFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, SourceError>> + Send + 'a>>;

/// Where a lookup's values come from. `key` is `None` for [`KeyMode::WholeTable`] lookups.
/// The returned future may borrow `self` but not `key` (copy it if needed).
pub trait LookupSource: Send + Sync {
    #[allow(clippy::type_complexity)]
    fn fetch(
        &self,
        key: Option<&str>,
    ) -> Pin<Box<dyn Future<Output = Result<Fetched, SourceError>> + Send + '_>>;
}

// ---------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------

use crate::clock::{Clock, SystemClock};

/// Locks a std mutex, ignoring poisoning: every value guarded here stays consistent even
/// if a holder panicked (they are plain stores of small values).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// A value handed to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Canonical JSON.
    pub value: Bytes,
    /// Strong entity tag including its quotes (`"…"`), from SHA-256 of `value`: equal
    /// values give equal tags whatever the key, lookup or fetch time.
    pub etag: String,
    /// When the source produced this value (wall clock), e.g. for `Last-Modified`.
    pub fetched_at: SystemTime,
    /// How old the value is now (for the `Age` header).
    pub age: Duration,
    /// The value is past its ttl and served only because the source failed.
    pub stale: bool,
    /// The value was in the cache when the request arrived (no wait on the source).
    pub from_cache: bool,
}

/// Why [`Lookup::get`] has no value to serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The source says the key does not exist (maybe from the negative cache). HTTP 404.
    #[error("lookup {lookup}: not found")]
    NotFound { lookup: String },
    /// The key does not fit the spec's key mode, or is too long. HTTP 400.
    #[error("lookup {lookup}: {problem}")]
    BadKey {
        lookup: String,
        problem: &'static str,
    },
    /// Nothing cached and the source failed. HTTP 502/503/504.
    #[error("lookup {lookup}: {source}")]
    Unavailable { lookup: String, source: SourceError },
    /// A cached value exists but is older than `ttl + max_stale` and the source failed.
    #[error("lookup {lookup}: {source}; cached value is {age:?} old, past ttl + max_stale")]
    TooStale {
        lookup: String,
        age: Duration,
        source: SourceError,
    },
}

/// Outcome of the most recent source call, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "message", rename_all = "snake_case")]
pub enum RefreshResult {
    Ok,
    Error(String),
}

/// When and how the most recent source call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefreshRecord {
    #[serde(rename = "at_unix_ms", serialize_with = "unix_ms")]
    pub at: SystemTime,
    pub key: Option<String>,
    #[serde(flatten)]
    pub result: RefreshResult,
}

fn unix_ms<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    s.serialize_u64(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Counters for `GET /admin/lookups` and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LookupStats {
    pub name: String,
    pub entries: u64,
    pub weighted_size: u64,
    pub capacity_bytes: u64,
    /// Requests answered from the cache without waiting on the source (stale included).
    pub hits: u64,
    /// Requests that waited on a source call (their own or a coalesced one).
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 before the first request.
    pub hit_ratio: f64,
    /// Hits that were served stale.
    pub stale_served: u64,
    pub source_calls: u64,
    pub source_errors: u64,
    pub last_refresh: Option<RefreshRecord>,
}

// ---------------------------------------------------------------------------------------
// Lookup
// ---------------------------------------------------------------------------------------

/// One cached value (or a cached "not found" when `value` is `None`).
struct Entry {
    value: Option<Bytes>,
    etag: String,
    fetched_at: Instant,
    fetched_wall: SystemTime,
    /// Order in which source calls *started*; a slower, older call never overwrites the
    /// result of a newer one (e.g. a forced refresh racing a background refresh).
    seq: u64,
    /// When a refresh of this entry last failed (drives `failure_backoff`).
    last_failure: Mutex<Option<Instant>>,
}

impl Entry {
    fn new(fetched: Fetched, fetched_at: Instant, fetched_wall: SystemTime, seq: u64) -> Self {
        let (value, etag) = match fetched {
            Fetched::Found(v) => {
                let tag = etag_for(&v);
                (Some(v), tag)
            }
            Fetched::NotFound => (None, String::new()),
        };
        Entry {
            value,
            etag,
            fetched_at,
            fetched_wall,
            seq,
            last_failure: Mutex::new(None),
        }
    }
}

/// Strong ETag: the first 128 bits of SHA-256 in hex, quoted. 128 bits is far beyond any
/// accidental collision among cached values and keeps headers short.
pub fn etag_for(value: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value);
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for b in &digest.as_ref()[..16] {
        tag.push_str(&format!("{b:02x}"));
    }
    tag.push('"');
    tag
}

/// Moka's real-time garbage collection: keep positive entries as long as they may be served
/// stale, negative ones for their negative ttl.
struct GcExpiry {
    positive: Duration,
    negative: Duration,
}

impl GcExpiry {
    fn for_entry(&self, e: &Entry) -> Duration {
        if e.value.is_some() {
            self.positive
        } else {
            self.negative
        }
    }
}

impl moka::Expiry<String, Arc<Entry>> for GcExpiry {
    fn expire_after_create(&self, _: &String, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(self.for_entry(v))
    }
    // A replaced entry (successful refresh) gets a whole new lifetime, not the remainder.
    fn expire_after_update(
        &self,
        _: &String,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.for_entry(v))
    }
}

/// Why the coalesced cold fetch produced no cacheable entry (shared by all waiters).
enum ColdMiss {
    NotFound,
    Source(SourceError),
    /// Fetched, but by a call a purge overtook: served to the waiters, never cached.
    Overtaken(Arc<Entry>),
}

type Flight = OnceCell<Result<Arc<Entry>, SourceError>>;

struct Inner {
    spec: LookupSpec,
    source: Arc<dyn LookupSource>,
    clock: Arc<dyn Clock>,
    cache: Cache<String, Arc<Entry>>,
    /// Refreshes of cached entries in progress, one per key.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    next_seq: AtomicU64,
    /// Fetches numbered below this started before the last purge: their answers are
    /// served to whoever waits on them but never cached, so a purge is not undone by a
    /// fetch that was already in flight (it may carry the data the purge was meant to
    /// drop). One mark for every key: a fetch of another key that overlapped a purge is
    /// only not cached, which costs a source call, never a stale answer.
    purged_below: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    source_calls: AtomicU64,
    source_errors: AtomicU64,
    last_refresh: Mutex<Option<RefreshRecord>>,
}

/// A cached lookup. Cheap to clone (one `Arc`); clones share the cache.
#[derive(Clone)]
pub struct Lookup {
    inner: Arc<Inner>,
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup")
            .field("spec", &self.inner.spec)
            .finish_non_exhaustive()
    }
}

impl Lookup {
    /// A lookup on the system clock.
    pub fn new(spec: LookupSpec, source: Arc<dyn LookupSource>) -> Result<Lookup, SpecError> {
        Self::with_clock(spec, source, Arc::new(SystemClock))
    }

    /// A lookup on the given clock (tests use [`ManualClock`](crate::clock::ManualClock)).
    pub fn with_clock(
        spec: LookupSpec,
        source: Arc<dyn LookupSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Lookup, SpecError> {
        spec.validate()?;
        let expiry = GcExpiry {
            positive: spec
                .ttl
                .saturating_add(spec.max_stale)
                .saturating_add(GC_MARGIN),
            negative: spec.negative_ttl.unwrap_or(Duration::ZERO),
        };
        let cache = Cache::builder()
            .name(&spec.name)
            .max_capacity(spec.capacity_bytes)
            .weigher(|k: &String, v: &Arc<Entry>| {
                let size = k.len() + v.value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .expire_after(expiry)
            .build();
        Ok(Lookup {
            inner: Arc::new(Inner {
                spec,
                source,
                clock,
                cache,
                flights: Mutex::new(HashMap::new()),
                next_seq: AtomicU64::new(0),
                purged_below: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                stale_served: AtomicU64::new(0),
                source_calls: AtomicU64::new(0),
                source_errors: AtomicU64::new(0),
                last_refresh: Mutex::new(None),
            }),
        })
    }

    pub fn spec(&self) -> &LookupSpec {
        &self.inner.spec
    }

    /// The value for `key` (`None` for whole-table lookups), from the cache when fresh.
    pub async fn get(&self, key: Option<&str>) -> Result<Served, LookupError> {
        let key = self.cache_key(key)?;
        let inner = &self.inner;
        let spec = &inner.spec;
        let now = inner.clock.now();

        let Some(entry) = inner.cache.get(&key).await else {
            return self.get_cold(key).await;
        };
        let age = now.saturating_duration_since(entry.fetched_at);

        if entry.value.is_none() {
            if spec.negative_ttl.is_some_and(|n| age < n) {
                inner.hits.fetch_add(1, Ordering::Relaxed);
                return Err(self.not_found());
            }
            // An expired "not found": ask again. A failure here is an error, not a stale
            // "not found": absence is not the good data the stale rule protects.
            inner.misses.fetch_add(1, Ordering::Relaxed);
            return match self.refresh_shared(&key, Some(entry)).await {
                Ok(fresh) => self.serve(&fresh, false, false),
                Err(source) => Err(self.unavailable(source)),
            };
        }

        if age < spec.ttl {
            inner.hits.fetch_add(1, Ordering::Relaxed);
            if let Some(ahead) = spec.refresh_ahead {
                if age > spec.ttl - ahead && !self.in_backoff(&entry, now) {
                    self.spawn_refresh(&key, entry.clone());
                }
            }
            return self.serve(&entry, false, true);
        }

        // Expired. Within the stale window and right after a failed refresh, serve stale
        // without calling the source again.
        let stale_limit = spec.ttl.saturating_add(spec.max_stale);
        if age <= stale_limit && self.in_backoff(&entry, now) {
            inner.hits.fetch_add(1, Ordering::Relaxed);
            inner.stale_served.fetch_add(1, Ordering::Relaxed);
            return self.serve(&entry, true, true);
        }
        inner.misses.fetch_add(1, Ordering::Relaxed);
        match self.refresh_shared(&key, Some(entry.clone())).await {
            Ok(fresh) => self.serve(&fresh, false, false),
            Err(source) => {
                // The entry is untouched (still in the cache with its fetch time).
                let age = inner
                    .clock
                    .now()
                    .saturating_duration_since(entry.fetched_at);
                if age <= stale_limit {
                    inner.stale_served.fetch_add(1, Ordering::Relaxed);
                    self.serve(&entry, true, false)
                } else {
                    Err(LookupError::TooStale {
                        lookup: spec.name.clone(),
                        age,
                        source,
                    })
                }
            }
        }
    }

    /// Forgets the value for `key`; the next `get` asks the source.
    pub async fn purge(&self, key: Option<&str>) -> Result<(), LookupError> {
        let key = self.cache_key(key)?;
        self.mark_purge();
        // Later callers start a fetch of their own rather than join one the purge
        // overtook.
        lock(&self.inner.flights).remove(&key);
        self.inner.cache.invalidate(&key).await;
        Ok(())
    }

    /// Forgets every value.
    pub fn purge_all(&self) {
        self.mark_purge();
        lock(&self.inner.flights).clear();
        self.inner.cache.invalidate_all();
    }

    /// Fetches started before now must not be cached (see `purged_below`).
    fn mark_purge(&self) {
        let inner = &self.inner;
        inner
            .purged_below
            .fetch_max(inner.next_seq.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Whether `e` was fetched by a call that started before the last purge.
    fn predates_purge(&self, e: &Entry) -> bool {
        e.seq < self.inner.purged_below.load(Ordering::SeqCst)
    }

    /// Asks the source now, whatever the cache holds, and caches the answer. Not coalesced
    /// with other calls: a forced refresh must reflect the source as of this call. On
    /// failure the cached value (if any) stays and the error is returned.
    pub async fn refresh_now(&self, key: Option<&str>) -> Result<Served, LookupError> {
        let key = self.cache_key(key)?;
        let prior = self.inner.cache.get(&key).await;
        match self.fetch_and_store(&key, prior).await {
            Ok(fresh) => self.serve(&fresh, false, false),
            Err(source) => Err(self.unavailable(source)),
        }
    }

    /// Counters; brings moka's pending maintenance up to date first so that `entries` and
    /// `weighted_size` are exact.
    pub async fn stats(&self) -> LookupStats {
        let inner = &self.inner;
        inner.cache.run_pending_tasks().await;
        let hits = inner.hits.load(Ordering::Relaxed);
        let misses = inner.misses.load(Ordering::Relaxed);
        let total = hits + misses;
        LookupStats {
            name: inner.spec.name.clone(),
            entries: inner.cache.entry_count(),
            weighted_size: inner.cache.weighted_size(),
            capacity_bytes: inner.spec.capacity_bytes,
            hits,
            misses,
            hit_ratio: if total == 0 {
                0.0
            } else {
                hits as f64 / total as f64
            },
            stale_served: inner.stale_served.load(Ordering::Relaxed),
            source_calls: inner.source_calls.load(Ordering::Relaxed),
            source_errors: inner.source_errors.load(Ordering::Relaxed),
            last_refresh: lock(&inner.last_refresh).clone(),
        }
    }

    // -- internals ----------------------------------------------------------------------

    fn cache_key(&self, key: Option<&str>) -> Result<String, LookupError> {
        let bad = |problem| LookupError::BadKey {
            lookup: self.inner.spec.name.clone(),
            problem,
        };
        match (self.inner.spec.key_mode, key) {
            // One slot for the whole table.
            (KeyMode::WholeTable, None) => Ok(String::new()),
            (KeyMode::WholeTable, Some(_)) => Err(bad("this lookup takes no key")),
            (KeyMode::ByKey, None) => Err(bad("this lookup needs a key")),
            (KeyMode::ByKey, Some("")) => Err(bad("empty key")),
            (KeyMode::ByKey, Some(k)) if k.len() > MAX_KEY_BYTES => Err(bad("key too long")),
            (KeyMode::ByKey, Some(k)) => Ok(k.to_owned()),
        }
    }

    fn source_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        match self.inner.spec.key_mode {
            KeyMode::WholeTable => None,
            KeyMode::ByKey => Some(key),
        }
    }

    fn not_found(&self) -> LookupError {
        LookupError::NotFound {
            lookup: self.inner.spec.name.clone(),
        }
    }

    fn unavailable(&self, source: SourceError) -> LookupError {
        LookupError::Unavailable {
            lookup: self.inner.spec.name.clone(),
            source,
        }
    }

    fn serve(&self, e: &Entry, stale: bool, from_cache: bool) -> Result<Served, LookupError> {
        let Some(value) = &e.value else {
            return Err(self.not_found());
        };
        Ok(Served {
            value: value.clone(),
            etag: e.etag.clone(),
            fetched_at: e.fetched_wall,
            age: self
                .inner
                .clock
                .now()
                .saturating_duration_since(e.fetched_at),
            stale,
            from_cache,
        })
    }

    fn in_backoff(&self, e: &Entry, now: Instant) -> bool {
        lock(&e.last_failure)
            .is_some_and(|t| now.saturating_duration_since(t) < self.inner.spec.failure_backoff)
    }

    /// Cold miss: moka's `try_get_with` runs one init future per key; every concurrent
    /// caller waits for it and shares its result. Errors (and uncached "not found") are
    /// returned to the waiters and nothing is inserted.
    async fn get_cold(&self, key: String) -> Result<Served, LookupError> {
        let inner = &self.inner;
        inner.misses.fetch_add(1, Ordering::Relaxed);
        let ran_init = AtomicBool::new(false);
        let result = inner
            .cache
            .try_get_with(key.clone(), async {
                ran_init.store(true, Ordering::Relaxed);
                let entry = self.fetch_entry(&key).await.map_err(ColdMiss::Source)?;
                if entry.value.is_none() && inner.spec.negative_ttl.is_none() {
                    return Err(ColdMiss::NotFound);
                }
                // An error is how an init keeps its answer out of moka.
                if self.predates_purge(&entry) {
                    return Err(ColdMiss::Overtaken(entry));
                }
                Ok(entry)
            })
            .await;
        match result {
            // `from_cache` is true only if another request inserted the entry between our
            // `get` and `try_get_with` and nobody waited on the source for us.
            Ok(entry) => {
                // A purge between the init's check and moka's insert: take it out again.
                self.unstore_if_overtaken(&key, &entry).await;
                self.serve(&entry, false, !ran_init.load(Ordering::Relaxed))
            }
            Err(miss) => match &*miss {
                ColdMiss::NotFound => Err(self.not_found()),
                ColdMiss::Source(e) => Err(self.unavailable(e.clone())),
                ColdMiss::Overtaken(entry) => self.serve(entry, false, false),
            },
        }
    }

    /// Removes `entry` from the cache if a purge overtook the fetch that made it and it
    /// is still the one cached under `key` (a newer one stays). A purge marks before it
    /// invalidates, so whichever of a put and a purge comes second, the entry goes.
    async fn unstore_if_overtaken(&self, key: &str, entry: &Arc<Entry>) {
        if !self.predates_purge(entry) {
            return;
        }
        self.inner
            .cache
            .entry(key.to_owned())
            .and_compute_with(|existing| {
                std::future::ready(match existing {
                    Some(e) if Arc::ptr_eq(e.value(), entry) => Op::Remove,
                    _ => Op::Nop,
                })
            })
            .await;
    }

    /// One source call, with the bookkeeping (counters, last refresh record).
    async fn fetch_entry(&self, key: &str) -> Result<Arc<Entry>, SourceError> {
        let inner = &self.inner;
        let seq = inner.next_seq.fetch_add(1, Ordering::Relaxed);
        inner.source_calls.fetch_add(1, Ordering::Relaxed);
        let result = inner.source.fetch(self.source_key(key)).await;
        let wall = inner.clock.wall();
        let record = |result| {
            *lock(&inner.last_refresh) = Some(RefreshRecord {
                at: wall,
                key: self.source_key(key).map(str::to_owned),
                result,
            });
        };
        match result {
            Ok(fetched) => {
                record(RefreshResult::Ok);
                Ok(Arc::new(Entry::new(fetched, inner.clock.now(), wall, seq)))
            }
            Err(e) => {
                inner.source_errors.fetch_add(1, Ordering::Relaxed);
                record(RefreshResult::Error(e.to_string()));
                Err(e)
            }
        }
    }

    /// A source call whose success replaces the cached entry. On failure the cached entry
    /// stays as it is; only its failure time is noted (for the backoff).
    async fn fetch_and_store(
        &self,
        key: &str,
        prior: Option<Arc<Entry>>,
    ) -> Result<Arc<Entry>, SourceError> {
        match self.fetch_entry(key).await {
            Ok(fresh) => {
                self.store(key, fresh.clone()).await;
                Ok(fresh)
            }
            Err(e) => {
                if let Some(prior) = prior {
                    *lock(&prior.last_failure) = Some(self.inner.clock.now());
                }
                Err(e)
            }
        }
    }

    /// Puts `fresh` in the cache unless a newer fetch already did; a "not found" without
    /// negative caching removes the key instead (the source says it is gone).
    async fn store(&self, key: &str, fresh: Arc<Entry>) {
        let keep = fresh.value.is_some() || self.inner.spec.negative_ttl.is_some();
        self.inner
            .cache
            .entry(key.to_owned())
            .and_compute_with(|existing| {
                let newer_cached = existing.is_some_and(|e| e.value().seq > fresh.seq);
                let op = match (newer_cached || self.predates_purge(&fresh), keep) {
                    (true, _) => Op::Nop,
                    (false, true) => Op::Put(fresh.clone()),
                    (false, false) => Op::Remove,
                };
                std::future::ready(op)
            })
            .await;
        // A purge that came between the check above and the put.
        self.unstore_if_overtaken(key, &fresh).await;
    }

    /// Joins the refresh in flight for `key`, or starts one. Every concurrent caller gets
    /// the same result; the flight is forgotten once done, so the next caller (after an
    /// error, say) asks the source again.
    async fn refresh_shared(
        &self,
        key: &str,
        prior: Option<Arc<Entry>>,
    ) -> Result<Arc<Entry>, SourceError> {
        let (flight, _) = self.claim_flight(key);
        let result = flight
            .get_or_init(|| async {
                // A flight that finished just before this one was claimed may already
                // have replaced `prior`; then there is nothing to fetch.
                if let (Some(cur), Some(p)) = (self.inner.cache.get(key).await, &prior) {
                    if cur.seq > p.seq {
                        return Ok(cur);
                    }
                }
                self.fetch_and_store(key, prior).await
            })
            .await
            .clone();
        self.release_flight(key, &flight);
        result
    }

    /// Starts a background refresh unless one is already running for `key`.
    fn spawn_refresh(&self, key: &str, prior: Arc<Entry>) {
        // Outside a Tokio runtime (some other executor) there is nowhere to run it; the
        // value will simply be refreshed in the foreground once it expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (flight, started) = self.claim_flight(key);
        if !started {
            return;
        }
        let this = self.clone();
        let key = key.to_owned();
        runtime.spawn(async move {
            let _ = flight
                .get_or_init(|| this.fetch_and_store(&key, Some(prior)))
                .await;
            this.release_flight(&key, &flight);
        });
    }

    /// The flight for `key`, and whether this call created it.
    fn claim_flight(&self, key: &str) -> (Arc<Flight>, bool) {
        let mut flights = lock(&self.inner.flights);
        if let Some(f) = flights.get(key) {
            return (f.clone(), false);
        }
        let f = Arc::new(Flight::new());
        flights.insert(key.to_owned(), f.clone());
        (f, true)
    }

    fn release_flight(&self, key: &str, flight: &Arc<Flight>) {
        let mut flights = lock(&self.inner.flights);
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Test source
// ---------------------------------------------------------------------------------------

/// A scriptable [`LookupSource`] for tests: values by key, a call counter, a failure switch
/// and an artificial delay (tokio time, so paused-time tests work too).
#[derive(Debug, Default)]
pub struct TestSource {
    values: Mutex<HashMap<Option<String>, Bytes>>,
    calls: AtomicU64,
    failing: AtomicBool,
    delay: Mutex<Duration>,
}

impl TestSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value returned for `key` (`None` = the whole-table value).
    pub fn set(&self, key: Option<&str>, value: impl Into<Bytes>) {
        lock(&self.values).insert(key.map(str::to_owned), value.into());
    }

    /// Makes `key` answer `NotFound`.
    pub fn remove(&self, key: Option<&str>) {
        lock(&self.values).remove(&key.map(str::to_owned));
    }

    /// While set, every fetch fails with `SourceError::Unavailable`.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Every fetch waits this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    /// Fetches started so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl LookupSource for TestSource {
    fn fetch(&self, key: Option<&str>) -> SourceFuture<'_> {
        let key = key.map(str::to_owned);
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let delay = *lock(&self.delay);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // The switch is read after the delay so a test can flip it mid-call.
            if self.failing.load(Ordering::SeqCst) {
                return Err(SourceError::Unavailable("test source switched off".into()));
            }
            Ok(match lock(&self.values).get(&key) {
                Some(v) => Fetched::Found(v.clone()),
                None => Fetched::NotFound,
            })
        })
    }
}

// ---------------------------------------------------------------------------------------
// Response cache for plain GET proxy routes
// ---------------------------------------------------------------------------------------

pub mod response {
    //! A shared HTTP response cache for one proxy route, following the RFC 9111 rules a
    //! gateway needs and refusing everything else:
    //!
    //! * only `GET`, only heuristically cacheable statuses, only with explicit freshness
    //!   (`s-maxage` over `max-age`) or the route's `default_ttl` (not for an answer
    //!   with `Expires` or `Pragma: no-cache`), capped by `max_ttl`;
    //! * never stored: `no-store` (request or response), response `no-cache` (we do not
    //!   revalidate), `Vary: *`, any `Set-Cookie`, bodies over the per-entry cap, and
    //!   `private` unless the entry is keyed by caller;
    //! * the key is method + normalised path + query + caller identity (unless the route
    //!   declares its data public) + the request's values of the response's `Vary` headers,
    //!   so caller A's answer is never served to caller B;
    //! * hop-by-hop headers (and those named in `Connection`) and `Age` are not stored;
    //!   the upstream's `Age` counts against the freshness lifetime and is added to the
    //!   `Age` the gateway sends;
    //! * a request's `max-age` and `min-fresh` are honoured (a stored answer that does
    //!   not satisfy them is passed over, not dropped);
    //! * a caching field (`Cache-Control`, `Pragma`, `Vary`, `Age`, `Connection`) that is
    //!   not readable text fails closed: nothing is stored or served for it.
    //!
    //! Headers are read through [`HeaderView`] so this file needs no HTTP crate: the gateway
    //! implements it for its header map. Names are compared in lowercase.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use moka::future::Cache;

    use crate::clock::{Clock, SystemClock};

    /// Read access to a header list. `name` is lowercase.
    pub trait HeaderView {
        /// Every value of `name`, in order.
        fn values(&self, name: &str) -> Vec<&[u8]>;
        /// Every `(name, value)`; names lowercase.
        fn pairs(&self) -> Vec<(&str, &[u8])>;
    }

    impl HeaderView for [(String, Bytes)] {
        fn values(&self, name: &str) -> Vec<&[u8]> {
            self.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_ref())
                .collect()
        }
        fn pairs(&self) -> Vec<(&str, &[u8])> {
            self.iter().map(|(n, v)| (n.as_str(), v.as_ref())).collect()
        }
    }

    impl HeaderView for Vec<(String, Bytes)> {
        fn values(&self, name: &str) -> Vec<&[u8]> {
            self.as_slice().values(name)
        }
        fn pairs(&self) -> Vec<(&str, &[u8])> {
            self.as_slice().pairs()
        }
    }

    /// How one route may be cached (from its config).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ResponseCachePolicy {
        /// The route's data is the same for every caller, so entries are shared. When
        /// false, entries are keyed by caller identity.
        pub public: bool,
        /// Largest body stored.
        pub max_entry_bytes: usize,
        /// Bound on the summed size of the entries.
        pub capacity_bytes: u64,
        /// Freshness for responses that state none; `None` stores only those that do.
        pub default_ttl: Option<Duration>,
        /// Upper bound on any freshness lifetime.
        pub max_ttl: Duration,
    }

    impl ResponseCachePolicy {
        /// Per-caller caching, 1 MiB bodies, 32 MiB total, explicit freshness only, ≤ 5 min.
        pub fn new(public: bool) -> Self {
            ResponseCachePolicy {
                public,
                max_entry_bytes: 1024 * 1024,
                capacity_bytes: 32 * 1024 * 1024,
                default_ttl: None,
                max_ttl: Duration::from_secs(300),
            }
        }
    }

    /// The request as the cache needs to see it.
    pub struct CacheRequest<'a> {
        pub method: &'a str,
        /// `scheme://host` as the upstream is told it (`X-Forwarded-Proto`/`-Host`,
        /// `Forwarded`): an answer built from them (absolute links) belongs to them.
        pub origin: &'a str,
        /// Already normalised by the router.
        pub path: &'a str,
        /// Raw query without `?`, if any.
        pub query: Option<&'a str>,
        pub headers: &'a (dyn HeaderView + Sync),
        /// Authenticated caller identity (client id, certificate subject, ...).
        pub caller: Option<&'a str>,
    }

    /// A stored response, ready to send. The gateway adds `Age`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CachedResponse {
        pub status: u16,
        pub headers: Vec<(String, Bytes)>,
        pub body: Bytes,
        pub age: Duration,
    }

    /// What [`ResponseCache::store`] did, for metrics and tests.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum StoreOutcome {
        Stored { ttl: Duration },
        NotStored(NotStored),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum NotStored {
        /// Not a GET.
        Method,
        /// Per-caller route, no caller identity, but the request carries credentials.
        UnknownCaller,
        /// `no-store` in the request.
        RequestNoStore,
        Status,
        NoStore,
        /// Response `no-cache`: storable only with revalidation, which we do not do.
        NoCache,
        /// `private` on a route whose entries are shared across callers.
        Private,
        VaryStar,
        SetCookie,
        /// No (or zero) freshness lifetime, or an `Age` that has used it up.
        NoFreshness,
        TooLarge,
        /// A caching field that cannot be read (not UTF-8, or a malformed `Age`).
        Unreadable,
    }

    struct Stored {
        status: u16,
        headers: Vec<(String, Bytes)>,
        body: Bytes,
        stored_at: Instant,
        /// Freshness left when stored (the lifetime less the upstream's `Age`).
        ttl: Duration,
        /// The upstream's `Age` when stored.
        initial_age: Duration,
    }

    /// The response cache of one route.
    pub struct ResponseCache {
        policy: ResponseCachePolicy,
        clock: Arc<dyn Clock>,
        /// primary key → the lowercase header names of the last stored response's `Vary`.
        vary: Cache<Vec<u8>, Arc<Vec<String>>>,
        /// primary key + Vary'd request values → response.
        entries: Cache<Vec<u8>, Arc<Stored>>,
    }

    /// Headers that describe one connection, never a stored response (RFC 9110 §7.6.1).
    const HOP_BY_HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];

    /// Statuses cacheable by default (RFC 9110 §15.1) — the only ones we store.
    const CACHEABLE_STATUS: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

    impl ResponseCache {
        pub fn new(policy: ResponseCachePolicy) -> Self {
            Self::with_clock(policy, Arc::new(SystemClock))
        }

        pub fn with_clock(policy: ResponseCachePolicy, clock: Arc<dyn Clock>) -> Self {
            let entries = Cache::builder()
                .max_capacity(policy.capacity_bytes)
                .weigher(|k: &Vec<u8>, v: &Arc<Stored>| {
                    let headers: usize = v.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
                    u32::try_from(k.len() + headers + v.body.len() + 64).unwrap_or(u32::MAX)
                })
                // Garbage collection only; freshness is checked on our clock.
                .time_to_live(policy.max_ttl + Duration::from_secs(1))
                .build();
            // Weighed by bytes like the entries (a key holds the whole target, up to the
            // listener's URI cap), within a sixteenth of the route's capacity: counting
            // entries only, long junk queries could fill memory the capacity never saw.
            let vary = Cache::builder()
                .max_capacity((policy.capacity_bytes / 16).max(1 << 20))
                .weigher(|k: &Vec<u8>, v: &Arc<Vec<String>>| {
                    let names: usize = v.iter().map(String::len).sum();
                    u32::try_from(k.len() + names + 64).unwrap_or(u32::MAX)
                })
                .time_to_live(policy.max_ttl + Duration::from_secs(1))
                .build();
            ResponseCache {
                policy,
                clock,
                vary,
                entries,
            }
        }

        pub fn policy(&self) -> &ResponseCachePolicy {
            &self.policy
        }

        /// A fresh stored response for `req`, if any.
        pub async fn lookup(&self, req: &CacheRequest<'_>) -> Option<CachedResponse> {
            let primary = self.primary_key(req).ok()?;
            let cc = Directives::parse(&req.headers.values("cache-control"));
            // The client asked for an answer from the origin.
            if cc.unreadable
                || cc.no_store
                || cc.no_cache
                || cc.max_age == Some(0)
                || pragma_no_cache(req.headers)
            {
                return None;
            }
            let vary = self.vary.get(&primary).await?;
            let key = full_key(primary, &vary, req.headers);
            let stored = self.entries.get(&key).await?;
            let resident = self.clock.now().saturating_duration_since(stored.stored_at);
            if resident >= stored.ttl {
                self.entries.invalidate(&key).await;
                return None;
            }
            let age = stored.initial_age + resident;
            // The client's own limits: an answer older than its `max-age`, or fresh for
            // less than its `min-fresh`, is not for this client (but may be for others).
            let too_old = cc.max_age.is_some_and(|m| age > Duration::from_secs(m));
            let too_close = cc
                .min_fresh
                .is_some_and(|m| stored.ttl - resident < Duration::from_secs(m));
            if too_old || too_close {
                return None;
            }
            Some(CachedResponse {
                status: stored.status,
                headers: stored.headers.clone(),
                body: stored.body.clone(),
                age,
            })
        }

        /// Stores the upstream response to `req` if the rules allow.
        pub async fn store(
            &self,
            req: &CacheRequest<'_>,
            status: u16,
            headers: &(dyn HeaderView + Sync),
            body: &Bytes,
        ) -> StoreOutcome {
            match self.storable(req, status, headers, body) {
                Err(why) => StoreOutcome::NotStored(why),
                Ok((primary, vary, ttl)) => {
                    let key = full_key(primary.clone(), &vary, req.headers);
                    let stored = Stored {
                        status,
                        headers: kept_headers(headers),
                        body: body.clone(),
                        stored_at: self.clock.now(),
                        ttl,
                        initial_age: upstream_age(headers).ok().unwrap_or_default(),
                    };
                    self.vary.insert(primary, Arc::new(vary)).await;
                    self.entries.insert(key, Arc::new(stored)).await;
                    StoreOutcome::Stored { ttl }
                }
            }
        }

        /// Forgets everything (e.g. after a config reload).
        pub fn purge_all(&self) {
            self.vary.invalidate_all();
            self.entries.invalidate_all();
        }

        /// The storing rules, as a pure function of the request and response.
        #[allow(clippy::type_complexity)]
        pub fn storable(
            &self,
            req: &CacheRequest<'_>,
            status: u16,
            headers: &(dyn HeaderView + Sync),
            body: &Bytes,
        ) -> Result<(Vec<u8>, Vec<String>, Duration), NotStored> {
            let primary = self.primary_key(req)?;
            let asked = Directives::parse(&req.headers.values("cache-control"));
            if asked.no_store || asked.unreadable {
                return Err(NotStored::RequestNoStore);
            }
            if !CACHEABLE_STATUS.contains(&status) {
                return Err(NotStored::Status);
            }
            if !headers.values("set-cookie").is_empty() {
                return Err(NotStored::SetCookie);
            }
            let readable = |name: &str| {
                headers
                    .values(name)
                    .iter()
                    .all(|v| std::str::from_utf8(v).is_ok())
            };
            if !["cache-control", "pragma", "vary", "connection"]
                .iter()
                .all(|n| readable(n))
            {
                return Err(NotStored::Unreadable);
            }
            let initial_age = upstream_age(headers)?;
            let cc = Directives::parse(&headers.values("cache-control"));
            if cc.no_store {
                return Err(NotStored::NoStore);
            }
            if cc.no_cache {
                return Err(NotStored::NoCache);
            }
            // Private answers are kept per caller only: not on public routes, and not
            // in the slot anonymous callers share.
            if cc.private && (self.policy.public || req.caller.is_none()) {
                return Err(NotStored::Private);
            }
            let mut vary = Vec::new();
            for v in headers.values("vary") {
                for name in split_list(v) {
                    if name == "*" {
                        return Err(NotStored::VaryStar);
                    }
                    vary.push(name.to_ascii_lowercase());
                }
            }
            vary.sort();
            vary.dedup();
            // The route's `default_ttl` stands in for a missing freshness lifetime only:
            // not for an answer that gives one of its own in `Expires` (not interpreted
            // here, so such an answer is kept only with a max-age: often an `Expires`
            // in the past means "stale already") or asks not to be reused (HTTP/1.0's
            // `Pragma: no-cache`).
            let says_stale = !headers.values("expires").is_empty() || pragma_no_cache(headers);
            let ttl = cc
                .s_maxage
                .or(cc.max_age)
                .map(Duration::from_secs)
                .or(if says_stale {
                    None
                } else {
                    self.policy.default_ttl
                })
                .map_or(Duration::ZERO, |t| {
                    t.saturating_sub(initial_age).min(self.policy.max_ttl)
                });
            if ttl.is_zero() {
                return Err(NotStored::NoFreshness);
            }
            if body.len() > self.policy.max_entry_bytes {
                return Err(NotStored::TooLarge);
            }
            Ok((primary, vary, ttl))
        }

        /// method + path + query + caller (unless public), each length-prefixed so that no
        /// choice of values can make two different requests share a key.
        fn primary_key(&self, req: &CacheRequest<'_>) -> Result<Vec<u8>, NotStored> {
            if req.method != "GET" {
                return Err(NotStored::Method);
            }
            let mut key = Vec::with_capacity(64 + req.origin.len() + req.path.len());
            push_part(&mut key, req.method.as_bytes());
            push_part(&mut key, req.origin.as_bytes());
            push_part(&mut key, req.path.as_bytes());
            push_part(&mut key, req.query.unwrap_or("").as_bytes());
            if !self.policy.public {
                match req.caller {
                    Some(caller) => {
                        key.push(b'C');
                        push_part(&mut key, caller.as_bytes());
                    }
                    // Anonymous callers share one slot, but only when the request carries
                    // no credentials the upstream might act on.
                    None => {
                        let creds = !req.headers.values("authorization").is_empty()
                            || !req.headers.values("cookie").is_empty();
                        if creds {
                            return Err(NotStored::UnknownCaller);
                        }
                        key.push(b'A');
                    }
                }
            } else {
                key.push(b'P');
            }
            Ok(key)
        }
    }

    /// HTTP/1.0's `Pragma: no-cache`, in a request or a response. An unreadable
    /// value counts as one.
    fn pragma_no_cache(headers: &(dyn HeaderView + Sync)) -> bool {
        headers
            .values("pragma")
            .iter()
            .any(|v| std::str::from_utf8(v).is_err() || contains_token(v, "no-cache"))
    }

    /// The upstream's `Age` (RFC 9111 §5.1): the time its answer has already spent in
    /// caches upstream. Absent is zero; a value that is not a number of seconds makes
    /// the answer unreadable; of several values the largest counts.
    fn upstream_age(headers: &(dyn HeaderView + Sync)) -> Result<Duration, NotStored> {
        let mut age = 0u64;
        for v in headers.values("age") {
            let text = std::str::from_utf8(v).map_err(|_| NotStored::Unreadable)?;
            for item in text.split(',').map(str::trim) {
                if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(NotStored::Unreadable);
                }
                // Too large for u64: older than anything could be fresh.
                age = age.max(item.parse::<u64>().unwrap_or(u64::MAX));
            }
        }
        Ok(Duration::from_secs(age))
    }

    fn push_part(key: &mut Vec<u8>, part: &[u8]) {
        key.extend_from_slice(&(part.len() as u64).to_be_bytes());
        key.extend_from_slice(part);
    }

    fn full_key(mut primary: Vec<u8>, vary: &[String], headers: &dyn HeaderView) -> Vec<u8> {
        for name in vary {
            push_part(&mut primary, name.as_bytes());
            let values = headers.values(name);
            // Absent and present-but-empty differ.
            primary.push(u8::from(!values.is_empty()));
            push_part(&mut primary, &values.join(&b", "[..]));
        }
        primary
    }

    fn kept_headers(headers: &dyn HeaderView) -> Vec<(String, Bytes)> {
        let named_in_connection: Vec<String> = headers
            .values("connection")
            .iter()
            .flat_map(|v| split_list(v))
            .map(|n| n.to_ascii_lowercase())
            .collect();
        headers
            .pairs()
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .filter(|(n, _)| {
                !HOP_BY_HOP.contains(&n.as_str())
                    && n != "age"
                    && n != "set-cookie"
                    && !named_in_connection.contains(n)
            })
            .map(|(n, v)| (n, Bytes::copy_from_slice(v)))
            .collect()
    }

    /// Comma-separated list items, trimmed, empty ones dropped. Non-UTF-8 items are skipped.
    fn split_list(v: &[u8]) -> Vec<&str> {
        std::str::from_utf8(v)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn contains_token(v: &[u8], token: &str) -> bool {
        split_list(v).iter().any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The Cache-Control directives we act on.
    #[derive(Debug, Default)]
    struct Directives {
        /// A value that is not UTF-8: its directives cannot be known.
        unreadable: bool,
        no_store: bool,
        no_cache: bool,
        private: bool,
        max_age: Option<u64>,
        s_maxage: Option<u64>,
        /// Request only.
        min_fresh: Option<u64>,
    }

    impl Directives {
        fn parse(values: &[&[u8]]) -> Self {
            let mut d = Directives::default();
            for v in values {
                if std::str::from_utf8(v).is_err() {
                    d.unreadable = true;
                }
                for item in split_list(v) {
                    let (name, arg) = match item.split_once('=') {
                        Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                        None => (item, None),
                    };
                    // A missing, malformed or overflowing number counts as 0 (never
                    // fresh); of repeated directives the smallest wins.
                    let secs = arg.map_or(0, |a| a.parse::<u64>().unwrap_or(0));
                    let smallest = |cur: Option<u64>| Some(cur.map_or(secs, |c| c.min(secs)));
                    match name.to_ascii_lowercase().as_str() {
                        "no-store" => d.no_store = true,
                        // `no-cache="Set-Cookie"` etc. also mean "revalidate": treated alike.
                        "no-cache" => d.no_cache = true,
                        "private" => d.private = true,
                        "max-age" => d.max_age = smallest(d.max_age),
                        "s-maxage" => d.s_maxage = smallest(d.s_maxage),
                        "min-fresh" => {
                            d.min_fresh = Some(d.min_fresh.map_or(secs, |c| c.max(secs)))
                        }
                        _ => {}
                    }
                }
            }
            d
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::clock::ManualClock;

        fn h(list: &[(&str, &str)]) -> Vec<(String, Bytes)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect()
        }

        #[allow(clippy::ptr_arg)] // `&Vec` coerces to `&dyn HeaderView`; a slice cannot
        fn req<'a>(headers: &'a Vec<(String, Bytes)>, caller: Option<&'a str>) -> CacheRequest<'a> {
            CacheRequest {
                method: "GET",
                origin: "https://portal.example",
                path: "/dvcqg/thutuc/1.000",
                query: Some("a=1"),
                headers,
                caller,
            }
        }

        fn setup(public: bool) -> (ResponseCache, Arc<ManualClock>) {
            let clock = Arc::new(ManualClock::new());
            let cache = ResponseCache::with_clock(ResponseCachePolicy::new(public), clock.clone());
            (cache, clock)
        }

        fn body(s: &str) -> Bytes {
            Bytes::copy_from_slice(s.as_bytes())
        }

        #[tokio::test]
        async fn stores_and_serves_until_max_age() {
            let (cache, clock) = setup(true);
            let none = h(&[]);
            let resp = h(&[
                ("cache-control", "max-age=60"),
                ("content-type", "application/json"),
                ("connection", "close, x-conn"),
                ("x-conn", "1"),
                ("transfer-encoding", "chunked"),
                ("age", "3"),
            ]);
            let out = cache
                .store(&req(&none, None), 200, &resp, &body("{}"))
                .await;
            // The 3 s the answer spent upstream count against its 60.
            assert_eq!(
                out,
                StoreOutcome::Stored {
                    ttl: Duration::from_secs(57)
                }
            );
            clock.advance(Duration::from_secs(56));
            let hit = cache.lookup(&req(&none, None)).await.expect("fresh hit");
            assert_eq!(hit.body, body("{}"));
            assert_eq!(
                hit.age,
                Duration::from_secs(59),
                "the upstream's age included"
            );
            // Hop-by-hop, Connection-named and Age headers are not stored.
            assert_eq!(
                hit.headers,
                h(&[
                    ("cache-control", "max-age=60"),
                    ("content-type", "application/json")
                ])
            );
            clock.advance(Duration::from_secs(1));
            assert!(cache.lookup(&req(&none, None)).await.is_none());
        }

        #[tokio::test]
        async fn a_used_up_or_malformed_age_is_not_stored() {
            let (cache, _) = setup(true);
            let none = h(&[]);
            for (age, why) in [
                ("60", NotStored::NoFreshness),
                ("99999999999999999999999", NotStored::NoFreshness),
                ("-1", NotStored::Unreadable),
                ("1.5", NotStored::Unreadable),
                ("", NotStored::Unreadable),
            ] {
                let resp = h(&[("cache-control", "max-age=60"), ("age", age)]);
                let out = cache.store(&req(&none, None), 200, &resp, &body("x")).await;
                assert_eq!(out, StoreOutcome::NotStored(why), "Age: {age:?}");
            }
        }

        #[tokio::test]
        async fn unreadable_caching_fields_fail_closed() {
            let (cache, _) = setup(true);
            let none = h(&[]);
            let raw = |n: &str, v: &[u8]| (n.to_string(), Bytes::copy_from_slice(v));
            for field in ["cache-control", "vary", "pragma", "connection"] {
                let mut resp = h(&[("cache-control", "max-age=60")]);
                resp.push(raw(field, b"no-store\xff"));
                let out = cache.store(&req(&none, None), 200, &resp, &body("x")).await;
                assert_eq!(
                    out,
                    StoreOutcome::NotStored(NotStored::Unreadable),
                    "{field}"
                );
            }
            // A request whose Cache-Control cannot be read neither stores nor is served.
            let resp = h(&[("cache-control", "max-age=60")]);
            let odd = vec![raw("cache-control", b"no-store\xff")];
            let out = cache.store(&req(&odd, None), 200, &resp, &body("x")).await;
            assert_eq!(out, StoreOutcome::NotStored(NotStored::RequestNoStore));
            cache.store(&req(&none, None), 200, &resp, &body("x")).await;
            assert!(cache.lookup(&req(&none, None)).await.is_some());
            assert!(cache.lookup(&req(&odd, None)).await.is_none());
            let pragma = vec![raw("pragma", b"\xfe")];
            assert!(cache.lookup(&req(&pragma, None)).await.is_none());
        }

        #[tokio::test]
        async fn the_requests_max_age_and_min_fresh_are_honoured() {
            let (cache, clock) = setup(true);
            let none = h(&[]);
            let resp = h(&[("cache-control", "max-age=100"), ("age", "10")]);
            cache.store(&req(&none, None), 200, &resp, &body("x")).await;
            clock.advance(Duration::from_secs(20));
            // Age 30, fresh for 70 more.
            let ask = |cc: &str| h(&[("cache-control", cc)]);
            for (cc, served) in [
                ("max-age=30", true),
                ("max-age=29", false),
                ("min-fresh=70", true),
                ("min-fresh=71", false),
                ("max-age=60, min-fresh=10", true),
                ("min-fresh=x", true),
            ] {
                let hdrs = ask(cc);
                assert_eq!(
                    cache.lookup(&req(&hdrs, None)).await.is_some(),
                    served,
                    "{cc}"
                );
            }
            // Passed over, not dropped: a plain request is still served.
            let hit = cache.lookup(&req(&none, None)).await.expect("still stored");
            assert_eq!(hit.age, Duration::from_secs(30));
        }

        #[tokio::test]
        async fn caller_a_is_never_served_to_caller_b() {
            let (cache, _) = setup(false);
            let none = h(&[]);
            let resp = h(&[("cache-control", "private, max-age=60")]);
            let out = cache
                .store(&req(&none, Some("A")), 200, &resp, &body("A's data"))
                .await;
            assert!(matches!(out, StoreOutcome::Stored { .. }));
            assert_eq!(
                cache.lookup(&req(&none, Some("A"))).await.unwrap().body,
                body("A's data")
            );
            assert!(cache.lookup(&req(&none, Some("B"))).await.is_none());
            assert!(cache.lookup(&req(&none, None)).await.is_none());
            // Identities that would collide under naive concatenation stay apart.
            let q1 = CacheRequest {
                query: Some("x"),
                ..req(&none, Some("yA"))
            };
            let q2 = CacheRequest {
                query: Some("xy"),
                ..req(&none, Some("A"))
            };
            let resp = h(&[("cache-control", "max-age=60")]);
            cache.store(&q1, 200, &resp, &body("1")).await;
            assert!(cache.lookup(&q2).await.is_none());
        }

        #[tokio::test]
        async fn anonymous_with_credentials_is_not_cached_on_per_caller_routes() {
            let (cache, _) = setup(false);
            let creds = h(&[("authorization", "Bearer x")]);
            let resp = h(&[("cache-control", "max-age=60")]);
            let out = cache
                .store(&req(&creds, None), 200, &resp, &body("x"))
                .await;
            assert_eq!(out, StoreOutcome::NotStored(NotStored::UnknownCaller));
            // Public routes share entries whoever asks.
            let (public, _) = setup(true);
            public
                .store(&req(&creds, Some("A")), 200, &resp, &body("p"))
                .await;
            let none = h(&[]);
            assert_eq!(
                public.lookup(&req(&none, Some("B"))).await.unwrap().body,
                body("p")
            );
        }

        #[tokio::test]
        async fn no_store_no_cache_private_set_cookie_vary_star() {
            let (shared, _) = setup(true);
            let none = h(&[]);
            let cases = [
                (
                    h(&[("cache-control", "no-store, max-age=60")]),
                    NotStored::NoStore,
                ),
                (
                    h(&[("cache-control", "no-cache, max-age=60")]),
                    NotStored::NoCache,
                ),
                (
                    h(&[("cache-control", "private, max-age=60")]),
                    NotStored::Private,
                ),
                (
                    h(&[("cache-control", "max-age=60"), ("set-cookie", "s=1")]),
                    NotStored::SetCookie,
                ),
                (
                    h(&[("cache-control", "max-age=60"), ("vary", "accept, *")]),
                    NotStored::VaryStar,
                ),
                (h(&[("content-type", "text/plain")]), NotStored::NoFreshness),
                (h(&[("cache-control", "max-age=0")]), NotStored::NoFreshness),
            ];
            for (resp, why) in cases {
                let out = shared
                    .store(&req(&none, None), 200, &resp, &body("x"))
                    .await;
                assert_eq!(out, StoreOutcome::NotStored(why), "{resp:?}");
                assert!(shared.lookup(&req(&none, None)).await.is_none());
            }
            let ok = h(&[("cache-control", "max-age=60")]);
            let out = shared.store(&req(&none, None), 500, &ok, &body("x")).await;
            assert_eq!(out, StoreOutcome::NotStored(NotStored::Status));
            let post = CacheRequest {
                method: "POST",
                ..req(&none, None)
            };
            let out = shared.store(&post, 200, &ok, &body("x")).await;
            assert_eq!(out, StoreOutcome::NotStored(NotStored::Method));
            let no_store = h(&[("cache-control", "no-store")]);
            let out = shared
                .store(&req(&no_store, None), 200, &ok, &body("x"))
                .await;
            assert_eq!(out, StoreOutcome::NotStored(NotStored::RequestNoStore));
            let big = Bytes::from(vec![b'x'; shared.policy().max_entry_bytes + 1]);
            let out = shared.store(&req(&none, None), 200, &ok, &big).await;
            assert_eq!(out, StoreOutcome::NotStored(NotStored::TooLarge));
        }

        #[tokio::test]
        async fn private_is_stored_when_keyed_by_caller() {
            let (per_caller, _) = setup(false);
            let none = h(&[]);
            let resp = h(&[("cache-control", "private, max-age=10")]);
            let out = per_caller
                .store(&req(&none, Some("A")), 200, &resp, &body("x"))
                .await;
            assert!(matches!(out, StoreOutcome::Stored { .. }));
            // ...but not in the slot all anonymous callers share.
            let out = per_caller
                .store(&req(&none, None), 200, &resp, &body("x"))
                .await;
            assert_eq!(out, StoreOutcome::NotStored(NotStored::Private));
        }

        #[tokio::test]
        async fn default_ttl_does_not_override_expires_or_pragma_no_cache() {
            let mut policy = ResponseCachePolicy::new(true);
            policy.default_ttl = Some(Duration::from_secs(60));
            let cache = ResponseCache::with_clock(policy, Arc::new(ManualClock::new()));
            let none = h(&[]);
            let plain = cache
                .store(&req(&none, None), 200, &h(&[]), &body("x"))
                .await;
            assert!(matches!(plain, StoreOutcome::Stored { .. }), "{plain:?}");
            for resp in [
                h(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]),
                h(&[("pragma", "no-cache")]),
            ] {
                let out = cache.store(&req(&none, None), 200, &resp, &body("x")).await;
                assert_eq!(
                    out,
                    StoreOutcome::NotStored(NotStored::NoFreshness),
                    "{resp:?}"
                );
            }
            // An explicit max-age still counts.
            let resp = h(&[("expires", "0"), ("cache-control", "max-age=5")]);
            let out = cache.store(&req(&none, None), 200, &resp, &body("x")).await;
            assert!(matches!(out, StoreOutcome::Stored { .. }), "{out:?}");
        }

        #[tokio::test]
        async fn an_answer_is_kept_for_the_origin_it_was_given_for() {
            let (shared, _) = setup(true);
            let none = h(&[]);
            let ok = h(&[("cache-control", "max-age=60")]);
            let out = shared.store(&req(&none, None), 200, &ok, &body("x")).await;
            assert!(matches!(out, StoreOutcome::Stored { .. }));
            assert!(shared.lookup(&req(&none, None)).await.is_some());
            // The same path asked with another Host (or scheme) is another entry: an
            // upstream may build its answer from the forwarded host.
            for origin in ["https://evil.example", "http://portal.example"] {
                let other = CacheRequest {
                    origin,
                    ..req(&none, None)
                };
                assert!(shared.lookup(&other).await.is_none(), "{origin}");
            }
        }

        #[tokio::test]
        async fn s_maxage_wins_and_max_ttl_caps() {
            let (cache, _) = setup(true);
            let none = h(&[]);
            let resp = h(&[("cache-control", "max-age=10, s-maxage=20")]);
            let out = cache.store(&req(&none, None), 200, &resp, &body("x")).await;
            assert_eq!(
                out,
                StoreOutcome::Stored {
                    ttl: Duration::from_secs(20)
                }
            );
            let resp = h(&[("cache-control", "max-age=99999")]);
            let out = cache.store(&req(&none, None), 200, &resp, &body("x")).await;
            assert_eq!(
                out,
                StoreOutcome::Stored {
                    ttl: Duration::from_secs(300)
                }
            );
        }

        #[tokio::test]
        async fn vary_selects_by_request_header_values() {
            let (cache, _) = setup(true);
            let vi = h(&[("accept-language", "vi")]);
            let en = h(&[("accept-language", "en")]);
            let none = h(&[]);
            let resp = h(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]);
            cache.store(&req(&vi, None), 200, &resp, &body("vi")).await;
            assert_eq!(
                cache.lookup(&req(&vi, None)).await.unwrap().body,
                body("vi")
            );
            assert!(cache.lookup(&req(&en, None)).await.is_none());
            assert!(cache.lookup(&req(&none, None)).await.is_none());
            cache.store(&req(&en, None), 200, &resp, &body("en")).await;
            assert_eq!(
                cache.lookup(&req(&en, None)).await.unwrap().body,
                body("en")
            );
            assert_eq!(
                cache.lookup(&req(&vi, None)).await.unwrap().body,
                body("vi")
            );
        }

        #[tokio::test]
        async fn request_no_cache_bypasses_lookup() {
            let (cache, _) = setup(true);
            let none = h(&[]);
            let resp = h(&[("cache-control", "max-age=60")]);
            cache.store(&req(&none, None), 200, &resp, &body("x")).await;
            for hdrs in [
                h(&[("cache-control", "no-cache")]),
                h(&[("cache-control", "max-age=0")]),
                h(&[("pragma", "no-cache")]),
            ] {
                assert!(cache.lookup(&req(&hdrs, None)).await.is_none());
            }
            assert!(cache.lookup(&req(&none, None)).await.is_some());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const SEC: Duration = Duration::from_secs(1);

    fn spec(mode: KeyMode) -> LookupSpec {
        let mut s = LookupSpec::new("test", mode, 10 * SEC);
        s.failure_backoff = Duration::ZERO;
        s
    }

    fn setup(spec: LookupSpec) -> (Lookup, Arc<TestSource>, Arc<ManualClock>) {
        let source = Arc::new(TestSource::new());
        let clock = Arc::new(ManualClock::new());
        let lookup = Lookup::with_clock(spec, source.clone(), clock.clone()).unwrap();
        (lookup, source, clock)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Lets spawned tasks run (current-thread runtime) until `cond` holds.
    async fn until(mut cond: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition never became true");
    }

    #[test]
    fn get_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (lookup, _, _) = setup(spec(KeyMode::ByKey));
        let fut = lookup.get(Some("x"));
        assert_send(&fut);
    }

    #[test]
    fn spec_validation() {
        assert!(spec(KeyMode::ByKey).validate().is_ok());
        let mut s = spec(KeyMode::ByKey);
        s.refresh_ahead = Some(10 * SEC);
        assert!(s.validate().is_err());
        let mut s = spec(KeyMode::ByKey);
        s.name = "bad name".into();
        assert!(s.validate().is_err());
        let mut s = spec(KeyMode::ByKey);
        s.ttl = Duration::ZERO;
        assert!(s.validate().is_err());
        let mut s = spec(KeyMode::ByKey);
        s.capacity_bytes = 0;
        assert!(s.validate().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_concurrent_cold_requests_make_one_source_call() {
        let (lookup, source, _) = setup(spec(KeyMode::ByKey));
        source.set(Some("01"), b("{\"code\":\"01\"}"));
        // Long enough that every task has arrived before the one call returns.
        source.set_delay(Duration::from_millis(300));
        let barrier = Arc::new(tokio::sync::Barrier::new(1000));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let lookup = lookup.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    lookup.get(Some("01")).await
                })
            })
            .collect();
        for t in tasks {
            let served = t.await.unwrap().unwrap();
            assert_eq!(served.value, b("{\"code\":\"01\"}"));
        }
        assert_eq!(source.calls(), 1);
        let stats = lookup.stats().await;
        assert_eq!(stats.source_calls, 1);
        assert_eq!(stats.entries, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cold_failures_are_shared_then_retried() {
        let (lookup, source, _) = setup(spec(KeyMode::ByKey));
        source.set_failing(true);
        source.set_delay(Duration::from_millis(200));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let lookup = lookup.clone();
                tokio::spawn(async move { lookup.get(Some("k")).await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(
                t.await.unwrap(),
                Err(LookupError::Unavailable { .. })
            ));
        }
        assert_eq!(source.calls(), 1);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let (lookup, source, _) = setup(spec(KeyMode::ByKey));
        source.set_failing(true);
        for expected_calls in 1..=2 {
            let err = lookup.get(Some("k")).await.unwrap_err();
            assert!(matches!(err, LookupError::Unavailable { .. }), "{err}");
            assert_eq!(source.calls(), expected_calls);
        }
        source.set_failing(false);
        source.set(Some("k"), b("1"));
        let served = lookup.get(Some("k")).await.unwrap();
        assert!(!served.from_cache);
        assert_eq!(source.calls(), 3);
        let stats = lookup.stats().await;
        assert_eq!(stats.source_errors, 2);
        assert_eq!(stats.last_refresh.unwrap().result, RefreshResult::Ok);
    }

    #[tokio::test]
    async fn ttl_expiry_refetches() {
        let (lookup, source, clock) = setup(spec(KeyMode::ByKey));
        source.set(Some("k"), b("v1"));
        let first = lookup.get(Some("k")).await.unwrap();
        assert!(!first.from_cache);
        clock.advance(9 * SEC);
        let hit = lookup.get(Some("k")).await.unwrap();
        assert!(hit.from_cache && !hit.stale);
        assert_eq!(hit.age, 9 * SEC);
        assert_eq!(source.calls(), 1);
        source.set(Some("k"), b("v2"));
        clock.advance(SEC);
        let after = lookup.get(Some("k")).await.unwrap();
        assert_eq!(after.value, b("v2"));
        assert!(!after.from_cache && !after.stale);
        assert_eq!(after.age, Duration::ZERO);
        assert_eq!(source.calls(), 2);
        let stats = lookup.stats().await;
        assert_eq!((stats.hits, stats.misses), (1, 2));
        assert!((stats.hit_ratio - 1.0 / 3.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn refresh_ahead_serves_current_value_and_refreshes_once_in_background() {
        let mut s = spec(KeyMode::ByKey);
        s.refresh_ahead = Some(3 * SEC);
        let (lookup, source, clock) = setup(s);
        source.set(Some("k"), b("v1"));
        lookup.get(Some("k")).await.unwrap();
        source.set(Some("k"), b("v2"));
        // Long enough that the 20 requests below certainly run while it is in flight.
        source.set_delay(Duration::from_millis(300));
        clock.advance(7 * SEC); // age 7 s = ttl - refresh_ahead: not yet in the window
        assert_eq!(lookup.get(Some("k")).await.unwrap().value, b("v1"));
        assert_eq!(source.calls(), 1);
        clock.advance(SEC); // age 8 s > 10 - 3
        let served = lookup.get(Some("k")).await.unwrap();
        assert_eq!(served.value, b("v1"));
        assert!(served.from_cache && !served.stale);
        // The background call starts once this task yields, and takes 300 ms.
        until(|| source.calls() == 2).await;
        for _ in 0..20 {
            let served = lookup.get(Some("k")).await.unwrap();
            assert_eq!(served.value, b("v1"));
            assert!(served.from_cache && !served.stale);
        }
        // Still one background call: requests in the window join or skip it.
        assert_eq!(source.calls(), 2);
        until(|| lookup.inner.flights.lock().unwrap().is_empty()).await;
        let served = lookup.get(Some("k")).await.unwrap();
        assert_eq!(served.value, b("v2"));
        assert_eq!(served.age, Duration::ZERO);
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test]
    async fn failed_refresh_ahead_keeps_value_and_backs_off() {
        let mut s = spec(KeyMode::ByKey);
        s.refresh_ahead = Some(3 * SEC);
        s.failure_backoff = 2 * SEC;
        let (lookup, source, clock) = setup(s);
        source.set(Some("k"), b("v1"));
        lookup.get(Some("k")).await.unwrap();
        source.set_failing(true);
        clock.advance(8 * SEC);
        lookup.get(Some("k")).await.unwrap();
        until(|| lookup.inner.flights.lock().unwrap().is_empty()).await;
        assert_eq!(source.calls(), 2);
        // Within the backoff no new background call is started.
        let served = lookup.get(Some("k")).await.unwrap();
        assert_eq!((served.value, served.stale), (b("v1"), false));
        tokio::task::yield_now().await;
        assert_eq!(source.calls(), 2);
        let stats = lookup.stats().await;
        assert!(matches!(
            stats.last_refresh.unwrap().result,
            RefreshResult::Error(_)
        ));
        assert_eq!(stats.entries, 1);
    }

    #[tokio::test]
    async fn serve_stale_within_bound_then_error() {
        let mut s = spec(KeyMode::ByKey);
        s.max_stale = 30 * SEC;
        let (lookup, source, clock) = setup(s);
        source.set(Some("k"), b("v1"));
        let first = lookup.get(Some("k")).await.unwrap();
        source.set_failing(true);

        clock.advance(15 * SEC);
        let stale = lookup.get(Some("k")).await.unwrap();
        assert_eq!(stale.value, b("v1"));
        assert!(stale.stale);
        assert_eq!(stale.age, 15 * SEC);
        assert_eq!(
            stale.fetched_at, first.fetched_at,
            "original fetch time kept"
        );
        assert_eq!(stale.etag, first.etag);
        assert_eq!(source.calls(), 2);

        clock.advance(25 * SEC); // age 40 = ttl + max_stale: still served
        assert!(lookup.get(Some("k")).await.unwrap().stale);
        assert_eq!(source.calls(), 3, "each request retried (backoff disabled)");

        clock.advance(SEC); // age 41: too old
        let err = lookup.get(Some("k")).await.unwrap_err();
        assert!(
            matches!(err, LookupError::TooStale { age, .. } if age == 41 * SEC),
            "{err}"
        );
        // The good value was never evicted by the failures; recovery replaces it.
        source.set_failing(false);
        let fresh = lookup.get(Some("k")).await.unwrap();
        assert!(!fresh.stale);
        assert_eq!(fresh.age, Duration::ZERO);
        assert_eq!(lookup.stats().await.stale_served, 2);
    }

    #[tokio::test]
    async fn failure_backoff_serves_stale_without_calling() {
        let mut s = spec(KeyMode::ByKey);
        s.max_stale = 30 * SEC;
        s.failure_backoff = 5 * SEC;
        let (lookup, source, clock) = setup(s);
        source.set(Some("k"), b("v1"));
        lookup.get(Some("k")).await.unwrap();
        source.set_failing(true);
        clock.advance(11 * SEC);
        assert!(lookup.get(Some("k")).await.unwrap().stale);
        assert_eq!(source.calls(), 2);
        clock.advance(4 * SEC);
        let served = lookup.get(Some("k")).await.unwrap();
        assert!(served.stale && served.from_cache);
        assert_eq!(source.calls(), 2, "backed off");
        clock.advance(SEC);
        assert!(lookup.get(Some("k")).await.unwrap().stale);
        assert_eq!(source.calls(), 3, "backoff over: tried again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_refreshes_of_an_expired_entry_are_coalesced() {
        let mut s = spec(KeyMode::ByKey);
        s.max_stale = 60 * SEC;
        let (lookup, source, clock) = setup(s);
        source.set(Some("k"), b("v1"));
        lookup.get(Some("k")).await.unwrap();
        clock.advance(11 * SEC);
        source.set(Some("k"), b("v2"));
        source.set_delay(Duration::from_millis(200));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let lookup = lookup.clone();
                tokio::spawn(async move { lookup.get(Some("k")).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().value, b("v2"));
        }
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test]
    async fn negative_caching() {
        let mut s = spec(KeyMode::ByKey);
        s.negative_ttl = Some(5 * SEC);
        let (lookup, source, clock) = setup(s);
        for _ in 0..3 {
            let err = lookup.get(Some("missing")).await.unwrap_err();
            assert!(matches!(err, LookupError::NotFound { .. }));
        }
        assert_eq!(source.calls(), 1);
        clock.advance(5 * SEC);
        source.set(Some("missing"), b("now here"));
        assert_eq!(
            lookup.get(Some("missing")).await.unwrap().value,
            b("now here")
        );
        assert_eq!(source.calls(), 2);
        // A key deleted at the source becomes a cached "not found" on refresh.
        source.remove(Some("missing"));
        assert!(matches!(
            lookup.refresh_now(Some("missing")).await,
            Err(LookupError::NotFound { .. })
        ));
        assert!(lookup.get(Some("missing")).await.is_err());
        assert_eq!(source.calls(), 3);
    }

    #[tokio::test]
    async fn not_found_is_not_cached_without_negative_ttl() {
        let (lookup, source, _) = setup(spec(KeyMode::ByKey));
        for n in 1..=3 {
            assert!(matches!(
                lookup.get(Some("missing")).await,
                Err(LookupError::NotFound { .. })
            ));
            assert_eq!(source.calls(), n);
        }
        assert_eq!(lookup.stats().await.entries, 0);
    }

    #[tokio::test]
    async fn capacity_bound_holds() {
        let mut s = spec(KeyMode::ByKey);
        s.capacity_bytes = 10_000;
        let (lookup, source, _) = setup(s);
        let value = Bytes::from(vec![b'x'; 1000]);
        for i in 0..100 {
            let key = format!("{i:03}");
            source.set(Some(&key), value.clone());
            lookup.get(Some(&key)).await.unwrap();
        }
        let stats = lookup.stats().await;
        assert!(stats.weighted_size <= 10_000, "{stats:?}");
        assert!(stats.entries >= 1 && stats.entries <= 10, "{stats:?}");
    }

    #[tokio::test]
    async fn purge_and_forced_refresh() {
        let mut s = spec(KeyMode::ByKey);
        s.max_stale = 60 * SEC;
        let (lookup, source, _) = setup(s);
        source.set(Some("a"), b("a1"));
        source.set(Some("b"), b("b1"));
        lookup.get(Some("a")).await.unwrap();
        lookup.get(Some("b")).await.unwrap();
        lookup.purge(Some("a")).await.unwrap();
        assert!(!lookup.get(Some("a")).await.unwrap().from_cache);
        assert!(lookup.get(Some("b")).await.unwrap().from_cache);
        assert_eq!(source.calls(), 3);

        source.set(Some("b"), b("b2"));
        let forced = lookup.refresh_now(Some("b")).await.unwrap();
        assert_eq!(forced.value, b("b2"));
        assert_eq!(lookup.get(Some("b")).await.unwrap().value, b("b2"));
        assert_eq!(source.calls(), 4);

        // A failed forced refresh reports the error and keeps the value.
        source.set_failing(true);
        assert!(matches!(
            lookup.refresh_now(Some("b")).await,
            Err(LookupError::Unavailable { .. })
        ));
        let kept = lookup.get(Some("b")).await.unwrap();
        assert_eq!((kept.value, kept.stale), (b("b2"), false));

        lookup.purge_all();
        source.set_failing(false);
        assert!(!lookup.get(Some("b")).await.unwrap().from_cache);
        assert_eq!(lookup.stats().await.entries, 1);
    }

    /// A purge is not undone by a fetch that was in flight when it came: that fetch's
    /// answer goes to whoever waited on it, and the next request asks the source again.
    #[tokio::test]
    async fn a_fetch_in_flight_does_not_undo_a_purge() {
        let (lookup, source, clock) = setup(spec(KeyMode::ByKey));
        source.set(Some("a"), b("old"));
        source.set_delay(Duration::from_millis(100));
        // A cold miss in flight.
        let cold = tokio::spawn({
            let lookup = lookup.clone();
            async move { lookup.get(Some("a")).await }
        });
        until(|| source.calls() == 1).await;
        lookup.purge(Some("a")).await.unwrap();
        assert_eq!(cold.await.unwrap().unwrap().value, b("old"));
        // What the purge was for: the source has changed.
        source.set(Some("a"), b("new"));
        let after = lookup.get(Some("a")).await.unwrap();
        assert_eq!((after.value, after.from_cache), (b("new"), false));
        assert_eq!(source.calls(), 2);
        assert!(lookup.get(Some("a")).await.unwrap().from_cache);

        // A refresh of an expired entry in flight, then everything purged.
        clock.advance(spec(KeyMode::ByKey).ttl + SEC);
        source.set(Some("a"), b("newer"));
        let refresh = tokio::spawn({
            let lookup = lookup.clone();
            async move { lookup.get(Some("a")).await }
        });
        until(|| source.calls() == 3).await;
        lookup.purge_all();
        assert_eq!(refresh.await.unwrap().unwrap().value, b("newer"));
        source.set(Some("a"), b("newest"));
        let after = lookup.get(Some("a")).await.unwrap();
        assert_eq!((after.value, after.from_cache), (b("newest"), false));
        assert_eq!(source.calls(), 4);
    }

    #[tokio::test]
    async fn etag_is_stable_per_value() {
        let (lookup, source, clock) = setup(spec(KeyMode::ByKey));
        source.set(Some("a"), b("{\"x\":1}"));
        source.set(Some("b"), b("{\"x\":1}"));
        source.set(Some("c"), b("{\"x\":2}"));
        let a = lookup.get(Some("a")).await.unwrap();
        let bb = lookup.get(Some("b")).await.unwrap();
        let c = lookup.get(Some("c")).await.unwrap();
        assert_eq!(a.etag, bb.etag);
        assert_ne!(a.etag, c.etag);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"') && a.etag.len() == 34);
        clock.advance(11 * SEC); // refetched, same bytes → same tag
        assert_eq!(lookup.get(Some("a")).await.unwrap().etag, a.etag);
        assert_eq!(a.etag, etag_for(b"{\"x\":1}"));
    }

    #[tokio::test]
    async fn whole_table_and_key_mode_checks() {
        let (table, source, _) = setup(spec(KeyMode::WholeTable));
        source.set(None, b("[1,2]"));
        assert_eq!(table.get(None).await.unwrap().value, b("[1,2]"));
        assert!(matches!(
            table.get(Some("x")).await,
            Err(LookupError::BadKey { .. })
        ));
        let (keyed, _, _) = setup(spec(KeyMode::ByKey));
        assert!(matches!(
            keyed.get(None).await,
            Err(LookupError::BadKey { .. })
        ));
        assert!(matches!(
            keyed.get(Some("")).await,
            Err(LookupError::BadKey { .. })
        ));
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            keyed.get(Some(&long)).await,
            Err(LookupError::BadKey { .. })
        ));
    }

    #[tokio::test]
    async fn stats_serialize_for_the_admin_api() {
        let (lookup, source, _) = setup(spec(KeyMode::ByKey));
        source.set_failing(true);
        let _ = lookup.get(Some("k")).await;
        let json = serde_json::to_value(lookup.stats().await).unwrap();
        assert_eq!(json["last_refresh"]["result"], "error");
        assert_eq!(json["last_refresh"]["key"], "k");
        assert!(json["last_refresh"]["at_unix_ms"].as_u64().unwrap() > 0);
        assert_eq!(json["source_calls"], 1);
    }
}
