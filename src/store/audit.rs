//! Durable storage of the audit log (`crate::audit`) in one SQLite database and, for the
//! records themselves, append-only frame files beside it (see `FrameFiles`).
//!
//! # Layout
//!
//! * `audit_segments(first_idx, count, min_time_ms, max_time_ms, kinds,
//!   routes, agencies, statuses, frames, chunk, off, len)` — one row per
//!   committed batch. The batch's records are consecutive
//!   `verify::encode_frame(idx, json)` frames, indices `first_idx ..
//!   first_idx + count`, so every record carries its own leaf hash and the
//!   offline verifier applies the very checks it applies to a framed export.
//!   They are `len` bytes at `off` of frame file `chunk`; rows written before
//!   frame files (and rows migrated from per-record rows) hold them inline in
//!   `frames` instead, with `chunk` NULL.
//!   One row per batch instead of one per record is what keeps the writer
//!   cheap: a B-tree insert and its index entries per record cost more than
//!   hashing and framing the record itself. The other columns are a *zone
//!   map* of the batch (time range; distinct kinds, routes, agencies and
//!   statuses as JSON arrays) so that searches skip batches that cannot
//!   match without reading their frames.
//! * `audit_dossiers(dossier, idx)` — the exact index of records that carry a
//!   dossier code (a dossier's journey is the common question, and such
//!   records are a small share of traffic).
//!
//! Neither the zone maps nor the dossier index are trusted: query results are
//! decoded from the frames and re-checked against the filter, so a tampered
//! column can hide a record from a search but never make a search return a
//! record that does not match.
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
//! * `audit_timestamps(size, gen_time_ms, token)` — RFC 3161 time-stamp tokens
//!   (DER) over the checkpoint note of that size (`audit::timestamp`); like
//!   checkpoints they are kept after a retention deletion.
//! * `audit_meta(name, value)` — the log's origin and checkpoint verifier
//!   key; opening a database configured for another log is refused.
//!
//! # Portability
//!
//! The SQL is deliberately plain (no `INSERT OR ...`, no `RETURNING`, no
//! JSON functions) so a PostgreSQL backend can reuse it with `BIGINT` /
//! `BYTEA` column types. What is SQLite-specific is opening the file (in
//! `store::sqlite`, shared with the exchange), the DDL type names, and
//! `insert_segment` writing inline frames with SQLite's incremental blob I/O
//! (PostgreSQL would bind them as a parameter). Frame files are a
//! single-node device: a PostgreSQL backend shared by several nodes keeps the
//! frames in the row (`BYTEA`), as the inline form here does.
//!
//! # Durability
//!
//! A batch's frames are written to its frame file and `fdatasync`ed before
//! the row that makes them part of the log commits; bytes past the last
//! committed row are cut when the writer next opens the store (a torn or
//! uncommitted batch is detected and cut, never kept). The database is in
//! WAL mode with `synchronous=FULL`: a transaction is on stable storage when
//! `COMMIT` returns (the WAL is fsynced on every commit), so a record
//! acknowledged after its batch committed survives a process kill or power
//! loss. With the default `NORMAL`, WAL commits are only durable at the next
//! checkpoint of the WAL, which would break the writer's promise.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::sqlite::{self, Schema, Tuning};
use super::StoreError;

use crate::audit::checkpoint::{CheckpointError, SignedCheckpoint, VerifierKey};
use crate::audit::merkle::{CompactRange, MerkleError};
use crate::audit::record::{
    epoch_ms, parse_rfc3339_ms, AuditRecord, RecordKind, RecordView, TimeRef,
};
use crate::audit::verify::{frame_extent, scan_frames, FrameError};

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

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        AuditError::Storage(e.0)
    }
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
/// Version 2: segments with frame-file locations (`chunk`, `off`, `len`).
/// Version 3: `audit_timestamps`.
const SCHEMA: Schema = Schema {
    component: "audit",
    version: 3,
    ddl: "CREATE TABLE IF NOT EXISTS audit_meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS audit_segments (
        first_idx INTEGER PRIMARY KEY,
        count INTEGER NOT NULL,
        min_time_ms INTEGER,
        max_time_ms INTEGER,
        kinds TEXT NOT NULL,
        routes TEXT NOT NULL,
        agencies TEXT NOT NULL,
        statuses TEXT NOT NULL,
        frames BLOB NOT NULL,
        chunk INTEGER,
        off INTEGER,
        len INTEGER);
    CREATE INDEX IF NOT EXISTS audit_segments_time ON audit_segments (max_time_ms);
    CREATE TABLE IF NOT EXISTS audit_dossiers (
        dossier TEXT NOT NULL,
        idx INTEGER NOT NULL,
        PRIMARY KEY (dossier, idx));
    CREATE TABLE IF NOT EXISTS audit_checkpoints (
        size INTEGER PRIMARY KEY,
        note TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS audit_frontiers (
        size INTEGER PRIMARY KEY,
        peaks TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS audit_prunes (
        size INTEGER PRIMARY KEY,
        peaks TEXT NOT NULL,
        admin_idx INTEGER NOT NULL,
        pruned_at_ms INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS audit_timestamps (
        size INTEGER PRIMARY KEY,
        gen_time_ms INTEGER NOT NULL,
        token BLOB NOT NULL);",
};

/// Open (and create, migrate) the database for the writer, with the settings the
/// durability promise depends on (`store::sqlite::open_writer`).
fn open_writer(path: &Path) -> Result<Connection, AuditError> {
    let tuning = Tuning {
        // Large pages for a new database (an existing one keeps its size): a batch is
        // one row whose frames blob spans many overflow pages, and every page is a WAL
        // frame, i.e. two `pwrite`s and later a checkpoint copy. 64 KiB pages make
        // those system calls 16 times fewer than the 4 KiB default (the writer's kernel
        // time per record fell by about a third).
        page_size: Some(65536),
        ..Tuning::default()
    };
    let mut conn = sqlite::open_writer(path, &SCHEMA, &tuning)?;
    // Structural migrations, checked at every open (cheap, and safe whatever version
    // `store_schema` recorded before a crash): databases from before frame files keep
    // their inline frames, and their segment table gains the location columns (NULL
    // for those rows).
    let has_chunk: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('audit_segments') WHERE name = 'chunk'",
        [],
        |r| r.get(0),
    )?;
    if has_chunk == 0 {
        conn.execute_batch(
            "ALTER TABLE audit_segments ADD COLUMN chunk INTEGER;
             ALTER TABLE audit_segments ADD COLUMN off INTEGER;
             ALTER TABLE audit_segments ADD COLUMN len INTEGER;",
        )?;
    }
    migrate_record_rows(&mut conn)?;
    Ok(conn)
}

/// Databases written before segments kept one `audit_records` row per record
/// (`idx`, `frame`, and the indexed columns). Their frames move, unchanged, into
/// segments of up to [`MIGRATION_SEGMENT`] records, in one transaction.
fn migrate_record_rows(conn: &mut Connection) -> Result<(), AuditError> {
    let legacy: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit_records'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if legacy.is_none() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare(
            "SELECT idx, frame, time_ms, kind, dossier, agency, route, status
             FROM audit_records ORDER BY idx",
        )?;
        let mut rows = stmt.query([])?;
        let mut seg: Option<NewSegment> = None;
        while let Some(row) = rows.next()? {
            let idx = to_u64(row.get(0)?)?;
            let frame: Vec<u8> = row.get(1)?;
            let cols = IndexColumns {
                time_ms: row.get::<_, Option<i64>>(2)?.map(to_u64).transpose()?,
                kind: row
                    .get::<_, Option<String>>(3)?
                    .and_then(|k| RecordKind::parse(&k))
                    .map(RecordKind::as_str),
                dossier: row.get(4)?,
                agency: row.get(5)?,
                route: row.get::<_, Option<String>>(6)?.map(Into::into),
                status: row.get(7)?,
            };
            let full = seg
                .as_ref()
                .is_some_and(|s| s.cols.len() >= MIGRATION_SEGMENT || s.next_idx() != idx);
            if full {
                if let Some(done) = seg.take() {
                    insert_segment(&tx, &done, None)?;
                }
            }
            let s = seg.get_or_insert_with(|| NewSegment::new(idx));
            s.frames.extend_from_slice(&frame);
            s.cols.push(cols);
        }
        if let Some(done) = seg {
            insert_segment(&tx, &done, None)?;
        }
    }
    tx.execute("DROP TABLE audit_records", [])?;
    tx.commit()?;
    Ok(())
}

/// Records per segment when migrating one-row-per-record databases.
const MIGRATION_SEGMENT: usize = 1024;

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
    /// Shared with the configuration on the request path (route names are `Arc<str>`
    /// there), so indexing a proxied request copies no route name.
    pub route: Option<std::sync::Arc<str>>,
    pub status: Option<u16>,
}

impl IndexColumns {
    /// Like [`IndexColumns::of`], taking the strings out of a record that is no longer
    /// needed (the request path's record, once serialised) instead of copying them.
    pub fn from_record(rec: AuditRecord) -> Self {
        Self {
            time_ms: rec.time_ms(),
            kind: Some(rec.kind.as_str()),
            dossier: rec.dossier,
            agency: rec.caller.map(|c| c.agency),
            route: rec.route.map(Into::into),
            status: rec.status,
        }
    }

    pub fn of(rec: &AuditRecord) -> Self {
        Self::of_view(&rec.view(), rec.route.as_deref().map(Into::into))
    }

    /// The columns of a record given as a view; `route` is the view's route, passed
    /// shared when the caller has it as an `Arc<str>` (the request path does).
    pub fn of_view(v: &RecordView<'_>, route: Option<std::sync::Arc<str>>) -> Self {
        debug_assert_eq!(route.as_deref(), v.route);
        Self {
            time_ms: match v.time {
                TimeRef::EpochMs(ms) => Some(ms),
                TimeRef::Text(t) => parse_rfc3339_ms(t),
            },
            kind: Some(v.kind.as_str()),
            dossier: v.dossier.map(str::to_owned),
            agency: v.caller.map(|c| c.agency.to_owned()),
            route,
            status: v.status,
        }
    }
}

/// A batch of records ready to be stored as one segment.
#[derive(Debug, Clone)]
pub struct NewSegment {
    pub first_idx: u64,
    /// `verify::encode_frame(idx, json)` of each record, indices `first_idx..`
    /// in order, concatenated.
    pub frames: Vec<u8>,
    /// One entry per record, in the same order.
    pub cols: Vec<IndexColumns>,
}

impl NewSegment {
    pub fn new(first_idx: u64) -> Self {
        Self {
            first_idx,
            frames: Vec::new(),
            cols: Vec::new(),
        }
    }

    /// The index the next record appended to this segment gets.
    pub fn next_idx(&self) -> u64 {
        self.first_idx + self.cols.len() as u64
    }
}

/// The distinct values of one column of a segment, as the JSON array the zone
/// map stores.
fn distinct<'a>(values: impl Iterator<Item = Option<&'a str>>) -> String {
    // A batch holds thousands of records and runs of the same value (one route, one
    // kind): a value equal to the one before it is not looked up in the set again.
    let mut set = std::collections::BTreeSet::new();
    let mut last: Option<&str> = None;
    for v in values.flatten() {
        if last != Some(v) {
            set.insert(v);
            last = Some(v);
        }
    }
    serde_json::to_string(&set).expect("strings serialise")
}

/// Whether a zone-map column (a JSON array of strings) may hold `want`. An
/// unreadable column answers yes: the zone map only narrows the scan.
fn zone_has(column: &str, want: &str) -> bool {
    serde_json::from_str::<Vec<String>>(column).map_or(true, |v| v.iter().any(|x| x == want))
}

/// Insert a segment row. With `at` (chunk, offset) its frames are already in that
/// frame file and the row only locates them; without, they go inline in the row
/// (databases migrated from per-record rows).
fn insert_segment(
    tx: &rusqlite::Transaction<'_>,
    seg: &NewSegment,
    at: Option<(u64, u64)>,
) -> Result<(), AuditError> {
    if seg.cols.is_empty() {
        return Ok(());
    }
    let end: Option<i64> = tx
        .prepare_cached(
            "SELECT first_idx + count FROM audit_segments ORDER BY first_idx DESC LIMIT 1",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    if let Some(end) = end.map(to_u64).transpose()? {
        if seg.first_idx < end {
            return Err(AuditError::InvalidArgument(format!(
                "records from {} are already stored (the log holds up to {end})",
                seg.first_idx
            )));
        }
    }
    let times = seg.cols.iter().filter_map(|c| c.time_ms);
    let min_time = times.clone().min().map(to_i64).transpose()?;
    let max_time = times.max().map(to_i64).transpose()?;
    // The distinct codes first: a batch has thousands of records and a handful of codes.
    let statuses: Vec<String> = seg
        .cols
        .iter()
        .filter_map(|c| c.status)
        .collect::<std::collections::BTreeSet<u16>>()
        .into_iter()
        .map(|s| s.to_string())
        .collect();
    let (chunk, off, len, inline) = match at {
        Some((chunk, off)) => (
            Some(to_i64(chunk)?),
            Some(to_i64(off)?),
            Some(to_i64(seg.frames.len() as u64)?),
            0,
        ),
        // Only frames kept in the row itself are bound by SQLite's blob size.
        None => {
            let inline = i32::try_from(seg.frames.len()).map_err(|_| {
                AuditError::InvalidArgument(format!(
                    "a segment of {} bytes of frames is too large for one row",
                    seg.frames.len()
                ))
            })?;
            (None, None, None, inline)
        }
    };
    tx.prepare_cached(
        "INSERT INTO audit_segments
         (first_idx, count, min_time_ms, max_time_ms, kinds, routes, agencies, statuses, frames,
          chunk, off, len)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        to_i64(seg.first_idx)?,
        to_i64(seg.cols.len() as u64)?,
        min_time,
        max_time,
        distinct(seg.cols.iter().map(|c| c.kind)),
        distinct(seg.cols.iter().map(|c| c.route.as_deref())),
        distinct(seg.cols.iter().map(|c| c.agency.as_deref())),
        distinct(statuses.iter().map(|s| Some(s.as_str()))),
        rusqlite::blob::ZeroBlob(inline),
        chunk,
        off,
        len,
    ])?;
    if at.is_none() {
        // Inline frames go straight into the row's pages through incremental blob I/O
        // rather than being bound as a value (which SQLite would copy twice more).
        tx.blob_open(
            rusqlite::MAIN_DB,
            c"audit_segments",
            c"frames",
            to_i64(seg.first_idx)?,
            false,
        )?
        .write_at(&seg.frames, 0)?;
    }
    let mut dossier =
        tx.prepare_cached("INSERT INTO audit_dossiers (dossier, idx) VALUES (?1, ?2)")?;
    for (i, c) in seg.cols.iter().enumerate() {
        if let Some(d) = &c.dossier {
            dossier.execute(params![d, to_i64(seg.first_idx + i as u64)?])?;
        }
    }
    Ok(())
}

/// The `frames` blob of a segment row.
fn frames_column<'r>(
    row: &'r rusqlite::Row<'_>,
    col: usize,
    first: u64,
) -> Result<&'r [u8], AuditError> {
    row.get_ref(col)?
        .as_blob()
        .map_err(|_| AuditError::Corrupt {
            index: first,
            reason: "segment frames are not a blob".into(),
        })
}

/// The frames of a segment row whose `frames` column is `col`, followed by
/// `chunk`, `off` and `len`: inline, or read from its frame file.
fn segment_frames<'r>(
    files: &FrameFiles,
    row: &'r rusqlite::Row<'_>,
    col: usize,
    first: u64,
) -> Result<std::borrow::Cow<'r, [u8]>, AuditError> {
    let chunk: Option<i64> = row.get(col + 1)?;
    match chunk {
        None => Ok(std::borrow::Cow::Borrowed(frames_column(row, col, first)?)),
        Some(chunk) => {
            let off: Option<i64> = row.get(col + 2)?;
            let len: Option<i64> = row.get(col + 3)?;
            let (Some(off), Some(len)) = (off, len) else {
                return Err(AuditError::Corrupt {
                    index: first,
                    reason: "segment row has a frame file but no offset or length".into(),
                });
            };
            Ok(std::borrow::Cow::Owned(files.read(
                to_u64(chunk)?,
                to_u64(off)?,
                to_u64(len)?,
            )))
        }
    }
}

/// Calls `f(idx, frame)` for each frame of a segment's blob, in order. Frames are
/// split by their headers only (each is hash-checked by whoever reads it); a
/// structurally broken frame is passed on with the rest of the blob, under the
/// index it should have had, and ends the segment.
fn split_segment<F>(first_idx: u64, blob: &[u8], f: &mut F) -> Result<(), AuditError>
where
    F: FnMut(u64, &[u8]) -> Result<(), AuditError>,
{
    let mut off = 0;
    let mut expected = first_idx;
    while off < blob.len() {
        match frame_extent(blob, off) {
            Ok((idx, end)) => {
                f(idx, &blob[off..end])?;
                off = end;
            }
            Err(_) => return f(expected, &blob[off..]),
        }
        expected += 1;
    }
    Ok(())
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

/// A stored `audit_prunes` row.
fn prune_point_of(size: i64, peaks: &str, admin: i64, at: i64) -> Result<PrunePoint, AuditError> {
    let frontier: CompactRange = serde_json::from_str(peaks)?;
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

/// Decode a stored frame into its record.
pub fn decode_record(idx: u64, frame: &[u8]) -> Result<AuditRecord, AuditError> {
    let (payload, _) = decode_row(idx, frame)?;
    serde_json::from_slice(&payload).map_err(|e| AuditError::Corrupt {
        index: idx,
        reason: format!("record is not valid JSON: {e}"),
    })
}

// ---------------------------------------------------------------------------
// Frame files
// ---------------------------------------------------------------------------

/// A frame file is rolled over once it holds this much.
const CHUNK_BYTES: u64 = 64 << 20;

/// The append-only files that hold the segments' frames, in the directory
/// `<database>-frames/` beside the database. A file is named after the first
/// record index it holds (`{first_idx:020}.frames`); its segments follow one
/// another, each located by its row (`chunk`, `off`, `len`).
///
/// Why not in the row: SQLite writes every page of a row twice (to the WAL,
/// then to the database at a WAL checkpoint, reading it back in between) and
/// checksums it on the way. A frame file is written once, with one `pwrite`
/// and one `fdatasync` per batch; the row that makes the batch part of the log
/// is then committed as before. The frames carry their own index and leaf
/// hash, so the file needs no trust beyond the row's: verification checks
/// every frame read from it exactly as it checked frames read from a row.
///
/// Crash safety: a batch's frames are durable before the row that points at
/// them commits. Bytes past the last committed row of the newest file (a torn
/// or uncommitted batch) are cut when the writer opens the store, and a newer
/// file no committed row points to is removed.
#[derive(Debug)]
struct FrameFiles {
    dir: std::path::PathBuf,
    /// The file batches are appended to (writers only): chunk id, file, end.
    current: Option<(u64, std::fs::File, u64)>,
    /// The file last read from, kept open for the next read.
    reading: std::cell::RefCell<Option<(u64, std::fs::File)>>,
    /// Writers hold an exclusive lock on `<dir>/lock` for as long as they live: two
    /// writers appending at the same offsets would overwrite each other's frames.
    _lock: Option<std::fs::File>,
    /// Readers hold a shared lock on `<dir>/readers` for as long as they live, taken
    /// before their first read: a reader's SQLite snapshot may still list rows that
    /// a retention deletion has since removed, so their bytes must stay until it is
    /// gone. The writer erases deleted bytes only while it can take this lock
    /// exclusively (see [`FrameFiles::forget_before`]).
    _reading: Option<std::fs::File>,
    /// A retention deletion committed but its bytes are not erased yet (a reader was
    /// open); retried after every commit until it succeeds.
    erase_pending: bool,
}

/// Where the oldest row kept in a frame file starts: chunk id and offset.
fn oldest_in_files(conn: &Connection) -> Result<Option<(u64, u64)>, AuditError> {
    let oldest: Option<(i64, i64)> = conn
        .query_row(
            "SELECT chunk, off FROM audit_segments WHERE chunk IS NOT NULL
             ORDER BY first_idx LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match oldest {
        Some((chunk, off)) => Ok(Some((to_u64(chunk)?, to_u64(off)?))),
        None => Ok(None),
    }
}

impl FrameFiles {
    fn dir_for(db: &Path) -> std::path::PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push("-frames");
        name.into()
    }

    fn path(&self, chunk: u64) -> std::path::PathBuf {
        self.dir.join(format!("{chunk:020}.frames"))
    }

    /// A reader's view, holding the shared `readers` lock (see `_reading`). Without
    /// a frame directory (a database with inline frames only) or where the lock file
    /// cannot be created (a read-only copy), there is no writer to guard against and
    /// no lock is taken.
    fn reader(db: &Path) -> Self {
        let mut ff = Self::unlocked(db);
        let file = ff
            .lock_file("readers")
            .or_else(|_| std::fs::File::open(ff.dir.join("readers")));
        // Blocks only while a writer erases deleted bytes (milliseconds).
        ff._reading = file.ok().filter(|f| f.lock_shared().is_ok());
        ff
    }

    /// A lock file in the frame directory (`lock`, `readers`), created if missing.
    fn lock_file(&self, name: &str) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(name))
    }

    fn unlocked(db: &Path) -> Self {
        Self {
            dir: Self::dir_for(db),
            current: None,
            reading: std::cell::RefCell::new(None),
            _lock: None,
            _reading: None,
            erase_pending: false,
        }
    }

    /// The writer's view: resume appending after the last committed segment,
    /// cutting whatever follows it.
    fn open_for_append(db: &Path, conn: &Connection) -> Result<Self, AuditError> {
        let mut ff = Self::unlocked(db);
        if !ff.dir.is_dir() {
            std::fs::create_dir_all(&ff.dir)?;
            // The new directory's own entry is made durable too, so that committed rows
            // never point into a directory a power cut took back.
            if let Some(parent) = ff.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)?.sync_all()?;
            }
        }
        let lock = ff.lock_file("lock")?;
        match lock.try_lock() {
            Ok(()) => ff._lock = Some(lock),
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Storage(format!(
                    "the audit log {} is in use by another writer (another lienthong?)",
                    db.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        // Created here, so that readers without write access to the directory can
        // still take their shared lock on it.
        ff.lock_file("readers")?;
        let last: Option<(i64, i64, i64)> = conn
            .query_row(
                "SELECT chunk, off + len, first_idx FROM audit_segments WHERE chunk IS NOT NULL
                 ORDER BY first_idx DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let last = match last {
            Some((chunk, end, first)) => Some((to_u64(chunk)?, to_u64(end)?, to_u64(first)?)),
            None => None,
        };
        // Files newer than the last committed one only hold uncommitted batches.
        ff.remove_chunks(|id| last.is_none_or(|(chunk, _, _)| id > chunk))?;
        if let Some((chunk, end, first)) = last {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(ff.path(chunk))
                .map_err(|e| AuditError::Corrupt {
                    index: first,
                    reason: format!("frame file {chunk:020}.frames: {e}"),
                })?;
            if file.metadata()?.len() > end {
                file.set_len(end)?;
                file.sync_all()?;
            }
            ff.current = Some((chunk, file, end));
        }
        // A deletion whose erasure was still pending when the last writer stopped
        // completes after the first commit.
        ff.erase_pending = ff.front_not_erased(conn)?;
        Ok(ff)
    }

    /// Deleted records' bytes are still there: a file older than the oldest one a
    /// row points to, or frames before that row's offset in its file.
    fn front_not_erased(&self, conn: &Connection) -> Result<bool, AuditError> {
        use std::os::unix::fs::FileExt;
        let Some((chunk, off)) = oldest_in_files(conn)? else {
            return Ok(false);
        };
        if self.chunks()?.iter().any(|(id, _)| *id < chunk) {
            return Ok(true);
        }
        // Erasure zeroes everything before `off`, so the bytes just before it (the
        // previous frame's 32-byte leaf hash when it is still there) tell.
        let n = off.min(32);
        let mut tail = vec![0u8; n as usize];
        let file = std::fs::File::open(self.path(chunk))?;
        Ok(file.read_exact_at(&mut tail, off - n).is_ok() && tail.iter().any(|b| *b != 0))
    }

    /// The frame files in the directory: chunk id and file name.
    fn chunks(&self) -> Result<Vec<(u64, std::ffi::OsString)>, AuditError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".frames"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(id) = id {
                found.push((id, name));
            }
        }
        Ok(found)
    }

    /// Remove the frame files whose chunk id `doomed` picks.
    fn remove_chunks(&self, doomed: impl Fn(u64) -> bool) -> Result<(), AuditError> {
        for (id, name) in self.chunks()? {
            if doomed(id) {
                std::fs::remove_file(self.dir.join(name))?;
            }
        }
        Ok(())
    }

    /// Write a batch's frames and make them durable; returns (chunk, offset).
    /// The caller commits the row; until then the end does not move, so a
    /// failed batch's bytes are overwritten by the next one.
    fn append(&mut self, first_idx: u64, frames: &[u8]) -> Result<(u64, u64), AuditError> {
        use std::os::unix::fs::FileExt;
        let full = self
            .current
            .as_ref()
            .is_none_or(|(_, _, end)| *end >= CHUNK_BYTES);
        if full {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.path(first_idx))?;
            // The new name must survive a crash as well as the bytes.
            std::fs::File::open(&self.dir)?.sync_all()?;
            self.current = Some((first_idx, file, 0));
        }
        let (chunk, file, end) = self.current.as_ref().expect("set above");
        file.write_all_at(frames, *end)?;
        file.sync_data()?;
        // The frames are written once and read back only by the offline tools and
        // queries: drop them from the page cache now that they are on disk. Every
        // batch then writes into pages the kernel just freed, instead of taking
        // fresh ones (on the benchmark VM the copy into fresh pages was a quarter of
        // the writer's CPU), and the log does not push the gateway's working memory
        // out of the cache. Advisory: a failure changes nothing but the cost.
        #[cfg(target_os = "linux")]
        let _ = rustix::fs::fadvise(
            file,
            *end,
            std::num::NonZeroU64::new(frames.len() as u64),
            rustix::fs::Advice::DontNeed,
        );
        Ok((*chunk, *end))
    }

    /// The batch at (chunk, off) committed.
    fn committed(&mut self, len: u64) {
        if let Some((_, _, end)) = &mut self.current {
            *end += len;
        }
    }

    /// `len` bytes at `off` of a chunk. A missing or short file gives what is
    /// there: the frames that are not are reported where they should have been.
    fn read(&self, chunk: u64, off: u64, len: u64) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut reading = self.reading.borrow_mut();
        if reading.as_ref().is_none_or(|(c, _)| *c != chunk) {
            *reading = std::fs::File::open(self.path(chunk))
                .ok()
                .map(|f| (chunk, f));
        }
        let Some((_, file)) = reading.as_ref() else {
            return Vec::new();
        };
        // The row's length is not trusted: no more than the file holds past `off` is
        // read (an edited `len` must read as missing frames, not abort the reader).
        let available = file.metadata().map_or(0, |m| m.len().saturating_sub(off));
        let mut buf = vec![0u8; len.min(available) as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        buf.truncate(got);
        buf
    }

    /// After a retention deletion: files no row points to any more go, and the
    /// deleted front of the oldest remaining file is overwritten with zeros. Only
    /// while no reader is open (the `readers` lock, taken exclusively for the
    /// erasure): otherwise the erasure is left pending and retried after the next
    /// commits, so a reader whose snapshot predates the deletion never reads erased
    /// bytes.
    fn forget_before(&mut self, conn: &Connection) -> Result<(), AuditError> {
        let guard = self.lock_file("readers")?;
        match guard.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                self.erase_pending = true;
                return Ok(());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                self.erase_pending = true;
                return Err(e.into());
            }
        }
        let res = self.erase_before(conn);
        self.erase_pending = res.is_err();
        res
    }

    fn erase_before(&mut self, conn: &Connection) -> Result<(), AuditError> {
        use std::os::unix::fs::FileExt;
        let (keep_from, zero_to) = match oldest_in_files(conn)? {
            Some(at) => at,
            None => match &self.current {
                // Everything went: the current file stays (the next batch goes there).
                Some((chunk, _, end)) => (*chunk, *end),
                None => return Ok(()),
            },
        };
        self.remove_chunks(|id| id < keep_from)?;
        *self.reading.borrow_mut() = None;
        if zero_to > 0 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(self.path(keep_from))?;
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < zero_to {
                let n = (zero_to - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.sync_data()?;
        }
        Ok(())
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
    frames: FrameFiles,
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
        let mut conn = open_writer(path)?;
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
        let frames = FrameFiles::open_for_append(path, &conn)?;
        Ok(Self {
            conn,
            origin: origin.to_string(),
            verifier_key: key_text,
            frames,
        })
    }

    /// Open an existing database read-only (offline tools). Safe while a
    /// writer is running: WAL readers see the last committed state.
    pub fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        if !path.exists() {
            return Err(AuditError::NotFound(path.display().to_string()));
        }
        // The readers lock comes before the first read (see `FrameFiles::_reading`).
        let frames = FrameFiles::reader(path);
        let conn = sqlite::open_reader(path, std::time::Duration::from_secs(10))?;
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
            frames,
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

    /// Store a batch of records as one segment in ONE transaction, together
    /// with any checkpoints (and the frontiers they were computed from) that
    /// should become durable atomically with it. The insert is a plain
    /// `INSERT`: a segment that already exists fails the whole batch, so the
    /// store can never overwrite history.
    pub fn append_batch(
        &mut self,
        segment: &NewSegment,
        checkpoints: &[(&SignedCheckpoint, &CompactRange)],
    ) -> Result<(), AuditError> {
        let at = if segment.cols.is_empty() {
            None
        } else {
            Some(self.frames.append(segment.first_idx, &segment.frames)?)
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_segment(&tx, segment, at)?;
        for (cp, frontier) in checkpoints {
            insert_checkpoint(&tx, cp, Some(frontier))?;
        }
        tx.commit()?;
        if at.is_some() {
            self.frames.committed(segment.frames.len() as u64);
        }
        if self.frames.erase_pending {
            if let Err(e) = self.frames.forget_before(&self.conn) {
                tracing::warn!(error = %e, "audit retention: deleted records' frame bytes not yet removed");
            }
        }
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

    /// Store a time-stamp token for the checkpoint of `size` (verified by the
    /// caller). A second token for the same checkpoint is ignored: the first
    /// already proves the time.
    pub fn put_timestamp(
        &mut self,
        size: u64,
        gen_time_ms: u64,
        token: &[u8],
    ) -> Result<(), AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM audit_timestamps WHERE size = ?1",
                [to_i64(size)?],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            tx.execute(
                "INSERT INTO audit_timestamps (size, gen_time_ms, token) VALUES (?1, ?2, ?3)",
                params![to_i64(size)?, to_i64(gen_time_ms)?, token],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the file has the timestamp table: read-only tools may open a
    /// database from before it (a writer of this version adds it at open).
    fn has_timestamps(&self) -> Result<bool, AuditError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_timestamps'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Every stored time-stamp token, by checkpoint size, streamed: `f` gets
    /// (checkpoint size, DER token) one at a time (a year of tokens at one a
    /// minute is about a gigabyte), and stops the scan by returning `false`.
    pub fn for_each_timestamp<F>(&self, mut f: F) -> Result<(), AuditError>
    where
        F: FnMut(u64, &[u8]) -> bool,
    {
        if !self.has_timestamps()? {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT size, token FROM audit_timestamps ORDER BY size")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let size = to_u64(row.get::<_, i64>(0)?)?;
            let token = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            if !f(size, token) {
                break;
            }
        }
        Ok(())
    }

    /// How many time-stamp tokens are stored.
    pub fn timestamp_count(&self) -> Result<u64, AuditError> {
        if !self.has_timestamps()? {
            return Ok(0);
        }
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM audit_timestamps", [], |r| r.get(0))?;
        to_u64(n)
    }

    /// The time-stamp token of the checkpoint of `size`, if it has one.
    pub fn timestamp_at(&self, size: u64) -> Result<Option<Vec<u8>>, AuditError> {
        if !self.has_timestamps()? {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT token FROM audit_timestamps WHERE size = ?1",
                [to_i64(size)?],
                |r| r.get(0),
            )
            .optional()?)
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
    /// loading them all; `f` may stop the scan by returning an error. A frame
    /// whose header is broken reaches `f` as the rest of its segment (see
    /// `split_segment`), so a verifier sees the damage where it is.
    pub fn for_each_frame<F>(&self, from: u64, to: Option<u64>, mut f: F) -> Result<(), AuditError>
    where
        F: FnMut(u64, &[u8]) -> Result<(), AuditError>,
    {
        let to = to.unwrap_or(u64::MAX);
        let start = self.segment_start(from)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT first_idx, frames, chunk, off, len FROM audit_segments
             WHERE first_idx >= ?1 AND first_idx < ?2 ORDER BY first_idx",
        )?;
        let end = i64::try_from(to).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![start, end])?;
        while let Some(row) = rows.next()? {
            let first = to_u64(row.get(0)?)?;
            let blob = segment_frames(&self.frames, row, 1, first)?;
            let mut done = false;
            split_segment(first, &blob, &mut |idx, frame| {
                if done || idx < from {
                    return Ok(());
                }
                if idx >= to {
                    done = true;
                    return Ok(());
                }
                f(idx, frame)
            })?;
            if done {
                break;
            }
        }
        Ok(())
    }

    /// Where a scan from record `idx` starts: the first index of the segment
    /// holding it (segments start at or before the records they hold).
    fn segment_start(&self, idx: u64) -> Result<i64, AuditError> {
        let start: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(first_idx) FROM audit_segments WHERE first_idx <= ?1")?
            .query_row([to_i64(idx)?], |r| r.get(0))?;
        start.map_or_else(|| to_i64(idx), Ok)
    }

    /// The frames of the segment that starts at `first`.
    fn segment(&self, first: u64) -> Result<Vec<u8>, AuditError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT frames, chunk, off, len FROM audit_segments WHERE first_idx = ?1",
        )?;
        let mut rows = stmt.query([to_i64(first)?])?;
        let row = rows
            .next()?
            .ok_or_else(|| AuditError::NotFound(format!("segment at {first}")))?;
        Ok(segment_frames(&self.frames, row, 0, first)?.into_owned())
    }

    /// Highest stored index.
    pub fn last_index(&self) -> Result<Option<u64>, AuditError> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT first_idx + count FROM audit_segments ORDER BY first_idx DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.map(to_u64).transpose()?.and_then(|n| n.checked_sub(1)))
    }

    /// Number of stored records.
    pub fn count(&self) -> Result<u64, AuditError> {
        let v: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(count), 0) FROM audit_segments",
            [],
            |r| r.get(0),
        )?;
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

    /// How many checkpoints are stored, and the largest one's size (0 when none).
    pub fn checkpoint_count_and_latest(&self) -> Result<(u64, u64), AuditError> {
        let (n, latest): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(MAX(size), 0) FROM audit_checkpoints",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((to_u64(n)?, to_u64(latest)?))
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
    /// The index of the first stored record (`None`: no records stored).
    pub fn first_stored_index(&self) -> Result<Option<u64>, AuditError> {
        let first: Option<i64> =
            self.conn
                .query_row("SELECT MIN(first_idx) FROM audit_segments", [], |r| {
                    r.get(0)
                })?;
        first.map(to_u64).transpose()
    }

    /// The prune point at exactly `size`, if one was stored.
    pub fn prune_point_at(&self, size: u64) -> Result<Option<PrunePoint>, AuditError> {
        let row: Option<(i64, String, i64, i64)> = self
            .conn
            .query_row(
                "SELECT size, peaks, admin_idx, pruned_at_ms FROM audit_prunes WHERE size = ?1",
                [to_i64(size)?],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        row.map(|(size, peaks, admin, at)| prune_point_of(size, &peaks, admin, at))
            .transpose()
    }

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
        row.map(|(size, peaks, admin, at)| prune_point_of(size, &peaks, admin, at))
            .transpose()
    }

    /// Lowest index whose record time is `>= t` (for time-based retention):
    /// found in the first segment whose newest record is that recent.
    pub fn first_index_at_or_after(&self, t: SystemTime) -> Result<Option<u64>, AuditError> {
        let t = epoch_ms(t);
        let first: Option<i64> = self.conn.query_row(
            "SELECT MIN(first_idx) FROM audit_segments WHERE max_time_ms >= ?1",
            [to_i64(t)?],
            |r| r.get(0),
        )?;
        let Some(first) = first.map(to_u64).transpose()? else {
            return Ok(None);
        };
        let blob = self.segment(first)?;
        let mut found = None;
        split_segment(first, &blob, &mut |idx, frame| {
            if found.is_none() && decode_record(idx, frame)?.time_ms().is_some_and(|x| x >= t) {
                found = Some(idx);
            }
            Ok(())
        })?;
        // The zone map promised a record this recent; if none is there (a
        // tampered column), keep the whole segment rather than delete it.
        Ok(Some(found.unwrap_or(first)))
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
        let deleted = delete_segments_before(&tx, &self.frames, size)?;
        // Frontiers below the prune point can never be resumed from again.
        tx.execute(
            "DELETE FROM audit_frontiers WHERE size < ?1",
            [to_i64(size)?],
        )?;
        tx.commit()?;
        // The rows are gone; now their bytes. A failure here leaves unreachable
        // bytes behind (retried by the next deletion), never a broken log.
        if let Err(e) = self.frames.forget_before(&self.conn) {
            tracing::warn!(error = %e, "audit retention: deleted records' frame bytes not yet removed");
        }
        Ok(deleted)
    }

    /// Records matching `filter`, in index order, decoded from their frames.
    /// A record whose frame fails its hash check is an error naming the
    /// index: a query must not quietly serve tampered data. A dossier search
    /// uses the dossier index; other searches scan the segments whose zone
    /// map admits the filter (bounded by the time range when one is given).
    pub fn query(&self, filter: &Filter) -> Result<Vec<(u64, AuditRecord)>, AuditError> {
        let limit = filter.limit.unwrap_or(1000);
        let from_index = filter.from_index.unwrap_or(0);
        let mut out = Vec::new();
        let take = |idx: u64, frame: &[u8], out: &mut Vec<(u64, AuditRecord)>| {
            let rec = decode_record(idx, frame)?;
            if out.len() < limit && filter.matches(idx, &rec) {
                out.push((idx, rec));
            }
            Ok::<_, AuditError>(())
        };
        if let Some(d) = &filter.dossier {
            let mut stmt = self.conn.prepare_cached(
                "SELECT idx FROM audit_dossiers WHERE dossier = ?1 AND idx >= ?2 ORDER BY idx",
            )?;
            let ids = stmt
                .query_map(params![d, to_i64(from_index)?], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            // One read per segment: the dossier's records in the same segment are
            // taken from a single scan of it.
            let mut group: Vec<u64> = Vec::new();
            let mut group_start = None;
            for id in ids.into_iter().map(to_u64).chain([Ok(u64::MAX)]) {
                let id = id?;
                let start = if id == u64::MAX {
                    None
                } else {
                    Some(self.segment_start(id)?)
                };
                if start != group_start && !group.is_empty() {
                    let (lo, hi) = (group[0], group[group.len() - 1]);
                    self.for_each_frame(lo, Some(hi + 1), |idx, frame| {
                        if group.binary_search(&idx).is_ok() {
                            take(idx, frame, &mut out)?;
                        }
                        Ok(())
                    })?;
                    group.clear();
                }
                if out.len() >= limit || start.is_none() {
                    break;
                }
                group_start = start;
                group.push(id);
            }
            return Ok(out);
        }
        let from_ms = filter.from.map(|f| to_i64(epoch_ms(f))).transpose()?;
        let to_ms = filter.to.map(|t| to_i64(epoch_ms(t))).transpose()?;
        let status = filter.status.map(|s| s.to_string());
        let admits = |row: &rusqlite::Row<'_>| -> rusqlite::Result<bool> {
            let min: Option<i64> = row.get(2)?;
            let max: Option<i64> = row.get(3)?;
            let zone = |col: usize, want: Option<&str>| -> rusqlite::Result<bool> {
                Ok(match want {
                    Some(w) => zone_has(row.get_ref(col)?.as_str()?, w),
                    None => true,
                })
            };
            Ok(from_ms.is_none_or(|f| max.is_some_and(|m| m >= f))
                && to_ms.is_none_or(|t| min.is_some_and(|m| m < t))
                && zone(4, filter.kind.map(RecordKind::as_str))?
                && zone(5, filter.route.as_deref())?
                && zone(6, filter.agency.as_deref())?
                && zone(7, status.as_deref())?)
        };
        let start = self.segment_start(from_index)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT first_idx, count, min_time_ms, max_time_ms, kinds, routes, agencies, statuses,
                    frames, chunk, off, len
             FROM audit_segments
             WHERE first_idx >= ?1 AND (?2 IS NULL OR max_time_ms >= ?2)
             ORDER BY first_idx",
        )?;
        let mut rows = stmt.query(params![start, from_ms])?;
        while let Some(row) = rows.next()? {
            if out.len() >= limit {
                break;
            }
            if !admits(row)? {
                continue;
            }
            let first = to_u64(row.get(0)?)?;
            let blob = segment_frames(&self.frames, row, 8, first)?;
            split_segment(first, &blob, &mut |idx, frame| {
                if idx < from_index {
                    return Ok(());
                }
                take(idx, frame, &mut out)
            })?;
        }
        Ok(out)
    }
}

/// Delete records `[0, size)`: whole segments below `size`, and the front of
/// the segment that straddles it (rewritten to start at `size`; its zone map
/// is kept, a superset of what remains). Returns how many records went.
fn delete_segments_before(
    tx: &rusqlite::Transaction<'_>,
    files: &FrameFiles,
    size: u64,
) -> Result<u64, AuditError> {
    let end = to_i64(size)?;
    let whole: i64 = tx.query_row(
        "SELECT COALESCE(SUM(count), 0) FROM audit_segments WHERE first_idx + count <= ?1",
        [end],
        |r| r.get(0),
    )?;
    tx.execute(
        "DELETE FROM audit_segments WHERE first_idx + count <= ?1",
        [end],
    )?;
    /// The segment holding record `size`: first index, count, frames, and the
    /// frames' offset in their frame file (None: inline).
    struct Straddling(i64, i64, Vec<u8>, Option<i64>);
    let straddling: Option<Straddling> = {
        let mut stmt = tx.prepare(
            "SELECT first_idx, count, frames, chunk, off, len FROM audit_segments
             WHERE first_idx < ?1",
        )?;
        let mut rows = stmt.query([end])?;
        match rows.next()? {
            Some(row) => {
                let first = to_u64(row.get(0)?)?;
                let chunk: Option<i64> = row.get(3)?;
                Some(Straddling(
                    row.get(0)?,
                    row.get(1)?,
                    segment_frames(files, row, 2, first)?.into_owned(),
                    chunk.and(row.get(4)?),
                ))
            }
            None => None,
        }
    };
    let mut deleted = to_u64(whole)?;
    if let Some(Straddling(first, count, frames, off)) = straddling {
        let first = to_u64(first)?;
        let mut cut_at = frames.len();
        let mut seen = 0usize;
        split_segment(first, &frames, &mut |idx, frame| {
            if idx >= size && cut_at == frames.len() {
                cut_at = seen;
            }
            seen += frame.len();
            Ok(())
        })?;
        let gone = size - first;
        match off {
            // In a frame file: the row now starts further in.
            Some(off) => tx.execute(
                "UPDATE audit_segments SET first_idx = ?1, count = ?2, off = ?3, len = ?4
                 WHERE first_idx = ?5",
                params![
                    end,
                    count - to_i64(gone)?,
                    off + to_i64(cut_at as u64)?,
                    to_i64((frames.len() - cut_at) as u64)?,
                    to_i64(first)?
                ],
            )?,
            None => tx.execute(
                "UPDATE audit_segments SET first_idx = ?1, count = ?2, frames = ?3
                 WHERE first_idx = ?4",
                params![
                    end,
                    count - to_i64(gone)?,
                    &frames[cut_at..],
                    to_i64(first)?
                ],
            )?,
        };
        deleted += gone;
    }
    tx.execute("DELETE FROM audit_dossiers WHERE idx < ?1", [end])?;
    Ok(deleted)
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

/// Deliberate damage to stored records, for the tests that prove that
/// verification finds it (someone with write access to the database edits,
/// deletes or cuts records). Never called by the gateway itself.
#[doc(hidden)]
pub mod tamper {
    use super::*;

    /// The segment holding record `idx`: its first index and its frames.
    fn load(conn: &Connection, idx: u64) -> (u64, Vec<Vec<u8>>) {
        let db = conn.path().expect("a database file");
        let files = FrameFiles::unlocked(Path::new(db));
        let (first, blob): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT first_idx, frames, chunk, off, len FROM audit_segments
                 WHERE first_idx <= ?1 ORDER BY first_idx DESC LIMIT 1",
                [idx as i64],
                |r| {
                    let first: i64 = r.get(0)?;
                    let bytes = segment_frames(&files, r, 1, first as u64)
                        .map(|b| b.into_owned())
                        .expect("segment frames readable");
                    Ok((first, bytes))
                },
            )
            .expect("a segment holds the record");
        let mut frames = Vec::new();
        split_segment(first as u64, &blob, &mut |_, f| {
            frames.push(f.to_vec());
            Ok(())
        })
        .expect("collecting cannot fail");
        (first as u64, frames)
    }

    /// Rewrites a segment, inline in its row.
    fn store(conn: &Connection, first: u64, frames: &[Vec<u8>]) {
        conn.execute(
            "UPDATE audit_segments SET frames = ?1, count = ?2, chunk = NULL, off = NULL,
             len = NULL WHERE first_idx = ?3",
            params![frames.concat(), frames.len() as i64, first as i64],
        )
        .expect("segment updated");
    }

    /// The stored frame of record `idx`.
    pub fn frame_of(db: &Path, idx: u64) -> Vec<u8> {
        let conn = Connection::open(db).expect("open");
        let (first, frames) = load(&conn, idx);
        frames[(idx - first) as usize].clone()
    }

    /// Replaces the stored frame of record `idx` with `frame`.
    pub fn set_frame(db: &Path, idx: u64, frame: &[u8]) {
        let conn = Connection::open(db).expect("open");
        let (first, mut frames) = load(&conn, idx);
        frames[(idx - first) as usize] = frame.to_vec();
        store(&conn, first, &frames);
    }

    /// Flips one byte of record `idx`'s payload where it is stored in its frame
    /// file (someone editing the file rather than the database).
    pub fn flip_in_frame_file(db: &Path, idx: u64) {
        use std::os::unix::fs::FileExt;
        let conn = Connection::open(db).expect("open");
        let (first, chunk, off): (i64, i64, i64) = conn
            .query_row(
                "SELECT first_idx, chunk, off FROM audit_segments WHERE first_idx <= ?1
                 ORDER BY first_idx DESC LIMIT 1",
                [idx as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("a segment in a frame file holds the record");
        let (_, frames) = load(&conn, idx);
        let before: usize = frames[..(idx - first as u64) as usize]
            .iter()
            .map(Vec::len)
            .sum();
        let at = off as u64 + before as u64 + crate::audit::verify::FRAME_HEADER_LEN as u64;
        let files = FrameFiles::unlocked(db);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(files.path(chunk as u64))
            .expect("frame file");
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).expect("read");
        file.write_all_at(&[b[0] ^ 1], at).expect("write");
    }

    /// The frame files of the log in `db`, oldest first.
    pub fn frame_files(db: &Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(FrameFiles::dir_for(db))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "frames"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Removes record `idx` from the middle of the log.
    pub fn delete_record(db: &Path, idx: u64) {
        let conn = Connection::open(db).expect("open");
        let (first, mut frames) = load(&conn, idx);
        frames.remove((idx - first) as usize);
        store(&conn, first, &frames);
    }

    /// Cuts the log at `idx`: record `idx` and everything after it go.
    pub fn truncate(db: &Path, idx: u64) {
        let conn = Connection::open(db).expect("open");
        conn.execute(
            "DELETE FROM audit_segments WHERE first_idx > ?1",
            [idx as i64],
        )
        .expect("later segments deleted");
        let (first, mut frames) = load(&conn, idx);
        frames.truncate((idx - first) as usize);
        if frames.is_empty() {
            conn.execute(
                "DELETE FROM audit_segments WHERE first_idx = ?1",
                [first as i64],
            )
            .expect("segment deleted");
        } else {
            store(&conn, first, &frames);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_maps_list_each_value_once_in_order() {
        let vals = [
            Some("b"),
            Some("b"),
            None,
            Some("a"),
            Some("b"),
            Some("c"),
            Some("a"),
        ];
        let col = distinct(vals.into_iter());
        assert_eq!(col, r#"["a","b","c"]"#);
        for want in ["a", "b", "c"] {
            assert!(zone_has(&col, want), "{want}");
        }
        assert!(!zone_has(&col, "d"));
        assert_eq!(distinct(std::iter::empty()), "[]");
    }
}
