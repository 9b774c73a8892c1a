//! Durable storage of the audit log in one SQLite database.
//!
//! # Layout
//!
//! * `audit_records(idx, frame, time_ms, kind, dossier, agency, route,
//!   status)` — `frame` is exactly `verify::encode_frame(idx, json)`, so each
//!   row carries its own leaf hash and the offline verifier applies the very
//!   checks it applies to a framed export. The other columns are copies of
//!   record fields kept only so queries can use indexes; they are *not*
//!   trusted: query results are decoded from the frame and re-checked
//!   against the filter, so a tampered column can hide a row from a query
//!   but never make a query return a record that does not match.
//! * `audit_checkpoints(size, note)` — every signed checkpoint ever written,
//!   kept even after a retention deletion (they are the history that the
//!   remaining records are verified against).
//! * `audit_frontiers(size, peaks)` — the writer's `CompactRange` at each
//!   checkpoint, written in the same transaction. A restart resumes from the
//!   latest one (after checking it against the signed root) instead of
//!   re-hashing the whole log.
//! * `audit_prunes(size, peaks, admin_idx, pruned_at_ms)` — one row per
//!   retention deletion: records `[0, size)` are gone and `peaks` is the
//!   frontier at `size`, from which verification of the remainder starts.
//! * `audit_meta(name, value)` — the log's origin and checkpoint verifier
//!   key; opening a database configured for another log is refused.
//!
//! # Portability
//!
//! The SQL is deliberately plain (no `INSERT OR ...`, no `RETURNING`, no
//! JSON functions) so a PostgreSQL backend can reuse it with `BIGINT` /
//! `BYTEA` column types. Everything SQLite-specific — file opening, PRAGMAs,
//! the DDL type names — is in the "SQLite specifics" section below.
//!
//! # Durability
//!
//! WAL mode with `synchronous=FULL`: a transaction is on stable storage when
//! `COMMIT` returns (the WAL is fsynced on every commit), so a record
//! acknowledged after its batch committed survives a process kill or power
//! loss. With the default `NORMAL`, WAL commits are only durable at the next
//! checkpoint of the WAL, which would break the writer's promise.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::checkpoint::{CheckpointError, SignedCheckpoint, VerifierKey};
use super::merkle::{CompactRange, MerkleError};
use super::record::{epoch_ms, AuditRecord, RecordKind};
use super::verify::{scan_frames, FrameError};

/// Everything that can go wrong in the audit subsystem. `Clone` so one
/// failed batch can report the same error to every waiting submitter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The writer's bounded queue is full; the record was not accepted.
    #[error("audit queue is full")]
    QueueFull,
    /// The writer thread has stopped (shut down or crashed).
    #[error("audit writer is not running")]
    WriterStopped,
    #[error("audit storage error: {0}")]
    Storage(String),
    #[error("audit I/O error: {0}")]
    Io(String),
    /// The database belongs to another log (origin or key differ).
    #[error("audit database {what} is {stored:?}, configured {configured:?}")]
    WrongLog {
        what: &'static str,
        stored: String,
        configured: String,
    },
    /// Stored data failed an integrity check at this record index.
    #[error("audit record {index} is corrupt: {reason}")]
    Corrupt { index: u64, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    #[error("audit frame error: {0}")]
    Frame(#[from] FrameError),
    #[error("audit JSON error: {0}")]
    Json(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Storage(e.to_string())
    }
}

impl From<serde_json::Error> for AuditError {
    fn from(e: serde_json::Error) -> Self {
        AuditError::Json(e.to_string())
    }
}

impl From<std::io::Error> for AuditError {
    fn from(e: std::io::Error) -> Self {
        AuditError::Io(e.to_string())
    }
}

/// SQLite integers are signed; indices and sizes never get near 2^63, but
/// convert checked rather than wrap.
pub(crate) fn to_i64(v: u64) -> Result<i64, AuditError> {
    i64::try_from(v).map_err(|_| AuditError::InvalidArgument(format!("{v} exceeds i64")))
}

fn to_u64(v: i64) -> Result<u64, AuditError> {
    u64::try_from(v).map_err(|_| AuditError::Storage(format!("negative value {v} in database")))
}

// ---------------------------------------------------------------------------
// SQLite specifics (the only part a PostgreSQL backend would replace)
// ---------------------------------------------------------------------------

/// DDL. Type names are SQLite's; PostgreSQL would use BIGINT and BYTEA.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS audit_meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_records (
        idx INTEGER PRIMARY KEY,
        frame BLOB NOT NULL,
        time_ms INTEGER,
        kind TEXT,
        dossier TEXT,
        agency TEXT,
        route TEXT,
        status INTEGER)",
    "CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (time_ms)",
    // Partial indexes: most proxied calls carry no dossier and many no agency; rows without
    // one cost nothing to index, and `col = ?` queries still use them (it implies NOT NULL).
    "DROP INDEX IF EXISTS audit_records_dossier",
    "DROP INDEX IF EXISTS audit_records_agency",
    "CREATE INDEX IF NOT EXISTS audit_records_dossier_nn ON audit_records (dossier)
        WHERE dossier IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS audit_records_agency_nn ON audit_records (agency, time_ms)
        WHERE agency IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS audit_records_route ON audit_records (route, time_ms)",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        size INTEGER PRIMARY KEY,
        note TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_frontiers (
        size INTEGER PRIMARY KEY,
        peaks TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_prunes (
        size INTEGER PRIMARY KEY,
        peaks TEXT NOT NULL,
        admin_idx INTEGER NOT NULL,
        pruned_at_ms INTEGER NOT NULL)",
];

/// Open (and for writers create) the database file with the settings the
/// durability promise depends on.
fn open_sqlite(path: &Path, writable: bool) -> Result<Connection, AuditError> {
    let flags = if writable {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    // Readers wait for a writer's brief exclusive moments (WAL checkpoints)
    // rather than failing.
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if writable {
        // journal_mode answers with the mode actually in force; a database
        // on a filesystem without shared memory would silently stay in
        // rollback mode, so check.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(AuditError::Storage(format!(
                "could not enable WAL mode (got {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        if sync != 2 {
            return Err(AuditError::Storage(format!(
                "could not set synchronous=FULL (got {sync})"
            )));
        }
        for ddl in SCHEMA {
            conn.execute(ddl, [])?;
        }
    }
    Ok(conn)
}

// ---------------------------------------------------------------------------
// Rows and filters
// ---------------------------------------------------------------------------

/// Queryable copies of record fields, stored next to the frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexColumns {
    pub time_ms: Option<u64>,
    pub kind: Option<&'static str>,
    pub dossier: Option<String>,
    pub agency: Option<String>,
    pub route: Option<String>,
    pub status: Option<u16>,
}

impl IndexColumns {
    pub fn of(rec: &AuditRecord) -> Self {
        Self {
            time_ms: rec.time_ms(),
            kind: Some(rec.kind.as_str()),
            dossier: rec.dossier.clone(),
            agency: rec.caller.as_ref().map(|c| c.agency.clone()),
            route: rec.route.clone(),
            status: rec.status,
        }
    }
}

/// A record ready to be stored.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub idx: u64,
    /// `verify::encode_frame(idx, json)`.
    pub frame: Vec<u8>,
    pub cols: IndexColumns,
}

/// Selection for [`Store::query`]. All present conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub dossier: Option<String>,
    pub agency: Option<String>,
    pub route: Option<String>,
    pub status: Option<u16>,
    pub kind: Option<RecordKind>,
    /// Records with `time >= from`.
    pub from: Option<SystemTime>,
    /// Records with `time < to`.
    pub to: Option<SystemTime>,
    /// Records with index `>= from_index` (for paging).
    pub from_index: Option<u64>,
    /// At most this many results (default 1000).
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether a decoded record satisfies the filter (the authoritative
    /// check; the SQL conditions only narrow the scan).
    pub fn matches(&self, idx: u64, rec: &AuditRecord) -> bool {
        let time = rec.time_ms();
        self.dossier
            .as_ref()
            .is_none_or(|d| rec.dossier.as_ref() == Some(d))
            && self
                .agency
                .as_ref()
                .is_none_or(|a| rec.caller.as_ref().map(|c| &c.agency) == Some(a))
            && self
                .route
                .as_ref()
                .is_none_or(|r| rec.route.as_ref() == Some(r))
            && self.status.is_none_or(|s| rec.status == Some(s))
            && self.kind.is_none_or(|k| rec.kind == k)
            && self
                .from
                .is_none_or(|f| time.is_some_and(|t| t >= epoch_ms(f)))
            && self
                .to
                .is_none_or(|t| time.is_some_and(|x| x < epoch_ms(t)))
            && self.from_index.is_none_or(|i| idx >= i)
    }
}

/// A retention deletion: records below `size` are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePoint {
    pub size: u64,
    /// Frontier of the first `size` records; verification resumes from it.
    pub frontier: CompactRange,
    /// Index of the `admin` record describing the deletion.
    pub admin_idx: u64,
    pub pruned_at_ms: u64,
}

/// Decode a stored frame, insisting on exactly one valid frame whose index
/// matches the row key.
pub fn decode_row(idx: u64, frame: &[u8]) -> Result<(Vec<u8>, [u8; 32]), AuditError> {
    let (frames, _, tail) = scan_frames(frame);
    if let Some(t) = tail {
        return Err(AuditError::Corrupt {
            index: idx,
            reason: t.error.to_string(),
        });
    }
    match frames.as_slice() {
        [f] if f.index == idx => Ok((f.payload.to_vec(), f.leaf_hash)),
        [f] => Err(AuditError::Corrupt {
            index: idx,
            reason: format!("row holds a frame for record {}", f.index),
        }),
        _ => Err(AuditError::Corrupt {
            index: idx,
            reason: "row does not hold exactly one frame".into(),
        }),
    }
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// One audit database. Not `Sync`: the writer owns one on its thread and
/// offline tools open their own.
pub struct Store {
    conn: Connection,
    origin: String,
    verifier_key: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.origin)
    }
}

const META_ORIGIN: &str = "origin";
const META_KEY: &str = "verifier_key";

impl Store {
    /// Open or create the database for log `origin` signed by `key`. A
    /// database created for another origin or key is refused: appending to
    /// it would mix two logs' records under one set of checkpoints.
    pub fn open(path: &Path, origin: &str, key: &VerifierKey) -> Result<Self, AuditError> {
        let mut conn = open_sqlite(path, true)?;
        let key_text = key.to_string();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (name, configured) in [(META_ORIGIN, origin), (META_KEY, key_text.as_str())] {
            let stored: Option<String> = tx
                .query_row(
                    "SELECT value FROM audit_meta WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            match stored {
                None => {
                    tx.execute(
                        "INSERT INTO audit_meta (name, value) VALUES (?1, ?2)",
                        [name, configured],
                    )?;
                }
                Some(s) if s == configured => {}
                Some(s) => {
                    return Err(AuditError::WrongLog {
                        what: name,
                        stored: s,
                        configured: configured.to_string(),
                    })
                }
            }
        }
        tx.commit()?;
        Ok(Self {
            conn,
            origin: origin.to_string(),
            verifier_key: key_text,
        })
    }

    /// Open an existing database read-only (offline tools). Safe while a
    /// writer is running: WAL readers see the last committed state.
    pub fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        if !path.exists() {
            return Err(AuditError::NotFound(path.display().to_string()));
        }
        let conn = open_sqlite(path, false)?;
        let meta = |name: &str| -> Result<String, AuditError> {
            conn.query_row(
                "SELECT value FROM audit_meta WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| AuditError::NotFound(format!("audit_meta {name}")))
        };
        let origin = meta(META_ORIGIN)?;
        let verifier_key = meta(META_KEY)?;
        Ok(Self {
            conn,
            origin,
            verifier_key,
        })
    }

    /// Origin recorded in the database.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Verifier key text recorded in the database (informational: offline
    /// verification must use a key obtained out of band).
    pub fn verifier_key_text(&self) -> &str {
        &self.verifier_key
    }

    /// Store a batch of records in ONE transaction, together with any
    /// checkpoints (and the frontiers they were computed from) that should
    /// become durable atomically with it. Inserts are plain
    /// `INSERT`s: an index that already exists fails the whole batch, so the
    /// store can never overwrite history.
    pub fn append_batch(
        &mut self,
        rows: &[NewRow],
        checkpoints: &[(&SignedCheckpoint, &CompactRange)],
    ) -> Result<(), AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO audit_records
                 (idx, frame, time_ms, kind, dossier, agency, route, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for r in rows {
                let time = r.cols.time_ms.map(to_i64).transpose()?;
                ins.execute(params![
                    to_i64(r.idx)?,
                    r.frame,
                    time,
                    r.cols.kind,
                    r.cols.dossier,
                    r.cols.agency,
                    r.cols.route,
                    r.cols.status,
                ])?;
            }
        }
        for (cp, frontier) in checkpoints {
            insert_checkpoint(&tx, cp, Some(frontier))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Store a checkpoint (and the frontier at its size, if known) on its
    /// own. A checkpoint for a size that already has one is ignored: both
    /// are signatures over the same root by the same log, and the first one
    /// may already have been published.
    pub fn put_checkpoint(
        &mut self,
        cp: &SignedCheckpoint,
        frontier: Option<&CompactRange>,
    ) -> Result<(), AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_checkpoint(&tx, cp, frontier)?;
        tx.commit()?;
        Ok(())
    }

    /// Frames with `from <= idx < to`, in index order.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let mut out = Vec::new();
        self.for_each_frame(from, Some(to), |idx, frame| {
            out.push((idx, frame.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Stream frames with `idx >= from` (and `< to`) in index order without
    /// loading them all; `f` may stop the scan by returning an error.
    pub fn for_each_frame<F>(&self, from: u64, to: Option<u64>, mut f: F) -> Result<(), AuditError>
    where
        F: FnMut(u64, &[u8]) -> Result<(), AuditError>,
    {
        let to = to.map_or(Ok(i64::MAX), to_i64)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, frame FROM audit_records WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
        )?;
        let mut rows = stmt.query(params![to_i64(from)?, to])?;
        while let Some(row) = rows.next()? {
            let idx = to_u64(row.get(0)?)?;
            let frame = row.get_ref(1)?.as_blob().map_err(|_| AuditError::Corrupt {
                index: idx,
                reason: "frame is not a blob".into(),
            })?;
            f(idx, frame)?;
        }
        Ok(())
    }

    /// Highest stored index.
    pub fn last_index(&self) -> Result<Option<u64>, AuditError> {
        let v: Option<i64> =
            self.conn
                .query_row("SELECT MAX(idx) FROM audit_records", [], |r| r.get(0))?;
        v.map(to_u64).transpose()
    }

    /// Number of stored records.
    pub fn count(&self) -> Result<u64, AuditError> {
        let v: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM audit_records", [], |r| r.get(0))?;
        to_u64(v)
    }

    /// All stored checkpoints as `(size, note text)`, smallest first.
    pub fn checkpoint_texts(&self) -> Result<Vec<(u64, String)>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT size, note FROM audit_checkpoints ORDER BY size")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (size, note) = row?;
            out.push((to_u64(size)?, note));
        }
        Ok(out)
    }

    /// The checkpoint with the largest size (parsed, not verified).
    pub fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        self.checkpoint_where(
            "SELECT note FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
            None,
        )
    }

    /// The checkpoint of exactly `size`.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<SignedCheckpoint>, AuditError> {
        self.checkpoint_where(
            "SELECT note FROM audit_checkpoints WHERE size = ?1",
            Some(size),
        )
    }

    /// The smallest checkpoint with size `>= size`.
    pub fn checkpoint_covering(&self, size: u64) -> Result<Option<SignedCheckpoint>, AuditError> {
        self.checkpoint_where(
            "SELECT note FROM audit_checkpoints WHERE size >= ?1 ORDER BY size LIMIT 1",
            Some(size),
        )
    }

    fn checkpoint_where(
        &self,
        sql: &str,
        arg: Option<u64>,
    ) -> Result<Option<SignedCheckpoint>, AuditError> {
        let note: Option<String> = match arg {
            Some(a) => self
                .conn
                .query_row(sql, [to_i64(a)?], |r| r.get(0))
                .optional()?,
            None => self.conn.query_row(sql, [], |r| r.get(0)).optional()?,
        };
        note.map(|n| SignedCheckpoint::parse(&n).map_err(AuditError::from))
            .transpose()
    }

    /// The stored frontier with the largest size `<= at_most`.
    pub fn frontier_at_or_before(&self, at_most: u64) -> Result<Option<CompactRange>, AuditError> {
        let peaks: Option<String> = self
            .conn
            .query_row(
                "SELECT peaks FROM audit_frontiers WHERE size <= ?1 ORDER BY size DESC LIMIT 1",
                [i64::try_from(at_most).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .optional()?;
        peaks
            .map(|p| serde_json::from_str(&p).map_err(AuditError::from))
            .transpose()
    }

    /// The most recent retention deletion, if any.
    pub fn prune_point(&self) -> Result<Option<PrunePoint>, AuditError> {
        let row: Option<(i64, String, i64, i64)> = self
            .conn
            .query_row(
                "SELECT size, peaks, admin_idx, pruned_at_ms FROM audit_prunes
                 ORDER BY size DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        row.map(|(size, peaks, admin, at)| {
            let frontier: CompactRange = serde_json::from_str(&peaks)?;
            let size = to_u64(size)?;
            if frontier.size() != size {
                return Err(AuditError::Storage(format!(
                    "prune point {size} stores a frontier of size {}",
                    frontier.size()
                )));
            }
            Ok(PrunePoint {
                size,
                frontier,
                admin_idx: to_u64(admin)?,
                pruned_at_ms: to_u64(at)?,
            })
        })
        .transpose()
    }

    /// Lowest index whose record time is `>= t` (for time-based retention).
    pub fn first_index_at_or_after(&self, t: SystemTime) -> Result<Option<u64>, AuditError> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT MIN(idx) FROM audit_records WHERE time_ms >= ?1",
            [to_i64(epoch_ms(t))?],
            |r| r.get(0),
        )?;
        v.map(to_u64).transpose()
    }

    /// Delete records `[0, size)`. Low level: the caller (the writer's
    /// `prune`) must already have committed the `admin` record describing the
    /// deletion and a signed checkpoint at exactly `size`; this refuses to
    /// run otherwise, or if `frontier` does not reproduce that checkpoint's
    /// root, because then the remainder could no longer be verified. The
    /// prune point and the deletion are one transaction.
    pub fn delete_before(
        &mut self,
        size: u64,
        frontier: &CompactRange,
        admin_idx: u64,
    ) -> Result<u64, AuditError> {
        if frontier.size() != size {
            return Err(AuditError::InvalidArgument(format!(
                "frontier has size {}, pruning at {size}",
                frontier.size()
            )));
        }
        if admin_idx < size {
            return Err(AuditError::InvalidArgument(
                "the admin record describing a deletion must survive it".into(),
            ));
        }
        let cp = self
            .checkpoint_at(size)?
            .ok_or_else(|| AuditError::NotFound(format!("checkpoint at prune size {size}")))?;
        if cp.checkpoint().root != frontier.root() {
            return Err(AuditError::Corrupt {
                index: size,
                reason: "frontier does not match the checkpoint at the prune point".into(),
            });
        }
        if self.checkpoint_covering(admin_idx + 1)?.is_none() {
            return Err(AuditError::NotFound(
                "checkpoint covering the admin record".into(),
            ));
        }
        let peaks = serde_json::to_string(frontier)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO audit_prunes (size, peaks, admin_idx, pruned_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![to_i64(size)?, peaks, to_i64(admin_idx)?, to_i64(now)?],
        )?;
        let deleted = tx.execute("DELETE FROM audit_records WHERE idx < ?1", [to_i64(size)?])?;
        // Frontiers below the prune point can never be resumed from again.
        tx.execute(
            "DELETE FROM audit_frontiers WHERE size < ?1",
            [to_i64(size)?],
        )?;
        tx.commit()?;
        Ok(deleted as u64)
    }

    /// Records matching `filter`, in index order, decoded from their frames.
    /// A row whose frame fails its hash check is an error naming the index:
    /// a query must not quietly serve tampered data.
    pub fn query(&self, filter: &Filter) -> Result<Vec<(u64, AuditRecord)>, AuditError> {
        let mut sql = String::from("SELECT idx, frame FROM audit_records WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        let mut cond = |sql: &mut String, col: &str, op: &str, v: Value| {
            args.push(v);
            sql.push_str(&format!(" AND {col} {op} ?{}", args.len()));
        };
        if let Some(d) = &filter.dossier {
            cond(&mut sql, "dossier", "=", Value::Text(d.clone()));
        }
        if let Some(a) = &filter.agency {
            cond(&mut sql, "agency", "=", Value::Text(a.clone()));
        }
        if let Some(r) = &filter.route {
            cond(&mut sql, "route", "=", Value::Text(r.clone()));
        }
        if let Some(s) = filter.status {
            cond(&mut sql, "status", "=", Value::Integer(i64::from(s)));
        }
        if let Some(k) = filter.kind {
            cond(&mut sql, "kind", "=", Value::Text(k.as_str().into()));
        }
        if let Some(f) = filter.from {
            cond(
                &mut sql,
                "time_ms",
                ">=",
                Value::Integer(to_i64(epoch_ms(f))?),
            );
        }
        if let Some(t) = filter.to {
            cond(
                &mut sql,
                "time_ms",
                "<",
                Value::Integer(to_i64(epoch_ms(t))?),
            );
        }
        if let Some(i) = filter.from_index {
            cond(&mut sql, "idx", ">=", Value::Integer(to_i64(i)?));
        }
        let limit = filter.limit.unwrap_or(1000);
        sql.push_str(&format!(" ORDER BY idx LIMIT {limit}"));
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let idx = to_u64(row.get(0)?)?;
            let blob: Vec<u8> = row.get(1)?;
            let (payload, _) = decode_row(idx, &blob)?;
            let rec: AuditRecord =
                serde_json::from_slice(&payload).map_err(|e| AuditError::Corrupt {
                    index: idx,
                    reason: format!("record is not valid JSON: {e}"),
                })?;
            if filter.matches(idx, &rec) {
                out.push((idx, rec));
            }
        }
        Ok(out)
    }
}

fn insert_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    cp: &SignedCheckpoint,
    frontier: Option<&CompactRange>,
) -> Result<(), AuditError> {
    let size = cp.checkpoint().size;
    if let Some(f) = frontier {
        if f.size() != size || f.root() != cp.checkpoint().root {
            return Err(AuditError::InvalidArgument(format!(
                "frontier does not match checkpoint at size {size}"
            )));
        }
    }
    // Plain SQL "insert unless present" (portable, unlike INSERT OR IGNORE).
    let exists: Option<i64> = tx
        .query_row(
            "SELECT size FROM audit_checkpoints WHERE size = ?1",
            [to_i64(size)?],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        tx.execute(
            "INSERT INTO audit_checkpoints (size, note) VALUES (?1, ?2)",
            params![to_i64(size)?, cp.to_text()],
        )?;
    }
    if let Some(f) = frontier {
        let have: Option<i64> = tx
            .query_row(
                "SELECT size FROM audit_frontiers WHERE size = ?1",
                [to_i64(size)?],
                |r| r.get(0),
            )
            .optional()?;
        if have.is_none() {
            tx.execute(
                "INSERT INTO audit_frontiers (size, peaks) VALUES (?1, ?2)",
                params![to_i64(size)?, serde_json::to_string(f)?],
            )?;
        }
    }
    Ok(())
}
