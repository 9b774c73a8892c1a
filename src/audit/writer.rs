//! The durable audit writer and the offline tools that read its database.
//!
//! # Writer
//!
//! One dedicated OS thread owns the SQLite connection (SQLite calls block,
//! and fsync latency must never stall the async runtime). Request handlers
//! hand it records through a bounded queue; it assigns indices, frames the
//! records, commits everything queued at that moment (up to `batch_max`) in
//! one transaction — group commit, so one fsync covers many records — and
//! keeps the Merkle frontier. Every `checkpoint_every_records` records or
//! `checkpoint_every` it signs a checkpoint, stored in the same transaction
//! as the batch that completes it.
//!
//! Two ways to submit:
//! * [`AuditWriter::submit`] returns a [`Ticket`] whose
//!   [`Ticket::durable`] resolves with the record's index once its batch has
//!   committed (fail-closed routes answer only after that, or 503 on error);
//! * [`AuditWriter::submit_nowait`] (fail-open routes) skips the
//!   acknowledgement entirely.
//!
//! Each has a `_with` form ([`AuditWriter::submit_with`],
//! [`AuditWriter::submit_nowait_with`]) that serialises the record straight
//! into the thread's scratch buffer, used by the request path. All are
//! non-blocking and fail with [`AuditError::QueueFull`] when
//! `queue_capacity` records wait.
//!
//! The queue is one shared buffer, the *lane* (`Lane`): a request thread
//! serialises its record into a thread-local scratch buffer and appends it,
//! with its index columns (and, fail-closed, its acknowledgement), under a
//! short lock. The writer swaps the lane's buffers for an empty pair when it
//! takes the records (every `TAKE_EVERY` records and at the commit), then frames
//! and hashes them outside the lock. A record thus costs the request thread one
//! copy into a warm buffer, with no allocation, channel message or cross-thread
//! free, and the log keeps the order in which records were submitted. Control
//! messages (flush, checkpoint, prune, shutdown) go through a std channel, so they are
//! never refused or blocked behind a full lane; whatever is in the lane when
//! the writer takes a control commits before the control is answered, so a
//! flush covers every record submitted before it.
//!
//! # Recovery
//!
//! On start the writer resumes from the latest stored frontier (written with
//! each checkpoint), checks it against that checkpoint's signed root, then
//! re-reads every record after it, checking each frame's hash and index
//! contiguity and every later checkpoint's root. Any mismatch refuses the
//! start and names the index. Full verification of older records is
//! [`verify_db`]'s job (it costs a pass over the whole log).
//!
//! # Retention
//!
//! [`AuditWriter::prune`] deletes the oldest records. Before anything is
//! deleted it commits, in one transaction, an `admin` record describing the
//! deletion, a signed checkpoint at the prune point and one covering the
//! admin record. The frontier at the prune point is stored, and verification
//! and proofs of the remainder start from it.

use std::cell::RefCell;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::checkpoint::{
    Checkpoint, CheckpointError, CheckpointSigner, SignedCheckpoint, VerifierKey,
};
use super::merkle::{hash_to_base64, CompactRange, Hash, InclusionProof, MerkleError};
use super::record::{epoch_ms, format_epoch_ms, AuditRecord, RecordKind};
use super::timestamp::{self, TsaCerts};
use super::verify::{
    encode_frame_into, scan_frames, set_frame_index, FrameError, LogVerifier, Problem,
    VerifyReport, FRAME_HEADER_LEN, FRAME_TRAILER_LEN, MAX_RECORD_LEN,
};
use crate::store::audit::{decode_row, AuditError, Filter, IndexColumns, NewSegment, Store};

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Writer settings. [`WriterConfig::new`] fills in defaults.
#[derive(Debug)]
pub struct WriterConfig {
    pub db_path: PathBuf,
    /// Log identity written into every checkpoint.
    pub origin: String,
    pub signer: CheckpointSigner,
    /// Most records committed in one transaction.
    pub batch_max: usize,
    /// How long to keep collecting after the first record of a batch.
    /// Zero (the default) commits whatever is queued right away; under load
    /// records queue up during the previous commit anyway, so batches grow
    /// by themselves without adding latency when idle.
    pub batch_linger: Duration,
    /// How long a batch of fail-open records only (nobody waits on them) may keep
    /// collecting; a fail-closed record shortens it to `batch_linger`.
    pub batch_linger_fail_open: Duration,
    /// Sign a checkpoint after this many new records...
    pub checkpoint_every_records: u64,
    /// ...or this long after the previous one, if there are new records.
    pub checkpoint_every: Duration,
    /// Records that may wait in the queue before submissions fail.
    pub queue_capacity: usize,
}

impl WriterConfig {
    pub fn new(
        db_path: impl Into<PathBuf>,
        origin: impl Into<String>,
        signer: CheckpointSigner,
    ) -> Self {
        Self {
            db_path: db_path.into(),
            origin: origin.into(),
            signer,
            batch_max: 4096,
            batch_linger: Duration::ZERO,
            batch_linger_fail_open: Duration::ZERO,
            checkpoint_every_records: 4096,
            checkpoint_every: Duration::from_secs(10),
            queue_capacity: 16_384,
        }
    }
}

/// Load the checkpoint key from a PKCS#8 file (`name` is the signed-note key
/// name, conventionally the origin).
pub fn load_signer(path: &Path, name: &str) -> Result<CheckpointSigner, AuditError> {
    let der = std::fs::read(path)?;
    Ok(CheckpointSigner::from_pkcs8(name, &der)?)
}

// ---------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------

/// Snapshot of the writer's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Records committed since start.
    pub records_written: u64,
    /// Committed batches since start.
    pub batches: u64,
    /// Checkpoints written since start.
    pub checkpoints: u64,
    /// Records waiting in the queue now.
    pub queue_depth: usize,
    /// Submissions refused with `QueueFull` since start.
    pub queue_full: u64,
    /// Wall time of the last commit (including its fsync), microseconds.
    pub last_commit_latency_us: u64,
    /// Batches or checkpoints that failed to commit since start.
    pub failures: u64,
    /// Index the next record will get (= size of the log).
    pub next_index: u64,
}

#[derive(Default)]
struct Counters {
    records_written: AtomicU64,
    batches: AtomicU64,
    checkpoints: AtomicU64,
    queue_full: AtomicU64,
    last_commit_latency_us: AtomicU64,
    failures: AtomicU64,
    next_index: AtomicU64,
}

type Ack<T> = oneshot::Sender<Result<T, AuditError>>;

/// Control messages to the writer thread.
enum Msg {
    Flush(Ack<u64>),
    Checkpoint(Ack<SignedCheckpoint>),
    Prune(PruneTarget, Ack<PruneOutcome>),
    /// Store a verified RFC 3161 token for the checkpoint of this size.
    Timestamp {
        size: u64,
        gen_time_ms: u64,
        token: Vec<u8>,
        ack: Ack<()>,
    },
    Shutdown(Ack<()>),
}

/// Acknowledgement of an accepted record.
#[derive(Debug)]
pub struct Ticket {
    rx: oneshot::Receiver<Result<u64, AuditError>>,
}

impl Ticket {
    /// Resolves with the record's index once the batch containing it has
    /// committed (and so survives a crash), or with the commit's error.
    pub async fn durable(self) -> Result<u64, AuditError> {
        self.rx.await.unwrap_or(Err(AuditError::WriterStopped))
    }
}

/// What to delete in a retention run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneTarget {
    /// Delete records with index `< n`.
    BeforeIndex(u64),
    /// Delete records older than this time (up to the first record at or
    /// after it, so a record with an odd clock never splits the log).
    OlderThan(SystemTime),
}

/// Result of a retention run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOutcome {
    /// Records below this index are gone.
    pub pruned_before: u64,
    pub deleted: u64,
    /// Index of the `admin` record describing the deletion.
    pub admin_index: u64,
    /// Signed checkpoint at the prune point, in note form.
    pub anchor_checkpoint: String,
}

/// Records waiting for the writer, serialised back to back. While a batch
/// collects, the writer takes the lane's records into the batch every
/// [`TAKE_EVERY`] records, so the lane stays small: request threads append to
/// memory that is still in cache. (With the whole batch in the lane — 4,096
/// records, 1.8 MB — each append missed the cache on its stores: ~250 ns per
/// record on the benchmark VM, an eighth of what the audit cost a request.)
#[derive(Default)]
struct Lane {
    bytes: Vec<u8>,
    /// Each record's length in `bytes`, in order, its index columns and, for a
    /// fail-closed record, who waits on it.
    recs: Vec<(usize, IndexColumns, Option<Ack<u64>>)>,
    /// A fail-closed record is among `recs`: the batch commits within
    /// `batch_linger`, not `batch_linger_fail_open`.
    waited_on: bool,
    /// Set by the writer thread when it stops taking records (shutdown).
    closed: bool,
    /// The writer is collecting a batch and will take this lane's records
    /// (when it has [`TAKE_EVERY`] of them, and at the commit) without being
    /// woken for the first one.
    collecting: bool,
}

/// The frame bytes at which a collecting batch commits whatever its record count.
const BATCH_BYTES: usize = 64 << 20;

/// How many records a collecting writer lets the lane gather before it takes
/// them into its batch (the request thread wakes it at this count). Small enough
/// that the lane's buffers stay in cache (~110 KB of records), large enough that
/// the wake-ups (about 200 a second at 50,000 records/s) cost little.
const TAKE_EVERY: usize = 256;

/// Closes the lane when the writer thread ends, however it ends (a panic included):
/// no record is accepted after, and records still in the lane are refused, those whose
/// requests wait on them (fail-closed) with `WriterStopped`, so that no request waits
/// for a durability that will never come. A normal stop has emptied the lane already.
struct CloseLaneOnExit(Arc<Mutex<Lane>>);

impl Drop for CloseLaneOnExit {
    fn drop(&mut self) {
        let mut lane = lock_lane(&self.0);
        lane.closed = true;
        lane.bytes.clear();
        let waiting: Vec<Ack<u64>> = lane.recs.drain(..).filter_map(|(_, _, a)| a).collect();
        drop(lane);
        for ack in waiting {
            let _ = ack.send(Err(AuditError::WriterStopped));
        }
    }
}

fn lock_lane(lane: &Mutex<Lane>) -> MutexGuard<'_, Lane> {
    // The lane's invariants hold between statements (a push adds bytes and their
    // length together), so a panic elsewhere leaves it usable.
    lane.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// Where a request thread serialises a record before copying it into the lane:
    /// the lock is held for the copy only, not for the serialisation.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Handle to the writer thread. `Sync`: share it behind an `Arc`.
pub struct AuditWriter {
    /// Control messages only; records go through the lane.
    tx: mpsc::Sender<Msg>,
    lane: Arc<Mutex<Lane>>,
    capacity: usize,
    batch_max: usize,
    counters: Arc<Counters>,
    /// Size of the latest stored checkpoint, for whoever publishes or
    /// timestamps checkpoints.
    checkpoints: tokio::sync::watch::Receiver<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, to cut its linger short: it naps between drains of the
    /// queue, and only a message somebody waits on (a fail-closed record, a
    /// control) unparks it. Fail-open records never wake it.
    waker: std::thread::Thread,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("stats", &self.stats())
            .finish()
    }
}

impl AuditWriter {
    /// Open the database, recover the frontier, and start the writer thread.
    pub fn start(cfg: WriterConfig) -> Result<AuditWriter, AuditError> {
        if cfg.batch_max == 0 || cfg.queue_capacity == 0 || cfg.checkpoint_every_records == 0 {
            return Err(AuditError::InvalidArgument(
                "batch_max, queue_capacity and checkpoint_every_records must be positive".into(),
            ));
        }
        let key = cfg.signer.verifier_key();
        let store = Store::open(&cfg.db_path, &cfg.origin, &key)?;
        let (frontier, last_cp_size) = recover(&store, &key, &cfg.origin)?;
        let counters = Arc::new(Counters::default());
        counters
            .next_index
            .store(frontier.size(), Ordering::Relaxed);
        let lane = Arc::new(Mutex::new(Lane::default()));
        let (tx, rx) = mpsc::channel();
        let (checkpoints_tx, checkpoints) = tokio::sync::watch::channel(last_cp_size);
        let capacity = cfg.queue_capacity;
        let batch_max = cfg.batch_max;
        let mut worker = Worker {
            store,
            key,
            signer: cfg.signer,
            origin: cfg.origin,
            frontier,
            last_cp_size,
            checkpoints: checkpoints_tx,
            last_cp_time: Instant::now(),
            batch_max: cfg.batch_max,
            batch_linger: cfg.batch_linger,
            batch_linger_fail_open: cfg.batch_linger_fail_open.max(cfg.batch_linger),
            every_records: cfg.checkpoint_every_records,
            every: cfg.checkpoint_every,
            rx,
            lane: lane.clone(),
            spare: Lane::default(),
            framed: Framed::new(),
            overflow: Framed::new(),
            counters: counters.clone(),
        };
        let closer = CloseLaneOnExit(lane.clone());
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let _closer = closer;
                worker.run();
            })?;
        Ok(AuditWriter {
            tx,
            lane,
            capacity,
            batch_max,
            counters,
            checkpoints,
            waker: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Append a record to the lane. A fail-closed record (`ack`) always wakes the
    /// writer; fail-open ones wake an idle writer for the first record of a batch,
    /// and a collecting one when the lane holds [`TAKE_EVERY`] records (or a full
    /// batch) for it to take; in between it lingers on its own.
    fn enqueue(
        &self,
        json: &[u8],
        cols: IndexColumns,
        ack: Option<Ack<u64>>,
    ) -> Result<(), AuditError> {
        if json.len() > MAX_RECORD_LEN {
            return Err(AuditError::InvalidArgument(format!(
                "audit record of {} bytes exceeds the limit",
                json.len()
            )));
        }
        let mut lane = lock_lane(&self.lane);
        if lane.closed {
            return Err(AuditError::WriterStopped);
        }
        if lane.recs.len() >= self.capacity {
            drop(lane);
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(AuditError::QueueFull);
        }
        let waited_on = ack.is_some();
        lane.waited_on |= waited_on;
        lane.bytes.extend_from_slice(json);
        lane.recs.push((json.len(), cols, ack));
        let n = lane.recs.len();
        let idle = !lane.collecting;
        drop(lane);
        // (A lane capped below `TAKE_EVERY` wakes the writer when it is full, or it
        // would refuse records for the rest of a linger.)
        if waited_on || (n == 1 && idle) || n == TAKE_EVERY.min(self.batch_max).min(self.capacity) {
            self.waker.unpark();
        }
        Ok(())
    }

    /// Queue a record and get a ticket for its durability. Never blocks.
    pub fn submit(&self, rec: AuditRecord) -> Result<Ticket, AuditError> {
        self.submit_with(Self::writing(rec))
    }

    /// Queue a record without any acknowledgement (fail-open routes). Never
    /// blocks.
    pub fn submit_nowait(&self, rec: AuditRecord) -> Result<(), AuditError> {
        self.submit_nowait_with(Self::writing(rec))
    }

    /// The `write` of [`AuditWriter::submit_with`] for an owned record.
    fn writing(rec: AuditRecord) -> impl FnOnce(&mut Vec<u8>) -> IndexColumns {
        move |buf| {
            rec.view().write_json(buf);
            IndexColumns::from_record(rec)
        }
    }

    /// [`AuditWriter::submit`] of a record that `write` serialises (with
    /// [`RecordView::write_json`](super::record::RecordView::write_json)) into the
    /// buffer it is given, returning the record's index columns: the request path
    /// builds both from its own state. The buffer is this thread's scratch, reused
    /// from record to record; `write` must not submit.
    pub fn submit_with(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> IndexColumns,
    ) -> Result<Ticket, AuditError> {
        let (tx, rx) = oneshot::channel();
        Self::in_scratch(write, |json, cols| self.enqueue(json, cols, Some(tx)))?;
        Ok(Ticket { rx })
    }

    /// [`AuditWriter::submit_nowait`] of a record that `write` serialises (see
    /// [`AuditWriter::submit_with`]).
    pub fn submit_nowait_with(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> IndexColumns,
    ) -> Result<(), AuditError> {
        Self::in_scratch(write, |json, cols| self.enqueue(json, cols, None))
    }

    fn in_scratch<T>(
        write: impl FnOnce(&mut Vec<u8>) -> IndexColumns,
        then: impl FnOnce(&[u8], IndexColumns) -> T,
    ) -> T {
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            let cols = write(buf);
            let res = then(buf, cols);
            // A rare large record (kept bodies) does not pin its buffer forever.
            if buf.capacity() > 64 << 10 {
                *buf = Vec::new();
            }
            res
        })
    }

    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            records_written: c.records_written.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            queue_depth: lock_lane(&self.lane).recs.len(),
            queue_full: c.queue_full.load(Ordering::Relaxed),
            last_commit_latency_us: c.last_commit_latency_us.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            next_index: c.next_index.load(Ordering::Relaxed),
        }
    }

    async fn control<T>(&self, make: impl FnOnce(Ack<T>) -> Msg) -> Result<T, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| AuditError::WriterStopped)?;
        self.waker.unpark();
        rx.await.unwrap_or(Err(AuditError::WriterStopped))
    }

    /// Wait until everything submitted before this call is committed.
    /// Returns the log size.
    pub async fn flush(&self) -> Result<u64, AuditError> {
        self.control(Msg::Flush).await
    }

    /// Commit what is queued and sign a checkpoint of the current size now
    /// (e.g. before publishing one to a counterpart).
    pub async fn checkpoint_now(&self) -> Result<SignedCheckpoint, AuditError> {
        self.control(Msg::Checkpoint).await
    }

    /// Follows the size of the latest stored checkpoint (starting with the one
    /// found at open, 0 for none).
    pub fn checkpoints(&self) -> tokio::sync::watch::Receiver<u64> {
        self.checkpoints.clone()
    }

    /// Store an RFC 3161 time-stamp token for the stored checkpoint of `size`.
    /// The caller has verified it against that checkpoint's note; the writer
    /// is the database's only writer, hence the detour.
    pub async fn store_timestamp(
        &self,
        size: u64,
        gen_time_ms: u64,
        token: Vec<u8>,
    ) -> Result<(), AuditError> {
        self.control(|ack| Msg::Timestamp {
            size,
            gen_time_ms,
            token,
            ack,
        })
        .await
    }

    /// Retention: delete the oldest records (see the module docs).
    pub async fn prune(&self, target: PruneTarget) -> Result<PruneOutcome, AuditError> {
        self.control(|ack| Msg::Prune(target, ack)).await
    }

    /// Drain the queue, write a final checkpoint and stop the thread.
    /// Submissions after this fail with `WriterStopped`.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        let res = self.control(Msg::Shutdown).await;
        let handle = self.thread.lock().map(|mut h| h.take()).unwrap_or(None);
        if let Some(h) = handle {
            // The thread has already answered, so it is exiting; this join
            // is brief. A thread that ended in a panic did not stop cleanly.
            if h.join().is_err() {
                return Err(AuditError::Storage(
                    "the audit writer thread panicked".into(),
                ));
            }
        }
        match res {
            Err(AuditError::WriterStopped) => Ok(()),
            other => other,
        }
    }
}

impl Drop for AuditWriter {
    /// Without an explicit shutdown, still drain and checkpoint: the thread
    /// sees the channel close after the queue and finishes the same way.
    fn drop(&mut self) {
        let (tx, _rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Shutdown(tx));
        self.waker.unpark();
        if let Some(h) = self.thread.get_mut().ok().and_then(Option::take) {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------

/// Rebuild the frontier: latest trusted starting point, then every record
/// after it, checked. Returns the frontier and the size of the latest
/// checkpoint.
fn recover(
    store: &Store,
    key: &VerifierKey,
    origin: &str,
) -> Result<(CompactRange, u64), AuditError> {
    let prune = store.prune_point()?;
    let prune_size = prune.as_ref().map_or(0, |p| p.size);
    let mut frontier = match store.frontier_at_or_before(u64::MAX)? {
        Some(f) if f.size() >= prune_size => f,
        _ => prune.map(|p| p.frontier).unwrap_or_default(),
    };
    let checkpoints = parse_checkpoints(store)?;
    let check_cp = |frontier: &CompactRange, cp: &SignedCheckpoint| -> Result<(), AuditError> {
        cp.verify_matches(key, origin, frontier.size(), &frontier.root())
            .map_err(|e| AuditError::Corrupt {
                index: frontier.size(),
                reason: format!("stored checkpoint does not match the stored records: {e}"),
            })
    };
    if frontier.size() > 0 {
        let cp = checkpoints
            .iter()
            .find(|c| c.checkpoint().size == frontier.size())
            .ok_or_else(|| AuditError::Corrupt {
                index: frontier.size(),
                reason: "no checkpoint for the stored frontier".into(),
            })?;
        check_cp(&frontier, cp)?;
    }
    let start_size = frontier.size();
    let mut later = checkpoints
        .iter()
        .filter(|c| c.checkpoint().size > start_size)
        .peekable();
    store.for_each_frame(frontier.size(), None, |idx, frame| {
        let expected = frontier.size();
        if idx != expected {
            return Err(AuditError::Corrupt {
                index: expected,
                reason: format!("record {expected} is missing (next stored is {idx})"),
            });
        }
        let (_, leaf) = decode_row(idx, frame)?;
        frontier.append(leaf);
        while let Some(cp) = later.next_if(|c| c.checkpoint().size == frontier.size()) {
            check_cp(&frontier, cp)?;
        }
        Ok(())
    })?;
    if let Some(cp) = later.next() {
        return Err(AuditError::Corrupt {
            index: frontier.size(),
            reason: format!(
                "checkpoint at size {} covers records that are missing",
                cp.checkpoint().size
            ),
        });
    }
    let last_cp = checkpoints
        .last()
        .map_or(prune_size, |c| c.checkpoint().size);
    Ok((frontier, last_cp))
}

fn parse_checkpoints(store: &Store) -> Result<Vec<SignedCheckpoint>, AuditError> {
    store
        .checkpoint_texts()?
        .into_iter()
        .map(|(size, text)| {
            SignedCheckpoint::parse(&text).map_err(|e| AuditError::Corrupt {
                index: size,
                reason: format!("stored checkpoint at size {size} is unreadable: {e}"),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The writer thread
// ---------------------------------------------------------------------------

struct Worker {
    store: Store,
    key: VerifierKey,
    signer: CheckpointSigner,
    origin: String,
    /// Frontier of the committed log.
    frontier: CompactRange,
    last_cp_size: u64,
    checkpoints: tokio::sync::watch::Sender<u64>,
    last_cp_time: Instant,
    batch_max: usize,
    batch_linger: Duration,
    batch_linger_fail_open: Duration,
    every_records: u64,
    every: Duration,
    rx: mpsc::Receiver<Msg>,
    lane: Arc<Mutex<Lane>>,
    /// The lane's other pair of buffers: a take swaps them with the lane's under
    /// the lock (so request threads never wait on the framing) and frames the
    /// records from here.
    spare: Lane,
    /// The batch being collected, framed and leaf-hashed as it was taken.
    framed: Framed,
    /// Where the records beyond `batch_max` wait while a commit runs (empty
    /// otherwise; it swaps places with `framed` after the commit).
    overflow: Framed,
    counters: Arc<Counters>,
}

/// Records taken from the lane, framed (indices from `seg.first_idx`, in order) and
/// leaf-hashed, waiting for their commit. Each is framed as it is taken (every
/// [`TAKE_EVERY`] records), while it is still in cache, straight from the lane's
/// bytes. The buffers keep their capacity from batch to batch: a batch is often
/// hundreds of KiB, and a fresh allocation that size costs page faults every time.
struct Framed {
    seg: NewSegment,
    /// Where each record's frame ends in `seg.frames`.
    ends: Vec<usize>,
    leaves: Vec<Hash>,
    /// Who waits on each record (fail-closed ones).
    acks: Vec<Option<Ack<u64>>>,
    /// A fail-closed record is among them: commit within `batch_linger`.
    waited_on: bool,
}

impl Framed {
    fn new() -> Self {
        Framed {
            seg: NewSegment::new(0),
            ends: Vec::new(),
            leaves: Vec::new(),
            acks: Vec::new(),
            waited_on: false,
        }
    }

    fn len(&self) -> usize {
        self.leaves.len()
    }

    fn clear(&mut self) {
        self.seg.frames.clear();
        self.seg.cols.clear();
        self.ends.clear();
        self.leaves.clear();
        self.acks.clear();
        self.waited_on = false;
    }

    /// Give the frames indices from `first` on (their records' places in the log
    /// moved: a commit before them failed, and its indices go to them).
    fn renumber(&mut self, first: u64) {
        let mut at = 0;
        for (k, &end) in self.ends.iter().enumerate() {
            set_frame_index(&mut self.seg.frames[at..end], first + k as u64);
            at = end;
        }
        self.seg.first_idx = first;
    }

    /// Move the records from the `n`th on to `to` (empty), whose buffers, like
    /// these, keep their capacity: a batch overshoots `batch_max` at almost every
    /// commit under load, and fresh buffers of that size cost page faults each time.
    fn move_tail(&mut self, n: usize, to: &mut Framed) {
        debug_assert!(to.leaves.is_empty());
        let cut = self.ends[n - 1];
        to.seg.first_idx = self.seg.first_idx + n as u64;
        to.seg.frames.extend_from_slice(&self.seg.frames[cut..]);
        self.seg.frames.truncate(cut);
        to.seg.cols.extend(self.seg.cols.drain(n..));
        to.ends.extend(self.ends.drain(n..).map(|e| e - cut));
        to.leaves.extend(self.leaves.drain(n..));
        to.acks.extend(self.acks.drain(n..));
        to.waited_on = self.waited_on;
    }
}

impl Worker {
    fn run(&mut self) {
        loop {
            let control = match self.rx.try_recv() {
                Ok(control) => Some(control),
                Err(TryRecvError::Disconnected) => {
                    let failures = self.counters.failures.load(Ordering::Relaxed);
                    if let Err(e) = self.finish(failures) {
                        tracing::error!(error = %e, "audit writer stopped uncleanly");
                    }
                    return;
                }
                Err(TryRecvError::Empty) if self.queued() > 0 => self.collect(),
                Err(TryRecvError::Empty) => {
                    // Idle. A control or the lane's first record unparks the writer;
                    // otherwise it wakes when a checkpoint falls due.
                    if self.checkpoint_due() {
                        let _ = self.write_checkpoint();
                    }
                    std::thread::park_timeout(self.until_checkpoint_due());
                    continue;
                }
            };
            // Everything submitted before a control commits before it is handled: a
            // flush answers once the records before it are durable.
            let failures = self.counters.failures.load(Ordering::Relaxed);
            self.commit();
            if let Some(c) = control {
                if self.handle_control(c, failures) {
                    return;
                }
            }
        }
    }

    /// Records in the lane.
    fn queued(&self) -> usize {
        lock_lane(&self.lane).recs.len()
    }

    /// Moves the lane's records into the batch: swaps the lane's buffers for the
    /// spare pair under the lock, then frames and hashes the records outside it.
    /// `collecting` tells request threads whether the first record of the lane
    /// must wake the writer (it must once the batch is committed). Returns how
    /// many records the batch holds and whether one is waited on.
    fn take(&mut self, collecting: bool) -> (usize, bool) {
        {
            let mut lane = lock_lane(&self.lane);
            lane.collecting = collecting;
            if !lane.recs.is_empty() {
                std::mem::swap(&mut lane.bytes, &mut self.spare.bytes);
                std::mem::swap(&mut lane.recs, &mut self.spare.recs);
                self.framed.waited_on |= lane.waited_on;
                lane.waited_on = false;
            }
        }
        self.frame_taken();
        (self.framed.len(), self.framed.waited_on)
    }

    /// Frame the records in `spare` onto the batch, each with the next index.
    fn frame_taken(&mut self) {
        let Worker {
            spare,
            framed,
            frontier,
            counters,
            ..
        } = self;
        if framed.leaves.is_empty() {
            framed.seg.first_idx = frontier.size();
        }
        let mut off = 0;
        for (len, cols, ack) in spare.recs.drain(..) {
            let json = &spare.bytes[off..off + len];
            off += len;
            let idx = framed.seg.first_idx + framed.leaves.len() as u64;
            match encode_frame_into(&mut framed.seg.frames, idx, json) {
                Ok(leaf) => {
                    framed.leaves.push(leaf);
                    framed.ends.push(framed.seg.frames.len());
                    framed.seg.cols.push(cols);
                    framed.acks.push(ack);
                }
                // Sizes were checked at submission, so this cannot happen; if it
                // somehow does, the record is refused before it has an index.
                Err(e) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(a) = ack {
                        let _ = a.send(Err(AuditError::from(e)));
                    }
                }
            }
        }
        spare.bytes.clear();
    }

    /// Let the batch grow, taking the lane's records as they come: until it
    /// holds `batch_max` records, the linger time has passed, or a control
    /// message arrives, which is returned to be handled after this batch commits.
    fn collect(&mut self) -> Option<Msg> {
        let start = Instant::now();
        loop {
            match self.rx.try_recv() {
                Ok(control) => return Some(control),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let (queued, waited_on) = self.take(true);
            // Records that keep bodies can be large: a batch also commits once its
            // frames reach `BATCH_BYTES`, so its memory stays bounded.
            if queued >= self.batch_max || self.framed.seg.frames.len() >= BATCH_BYTES {
                return None;
            }
            // Somebody waits on a fail-closed record: commit within `batch_linger`. A
            // batch of fail-open records only may collect for longer (fewer commits,
            // fewer fsyncs).
            let linger = if waited_on {
                self.batch_linger
            } else {
                self.batch_linger_fail_open
            };
            let left = (start + linger).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // Nap rather than wake per record: a wake-up per record costs a context
            // switch each when the writer shares a core with the request path. A
            // fail-closed record, a control or `TAKE_EVERY` records unpark the nap
            // (see `waker`): one wake-up per `TAKE_EVERY` records.
            std::thread::park_timeout(left);
        }
    }

    /// Returns true when the thread should exit.
    /// `failures` is the failure count before the commit that preceded the control.
    fn handle_control(&mut self, msg: Msg, failures: u64) -> bool {
        match msg {
            Msg::Flush(ack) => {
                let _ = ack.send(Ok(self.frontier.size()));
                false
            }
            Msg::Checkpoint(ack) => {
                let _ = ack.send(self.write_checkpoint());
                false
            }
            Msg::Prune(target, ack) => {
                let res = self.prune(target);
                if res.is_err() {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ack.send(res);
                false
            }
            Msg::Timestamp {
                size,
                gen_time_ms,
                token,
                ack,
            } => {
                let _ = ack.send(self.store.put_timestamp(size, gen_time_ms, &token));
                false
            }
            Msg::Shutdown(ack) => {
                let _ = ack.send(self.finish(failures));
                true
            }
        }
    }

    /// Commit whatever is still queued, then write a final checkpoint.
    /// `failures` is the failure count before the last records were committed: a
    /// commit that failed since then lost records, and the stop is not clean.
    fn finish(&mut self, failures: u64) -> Result<(), AuditError> {
        // No record enters the lane from now on.
        lock_lane(&self.lane).closed = true;
        self.commit();
        if self.counters.failures.load(Ordering::Relaxed) != failures {
            // The last records are lost (their waiters were told): the stop is not clean.
            return Err(AuditError::Storage(
                "the final commit failed; the records queued at shutdown were not written".into(),
            ));
        }
        if self.frontier.size() > self.last_cp_size {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        self.frontier.size() > self.last_cp_size && self.last_cp_time.elapsed() >= self.every
    }

    fn until_checkpoint_due(&self) -> Duration {
        if self.frontier.size() > self.last_cp_size {
            self.every
                .saturating_sub(self.last_cp_time.elapsed())
                .max(Duration::from_millis(1))
        } else {
            // Nothing to checkpoint: just wait for work.
            self.every.max(Duration::from_secs(1))
        }
    }

    fn sign(&self, frontier: &CompactRange) -> Result<SignedCheckpoint, AuditError> {
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: frontier.size(),
            root: frontier.root(),
            timestamp_ms: epoch_ms(SystemTime::now()),
        };
        Ok(self.signer.sign(&cp)?)
    }

    fn note_checkpoint(&mut self, size: u64) {
        self.last_cp_size = size;
        self.checkpoints.send_replace(size);
        self.last_cp_time = Instant::now();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
    }

    /// Sign and store a checkpoint of the committed log (or return the
    /// stored one if nothing was added since).
    fn write_checkpoint(&mut self) -> Result<SignedCheckpoint, AuditError> {
        let size = self.frontier.size();
        if size == self.last_cp_size && size > 0 {
            if let Some(cp) = self.store.checkpoint_at(size)? {
                return Ok(cp);
            }
        }
        let cp = self.sign(&self.frontier)?;
        let frontier = self.frontier.clone();
        match self.store.put_checkpoint(&cp, Some(&frontier)) {
            Ok(()) => {
                self.note_checkpoint(size);
                Ok(cp)
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Commit and acknowledge what is in the lane and the batch, in commits of at
    /// most `batch_max` records. Nothing queued is a no-op.
    fn commit(&mut self) {
        // From here on, the lane's first record wakes the writer again.
        self.take(false);
        while self.framed.len() > 0 {
            self.commit_chunk();
        }
        self.framed.waited_on = false;
    }

    /// Commit and acknowledge up to `batch_max` records of the batch.
    fn commit_chunk(&mut self) {
        let start = self.frontier.size();
        if self.framed.seg.first_idx != start {
            self.framed.renumber(start);
        }
        // Records beyond `batch_max` wait for the next commit, in the overflow.
        let over = self.framed.len() > self.batch_max;
        if over {
            self.framed.move_tail(self.batch_max, &mut self.overflow);
        }
        let mut tentative = self.frontier.clone();
        // Count-based checkpoints land on exact multiples of the interval
        // (several may fall in one batch); all commit with the batch. A
        // signing failure only postpones a checkpoint, never the records.
        let mut cps: Vec<(SignedCheckpoint, CompactRange)> = Vec::new();
        let mut last_cp = self.last_cp_size;
        for &leaf in &self.framed.leaves {
            tentative.append(leaf);
            if tentative.size() - last_cp >= self.every_records {
                if let Ok(cp) = self.sign(&tentative) {
                    cps.push((cp, tentative.clone()));
                    last_cp = tentative.size();
                }
            }
        }
        if tentative.size() > last_cp && self.last_cp_time.elapsed() >= self.every {
            if let Ok(cp) = self.sign(&tentative) {
                cps.push((cp, tentative.clone()));
            }
        }
        let t0 = Instant::now();
        let cp_refs: Vec<(&SignedCheckpoint, &CompactRange)> =
            cps.iter().map(|(c, f)| (c, f)).collect();
        let res = self.store.append_batch(&self.framed.seg, &cp_refs);
        let n = self.framed.len() as u64;
        self.counters
            .last_commit_latency_us
            .store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        match res {
            Ok(()) => {
                self.frontier = tentative;
                for (c, _) in &cps {
                    self.note_checkpoint(c.checkpoint().size);
                }
                self.counters
                    .records_written
                    .fetch_add(n, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .next_index
                    .store(self.frontier.size(), Ordering::Relaxed);
                for (i, a) in self.framed.acks.drain(..).enumerate() {
                    if let Some(a) = a {
                        let _ = a.send(Ok(start + i as u64));
                    }
                }
            }
            Err(e) => {
                // Nothing was committed: the indices go to the next records (the
                // next commit renumbers them), and every waiter learns its record is
                // not durable.
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                for a in self.framed.acks.drain(..).flatten() {
                    let _ = a.send(Err(e.clone()));
                }
            }
        }
        self.framed.clear();
        if over {
            // The records beyond this commit go back (the buffers swap).
            std::mem::swap(&mut self.framed, &mut self.overflow);
        }
    }

    fn prune(&mut self, target: PruneTarget) -> Result<PruneOutcome, AuditError> {
        let size = self.frontier.size();
        let base = self.store.prune_point()?.map_or(0, |p| p.size);
        let n = match target {
            PruneTarget::BeforeIndex(n) => n,
            PruneTarget::OlderThan(t) => self.store.first_index_at_or_after(t)?.unwrap_or(size),
        };
        if n > size {
            return Err(AuditError::InvalidArgument(format!(
                "cannot prune before {n}: the log has {size} records"
            )));
        }
        if n <= base {
            return Err(AuditError::InvalidArgument(format!(
                "records before {base} are already deleted"
            )));
        }
        if let PruneTarget::OlderThan(t) = target {
            // The cut comes from the segments' time columns, which are not signed: the
            // last record to go is read to confirm it is older than the cutoff, so that
            // an edited column cannot turn retention into a signed wipe of recent records.
            let last = self.store.read_range(n - 1, n)?;
            let older = last.first().is_some_and(|(idx, f)| {
                crate::store::audit::decode_record(*idx, f)
                    .ok()
                    .and_then(|r| r.time_ms())
                    .is_some_and(|ms| ms < epoch_ms(t))
            });
            if !older {
                return Err(AuditError::Corrupt {
                    index: n - 1,
                    reason: "the segments' time columns put this record before the retention \
                             cutoff, but the record is not older than it; nothing deleted"
                        .into(),
                });
            }
        }
        let at_n = self.frontier_at(n, base)?;

        // 1. Record the deletion, signed, before deleting anything.
        let target_text = match target {
            PruneTarget::BeforeIndex(_) => String::new(),
            PruneTarget::OlderThan(t) => {
                format!(" (records older than {})", format_epoch_ms(epoch_ms(t)))
            }
        };
        let (segment, leaf) = self.retention_record(
            n,
            format!(
                "retention deletion of records [{base}, {n}){target_text}; root of the first \
                 {n} records is {}; verification of the remainder starts from that frontier",
                hash_to_base64(&at_n.root())
            ),
        )?;
        let mut after = self.frontier.clone();
        after.append(leaf);
        let anchor = match self.store.checkpoint_at(n)? {
            Some(cp) => cp,
            None => self.sign(&at_n)?,
        };
        let covering = self.sign(&after)?;
        self.store
            .append_batch(&segment, &[(&anchor, &at_n), (&covering, &after)])?;
        self.frontier = after;
        self.note_checkpoint(size + 1);
        self.count_one_record();

        // 2. Delete. If that fails, the log says so after the announcement: it must
        // not read as if records were deleted that are still there.
        let deleted = match self.store.delete_before(n, &at_n, size) {
            Ok(d) => d,
            Err(e) => {
                let note = format!(
                    "retention deletion of records [{base}, {n}) announced by record {size} \
                     failed ({e}); those records are kept"
                );
                if let Err(e2) = self.append_retention_note(n, note) {
                    tracing::error!(error = %e2, "audit retention: the failed deletion could not be recorded");
                }
                return Err(e);
            }
        };
        Ok(PruneOutcome {
            pruned_before: n,
            deleted,
            admin_index: size,
            anchor_checkpoint: anchor.to_text(),
        })
    }

    /// The `admin` record of a retention run before index `n`, framed as the next
    /// record of the log, and its leaf hash.
    fn retention_record(&self, n: u64, detail: String) -> Result<(NewSegment, Hash), AuditError> {
        let size = self.frontier.size();
        let mut rec = AuditRecord::new(RecordKind::Admin, format!("audit-retention-{n}"));
        rec.route = Some("audit.retention".into());
        rec.detail = Some(detail);
        let mut segment = NewSegment::new(size);
        let leaf = encode_frame_into(&mut segment.frames, size, &rec.to_json())?;
        segment.cols.push(IndexColumns::of(&rec));
        Ok((segment, leaf))
    }

    /// Appends a retention run's follow-up record, committed at once; the next
    /// checkpoint covers it.
    fn append_retention_note(&mut self, n: u64, detail: String) -> Result<(), AuditError> {
        let (segment, leaf) = self.retention_record(n, detail)?;
        self.store.append_batch(&segment, &[])?;
        self.frontier.append(leaf);
        self.count_one_record();
        Ok(())
    }

    /// Counts a record committed on its own (outside a batch of the lane).
    fn count_one_record(&self) {
        self.counters
            .records_written
            .fetch_add(1, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .next_index
            .store(self.frontier.size(), Ordering::Relaxed);
    }

    /// Frontier of the first `n` records, computed from the nearest stored
    /// frontier at or below `n` and the records after it. The records are
    /// re-hashed up to the next signed checkpoint (or the live frontier) and
    /// must reproduce its root: the anchor we are about to sign has to
    /// describe the log we actually signed before, not whatever the rows
    /// say now.
    fn frontier_at(&self, n: u64, base: u64) -> Result<CompactRange, AuditError> {
        let mut range = match self.store.frontier_at_or_before(n)? {
            Some(f) if f.size() >= base => f,
            _ => match self.store.prune_point()? {
                Some(p) => p.frontier,
                None => CompactRange::new(),
            },
        };
        let check = self
            .store
            .checkpoint_covering(n)?
            .filter(|c| c.checkpoint().size <= self.frontier.size());
        let end = check
            .as_ref()
            .map_or(self.frontier.size(), |c| c.checkpoint().size);
        let mut at_n = (range.size() == n).then(|| range.clone());
        self.store
            .for_each_frame(range.size(), Some(end), |idx, frame| {
                if idx != range.size() {
                    return Err(AuditError::Corrupt {
                        index: range.size(),
                        reason: "record missing".into(),
                    });
                }
                let (_, leaf) = decode_row(idx, frame)?;
                range.append(leaf);
                if range.size() == n {
                    at_n = Some(range.clone());
                }
                Ok(())
            })?;
        let ok = match &check {
            Some(cp) => cp
                .verify_matches(&self.key, &self.origin, range.size(), &range.root())
                .is_ok(),
            None => range == self.frontier,
        };
        match (ok, at_n) {
            (true, Some(f)) => Ok(f),
            _ => Err(AuditError::Corrupt {
                index: n,
                reason: "stored records do not reproduce the signed log; refusing to prune".into(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Offline verification
// ---------------------------------------------------------------------------

/// Feed one stored row. A frame whose only fault is its hash is fed with
/// its stored hash so the report says `HashMismatch` at that index (more
/// precise than "corrupt frame"); any other damage is a corrupt frame.
fn feed_row(sink: &mut LogVerifier, frame: &[u8]) {
    let (frames, _, tail) = scan_frames(frame);
    match (frames.as_slice(), tail) {
        ([f], None) => sink.push_frame(f),
        ([], Some(t)) if t.error == FrameError::HashMismatch => {
            // scan_frames only reports HashMismatch for a structurally
            // complete frame, so the layout below is in bounds.
            let end = frame.len() - FRAME_TRAILER_LEN;
            let mut index = [0u8; 8];
            index.copy_from_slice(&frame[12..20]);
            let mut stored = [0u8; 32];
            stored.copy_from_slice(&frame[end..]);
            sink.push(
                u64::from_be_bytes(index),
                &frame[FRAME_HEADER_LEN..end],
                Some(&stored),
            );
        }
        (_, Some(t)) => sink.push_corrupt(t.error),
        (_, None) => sink.push_corrupt(FrameError::BadLength),
    }
}

/// Verify a whole database: every stored frame in index order against every
/// stored checkpoint, signed by `key` for `origin`. A pruned log is verified
/// from its stored prune-point frontier. `Err` only for a database that
/// cannot be read at all; everything found wrong is in the report.
pub fn verify_db(path: &Path, key: &VerifierKey, origin: &str) -> Result<VerifyReport, AuditError> {
    let store = Store::open_read_only(path)?;
    let mut parsed = Vec::new();
    let mut unreadable: Option<(u64, CheckpointError)> = None;
    for (size, text) in store.checkpoint_texts()? {
        match SignedCheckpoint::parse(&text) {
            Ok(cp) if cp.checkpoint().size == size => parsed.push(cp),
            Ok(_) => {
                unreadable.get_or_insert((
                    size,
                    CheckpointError::MalformedCheckpoint("size column differs from note"),
                ));
            }
            Err(e) => {
                unreadable.get_or_insert((size, e));
            }
        }
    }
    // Verification starts at the first stored record. Past 0 it resumes from the
    // prune point stored at exactly that index (the frontier of the deleted records),
    // which counts only with the retention record that announced it: a prune row is
    // not signed, so one added where records are still stored is ignored (they are
    // verified), and one without its announcement is reported. With no prune point
    // there, the verifier starts at 0 and names the missing records.
    let first = store.first_stored_index()?.unwrap_or(0);
    let prune = if first > 0 {
        store.prune_point_at(first)?
    } else {
        None
    };
    let (mut v, from) = match &prune {
        None => (LogVerifier::new(key, origin, &parsed), 0),
        Some(p) => (
            LogVerifier::resume(key, origin, &parsed, p.frontier.clone()),
            p.size,
        ),
    };
    let announced_by = prune
        .as_ref()
        .map(|p| (p.admin_idx, format!("audit-retention-{}", p.size)));
    let mut announced = false;
    store.for_each_frame(from, None, |idx, f| {
        if let Some((admin_idx, id)) = &announced_by {
            if idx == *admin_idx {
                announced = crate::store::audit::decode_record(idx, f)
                    .is_ok_and(|r| r.kind == RecordKind::Admin && r.request_id == *id);
            }
        }
        feed_row(&mut v, f);
        Ok(())
    })?;
    let mut report = v.finish(None);
    if let Some(p) = prune.as_ref().filter(|_| !announced) {
        if report.first_bad.as_ref().is_none_or(|(i, _)| *i > p.size) {
            report.first_bad = Some((
                p.size,
                Problem::UnannouncedDeletion {
                    size: p.size,
                    admin_idx: p.admin_idx,
                },
            ));
        }
    }
    if let Some((size, error)) = unreadable {
        // The unreadable checkpoint vouched for records below it; name the
        // start of the window it was meant to cover.
        let window_start = parsed
            .iter()
            .map(|c| c.checkpoint().size)
            .filter(|s| *s < size)
            .max()
            .unwrap_or(0);
        let earlier = report
            .first_bad
            .as_ref()
            .is_some_and(|(i, _)| *i <= window_start);
        if !earlier {
            report.first_bad = Some((
                window_start,
                Problem::CheckpointInvalid {
                    checkpoint_size: size,
                    error,
                },
            ));
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------
// Proofs
// ---------------------------------------------------------------------------

/// Every perfect-subtree hash from a starting frontier onwards, so proofs
/// for any record at or after the frontier can be assembled from lookups.
/// With an empty starting frontier this is `merkle::MerkleTree`; the
/// difference is that a pruned log has no leaves below the prune point,
/// only the frontier's peaks. Those peaks are exactly the aligned subtrees
/// that proofs for later records need from the deleted part, because a
/// left sibling lying wholly before the prune point is always one of them.
struct ProofTree {
    /// `levels[k]` holds the level-k subtree hashes with absolute positions
    /// `starts[k]..`; `starts[k]` is even, so every right child has its left
    /// sibling present.
    levels: Vec<Vec<Hash>>,
    starts: Vec<u64>,
    size: u64,
}

impl ProofTree {
    fn new(frontier: &CompactRange) -> Self {
        let base = frontier.size();
        let mut peaks = frontier.peaks().iter();
        let mut levels = vec![Vec::new(); 64];
        let mut starts = vec![0u64; 64];
        for k in (0..64).rev() {
            let pos = base >> k;
            starts[k] = pos & !1;
            if pos & 1 == 1 {
                // Peaks are listed largest first, matching this loop.
                levels[k].push(*peaks.next().expect("one peak per set bit"));
            }
        }
        Self {
            levels,
            starts,
            size: base,
        }
    }

    fn push(&mut self, leaf: Hash) {
        self.levels[0].push(leaf);
        self.size += 1;
        let mut k = 0;
        let mut pos = self.size - 1;
        while pos & 1 == 1 {
            let n = self.levels[k].len();
            let parent = super::merkle::node_hash(&self.levels[k][n - 2], &self.levels[k][n - 1]);
            self.levels[k + 1].push(parent);
            k += 1;
            pos >>= 1;
        }
    }

    fn node(&self, k: u32, pos: u64) -> Option<Hash> {
        let rel = pos.checked_sub(self.starts[k as usize])?;
        self.levels[k as usize]
            .get(usize::try_from(rel).ok()?)
            .copied()
    }

    /// MTH of `[lo, hi)` for ranges that occur in RFC 6962 recursion (see
    /// `MerkleTree::range_hash`). `None` if it needs a deleted subtree.
    fn range_hash(&self, lo: u64, hi: u64) -> Option<Hash> {
        let mut parts = Vec::new();
        let mut p = lo;
        while p < hi {
            let mut k = 63 - (hi - p).leading_zeros();
            if p != 0 {
                k = k.min(p.trailing_zeros());
            }
            parts.push(self.node(k, p >> k)?);
            p += 1u64 << k;
        }
        let mut acc = parts.pop()?;
        while let Some(left) = parts.pop() {
            acc = super::merkle::node_hash(&left, &acc);
        }
        Some(acc)
    }

    fn root_at(&self, size: u64) -> Option<Hash> {
        if size == 0 {
            return Some(super::merkle::empty_root());
        }
        (size <= self.size)
            .then(|| self.range_hash(0, size))
            .flatten()
    }

    fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, AuditError> {
        if index >= size || size > self.size {
            return Err(MerkleError::IndexOutOfRange { index, size }.into());
        }
        let missing = || AuditError::NotFound(format!("record {index} has been deleted"));
        let leaf_hash = self.node(0, index).ok_or_else(missing)?;
        let mut path = Vec::new();
        let (mut lo, mut hi) = (0u64, size);
        while hi - lo > 1 {
            let k = 1u64 << (63 - (hi - lo - 1).leading_zeros());
            if index < lo + k {
                path.push(self.range_hash(lo + k, hi).ok_or_else(missing)?);
                hi = lo + k;
            } else {
                path.push(self.range_hash(lo, lo + k).ok_or_else(missing)?);
                lo += k;
            }
        }
        path.reverse();
        Ok(InclusionProof {
            leaf_index: index,
            tree_size: size,
            leaf_hash,
            path,
        })
    }
}

/// Build the proof tree over the stored log up to `size` and check it
/// reproduces `expected_root`.
fn load_tree(store: &Store, size: u64, expected_root: &Hash) -> Result<ProofTree, AuditError> {
    let start = store.prune_point()?.map(|p| p.frontier).unwrap_or_default();
    if size < start.size() {
        return Err(AuditError::NotFound(format!(
            "checkpoint {size} lies in the deleted part of the log"
        )));
    }
    let mut tree = ProofTree::new(&start);
    store.for_each_frame(start.size(), Some(size), |idx, frame| {
        if idx != tree.size {
            return Err(AuditError::Corrupt {
                index: tree.size,
                reason: "record missing".into(),
            });
        }
        let (_, leaf) = decode_row(idx, frame)?;
        tree.push(leaf);
        Ok(())
    })?;
    if tree.size != size {
        return Err(AuditError::Corrupt {
            index: tree.size,
            reason: format!("checkpoint covers {size} records, {} stored", tree.size),
        });
    }
    if tree.root_at(size).as_ref() != Some(expected_root) {
        return Err(AuditError::Corrupt {
            index: start.size(),
            reason: format!("stored records do not reproduce the root of checkpoint {size}"),
        });
    }
    Ok(tree)
}

/// What `audit prove` hands to a counterpart: the record exactly as stored,
/// its inclusion proof, and the signed checkpoint the proof leads to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordProof {
    /// The record's JSON, byte for byte as hashed into the log.
    pub record: String,
    pub proof: InclusionProof,
    /// Signed checkpoint (note text) of size `proof.tree_size`.
    pub checkpoint: String,
}

impl RecordProof {
    /// The counterpart's check: checkpoint signed by `key` for `origin`, and
    /// the record is in the tree it commits to.
    pub fn verify(&self, key: &VerifierKey, origin: &str) -> Result<AuditRecord, AuditError> {
        let sc = SignedCheckpoint::parse(&self.checkpoint)?;
        let cp = sc.verify(key)?;
        if cp.origin != origin || cp.size != self.proof.tree_size {
            return Err(AuditError::InvalidArgument(
                "checkpoint is for another log or size".into(),
            ));
        }
        self.proof.verify_record(self.record.as_bytes(), &cp.root)?;
        Ok(serde_json::from_str(&self.record)?)
    }
}

/// Inclusion proof for record `index` against the stored checkpoint of
/// `checkpoint_size` (default: the latest checkpoint).
pub fn prove(
    path: &Path,
    index: u64,
    checkpoint_size: Option<u64>,
) -> Result<RecordProof, AuditError> {
    let store = Store::open_read_only(path)?;
    let cp = match checkpoint_size {
        Some(s) => store.checkpoint_at(s)?,
        None => store.latest_checkpoint()?,
    }
    .ok_or_else(|| AuditError::NotFound("checkpoint".into()))?;
    let size = cp.checkpoint().size;
    if index >= size {
        return Err(AuditError::NotFound(format!(
            "record {index} is not covered by checkpoint {size}"
        )));
    }
    let tree = load_tree(&store, size, &cp.checkpoint().root)?;
    let proof = tree.inclusion_proof(index, size)?;
    let frame = store
        .read_range(index, index + 1)?
        .pop()
        .ok_or_else(|| AuditError::NotFound(format!("record {index}")))?;
    let (payload, _) = decode_row(index, &frame.1)?;
    let record = String::from_utf8(payload).map_err(|_| AuditError::Corrupt {
        index,
        reason: "record is not UTF-8".into(),
    })?;
    Ok(RecordProof {
        record,
        proof,
        checkpoint: cp.to_text(),
    })
}

// ---------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------

/// Identifies the export format in its first line.
pub const EXPORT_FORMAT: &str = "lienthong-audit-export/1";

/// First line of an export: the checkpoint every record line is proven
/// against.
#[derive(Debug, Serialize, Deserialize)]
struct ExportHeader {
    format: String,
    origin: String,
    checkpoint: String,
    /// The checkpoint's RFC 3161 token (base64 DER), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

/// One record line. `record` is a JSON *string* holding the stored record
/// bytes, so they survive the round trip exactly (a nested object would be
/// re-serialised and no longer hash to the leaf); `jq '.record|fromjson'`
/// shows it.
#[derive(Debug, Serialize, Deserialize)]
struct ExportLine {
    index: u64,
    record: String,
    proof: InclusionProof,
}

/// Counts from an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub records: u64,
    pub checkpoint_size: u64,
}

/// Write the records matching `filter` that the latest checkpoint covers as
/// JSON Lines: a header line carrying that signed checkpoint, then one line
/// per record with its inclusion proof. Each record can be checked on its
/// own, so a filtered export (one dossier, one agency) is as verifiable as a
/// full one. Records newer than the latest checkpoint are not exported; call
/// `AuditWriter::checkpoint_now` first to include them.
pub fn export_jsonl(
    path: &Path,
    filter: &Filter,
    mut out: impl Write,
) -> Result<ExportSummary, AuditError> {
    let store = Store::open_read_only(path)?;
    let cp = store
        .latest_checkpoint()?
        .ok_or_else(|| AuditError::NotFound("checkpoint".into()))?;
    let size = cp.checkpoint().size;
    let tree = load_tree(&store, size, &cp.checkpoint().root)?;
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        origin: cp.checkpoint().origin.clone(),
        checkpoint: cp.to_text(),
        timestamp: store
            .timestamp_at(size)?
            .map(|t| base64::engine::general_purpose::STANDARD.encode(t)),
    };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let limit = filter.limit.map_or(u64::MAX, |l| l as u64);
    let mut written = 0u64;
    let from = filter.from_index.unwrap_or(0);
    store.for_each_frame(from, Some(size), |idx, frame| {
        if written >= limit {
            return Ok(());
        }
        let (payload, _) = decode_row(idx, frame)?;
        let rec: AuditRecord = serde_json::from_slice(&payload)?;
        if !filter.matches(idx, &rec) {
            return Ok(());
        }
        let line = ExportLine {
            index: idx,
            record: String::from_utf8(payload).map_err(|_| AuditError::Corrupt {
                index: idx,
                reason: "record is not UTF-8".into(),
            })?,
            proof: tree.inclusion_proof(idx, size)?,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        written += 1;
        Ok(())
    })?;
    out.flush()?;
    Ok(ExportSummary {
        records: written,
        checkpoint_size: size,
    })
}

/// Result of checking an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// Origin of the (signature-verified) checkpoint.
    pub origin: String,
    pub checkpoint_size: u64,
    /// Record lines that verified.
    pub records_ok: u64,
    /// First record line that did not verify: (line number, 1-based; why).
    pub first_bad: Option<(u64, String)>,
    /// The header's checkpoint note and its RFC 3161 token, if the export has one
    /// (see [`ExportReport::check_timestamp`]).
    pub checkpoint_note: String,
    pub timestamp_token: Option<Vec<u8>>,
}

impl ExportReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }

    /// Checks the export's time-stamp token against the TSA's certificate:
    /// `None` when the export has none.
    pub fn check_timestamp(&self, tsa: &TsaCerts) -> Option<Result<timestamp::Timestamp, String>> {
        let token = self.timestamp_token.as_ref()?;
        let digest = timestamp::checkpoint_digest(&self.checkpoint_note);
        let checked = tsa.verify_token(token, &digest).map_err(|e| e.to_string());
        Some(checked.and_then(|t| {
            let signed_at = SignedCheckpoint::parse(&self.checkpoint_note)
                .map_err(|e| e.to_string())?
                .checkpoint()
                .timestamp_ms;
            tsa_time_after_checkpoint(&t, signed_at).map(|()| t)
        }))
    }
}

/// A TSA cannot have seen a checkpoint before it was signed: its time may
/// precede the checkpoint's own by clock skew (a minute) at most.
fn tsa_time_after_checkpoint(t: &timestamp::Timestamp, signed_at_ms: u64) -> Result<(), String> {
    if t.gen_time_ms + 60_000 < signed_at_ms {
        return Err(format!(
            "the TSA's time {} is before the checkpoint's {}",
            format_epoch_ms(t.gen_time_ms),
            format_epoch_ms(signed_at_ms)
        ));
    }
    Ok(())
}

/// What `verify_timestamps` found. A checkpoint without a token is not an
/// error (the TSA may have been down, or a later checkpoint superseded it):
/// a token proves that the records up to its checkpoint existed by the TSA's
/// time, and `uncovered` says how many records no token covers yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TimestampReport {
    /// Tokens that verified: (checkpoint size, the TSA's time in Unix ms).
    pub ok: Vec<(u64, u64)>,
    /// The first token that did not: (checkpoint size, why).
    pub first_bad: Option<(u64, String)>,
    /// Stored checkpoints, with or without a token.
    pub checkpoints: u64,
    /// Records after the largest verified timestamped checkpoint, up to the
    /// latest checkpoint.
    pub uncovered: u64,
}

/// Checks every stored RFC 3161 token against the stored checkpoint note it
/// claims to timestamp and the TSA's certificate, and that the TSA's time is
/// not before the checkpoint's own time (more than a minute of clock skew
/// apart). Each token's checkpoint is checked against `key` and `origin` here too:
/// `verify_db` leaves out checkpoints below a prune point, and a token is worth no
/// more than the checkpoint it stamps.
pub fn verify_timestamps(
    path: &Path,
    tsa: &TsaCerts,
    key: &VerifierKey,
    origin: &str,
) -> Result<TimestampReport, AuditError> {
    let store = Store::open_read_only(path)?;
    let (checkpoints, latest) = store.checkpoint_count_and_latest()?;
    let mut report = TimestampReport {
        checkpoints,
        uncovered: latest,
        ..TimestampReport::default()
    };
    // Tokens are streamed one at a time; the first bad one ends the scan.
    store.for_each_timestamp(|size, token| {
        let check = || -> Result<u64, String> {
            let cp = store
                .checkpoint_at(size)
                .map_err(|e| e.to_string())?
                .ok_or("no checkpoint of this size")?;
            let signed = cp.verify(key).map_err(|e| format!("its checkpoint: {e}"))?;
            if signed.origin != origin {
                return Err(format!(
                    "its checkpoint is of log {:?}, not {origin:?}",
                    signed.origin
                ));
            }
            let digest = timestamp::checkpoint_digest(&cp.to_text());
            let t = tsa
                .verify_token(token, &digest)
                .map_err(|e| e.to_string())?;
            tsa_time_after_checkpoint(&t, cp.checkpoint().timestamp_ms)?;
            Ok(t.gen_time_ms)
        };
        match check() {
            Ok(gen) => {
                report.ok.push((size, gen));
                report.uncovered = latest.saturating_sub(size);
                true
            }
            Err(why) => {
                report.first_bad = Some((size, why));
                false
            }
        }
    })?;
    Ok(report)
}

/// Check an export with nothing but the log's public key: the header's
/// checkpoint must be signed by `key`, and every record line must be proven
/// included in it, in strictly increasing index order. A bad header is an
/// `Err`; a bad record line is reported with its line number.
pub fn verify_export(reader: impl BufRead, key: &VerifierKey) -> Result<ExportReport, AuditError> {
    let mut lines = reader.lines();
    let header_line = lines
        .next()
        .ok_or_else(|| AuditError::InvalidArgument("empty export".into()))??;
    let header: ExportHeader = serde_json::from_str(&header_line)?;
    if header.format != EXPORT_FORMAT {
        return Err(AuditError::InvalidArgument(format!(
            "unknown export format {:?}",
            header.format
        )));
    }
    let sc = SignedCheckpoint::parse(&header.checkpoint)?;
    let cp = sc.verify(key)?.clone();
    if cp.origin != header.origin {
        return Err(CheckpointError::OriginMismatch {
            expected: header.origin,
            got: cp.origin,
        }
        .into());
    }
    let timestamp_token = match &header.timestamp {
        None => None,
        Some(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| AuditError::InvalidArgument("timestamp is not base64".into()))?,
        ),
    };
    let mut report = ExportReport {
        origin: cp.origin.clone(),
        checkpoint_size: cp.size,
        records_ok: 0,
        first_bad: None,
        checkpoint_note: header.checkpoint.clone(),
        timestamp_token,
    };
    let mut last_index: Option<u64> = None;
    for (n, line) in lines.enumerate() {
        let line_no = n as u64 + 2;
        let line = line?;
        let check = || -> Result<u64, String> {
            let l: ExportLine = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            if l.proof.leaf_index != l.index || l.proof.tree_size != cp.size {
                return Err("proof is for another index or tree size".into());
            }
            if last_index.is_some_and(|p| l.index <= p) {
                return Err("record indices are not increasing".into());
            }
            l.proof
                .verify_record(l.record.as_bytes(), &cp.root)
                .map_err(|e| format!("record {}: {e}", l.index))?;
            serde_json::from_str::<AuditRecord>(&l.record)
                .map_err(|e| format!("record {} is not an audit record: {e}", l.index))?;
            Ok(l.index)
        };
        match check() {
            Ok(idx) => {
                last_index = Some(idx);
                report.records_ok += 1;
            }
            Err(why) => {
                report.first_bad = Some((line_no, why));
                break;
            }
        }
    }
    Ok(report)
}

/// Records matching `filter`, from the database at `path` (read-only; safe
/// while the writer runs).
pub fn query(path: &Path, filter: &Filter) -> Result<Vec<(u64, AuditRecord)>, AuditError> {
    Store::open_read_only(path)?.query(filter)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::{Command, Stdio};
    use std::sync::atomic::AtomicU32;

    use super::super::merkle::{verify_inclusion, MerkleTree};
    use super::super::record::{contains_secret_like, Caller};
    use super::super::verify::{encode_frame, frame_len};
    use super::*;

    const ORIGIN: &str = "lienthong.test/audit";
    const CRASH_ENV: &str = "LIENTHONG_AUDIT_CRASH_CHILD_DB";

    /// A directory removed when the test ends (even on panic).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "lt-audit-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        fn db(&self) -> PathBuf {
            self.0.join("audit.db")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn signer() -> CheckpointSigner {
        CheckpointSigner::from_seed(ORIGIN, &[7u8; 32]).unwrap()
    }

    fn key() -> VerifierKey {
        signer().verifier_key()
    }

    fn cfg(db: &Path) -> WriterConfig {
        let mut c = WriterConfig::new(db, ORIGIN, signer());
        c.batch_max = 64;
        c.checkpoint_every_records = 10;
        c.checkpoint_every = Duration::from_secs(3600);
        c.queue_capacity = 1024;
        c
    }

    fn rec(i: u64) -> AuditRecord {
        let mut r = AuditRecord::new(RecordKind::Proxy, format!("req-{i}"));
        r.listener = "public".into();
        r.caller = Some(Caller {
            agency: format!("A{}", i % 3),
            subject: Some("svc".into()),
            cert_s256: None,
        });
        r.route = Some(
            if i.is_multiple_of(2) {
                "dan-cu"
            } else {
                "doanh-nghiep"
            }
            .into(),
        );
        r.method = Some("GET".into());
        r.set_path(&format!("/dan-cu/0792010{:05}?ky=2024", i));
        r.status = Some(if i % 4 == 3 { 404 } else { 200 });
        r.dossier = Some(format!("HS-{}", i % 5));
        r.latency_us = 100 + i;
        r
    }

    async fn write_range(w: &AuditWriter, range: std::ops::Range<u64>) -> Vec<u64> {
        let tickets: Vec<Ticket> = range.map(|i| w.submit(rec(i)).unwrap()).collect();
        let mut out = Vec::new();
        for t in tickets {
            out.push(t.durable().await.unwrap());
        }
        out
    }

    /// Leaf hashes of all stored rows, from the frames' own trailers.
    fn stored_leaves(db: &Path) -> Vec<Hash> {
        let store = Store::open_read_only(db).unwrap();
        let mut v = Vec::new();
        store
            .for_each_frame(0, None, |idx, f| {
                v.push(decode_row(idx, f)?.1);
                Ok(())
            })
            .unwrap();
        v
    }

    /// Indices of all stored records, in scan order.
    fn stored_indices(store: &Store) -> Vec<u64> {
        let mut v = Vec::new();
        store
            .for_each_frame(0, None, |idx, _| {
                v.push(idx);
                Ok(())
            })
            .unwrap();
        v
    }

    fn raw_conn(db: &Path) -> rusqlite::Connection {
        rusqlite::Connection::open(db).unwrap()
    }

    /// The `request_id` of each stored record in `[from, to)`, in index order.
    fn stored_request_ids(db: &Path, from: u64, to: Option<u64>) -> Vec<String> {
        let mut ids = Vec::new();
        Store::open_read_only(db)
            .unwrap()
            .for_each_frame(from, to, |idx, f| {
                let json: serde_json::Value = serde_json::from_slice(&decode_row(idx, f)?.0)?;
                ids.push(json["request_id"].as_str().unwrap().to_string());
                Ok(())
            })
            .unwrap();
        ids
    }

    /// Records in the largest committed segment (batch).
    fn largest_segment(db: &Path) -> i64 {
        raw_conn(db)
            .query_row("SELECT max(count) FROM audit_segments", [], |r| r.get(0))
            .unwrap()
    }

    use crate::store::audit::tamper::{frame_of, set_frame};

    #[tokio::test]
    async fn a_writer_that_dies_refuses_records_and_releases_their_waiters() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        // A linger this long overflows the writer's clock arithmetic: its thread
        // panics on the first batch, standing in for any bug that kills it.
        c.batch_linger = Duration::MAX;
        c.batch_linger_fail_open = Duration::MAX;
        let w = AuditWriter::start(c).unwrap();
        let ticket = w.submit(rec(0)).unwrap();
        let durable = tokio::time::timeout(Duration::from_secs(10), ticket.durable())
            .await
            .expect("the waiter is released, not left hanging");
        assert!(
            matches!(durable, Err(AuditError::WriterStopped)),
            "{durable:?}"
        );
        assert!(matches!(
            w.submit_nowait(rec(1)),
            Err(AuditError::WriterStopped)
        ));
        assert!(w.shutdown().await.is_err(), "a panicked writer is reported");
    }

    /// A batch of fail-open records may linger long; a fail-closed record that joins it
    /// brings the commit forward, so its waiter is not held by the long linger.
    #[tokio::test]
    async fn fail_closed_record_cuts_a_fail_open_linger_short() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.batch_linger = Duration::from_millis(1);
        c.batch_linger_fail_open = Duration::from_secs(30);
        let w = AuditWriter::start(c).unwrap();
        w.submit_nowait(rec(0)).unwrap();
        let t = w.submit(rec(1)).unwrap();
        let idx = tokio::time::timeout(Duration::from_secs(10), t.durable())
            .await
            .expect("the fail-closed record committed without waiting out the 30 s linger")
            .unwrap();
        assert_eq!(idx, 1);
        w.shutdown().await.unwrap();
    }

    /// Controls wake a writer napping through a long fail-open linger too.
    #[tokio::test]
    async fn flush_cuts_a_fail_open_linger_short() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.batch_linger_fail_open = Duration::from_secs(30);
        let w = AuditWriter::start(c).unwrap();
        w.submit_nowait(rec(0)).unwrap();
        w.submit_nowait(rec(1)).unwrap();
        let size = tokio::time::timeout(Duration::from_secs(10), w.flush())
            .await
            .expect("the flush was answered without waiting out the 30 s linger")
            .unwrap();
        assert_eq!(size, 2);
        w.shutdown().await.unwrap();
    }

    /// A commit that fails gives its indices to the records queued behind it: the
    /// writer frames records as it takes them, so their frames are renumbered before
    /// they commit. Here the first two-record commit is refused (a trigger stands in
    /// for a failing disk); the third record, framed as index 3 behind them, is
    /// stored as index 1, and the log verifies.
    #[tokio::test]
    async fn records_behind_a_failed_commit_take_its_indices() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.batch_max = 2;
        c.batch_linger_fail_open = Duration::from_secs(30);
        let w = AuditWriter::start(c).unwrap();
        w.submit_nowait(rec(0)).unwrap();
        assert_eq!(w.flush().await.unwrap(), 1);
        raw_conn(&dir.db())
            .execute_batch(
                "CREATE TRIGGER fail_once BEFORE INSERT ON audit_segments
                 WHEN NEW.first_idx = 1 AND NEW.count = 2
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        for i in 1..=3 {
            w.submit_nowait(rec(i)).unwrap();
        }
        assert_eq!(w.flush().await.unwrap(), 2, "records 1 and 2 were refused");
        assert!(w.stats().failures >= 1);
        w.submit_nowait(rec(4)).unwrap();
        assert_eq!(w.flush().await.unwrap(), 3);
        w.shutdown().await.unwrap();
        assert_eq!(
            stored_request_ids(&dir.db(), 0, None),
            ["req-0", "req-3", "req-4"]
        );
        let store = Store::open_read_only(&dir.db()).unwrap();
        assert_eq!(stored_indices(&store), [0, 1, 2]);
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn a_failed_final_commit_makes_shutdown_fail() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.batch_linger_fail_open = Duration::from_secs(30);
        let w = AuditWriter::start(c).unwrap();
        w.submit_nowait(rec(0)).unwrap();
        assert_eq!(w.flush().await.unwrap(), 1);
        raw_conn(&dir.db())
            .execute_batch(
                "CREATE TRIGGER fail_always BEFORE INSERT ON audit_segments
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        w.submit_nowait(rec(1)).unwrap();
        let e = w.shutdown().await.unwrap_err();
        assert!(e.to_string().contains("final commit failed"), "{e}");
        assert_eq!(stored_request_ids(&dir.db(), 0, None), ["req-0"]);
    }

    #[tokio::test]
    async fn a_lane_smaller_than_a_take_wakes_the_writer_when_full() {
        async fn lane_empties(w: &AuditWriter, what: &str) {
            let start = Instant::now();
            while w.stats().queue_depth > 0 {
                assert!(start.elapsed() < Duration::from_secs(10), "{what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.queue_capacity = 8;
        c.batch_linger_fail_open = Duration::from_secs(30);
        let w = AuditWriter::start(c).unwrap();
        // The first record wakes the idle writer, which takes it and starts a batch
        // that lingers for 30 s.
        w.submit_nowait(rec(0)).unwrap();
        lane_empties(&w, "the first record was not taken").await;
        // A full lane is taken long before the linger is up: it has room again.
        for i in 1..=8 {
            w.submit_nowait(rec(i)).unwrap();
        }
        lane_empties(&w, "the full lane was not taken").await;
        for i in 9..=16 {
            w.submit_nowait(rec(i)).unwrap();
        }
        assert_eq!(w.flush().await.unwrap(), 17);
    }

    /// Several threads submitting at once, fail-open and fail-closed mixed, with small
    /// batches and a lingering writer: every record is stored exactly once, each
    /// thread's records keep their order, every ticket names its own record, and the
    /// log verifies.
    #[test]
    fn concurrent_submitters_lose_and_repeat_nothing() {
        const THREADS: u64 = 4;
        const EACH: u64 = 500;
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.batch_max = 64;
        c.queue_capacity = 100_000;
        c.batch_linger = Duration::from_millis(1);
        c.batch_linger_fail_open = Duration::from_millis(20);
        let w = Arc::new(AuditWriter::start(c).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let w = w.clone();
                let (rt, dir) = (&rt, &dir);
                s.spawn(move || {
                    let mut tickets = Vec::new();
                    for i in 0..EACH {
                        let n = t * EACH + i;
                        if i % 7 == 0 {
                            tickets.push((n, w.submit(rec(n)).unwrap()));
                        } else {
                            w.submit_nowait(rec(n)).unwrap();
                        }
                    }
                    for (n, ticket) in tickets {
                        let idx = rt.block_on(ticket.durable()).unwrap();
                        let id = stored_request_ids(&dir.db(), idx, Some(idx + 1));
                        assert_eq!(id, [format!("req-{n}")], "ticket of record {n}");
                    }
                });
            }
        });
        assert_eq!(rt.block_on(w.flush()).unwrap(), THREADS * EACH);
        rt.block_on(w.shutdown()).unwrap();
        let seen: Vec<u64> = stored_request_ids(&dir.db(), 0, None)
            .iter()
            .map(|id| id.strip_prefix("req-").unwrap().parse().unwrap())
            .collect();
        assert_eq!(seen.len() as u64, THREADS * EACH);
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, (0..THREADS * EACH).collect::<Vec<_>>());
        for t in 0..THREADS {
            let mine: Vec<u64> = seen.iter().copied().filter(|n| n / EACH == t).collect();
            assert!(
                mine.windows(2).all(|p| p[0] < p[1]),
                "thread {t} out of order"
            );
        }
        let largest = largest_segment(&dir.db());
        assert!(largest <= 64, "a commit of {largest} records");
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(r.is_ok(), "{r:?}");
    }

    /// A lane that outgrew `batch_max` (the writer was busy or lingering) commits in
    /// batches of at most `batch_max`, in submission order across fail-open and
    /// fail-closed records.
    #[tokio::test]
    async fn a_long_lane_commits_in_batches_of_batch_max_in_order() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.batch_max = 4;
        c.batch_linger_fail_open = Duration::from_secs(30);
        let w = AuditWriter::start(c).unwrap();
        // Hold the database so the first commit blocks and the lane backs up.
        let blocker = raw_conn(&dir.db());
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        for i in 0..4 {
            w.submit_nowait(rec(i)).unwrap();
        }
        let mut tickets = Vec::new();
        for i in 4..10 {
            if i % 3 == 0 {
                tickets.push((i, w.submit(rec(i)).unwrap()));
            } else {
                w.submit_nowait(rec(i)).unwrap();
            }
        }
        blocker.execute_batch("ROLLBACK").unwrap();
        for (i, t) in tickets {
            assert_eq!(t.durable().await.unwrap(), i);
        }
        assert_eq!(w.flush().await.unwrap(), 10);
        assert_eq!(w.stats().records_written, 10);
        w.shutdown().await.unwrap();
        assert_eq!(largest_segment(&dir.db()), 4);
        let want: Vec<String> = (0..10).map(|i| format!("req-{i}")).collect();
        assert_eq!(stored_request_ids(&dir.db(), 0, None), want);
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn checkpoints_are_signed_and_verify() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        assert_eq!(write_range(&w, 0..25).await, (0..25).collect::<Vec<_>>());
        assert_eq!(w.flush().await.unwrap(), 25);
        w.shutdown().await.unwrap();

        let store = Store::open_read_only(&dir.db()).unwrap();
        let sizes: Vec<u64> = store
            .checkpoint_texts()
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        // Every 10 records, plus the final one written on shutdown.
        assert_eq!(sizes, vec![10, 20, 25]);
        let tree = MerkleTree::from_leaf_hashes(stored_leaves(&dir.db()));
        for (size, text) in store.checkpoint_texts().unwrap() {
            let sc = SignedCheckpoint::parse(&text).unwrap();
            sc.verify_matches(&key(), ORIGIN, size, &tree.root_at(size).unwrap())
                .unwrap();
        }
        let report = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!((report.records, report.checkpoints_ok), (25, 3));
        assert_eq!(report.root, tree.root());

        // Another key, or another log's origin, vouches for nothing.
        let other = CheckpointSigner::from_seed(ORIGIN, &[8u8; 32]).unwrap();
        let r = verify_db(&dir.db(), &other.verifier_key(), ORIGIN).unwrap();
        assert!(matches!(
            r.first_bad,
            Some((0, Problem::CheckpointInvalid { .. }))
        ));
        let r = verify_db(&dir.db(), &key(), "another.log/audit").unwrap();
        assert!(matches!(
            r.first_bad,
            Some((0, Problem::CheckpointInvalid { .. }))
        ));
        assert_eq!(w.stats().checkpoints, 3);
    }

    #[tokio::test]
    async fn restart_rebuilds_frontier_and_continues_indices() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..13).await;
        w.shutdown().await.unwrap();

        // Clean restart: resumes from the frontier stored with checkpoint 13.
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        assert_eq!(w.stats().next_index, 13);
        assert_eq!(write_range(&w, 13..18).await, (13..18).collect::<Vec<_>>());
        w.shutdown().await.unwrap();

        // As after a crash between checkpoints: the newest checkpoint and
        // frontier are missing, so the writer resumes from the one at 10
        // and re-reads (and checks) the eight records after it.
        let c = raw_conn(&dir.db());
        c.execute("DELETE FROM audit_checkpoints WHERE size > 10", [])
            .unwrap();
        c.execute("DELETE FROM audit_frontiers WHERE size > 10", [])
            .unwrap();
        drop(c);
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        assert_eq!(w.stats().next_index, 18);
        assert_eq!(write_range(&w, 18..21).await, vec![18, 19, 20]);
        w.shutdown().await.unwrap();

        let report = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.records, 21);
        let tree = MerkleTree::from_leaf_hashes(stored_leaves(&dir.db()));
        assert_eq!(report.root, tree.root());
        let latest = Store::open_read_only(&dir.db())
            .unwrap()
            .latest_checkpoint()
            .unwrap()
            .unwrap();
        assert_eq!(latest.checkpoint().size, 21);
        assert_eq!(latest.checkpoint().root, tree.root());
    }

    #[tokio::test]
    async fn start_refuses_damaged_tail_naming_the_index() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..15).await;
        drop(w); // Drop drains and checkpoints too.
        let c = raw_conn(&dir.db());
        c.execute("DELETE FROM audit_checkpoints WHERE size > 10", [])
            .unwrap();
        c.execute("DELETE FROM audit_frontiers WHERE size > 10", [])
            .unwrap();
        drop(c);
        let mut f = frame_of(&dir.db(), 12);
        f[FRAME_HEADER_LEN + 3] ^= 1;
        set_frame(&dir.db(), 12, &f);
        match AuditWriter::start(cfg(&dir.db())) {
            Err(AuditError::Corrupt { index: 12, .. }) => {}
            other => panic!("expected corruption at 12, got {other:?}"),
        }
        // A gap in the tail is named too.
        let good = encode_frame(12, &rec(12).to_json()).unwrap();
        set_frame(&dir.db(), 12, &good);
        crate::store::audit::tamper::delete_record(&dir.db(), 11);
        match AuditWriter::start(cfg(&dir.db())) {
            Err(AuditError::Corrupt { index: 11, .. }) => {}
            other => panic!("expected a gap at 11, got {other:?}"),
        }
    }

    /// A database from before segments (one `audit_records` row per record) is
    /// migrated on open: same frames, still verifying, and the writer appends after it.
    #[tokio::test]
    async fn one_row_per_record_databases_are_migrated() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..30).await;
        w.shutdown().await.unwrap();
        let leaves = stored_leaves(&dir.db());
        // Rewrite the records in the old layout.
        let c = raw_conn(&dir.db());
        c.execute_batch(
            "CREATE TABLE audit_records (idx INTEGER PRIMARY KEY, frame BLOB NOT NULL,
                 time_ms INTEGER, kind TEXT, dossier TEXT, agency TEXT, route TEXT, status INTEGER)",
        )
        .unwrap();
        for i in 0..30u64 {
            let r = rec(i);
            c.execute(
                "INSERT INTO audit_records VALUES (?1, ?2, ?3, 'proxy', ?4, NULL, ?5, ?6)",
                rusqlite::params![
                    i as i64,
                    frame_of(&dir.db(), i),
                    r.time_ms().map(|t| t as i64),
                    r.dossier,
                    r.route,
                    r.status
                ],
            )
            .unwrap();
        }
        c.execute_batch("DELETE FROM audit_segments; DELETE FROM audit_dossiers")
            .unwrap();
        drop(c);
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 30..35).await;
        w.shutdown().await.unwrap();
        let after = stored_leaves(&dir.db());
        assert_eq!(after.len(), 35);
        assert_eq!(after[..30], leaves[..]);
        assert!(verify_db(&dir.db(), &key(), ORIGIN).unwrap().is_ok());
        let legacy: i64 = raw_conn(&dir.db())
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'audit_records'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(legacy, 0);
    }

    /// Frames live in a frame file beside the database; an edit there is named like an
    /// edit in the database.
    #[tokio::test]
    async fn frames_are_in_a_frame_file_and_an_edit_there_is_named() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..30).await;
        w.shutdown().await.unwrap();
        let files = crate::store::audit::tamper::frame_files(&dir.db());
        assert_eq!(files.len(), 1, "{files:?}");
        let inline: i64 = rusqlite::Connection::open(dir.db())
            .unwrap()
            .query_row(
                "SELECT COALESCE(SUM(length(frames)), 0) FROM audit_segments",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(inline, 0, "no frames inline in the rows");
        let on_disk = std::fs::metadata(&files[0]).unwrap().len();
        let framed: u64 = (0..30)
            .map(|i| frame_len(rec(i).to_json().len()) as u64)
            .sum();
        assert_eq!(on_disk, framed);
        assert!(verify_db(&dir.db(), &key(), ORIGIN).unwrap().is_ok());

        crate::store::audit::tamper::flip_in_frame_file(&dir.db(), 23);
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert_eq!(r.first_bad, Some((23, Problem::HashMismatch)), "{r:?}");

        // A deleted frame file loses its records; the verifier names the first.
        std::fs::remove_file(&files[0]).unwrap();
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(!r.is_ok(), "{r:?}");
        assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(0), "{r:?}");
    }

    /// One writer per log: a second one (another process on the same database) would
    /// append its frames over the first one's.
    #[tokio::test]
    async fn a_second_writer_on_the_same_log_is_refused() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        let err = AuditWriter::start(cfg(&dir.db())).unwrap_err();
        assert!(
            err.to_string().contains("in use by another writer"),
            "{err}"
        );
        write_range(&w, 0..3).await;
        w.shutdown().await.unwrap();
        // Once the first is gone, the log opens again.
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        w.shutdown().await.unwrap();
        assert!(verify_db(&dir.db(), &key(), ORIGIN).unwrap().is_ok());
    }

    /// A crash between a batch's frame write and its commit leaves bytes past the last
    /// committed row (and maybe a new, empty frame file): the writer cuts them on open
    /// and appends from the committed end.
    #[tokio::test]
    async fn uncommitted_frame_bytes_are_cut_on_open() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..12).await;
        w.shutdown().await.unwrap();
        let files = crate::store::audit::tamper::frame_files(&dir.db());
        let committed = std::fs::metadata(&files[0]).unwrap().len();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&files[0])
                .unwrap();
            let torn = encode_frame(12, &rec(12).to_json()).unwrap();
            f.write_all(&torn[..torn.len() / 2]).unwrap();
        }
        let orphan = files[0].with_file_name(format!("{:020}.frames", 12));
        std::fs::write(&orphan, b"uncommitted").unwrap();

        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), committed);
        assert!(!orphan.exists(), "a frame file no row points to is removed");
        assert_eq!(write_range(&w, 12..20).await, (12..20).collect::<Vec<_>>());
        w.shutdown().await.unwrap();
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.records, 20);
    }

    #[tokio::test]
    async fn tampered_row_is_named_by_verify_db() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..30).await;
        w.shutdown().await.unwrap();
        assert!(verify_db(&dir.db(), &key(), ORIGIN).unwrap().is_ok());

        // A flipped byte in the payload: the row's own hash names it.
        let original = frame_of(&dir.db(), 17);
        let mut f = original.clone();
        f[FRAME_HEADER_LEN + 5] ^= 0x20;
        set_frame(&dir.db(), 17, &f);
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert_eq!(r.first_bad, Some((17, Problem::HashMismatch)), "{r:?}");

        // A rewritten record with a recomputed frame hash: only the signed
        // checkpoints catch it, and the report names the start of the
        // window between the last matching checkpoint (10) and the first
        // failing one (20).
        let mut forged = rec(17);
        forged.status = Some(200);
        forged.request_id = "req-17-forged".into();
        set_frame(&dir.db(), 17, &encode_frame(17, &forged.to_json()).unwrap());
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert_eq!(
            r.first_bad,
            Some((
                10,
                Problem::CheckpointRootMismatch {
                    checkpoint_size: 20
                }
            ))
        );

        // Structural damage (broken length) is a corrupt frame at 17.
        let mut f = original.clone();
        f[5] ^= 1;
        set_frame(&dir.db(), 17, &f);
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(
            matches!(r.first_bad, Some((17, Problem::CorruptFrame(_)))),
            "{r:?}"
        );

        // A forged checkpoint note is named too.
        set_frame(&dir.db(), 17, &original);
        raw_conn(&dir.db())
            .execute(
                "UPDATE audit_checkpoints SET note = replace(note, 'timestamp_ms', 'timestamp_mz') WHERE size = 20",
                [],
            )
            .unwrap();
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(
            matches!(
                r.first_bad,
                Some((
                    10,
                    Problem::CheckpointInvalid {
                        checkpoint_size: 20,
                        ..
                    }
                ))
            ),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn deleted_row_is_named() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..30).await;
        w.shutdown().await.unwrap();
        crate::store::audit::tamper::delete_record(&dir.db(), 7);
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert_eq!(
            r.first_bad,
            Some((
                7,
                Problem::MissingIndex {
                    expected: 7,
                    found: 8
                }
            ))
        );

        // Truncation at the end is caught by the last checkpoint.
        let dir2 = TempDir::new();
        let w = AuditWriter::start(cfg(&dir2.db())).unwrap();
        write_range(&w, 0..30).await;
        w.shutdown().await.unwrap();
        crate::store::audit::tamper::truncate(&dir2.db(), 28);
        let r = verify_db(&dir2.db(), &key(), ORIGIN).unwrap();
        assert_eq!(
            r.first_bad,
            Some((
                28,
                Problem::MissingRecords {
                    checkpoint_size: 30,
                    records: 28
                }
            ))
        );
    }

    #[tokio::test]
    async fn inclusion_proof_verifies_against_published_checkpoint() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..37).await;
        let published = w.checkpoint_now().await.unwrap();
        assert_eq!(published.checkpoint().size, 37);
        write_range(&w, 37..40).await; // not yet covered by a checkpoint

        for idx in [0, 1, 22, 36] {
            let p = prove(&dir.db(), idx, None).unwrap();
            assert_eq!(p.checkpoint, published.to_text());
            let r = p.verify(&key(), ORIGIN).unwrap();
            assert_eq!(r.request_id, format!("req-{idx}"));
            // The counterpart's independent check with the merkle module.
            let cp = published.verify(&key()).unwrap();
            verify_inclusion(idx, 37, &p.proof.leaf_hash, &p.proof.path, &cp.root).unwrap();
            // It survives a JSON round trip (what is actually handed out).
            let back: RecordProof =
                serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            back.verify(&key(), ORIGIN).unwrap();
            // A doctored record fails.
            let mut bad = p.clone();
            bad.record = bad.record.replace("req-", "REQ-");
            assert!(bad.verify(&key(), ORIGIN).is_err());
        }
        // Against an older checkpoint.
        let p = prove(&dir.db(), 5, Some(20)).unwrap();
        assert_eq!(p.proof.tree_size, 20);
        p.verify(&key(), ORIGIN).unwrap();
        assert!(prove(&dir.db(), 38, None).is_err());
        assert!(prove(&dir.db(), 5, Some(21)).is_err());
        w.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn export_verifies_offline() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..33).await;
        w.shutdown().await.unwrap();

        let mut buf = Vec::new();
        let s = export_jsonl(&dir.db(), &Filter::default(), &mut buf).unwrap();
        assert_eq!(
            s,
            ExportSummary {
                records: 33,
                checkpoint_size: 33
            }
        );
        let r = verify_export(&buf[..], &key()).unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            (r.records_ok, r.checkpoint_size, r.origin.as_str()),
            (33, 33, ORIGIN)
        );

        // A filtered export (one dossier) verifies on its own.
        let filter = Filter {
            dossier: Some("HS-2".into()),
            ..Filter::default()
        };
        let mut part = Vec::new();
        let s = export_jsonl(&dir.db(), &filter, &mut part).unwrap();
        let expected = query(&dir.db(), &filter).unwrap();
        assert_eq!(s.records, expected.len() as u64);
        assert!(s.records > 0);
        assert!(verify_export(&part[..], &key()).unwrap().is_ok());

        // Tampering with any record line is caught and located.
        let text = String::from_utf8(buf.clone()).unwrap();
        let doctored = text.replacen("req-4\\\"", "req-5\\\"", 1);
        assert_ne!(doctored, text);
        let r = verify_export(doctored.as_bytes(), &key()).unwrap();
        assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(6), "{r:?}");
        // Dropping lines does not break the others, but reordering does.
        let lines: Vec<&str> = text.lines().collect();
        let swapped = [lines[0], lines[3], lines[2]].join("\n");
        assert!(verify_export(swapped.as_bytes(), &key())
            .unwrap()
            .first_bad
            .is_some());
        // Without the right key nothing verifies.
        let other = CheckpointSigner::from_seed(ORIGIN, &[9u8; 32]).unwrap();
        assert!(verify_export(&buf[..], &other.verifier_key()).is_err());
    }

    /// The oldest row's frame file and offset, and whether the file is all zeros
    /// before that offset (the deleted records' bytes are erased).
    fn front_erased(db: &Path) -> (u64, bool) {
        let (off, chunk) = raw_conn(db)
            .query_row(
                "SELECT off, chunk FROM audit_segments ORDER BY first_idx LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .unwrap();
        let files = crate::store::audit::tamper::frame_files(db);
        let file = files
            .iter()
            .find(|f| f.ends_with(format!("{chunk:020}.frames")))
            .unwrap();
        let bytes = std::fs::read(file).unwrap();
        let off = off as usize;
        (off as u64, bytes[..off].iter().all(|b| *b == 0))
    }

    /// A reader open across a retention deletion may hold a snapshot that still lists
    /// the deleted rows: their bytes stay readable until no reader is open, and are
    /// erased after the next commit, or after the next start when the writer stopped
    /// first.
    #[tokio::test]
    async fn retention_erasure_waits_for_open_readers() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..30).await;
        let reader = Store::open_read_only(&dir.db()).unwrap();
        // A snapshot taken before the deletion, as a long query holds one.
        let mut snap = raw_conn(&dir.db());
        let tx = snap.transaction().unwrap();
        let (chunk, off, len): (i64, i64, i64) = tx
            .query_row(
                "SELECT chunk, off, len FROM audit_segments WHERE first_idx = 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        w.prune(PruneTarget::BeforeIndex(10)).await.unwrap();
        let (front, erased) = front_erased(&dir.db());
        assert!(front > 0 && !erased, "erased under an open reader");
        // The snapshot still reads its rows' frames, intact.
        let files = crate::store::audit::tamper::frame_files(&dir.db());
        let file = files
            .iter()
            .find(|f| f.ends_with(format!("{chunk:020}.frames")))
            .unwrap();
        let bytes = std::fs::read(file).unwrap();
        let seg = &bytes[off as usize..(off + len) as usize];
        let (frames, _, tail) = scan_frames(seg);
        assert!(tail.is_none() && !frames.is_empty());
        assert_eq!(frames[0].index, 0);
        drop(tx);
        drop(reader);
        // No reader now: the next commit erases.
        write_range(&w, 30..31).await;
        assert_eq!(front_erased(&dir.db()), (front, true));

        // Again, with the writer stopping before the reader goes.
        let reader = Store::open_read_only(&dir.db()).unwrap();
        w.prune(PruneTarget::BeforeIndex(20)).await.unwrap();
        let (front, erased) = front_erased(&dir.db());
        assert!(!erased);
        w.shutdown().await.unwrap();
        drop(reader);
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 31..32).await;
        assert_eq!(front_erased(&dir.db()), (front, true));
        w.shutdown().await.unwrap();
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn a_retention_deletion_that_fails_is_recorded_as_failed() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..20).await;
        raw_conn(&dir.db())
            .execute_batch(
                "CREATE TRIGGER no_prunes BEFORE INSERT ON audit_prunes
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        assert!(w.prune(PruneTarget::BeforeIndex(10)).await.is_err());
        w.shutdown().await.unwrap();
        // The announcement (record 20) and, after it, the failure (record 21); every
        // record is still there, and the log verifies.
        let store = Store::open_read_only(&dir.db()).unwrap();
        assert_eq!(stored_indices(&store), (0..22).collect::<Vec<u64>>());
        let notes: Vec<String> = store
            .query(&Filter::default())
            .unwrap()
            .into_iter()
            .filter(|(_, r)| r.kind == RecordKind::Admin)
            .filter_map(|(_, r)| r.detail)
            .collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[1].contains("announced by record 20 failed"),
            "{notes:?}"
        );
        assert!(verify_db(&dir.db(), &key(), ORIGIN).unwrap().is_ok());
    }

    #[tokio::test]
    async fn retention_deletion_is_checkpointed_and_remainder_verifies() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.checkpoint_every_records = 16;
        let w = AuditWriter::start(c).unwrap();
        write_range(&w, 0..50).await;

        let out = w.prune(PruneTarget::BeforeIndex(21)).await.unwrap();
        assert_eq!(
            (out.pruned_before, out.deleted, out.admin_index),
            (21, 21, 50)
        );
        let store = Store::open_read_only(&dir.db()).unwrap();
        // The anchor at 21 and the checkpoint covering the admin record
        // were written; older checkpoints are kept as history.
        let sizes: Vec<u64> = store
            .checkpoint_texts()
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(sizes, vec![16, 21, 32, 48, 51]);
        let anchor = SignedCheckpoint::parse(&out.anchor_checkpoint).unwrap();
        anchor.verify(&key()).unwrap();
        assert_eq!(store.count().unwrap(), 30);
        // Whole segments below 21 went; one holding 21 was cut to start there.
        let first: i64 = raw_conn(&dir.db())
            .query_row("SELECT MIN(first_idx) FROM audit_segments", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(first, 21);
        assert_eq!(stored_indices(&store), (21..51).collect::<Vec<u64>>());
        // The deleted records' bytes are gone from the frame file too: zeros up to
        // where record 21 starts.
        let (off, file) = raw_conn(&dir.db())
            .query_row(
                "SELECT off, chunk FROM audit_segments WHERE first_idx = 21",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .unwrap();
        let files = crate::store::audit::tamper::frame_files(&dir.db());
        assert_eq!(files.len(), 1);
        assert!(files[0].ends_with(format!("{file:020}.frames")));
        let bytes = std::fs::read(&files[0]).unwrap();
        let deleted: u64 = (0..21)
            .map(|i| frame_len(rec(i).to_json().len()) as u64)
            .sum();
        assert_eq!(off as u64, deleted);
        assert!(bytes[..deleted as usize].iter().all(|b| *b == 0));
        assert_eq!(
            &bytes[deleted as usize..][..4],
            &crate::audit::verify::FRAME_MAGIC
        );
        let admin = query(
            &dir.db(),
            &Filter {
                kind: Some(RecordKind::Admin),
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(admin.len(), 1);
        assert_eq!(admin[0].0, 50);
        assert!(admin[0].1.detail.as_ref().unwrap().contains("[0, 21)"));

        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.records, 51);
        // The root after pruning is the root of the full, unpruned log.
        assert_eq!(r.root, w.checkpoint_now().await.unwrap().checkpoint().root);

        // Proofs and exports of the remainder still work; pruned ones don't.
        prove(&dir.db(), 30, None)
            .unwrap()
            .verify(&key(), ORIGIN)
            .unwrap();
        prove(&dir.db(), 21, Some(32))
            .unwrap()
            .verify(&key(), ORIGIN)
            .unwrap();
        assert!(prove(&dir.db(), 20, None).is_err());
        let mut buf = Vec::new();
        assert_eq!(
            export_jsonl(&dir.db(), &Filter::default(), &mut buf)
                .unwrap()
                .records,
            30
        );
        assert!(verify_export(&buf[..], &key()).unwrap().is_ok());

        // Tampering in the remainder is still named.
        let original = frame_of(&dir.db(), 25);
        let mut f = original.clone();
        f[FRAME_HEADER_LEN + 2] ^= 4;
        set_frame(&dir.db(), 25, &f);
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert_eq!(r.first_bad, Some((25, Problem::HashMismatch)));
        set_frame(&dir.db(), 25, &original);
        // So is tampering with the stored frontier: the anchor checkpoint at
        // the prune point no longer matches.
        let stored = Store::open_read_only(&dir.db())
            .unwrap()
            .prune_point()
            .unwrap()
            .unwrap();
        let mut peaks = stored.frontier.peaks().to_vec();
        peaks[0][0] ^= 1;
        let forged = CompactRange::from_parts(21, peaks).unwrap();
        raw_conn(&dir.db())
            .execute(
                "UPDATE audit_prunes SET peaks = ?1",
                [serde_json::to_string(&forged).unwrap()],
            )
            .unwrap();
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert_eq!(
            r.first_bad,
            Some((
                21,
                Problem::CheckpointRootMismatch {
                    checkpoint_size: 21
                }
            ))
        );
        w.shutdown().await.unwrap();
    }

    /// Retention by age reads the segments' time columns, which are not signed: with
    /// them edited to say everything is old, it refuses rather than signing a wipe.
    #[tokio::test]
    async fn retention_by_age_does_not_trust_edited_time_columns() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..20).await;
        w.flush().await.unwrap();
        raw_conn(&dir.db())
            .execute(
                "UPDATE audit_segments SET max_time_ms = 0, min_time_ms = 0",
                [],
            )
            .unwrap();
        let cutoff = SystemTime::now() - Duration::from_secs(3600);
        let err = w.prune(PruneTarget::OlderThan(cutoff)).await.unwrap_err();
        assert!(
            matches!(err, AuditError::Corrupt { index: 19, .. }),
            "{err}"
        );
        assert_eq!(
            Store::open_read_only(&dir.db()).unwrap().count().unwrap(),
            20
        );
        w.shutdown().await.unwrap();
    }

    /// A segment row's frame length is not trusted: an absurd one reads as missing
    /// frames, named, instead of aborting the verifier on the allocation.
    #[tokio::test]
    async fn an_absurd_segment_length_is_reported_not_an_abort() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..20).await;
        w.shutdown().await.unwrap();
        drop(w);
        raw_conn(&dir.db())
            .execute("UPDATE audit_segments SET len = 4611686018427387904", [])
            .unwrap();
        // (Before the cap this aborted the process: a 4 EiB allocation.) The frame
        // file holds what it holds: read to its end, the frames are the real ones
        // (then all verify), or a row whose frames run into the next row's is named.
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(
            (r.is_ok() && r.records == 20) || r.first_bad.is_some(),
            "{r:?}"
        );
    }

    /// A prune point is not signed: one written by hand must neither hide stored
    /// records from verification nor pass off a deletion nobody announced.
    #[tokio::test]
    async fn a_prune_point_written_by_hand_hides_nothing_and_deletes_nothing_unnoticed() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.checkpoint_every_records = 16;
        let w = AuditWriter::start(c).unwrap();
        write_range(&w, 0..50).await;
        w.shutdown().await.unwrap();
        drop(w);
        assert!(verify_db(&dir.db(), &key(), ORIGIN).unwrap().is_ok());
        // 1. A prune row at the checkpoint of size 32 with the true frontier, while
        // records 0..32 stay stored; then record 10 is edited and re-framed (its frame
        // hash is right, only the signed root can tell).
        raw_conn(&dir.db())
            .execute(
                "INSERT INTO audit_prunes (size, peaks, admin_idx, pruned_at_ms)
                 SELECT size, peaks, size, 0 FROM audit_frontiers WHERE size = 32",
                [],
            )
            .unwrap();
        let original = frame_of(&dir.db(), 10);
        let (mut payload, _) = crate::store::audit::decode_row(10, &original).unwrap();
        let at = payload.windows(5).position(|w| w == b"req-1").unwrap();
        payload[at + 4] = b'9';
        set_frame(&dir.db(), 10, &encode_frame(10, &payload).unwrap());
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(
            matches!(
                r.first_bad,
                Some((
                    _,
                    Problem::CheckpointRootMismatch {
                        checkpoint_size: 16
                    }
                ))
            ),
            "the edit below the hand-made prune point must be found: {r:?}"
        );
        set_frame(&dir.db(), 10, &original);
        raw_conn(&dir.db())
            .execute("DELETE FROM audit_prunes", [])
            .unwrap();
        assert!(verify_db(&dir.db(), &key(), ORIGIN).unwrap().is_ok());
        // 2. Records 0..32 deleted the way retention deletes them, but with no
        // retention record: the prune point names record 40, an ordinary one.
        let mut store = Store::open(&dir.db(), ORIGIN, &key()).unwrap();
        let at32 = store.frontier_at_or_before(32).unwrap().unwrap();
        assert_eq!(at32.size(), 32);
        store.delete_before(32, &at32, 40).unwrap();
        drop(store);
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert_eq!(
            r.first_bad,
            Some((
                32,
                Problem::UnannouncedDeletion {
                    size: 32,
                    admin_idx: 40
                }
            ))
        );
    }

    #[tokio::test]
    async fn retention_survives_restart_and_repeats() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.checkpoint_every_records = 16;
        let w = AuditWriter::start(c).unwrap();
        write_range(&w, 0..40).await;
        // Pruning at an existing checkpoint size reuses that checkpoint.
        let out = w.prune(PruneTarget::BeforeIndex(32)).await.unwrap();
        assert_eq!(out.deleted, 32);
        w.shutdown().await.unwrap();

        let mut c = cfg(&dir.db());
        c.checkpoint_every_records = 16;
        let w = AuditWriter::start(c).unwrap();
        assert_eq!(w.stats().next_index, 41);
        write_range(&w, 41..60).await;
        let out = w
            .prune(PruneTarget::OlderThan(
                SystemTime::now() + Duration::from_secs(3600),
            ))
            .await
            .unwrap();
        // Everything before the new admin record is older than that.
        assert_eq!(out.pruned_before, 60);
        assert!(w.prune(PruneTarget::BeforeIndex(10)).await.is_err());
        w.shutdown().await.unwrap();
        let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.records, 61);
        let store = Store::open_read_only(&dir.db()).unwrap();
        assert_eq!(store.count().unwrap(), 1);
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        assert_eq!(w.stats().next_index, 61);
        w.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn queue_full_is_reported_not_blocking() {
        let dir = TempDir::new();
        let mut c = cfg(&dir.db());
        c.queue_capacity = 8;
        c.batch_max = 4;
        let w = AuditWriter::start(c).unwrap();
        // Hold the database's write lock so the writer blocks inside its
        // first commit and the queue backs up behind it.
        let blocker = raw_conn(&dir.db());
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut tickets = Vec::new();
        let mut refused = false;
        for i in 0..100 {
            let t0 = Instant::now();
            match w.submit(rec(i)) {
                Ok(t) => tickets.push(t),
                Err(AuditError::QueueFull) => {
                    assert!(t0.elapsed() < Duration::from_millis(50));
                    refused = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            if i == 0 {
                // Let the writer take the first record and block on the lock.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert!(refused, "queue never filled");
        assert_eq!(w.submit_nowait(rec(999)), Err(AuditError::QueueFull));
        let s = w.stats();
        assert_eq!((s.queue_full, s.queue_depth), (2, 8));
        assert_eq!(tickets.len(), 9);
        blocker.execute_batch("ROLLBACK").unwrap();
        for (i, t) in tickets.into_iter().enumerate() {
            assert_eq!(t.durable().await.unwrap(), i as u64);
        }
        assert_eq!(w.stats().queue_depth, 0);
        w.shutdown().await.unwrap();
        assert_eq!(w.submit_nowait(rec(1)), Err(AuditError::WriterStopped));
    }

    #[tokio::test]
    async fn stored_records_carry_no_secrets_or_citizen_ids() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..20).await;
        w.shutdown().await.unwrap();
        let store = Store::open_read_only(&dir.db()).unwrap();
        store
            .for_each_frame(0, None, |idx, f| {
                let (payload, _) = decode_row(idx, f)?;
                let text = String::from_utf8(payload).unwrap();
                assert!(!contains_secret_like(&text), "{text}");
                let longest = text
                    .split(|c: char| !c.is_ascii_digit())
                    .map(str::len)
                    .max()
                    .unwrap_or(0);
                // Timestamps and latencies are short; a 9+ digit run would
                // be an unmasked identifier.
                assert!(longest < 9, "{text}");
                Ok(())
            })
            .unwrap();
    }

    #[tokio::test]
    async fn query_filters_by_indexed_columns() {
        let dir = TempDir::new();
        let w = AuditWriter::start(cfg(&dir.db())).unwrap();
        write_range(&w, 0..40).await;
        w.shutdown().await.unwrap();
        let q = |f: Filter| query(&dir.db(), &f).unwrap();
        let hs3 = q(Filter {
            dossier: Some("HS-3".into()),
            ..Filter::default()
        });
        assert_eq!(
            hs3.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![3, 8, 13, 18, 23, 28, 33, 38]
        );
        let a1_404 = q(Filter {
            agency: Some("A1".into()),
            status: Some(404),
            ..Filter::default()
        });
        assert!(a1_404
            .iter()
            .all(|(i, r)| i % 3 == 1 && i % 4 == 3 && r.status == Some(404)));
        assert_eq!(a1_404.len(), 3);
        let paged = q(Filter {
            route: Some("dan-cu".into()),
            from_index: Some(10),
            limit: Some(3),
            ..Filter::default()
        });
        assert_eq!(
            paged.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![10, 12, 14]
        );
        let now = SystemTime::now();
        assert_eq!(
            q(Filter {
                from: Some(now - Duration::from_secs(600)),
                to: Some(now + Duration::from_secs(1)),
                limit: Some(100),
                ..Filter::default()
            })
            .len(),
            40
        );
        assert!(q(Filter {
            to: Some(now - Duration::from_secs(600)),
            ..Filter::default()
        })
        .is_empty());
        // A tampered index cannot make a query return a record that does
        // not match: results are re-checked against the frame.
        raw_conn(&dir.db())
            .execute(
                "INSERT INTO audit_dossiers (dossier, idx) VALUES ('HS-3', 4)",
                [],
            )
            .unwrap();
        let hs3b = q(Filter {
            dossier: Some("HS-3".into()),
            ..Filter::default()
        });
        assert_eq!(hs3b, hs3);
        // A tampered frame makes the query fail loudly, naming the row.
        let mut f = frame_of(&dir.db(), 8);
        f[FRAME_HEADER_LEN + 1] ^= 1;
        set_frame(&dir.db(), 8, &f);
        assert!(matches!(
            query(
                &dir.db(),
                &Filter {
                    dossier: Some("HS-3".into()),
                    ..Filter::default()
                }
            ),
            Err(AuditError::Corrupt { index: 8, .. })
        ));
    }

    #[test]
    fn handles_are_shareable_across_tasks() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn send_static<T: Send + 'static>(_: &T) {}
        send_sync::<AuditWriter>();
        send_sync::<AuditError>();
        let (_tx, rx) = oneshot::channel();
        let fut = Ticket { rx }.durable();
        send_static(&fut);
    }

    #[test]
    fn store_refuses_another_logs_database() {
        let dir = TempDir::new();
        Store::open(&dir.db(), ORIGIN, &key()).unwrap();
        assert!(matches!(
            Store::open(&dir.db(), "other.origin/audit", &key()),
            Err(AuditError::WrongLog { what: "origin", .. })
        ));
        let other = CheckpointSigner::from_seed(ORIGIN, &[3u8; 32]).unwrap();
        assert!(matches!(
            Store::open(&dir.db(), ORIGIN, &other.verifier_key()),
            Err(AuditError::WrongLog {
                what: "verifier_key",
                ..
            })
        ));
        let mode: String = raw_conn(&dir.db())
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let page: i64 = raw_conn(&dir.db())
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, 65536, "a new database gets large pages");
        // A segment that overlaps stored records fails the whole batch.
        let mut s = Store::open(&dir.db(), ORIGIN, &key()).unwrap();
        let seg = |r: std::ops::Range<u64>| {
            let mut seg = NewSegment::new(r.start);
            for i in r {
                encode_frame_into(&mut seg.frames, i, &rec(i).to_json()).unwrap();
                seg.cols.push(IndexColumns::of(&rec(i)));
            }
            seg
        };
        s.append_batch(&seg(0..2), &[]).unwrap();
        assert!(s.append_batch(&seg(1..3), &[]).is_err());
        assert!(s.append_batch(&seg(0..1), &[]).is_err());
        assert_eq!(s.count().unwrap(), 2);
    }

    #[test]
    fn timestamps_are_streamed_in_size_order_and_the_scan_can_stop() {
        let dir = TempDir::new();
        let mut s = Store::open(&dir.db(), ORIGIN, &key()).unwrap();
        assert_eq!(s.timestamp_count().unwrap(), 0);
        for size in [30u64, 10, 20] {
            s.put_timestamp(size, size * 1000, &[size as u8; 3])
                .unwrap();
        }
        // A second token for a size keeps the first.
        s.put_timestamp(10, 1, b"other").unwrap();
        assert_eq!(s.timestamp_count().unwrap(), 3);
        let mut seen = Vec::new();
        s.for_each_timestamp(|size, token| {
            seen.push((size, token.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(10, vec![10; 3]), (20, vec![20; 3]), (30, vec![30; 3])]
        );
        let mut first = Vec::new();
        s.for_each_timestamp(|size, _| {
            first.push(size);
            false
        })
        .unwrap();
        assert_eq!(first, vec![10]);
        assert_eq!(s.checkpoint_count_and_latest().unwrap(), (0, 0));
    }

    #[test]
    fn store_keeps_the_page_size_of_an_existing_database() {
        let dir = TempDir::new();
        {
            let c = raw_conn(&dir.db());
            let mode: String = c
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            c.execute("CREATE TABLE t (x)", []).unwrap();
        }
        let mut s = Store::open(&dir.db(), ORIGIN, &key()).unwrap();
        let mut seg = NewSegment::new(0);
        encode_frame_into(&mut seg.frames, 0, &rec(0).to_json()).unwrap();
        seg.cols.push(IndexColumns::of(&rec(0)));
        s.append_batch(&seg, &[]).unwrap();
        assert_eq!(s.count().unwrap(), 1);
        let page: i64 = raw_conn(&dir.db())
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, 4096, "an existing database keeps its page size");
    }

    #[test]
    fn proof_tree_matches_merkle_tree_from_any_prune_point() {
        let leaves: Vec<Hash> = (0..40u32)
            .map(|i| super::super::merkle::leaf_hash(&i.to_be_bytes()))
            .collect();
        let full = MerkleTree::from_leaf_hashes(leaves.iter().copied());
        for base in 0..=40u64 {
            let mut tree = ProofTree::new(&full.compact_range(base).unwrap());
            for h in &leaves[base as usize..] {
                tree.push(*h);
            }
            for size in base.max(1)..=40 {
                assert_eq!(tree.root_at(size), Some(full.root_at(size).unwrap()));
                for index in base..size {
                    let p = tree.inclusion_proof(index, size).unwrap();
                    assert_eq!(
                        p.path,
                        full.inclusion_proof(index, size).unwrap(),
                        "{base} {index} {size}"
                    );
                    assert_eq!(p.leaf_hash, leaves[index as usize]);
                }
                // Below the prune point only leaves that are themselves a
                // peak (odd base) can still be proven, and then correctly.
                for index in 0..base {
                    match tree.inclusion_proof(index, size) {
                        Ok(p) => {
                            assert_eq!(index, base - 1);
                            assert_eq!(p.path, full.inclusion_proof(index, size).unwrap());
                        }
                        Err(_) => assert!(index < base - 1 || base % 2 == 0),
                    }
                }
            }
        }
    }

    #[test]
    fn a_verifier_resumed_mid_log_finds_what_a_full_one_finds() {
        // Resumed from the frontier after record 10 (a pruned log), a verifier
        // must report what one that read the log from record 0 reports, for
        // an intact log and for damage after the resume point.
        let s = signer();
        let payloads: Vec<Vec<u8>> = (0..24u64).map(|i| rec(i).to_json()).collect();
        let mut full = CompactRange::new();
        let mut at10 = None;
        let mut cps = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            full.append_data(p);
            if full.size() == 10 {
                at10 = Some(full.clone());
            }
            if (i + 1) % 5 == 0 {
                let cp = Checkpoint {
                    origin: ORIGIN.into(),
                    size: full.size(),
                    root: full.root(),
                    timestamp_ms: 1,
                };
                cps.push(s.sign(&cp).unwrap());
            }
        }
        let at10 = at10.unwrap();
        let frames = |mutate: &dyn Fn(&mut Vec<Vec<u8>>)| {
            let mut f: Vec<Vec<u8>> = payloads
                .iter()
                .enumerate()
                .map(|(i, p)| encode_frame(i as u64, p).unwrap())
                .collect();
            mutate(&mut f);
            f
        };
        let cases: Vec<(Vec<Vec<u8>>, Option<u64>)> = vec![
            (frames(&|_| {}), None),
            (frames(&|f| f[12][FRAME_HEADER_LEN] ^= 1), Some(12)),
            (
                frames(&|f| {
                    f.remove(12);
                }),
                Some(12),
            ),
            (frames(&|f| f.swap(13, 14)), Some(13)),
            (
                frames(&|f| f[19] = encode_frame(19, b"{}").unwrap()),
                Some(15),
            ),
            (frames(&|f| f.truncate(18)), Some(18)),
        ];
        for (n, (case, bad)) in cases.iter().enumerate() {
            let mut whole = LogVerifier::new(&key(), ORIGIN, &cps);
            let mut resumed = LogVerifier::resume(&key(), ORIGIN, &cps, at10.clone());
            for (i, f) in case.iter().enumerate() {
                feed_row(&mut whole, f);
                if i >= 10 {
                    feed_row(&mut resumed, f);
                }
            }
            let (w, r) = (whole.finish(None), resumed.finish(None));
            assert_eq!(
                w.first_bad.as_ref().map(|(i, _)| *i),
                *bad,
                "case {n}: {w:?}"
            );
            assert_eq!(w.first_bad, r.first_bad, "case {n}");
            assert_eq!((w.records, w.root), (r.records, r.root), "case {n}");
            // The checkpoint at 5 lies in the pruned prefix: only the whole
            // log's verifier can check it.
            if bad.is_none() {
                assert_eq!((w.checkpoints_ok, r.checkpoints_ok), (4, 3), "case {n}");
            }
        }
    }

    /// Child half of `batch_commits_are_durable_after_kill`: writes records
    /// from many concurrent tasks and prints each index once durable, until
    /// it is killed. Does nothing unless started by that test.
    #[test]
    #[ignore = "helper process for batch_commits_are_durable_after_kill"]
    fn crash_child() {
        let Some(db) = std::env::var_os(CRASH_ENV) else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = cfg(Path::new(&db));
            c.batch_max = 32;
            c.checkpoint_every_records = 50;
            let w = Arc::new(AuditWriter::start(c).unwrap());
            let mut tasks = Vec::new();
            for t in 0..16u64 {
                let w = w.clone();
                tasks.push(tokio::spawn(async move {
                    // Bounded so a child that is never killed still ends.
                    for i in 0..20_000u64 {
                        let ticket = match w.submit(rec(t * 1_000_000 + i)) {
                            Ok(ticket) => ticket,
                            Err(_) => {
                                tokio::task::yield_now().await;
                                continue;
                            }
                        };
                        let idx = ticket.durable().await.unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {idx}").unwrap();
                        out.flush().unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
    }

    #[test]
    fn batch_commits_are_durable_after_kill() {
        let dir = TempDir::new();
        let db = dir.db();
        let test_path = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, rest)| rest);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("{test_path}::crash_child"),
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.len() < 600 && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(i) = l.strip_prefix("ACK ") {
                        acked.insert(i.parse::<u64>().unwrap());
                    }
                }
                _ => break,
            }
        }
        // SIGKILL mid-stream: the writer is in the middle of batches.
        child.kill().unwrap();
        // Acknowledgements printed before the kill were durable as well.
        for l in lines.map_while(Result::ok) {
            if let Some(i) = l.strip_prefix("ACK ") {
                acked.insert(i.parse::<u64>().unwrap());
            }
        }
        child.wait().unwrap();
        assert!(
            acked.len() >= 600,
            "child acknowledged only {}",
            acked.len()
        );

        let report = verify_db(&db, &key(), ORIGIN).unwrap();
        assert!(report.is_ok(), "{report:?}");
        let store = Store::open_read_only(&db).unwrap();
        let present: BTreeSet<u64> = stored_indices(&store).into_iter().collect();
        let missing: Vec<_> = acked.difference(&present).collect();
        assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
        assert_eq!(report.records, present.len() as u64);
        println!(
            "killed child: {} acknowledged, {} stored, all acknowledged present",
            acked.len(),
            present.len()
        );
        drop(store);

        // And the writer resumes on the killed database.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let w = AuditWriter::start(cfg(&db)).unwrap();
            assert_eq!(w.stats().next_index, report.records);
            let idx = w.submit(rec(1)).unwrap().durable().await.unwrap();
            assert_eq!(idx, report.records);
            w.shutdown().await.unwrap();
        });
        assert!(verify_db(&db, &key(), ORIGIN).unwrap().is_ok());
    }

    /// Throughput of the writer: 100k small records through submit_nowait,
    /// then 20k through fail-closed tickets. Run with
    /// `cargo test --release -- --ignored writer_throughput --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn writer_throughput_100k() {
        let dir = TempDir::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = cfg(&dir.db());
            c.batch_max = 4096;
            c.queue_capacity = 65_536;
            c.checkpoint_every_records = 4096;
            let w = AuditWriter::start(c).unwrap();
            let small = |i: u64| {
                let mut r = AuditRecord::new(RecordKind::Proxy, format!("r{i}"));
                r.route = Some("dan-cu".into());
                r.status = Some(200);
                r
            };
            let t0 = Instant::now();
            let mut full = 0u64;
            for i in 0..100_000u64 {
                loop {
                    match w.submit_nowait(small(i)) {
                        Ok(()) => break,
                        Err(AuditError::QueueFull) => {
                            full += 1;
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            let n = w.flush().await.unwrap();
            let dt = t0.elapsed();
            let s = w.stats();
            println!(
                "fire-and-forget: {n} records in {dt:?} = {:.0} records/s ({} batches, {} queue-full retries, last commit {} us)",
                n as f64 / dt.as_secs_f64(),
                s.batches,
                full,
                s.last_commit_latency_us
            );

            let t0 = Instant::now();
            let before = s.batches;
            let tickets: Vec<Ticket> = (0..20_000u64)
                .map(|i| loop {
                    match w.submit(small(i)) {
                        Ok(t) => break t,
                        Err(_) => std::thread::yield_now(),
                    }
                })
                .collect();
            for t in tickets {
                t.durable().await.unwrap();
            }
            let dt = t0.elapsed();
            println!(
                "acknowledged: 20000 records in {dt:?} = {:.0} records/s ({} batches)",
                20_000.0 / dt.as_secs_f64(),
                w.stats().batches - before
            );
            // One record at a time: every commit is a separate fsync.
            let t0 = Instant::now();
            for i in 0..500u64 {
                w.submit(small(i)).unwrap().durable().await.unwrap();
            }
            let dt = t0.elapsed();
            println!(
                "sequential acknowledged: 500 records in {dt:?} = {:.0} us per commit",
                dt.as_micros() as f64 / 500.0
            );
            w.shutdown().await.unwrap();
            let t0 = Instant::now();
            let r = verify_db(&dir.db(), &key(), ORIGIN).unwrap();
            assert!(r.is_ok());
            println!("verify_db: {} records in {:?}", r.records, t0.elapsed());
        });
    }
}
