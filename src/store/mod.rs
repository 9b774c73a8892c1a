//! Persistence of lienthong's durable parts behind one module: the dossier exchange
//! ([`exchange`]: dossiers, events, outbox, attempts) and the audit log ([`audit`]:
//! framed records, checkpoints, retention). SQLite embedded today; PostgreSQL when several
//! nodes share work.
//!
//! Design constraints (what every store here promises, and what a second backend must keep):
//! - **Acknowledged means on stable storage.** Each store has one dedicated writer thread
//!   that commits in groups (one fsync shared by everything queued) and answers callers only
//!   after its commit returned. SQLite runs in WAL mode with `synchronous=FULL`, checked at
//!   open ([`sqlite::open_writer`]) and refused if the file system will not give it.
//! - **One writer per database file.** The exchange and the audit log keep separate files so
//!   neither's group commit waits behind the other's write lock; configuring both on one
//!   file is refused by `lienthong check`.
//! - **Schemas are versioned per component** in `store_schema`: a database written by a newer
//!   lienthong is refused instead of being half-understood; older ones are brought up to date
//!   at open (new tables in the same transaction as the version; structural migrations, such
//!   as the audit store's, check the structure itself at every open, so a crash between them
//!   and the version bump is harmless).
//! - **Plain SQL.** No SQLite-only statement forms in the stores' queries (no `INSERT OR …`,
//!   no JSON functions), so the PostgreSQL backend reuses the statements with `BIGINT`/`BYTEA`
//!   DDL; what is SQLite-specific (opening, PRAGMAs, incremental blob I/O, the audit's
//!   node-local frame files) is named as such where it is. Decisions that are not SQL
//!   (idempotent replay, status transitions, backoff, Merkle hashing) are pure functions
//!   outside the backends.
//! - **Crash recovery is at open.** Nothing is cleaned up at shutdown; opening a store after a
//!   SIGKILL restores its invariants (expired leases become claimable, a torn audit tail is
//!   cut), so the kill and the clean stop take the same path.

pub mod audit;
pub mod exchange;
pub mod sqlite;

/// A storage failure, as text: callers map it to their own error kinds (a 500/503 on the
/// request path), and the text never contains record contents or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}
