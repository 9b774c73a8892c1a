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
//!   acknowledgement channel entirely.
//!
//! Both are non-blocking and fail with [`AuditError::QueueFull`] when the
//! queue holds `queue_capacity` records. The queue is an unbounded std
//! channel with an atomic depth counter enforcing the bound, rather than a
//! `sync_channel`: control messages (flush, prune, shutdown) must never be
//! refused or block behind a full queue, and the depth is needed for stats.
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

use std::future::Future;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::checkpoint::{
    Checkpoint, CheckpointError, CheckpointSigner, SignedCheckpoint, VerifierKey,
};
use super::merkle::{hash_to_base64, CompactRange, Hash, InclusionProof, MerkleError};
use super::record::{epoch_ms, format_epoch_ms, AuditRecord, RecordKind};
use super::store::{decode_row, AuditError, Filter, IndexColumns, NewRow, Store};
use super::verify::{
    encode_frame_into, frame_len, scan_frames, Frame, FrameError, LogVerifier, Problem,
    VerifyReport, FRAME_HEADER_LEN, FRAME_TRAILER_LEN, MAX_RECORD_LEN,
};

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
    /// Sign a checkpoint after this many new records...
    pub checkpoint_every_records: u64,
    /// ...or this long after the previous one, if there are new records.
    pub checkpoint_every: Duration,
    /// Records that may wait in the queue before submissions fail.
    pub queue_capacity: usize,
}

impl WriterConfig {
    pub fn new(db_path: impl Into<PathBuf>, origin: impl Into<String>, signer: CheckpointSigner) -> Self {
        Self {
            db_path: db_path.into(),
            origin: origin.into(),
            signer,
            batch_max: 1024,
            batch_linger: Duration::ZERO,
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

enum Msg {
    Record {
        json: Vec<u8>,
        cols: IndexColumns,
        ack: Option<Ack<u64>>,
    },
    Flush(Ack<u64>),
    Checkpoint(Ack<SignedCheckpoint>),
    Prune(PruneTarget, Ack<PruneOutcome>),
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
    pub fn durable(self) -> impl Future<Output = Result<u64, AuditError>> {
        async move { self.rx.await.unwrap_or(Err(AuditError::WriterStopped)) }
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

/// Handle to the writer thread. `Sync`: share it behind an `Arc`.
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter").field("stats", &self.stats()).finish()
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
        let depth = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let capacity = cfg.queue_capacity;
        let mut worker = Worker {
            store,
            key,
            signer: cfg.signer,
            origin: cfg.origin,
            frontier,
            last_cp_size,
            last_cp_time: Instant::now(),
            batch_max: cfg.batch_max,
            batch_linger: cfg.batch_linger,
            every_records: cfg.checkpoint_every_records,
            every: cfg.checkpoint_every,
            rx,
            depth: depth.clone(),
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || worker.run())?;
        Ok(AuditWriter {
            tx,
            depth,
            capacity,
            counters,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn enqueue(&self, rec: &AuditRecord, ack: Option<Ack<u64>>) -> Result<(), AuditError> {
        let json = rec.to_json();
        if json.len() > MAX_RECORD_LEN {
            return Err(AuditError::InvalidArgument(format!(
                "audit record of {} bytes exceeds the limit",
                json.len()
            )));
        }
        // Reserve a queue slot first; the writer releases it on receipt.
        if self
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d < self.capacity).then_some(d + 1)
            })
            .is_err()
        {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(AuditError::QueueFull);
        }
        let msg = Msg::Record {
            json,
            cols: IndexColumns::of(rec),
            ack,
        };
        if self.tx.send(msg).is_err() {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(AuditError::WriterStopped);
        }
        Ok(())
    }

    /// Queue a record and get a ticket for its durability. Never blocks.
    pub fn submit(&self, rec: AuditRecord) -> Result<Ticket, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(&rec, Some(tx))?;
        Ok(Ticket { rx })
    }

    /// Queue a record without any acknowledgement (fail-open routes). Never
    /// blocks.
    pub fn submit_nowait(&self, rec: AuditRecord) -> Result<(), AuditError> {
        self.enqueue(&rec, None)
    }

    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            records_written: c.records_written.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            queue_depth: self.depth.load(Ordering::Relaxed),
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
            // is brief.
            let _ = h.join();
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
fn recover(store: &Store, key: &VerifierKey, origin: &str) -> Result<(CompactRange, u64), AuditError> {
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
    let mut later = checkpoints
        .iter()
        .filter(|c| c.checkpoint().size > frontier.size())
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

struct Pending {
    json: Vec<u8>,
    cols: IndexColumns,
    ack: Option<Ack<u64>>,
}

struct Worker {
    store: Store,
    key: VerifierKey,
    signer: CheckpointSigner,
    origin: String,
    /// Frontier of the committed log.
    frontier: CompactRange,
    last_cp_size: u64,
    last_cp_time: Instant,
    batch_max: usize,
    batch_linger: Duration,
    every_records: u64,
    every: Duration,
    rx: mpsc::Receiver<Msg>,
    depth: Arc<AtomicUsize>,
    counters: Arc<Counters>,
}

impl Worker {
    fn run(&mut self) {
        loop {
            let msg = match self.rx.recv_timeout(self.until_checkpoint_due()) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if self.checkpoint_due() {
                        let _ = self.write_checkpoint();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.finish();
                    return;
                }
            };
            let control = match msg {
                Msg::Record { json, cols, ack } => {
                    self.depth.fetch_sub(1, Ordering::AcqRel);
                    let mut batch = vec![Pending { json, cols, ack }];
                    let control = self.collect(&mut batch);
                    self.commit(batch);
                    control
                }
                other => Some(other),
            };
            if let Some(c) = control {
                if self.handle_control(c) {
                    return;
                }
            }
        }
    }

    /// Gather more queued records into `batch`; stop at `batch_max`, an
    /// empty queue (after the linger time) or a control message, which is
    /// returned to be handled after this batch commits.
    fn collect(&mut self, batch: &mut Vec<Pending>) -> Option<Msg> {
        let deadline = Instant::now() + self.batch_linger;
        while batch.len() < self.batch_max {
            let next = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    match self.rx.recv_timeout(left) {
                        Ok(m) => m,
                        Err(_) => return None,
                    }
                }
                Err(TryRecvError::Disconnected) => return None,
            };
            match next {
                Msg::Record { json, cols, ack } => {
                    self.depth.fetch_sub(1, Ordering::AcqRel);
                    batch.push(Pending { json, cols, ack });
                }
                control => return Some(control),
            }
        }
        None
    }

    /// Returns true when the thread should exit.
    fn handle_control(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record { .. } => unreachable!("records are batched, not controls"),
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
            Msg::Shutdown(ack) => {
                let _ = ack.send(self.finish());
                true
            }
        }
    }

    /// Drain whatever is still queued, then write a final checkpoint.
    fn finish(&mut self) -> Result<(), AuditError> {
        loop {
            let mut batch = Vec::new();
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(Msg::Record { json, cols, ack }) => {
                        self.depth.fetch_sub(1, Ordering::AcqRel);
                        batch.push(Pending { json, cols, ack });
                    }
                    // Anything else arriving during shutdown is answered by
                    // dropping its sender: the caller sees WriterStopped.
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.commit(batch);
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

    /// Frame, commit and acknowledge one batch.
    fn commit(&mut self, batch: Vec<Pending>) {
        let start = self.frontier.size();
        let mut tentative = self.frontier.clone();
        let mut rows = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        for (i, p) in batch.into_iter().enumerate() {
            let idx = start + i as u64;
            let mut frame = Vec::with_capacity(frame_len(p.json.len()));
            // Sizes were checked at submission, so framing cannot fail; if
            // it somehow does, fail the batch rather than skip an index.
            match encode_frame_into(&mut frame, idx, &p.json) {
                Ok(leaf) => tentative.append(leaf),
                Err(e) => {
                    let err = AuditError::from(e);
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    for a in acks.into_iter().chain(p.ack).flatten() {
                        let _ = a.send(Err(err.clone()));
                    }
                    return;
                }
            }
            rows.push(NewRow {
                idx,
                frame,
                cols: p.cols,
            });
            acks.push(p.ack);
        }
        let due = tentative.size() - self.last_cp_size >= self.every_records
            || self.last_cp_time.elapsed() >= self.every;
        // A signing failure only postpones the checkpoint; the records
        // still commit.
        let cp = if due { self.sign(&tentative).ok() } else { None };
        let t0 = Instant::now();
        let cps: Vec<(&SignedCheckpoint, &CompactRange)> =
            cp.iter().map(|c| (c, &tentative)).collect();
        let res = self.store.append_batch(&rows, &cps);
        self.counters
            .last_commit_latency_us
            .store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        match res {
            Ok(()) => {
                let n = rows.len() as u64;
                self.frontier = tentative;
                if let Some(c) = &cp {
                    self.note_checkpoint(c.checkpoint().size);
                }
                self.counters.records_written.fetch_add(n, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .next_index
                    .store(self.frontier.size(), Ordering::Relaxed);
                for (i, a) in acks.into_iter().enumerate() {
                    if let Some(a) = a {
                        let _ = a.send(Ok(start + i as u64));
                    }
                }
            }
            Err(e) => {
                // Nothing was committed: the indices are reused by the next
                // batch, and every waiter learns its record is not durable.
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                for a in acks.into_iter().flatten() {
                    let _ = a.send(Err(e.clone()));
                }
            }
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
        let at_n = self.frontier_at(n, base)?;

        // 1. Record the deletion, signed, before deleting anything.
        let mut admin = AuditRecord::new(RecordKind::Admin, format!("audit-retention-{n}"));
        admin.route = Some("audit.retention".into());
        let target_text = match target {
            PruneTarget::BeforeIndex(_) => String::new(),
            PruneTarget::OlderThan(t) => {
                format!(" (records older than {})", format_epoch_ms(epoch_ms(t)))
            }
        };
        admin.detail = Some(format!(
            "retention deletion of records [{base}, {n}){target_text}; root of the first {n} \
             records is {}; verification of the remainder starts from that frontier",
            hash_to_base64(&at_n.root())
        ));
        let json = admin.to_json();
        let mut frame = Vec::new();
        let leaf = encode_frame_into(&mut frame, size, &json)?;
        let mut after = self.frontier.clone();
        after.append(leaf);
        let anchor = match self.store.checkpoint_at(n)? {
            Some(cp) => cp,
            None => self.sign(&at_n)?,
        };
        let covering = self.sign(&after)?;
        let row = NewRow {
            idx: size,
            frame,
            cols: IndexColumns::of(&admin),
        };
        self.store
            .append_batch(&[row], &[(&anchor, &at_n), (&covering, &after)])?;
        self.frontier = after;
        self.note_checkpoint(size + 1);
        self.counters.records_written.fetch_add(1, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.next_index.store(size + 1, Ordering::Relaxed);

        // 2. Delete.
        let deleted = self.store.delete_before(n, &at_n, size)?;
        Ok(PruneOutcome {
            pruned_before: n,
            deleted,
            admin_index: size,
            anchor_checkpoint: anchor.to_text(),
        })
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
        self.store.for_each_frame(range.size(), Some(end), |idx, frame| {
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

/// What `verify_db` feeds records into: the crate's `LogVerifier` for a log
/// that starts at record 0, [`ResumedVerifier`] for a pruned one.
trait RecordSink {
    fn push(&mut self, index: u64, payload: &[u8], stored: Option<&Hash>);
    fn push_frame(&mut self, frame: &Frame<'_>);
    fn push_corrupt(&mut self, error: FrameError);
    fn finish(self) -> VerifyReport;
}

impl RecordSink for LogVerifier {
    fn push(&mut self, index: u64, payload: &[u8], stored: Option<&Hash>) {
        LogVerifier::push(self, index, payload, stored)
    }
    fn push_frame(&mut self, frame: &Frame<'_>) {
        LogVerifier::push_frame(self, frame)
    }
    fn push_corrupt(&mut self, error: FrameError) {
        LogVerifier::push_corrupt(self, error)
    }
    fn finish(self) -> VerifyReport {
        LogVerifier::finish(self, None)
    }
}

/// The same checks as `verify::LogVerifier`, starting from a stored
/// frontier instead of the empty tree. `LogVerifier` has no way to start
/// mid-log, so this mirrors its logic; the two are cross-checked by a test
/// on unpruned logs, where they must produce identical reports.
struct ResumedVerifier {
    checkpoints: Vec<(u64, Result<Hash, CheckpointError>)>,
    next_checkpoint: usize,
    vouched: u64,
    tree: CompactRange,
    checkpoints_ok: usize,
    first_bad: Option<(u64, Problem)>,
}

impl ResumedVerifier {
    fn new(key: &VerifierKey, origin: &str, cps: &[SignedCheckpoint], start: CompactRange) -> Self {
        let mut checkpoints: Vec<(u64, Result<Hash, CheckpointError>)> = cps
            .iter()
            // Checkpoints of the deleted prefix cannot be checked against
            // records any more; they stay in the database as history.
            .filter(|sc| sc.checkpoint().size >= start.size())
            .map(|sc| {
                let checked = sc.verify(key).and_then(|cp| {
                    if cp.origin == origin {
                        Ok(cp.root)
                    } else {
                        Err(CheckpointError::OriginMismatch {
                            expected: origin.to_string(),
                            got: cp.origin.clone(),
                        })
                    }
                });
                (sc.checkpoint().size, checked)
            })
            .collect();
        checkpoints.sort_by_key(|(s, _)| *s);
        let mut v = Self {
            checkpoints,
            next_checkpoint: 0,
            vouched: start.size(),
            tree: start,
            checkpoints_ok: 0,
            first_bad: None,
        };
        v.check_here();
        v
    }

    fn fail(&mut self, index: u64, p: Problem) {
        if self.first_bad.is_none() {
            self.first_bad = Some((index, p));
        }
    }

    fn check_here(&mut self) {
        let size = self.tree.size();
        while let Some((cp_size, checked)) = self.checkpoints.get(self.next_checkpoint).cloned() {
            if cp_size != size {
                break;
            }
            self.next_checkpoint += 1;
            if self.first_bad.is_some() {
                continue;
            }
            match checked {
                Err(error) => {
                    let at = self.vouched;
                    self.fail(
                        at,
                        Problem::CheckpointInvalid {
                            checkpoint_size: size,
                            error,
                        },
                    )
                }
                Ok(root) if root != self.tree.root() => {
                    let at = self.vouched;
                    self.fail(at, Problem::CheckpointRootMismatch { checkpoint_size: size })
                }
                Ok(_) => {
                    self.checkpoints_ok += 1;
                    self.vouched = size;
                }
            }
        }
    }

    fn push_leaf(&mut self, index: u64, h: Hash, stored: Option<&Hash>) {
        let position = self.tree.size();
        if index > position {
            self.fail(
                position,
                Problem::MissingIndex {
                    expected: position,
                    found: index,
                },
            );
        } else if index < position {
            self.fail(
                index,
                Problem::RepeatedIndex {
                    expected: position,
                    found: index,
                },
            );
        } else if stored.is_some_and(|s| *s != h) {
            self.fail(position, Problem::HashMismatch);
        }
        self.tree.append(h);
        self.check_here();
    }
}

impl RecordSink for ResumedVerifier {
    fn push(&mut self, index: u64, payload: &[u8], stored: Option<&Hash>) {
        let h = super::merkle::leaf_hash(payload);
        self.push_leaf(index, h, stored);
    }
    fn push_frame(&mut self, frame: &Frame<'_>) {
        self.push_leaf(frame.index, frame.leaf_hash, None);
    }
    fn push_corrupt(&mut self, error: FrameError) {
        let at = self.tree.size();
        self.fail(at, Problem::CorruptFrame(error));
    }
    fn finish(mut self) -> VerifyReport {
        let records = self.tree.size();
        if let Some((cp_size, _)) = self.checkpoints.get(self.next_checkpoint) {
            let cp_size = *cp_size;
            self.fail(
                records,
                Problem::MissingRecords {
                    checkpoint_size: cp_size,
                    records,
                },
            );
        }
        VerifyReport {
            records,
            checkpoints_ok: self.checkpoints_ok,
            first_bad: self.first_bad,
            root: self.tree.root(),
            torn_tail: None,
        }
    }
}

/// Feed one stored row. A frame whose only fault is its hash is fed with
/// its stored hash so the report says `HashMismatch` at that index (more
/// precise than "corrupt frame"); any other damage is a corrupt frame.
fn feed_row<S: RecordSink>(sink: &mut S, frame: &[u8]) {
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
                unreadable.get_or_insert((size, CheckpointError::MalformedCheckpoint("size column differs from note")));
            }
            Err(e) => {
                unreadable.get_or_insert((size, e));
            }
        }
    }
    let mut report = match store.prune_point()? {
        None => {
            let mut v = LogVerifier::new(key, origin, &parsed);
            store.for_each_frame(0, None, |_, f| {
                feed_row(&mut v, f);
                Ok(())
            })?;
            RecordSink::finish(v)
        }
        Some(p) => {
            let mut v = ResumedVerifier::new(key, origin, &parsed, p.frontier);
            store.for_each_frame(p.size, None, |_, f| {
                feed_row(&mut v, f);
                Ok(())
            })?;
            v.finish()
        }
    };
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
        self.levels[k as usize].get(usize::try_from(rel).ok()?).copied()
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
        (size <= self.size).then(|| self.range_hash(0, size)).flatten()
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
pub fn prove(path: &Path, index: u64, checkpoint_size: Option<u64>) -> Result<RecordProof, AuditError> {
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
pub fn export_jsonl(path: &Path, filter: &Filter, mut out: impl Write) -> Result<ExportSummary, AuditError> {
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
}

impl ExportReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
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
    let mut report = ExportReport {
        origin: cp.origin.clone(),
        checkpoint_size: cp.size,
        records_ok: 0,
        first_bad: None,
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

