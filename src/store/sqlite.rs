//! The SQLite backend's common ground: opening a database file with the settings the
//! durability promise depends on, and the per-component schema version.
//!
//! Everything here is SQLite-specific; a PostgreSQL backend replaces this file (a pool with
//! `synchronous_commit = on`, the same `store_schema` table) and keeps the stores' SQL.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::StoreError;

/// A component's tables: its name in `store_schema`, the version this build writes, and
/// idempotent DDL (`CREATE … IF NOT EXISTS`) for the current version.
pub struct Schema {
    pub component: &'static str,
    pub version: i64,
    pub ddl: &'static str,
}

/// Physical settings of a writer's connection.
pub struct Tuning {
    /// Page size for a *new* file (an existing one keeps its own). Stores that write large
    /// blobs use big pages: every page is a WAL frame, i.e. system calls and a later
    /// checkpoint copy.
    pub page_size: Option<u32>,
    /// Checkpoint the WAL at about this many bytes (SQLite counts pages; its default of
    /// 1000 pages assumes 4 KiB ones).
    pub wal_autocheckpoint_bytes: u64,
    /// How long a statement waits for another connection's lock before failing.
    pub busy_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            page_size: None,
            wal_autocheckpoint_bytes: 4 << 20,
            busy_timeout: Duration::from_secs(10),
        }
    }
}

/// Opens (creating if missing) the database for its one writer: WAL with
/// `synchronous=FULL` (a transaction is on stable storage when `COMMIT` returns; both are
/// read back and refused if not in force, e.g. on a file system without shared memory),
/// foreign keys on, then the component's schema, refusing a file whose recorded version
/// for this component is newer than this build's.
pub fn open_writer(
    path: &Path,
    schema: &Schema,
    tuning: &Tuning,
) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(tuning.busy_timeout)?;
    if let Some(size) = tuning.page_size {
        // Only takes effect before the first table is created (or on VACUUM).
        conn.pragma_update(None, "page_size", size)?;
    }
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError(format!(
            "{}: could not enable WAL mode (got {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    if sync != 2 {
        return Err(StoreError(format!(
            "{}: could not set synchronous=FULL (got {sync})",
            path.display()
        )));
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages = (tuning.wal_autocheckpoint_bytes as i64 / page.max(512)).max(1);
    conn.pragma_update(None, "wal_autocheckpoint", pages)?;
    apply_schema(&conn, schema).map_err(|e| match e {
        SchemaError::Sql(e) => StoreError(format!("{}: {e}", path.display())),
        SchemaError::Newer(v) => StoreError(format!(
            "{}: written by a newer lienthong ({} schema version {v}, this build knows {}); \
             refusing to open it",
            path.display(),
            schema.component,
            schema.version
        )),
    })?;
    Ok(conn)
}

/// Opens an existing database for reading only (queries, exports, offline verification);
/// never creates, migrates or writes it.
pub fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError(format!("{}: no such database", path.display())));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Readers wait for a writer's brief exclusive moments (WAL checkpoints) rather than fail.
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}

enum SchemaError {
    Sql(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        SchemaError::Sql(e)
    }
}

/// Records the component's version in `store_schema` and creates its tables, in one
/// transaction, unless the file is from a newer build.
fn apply_schema(conn: &Connection, schema: &Schema) -> Result<(), SchemaError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS store_schema (
            component TEXT PRIMARY KEY,
            version INTEGER NOT NULL)",
        [],
    )?;
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let previous: Option<i64> = tx
        .query_row(
            "SELECT version FROM store_schema WHERE component = ?1",
            [schema.component],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(v) = previous {
        if v > schema.version {
            return Err(SchemaError::Newer(v));
        }
    }
    tx.execute_batch(schema.ddl)?;
    let updated = tx.execute(
        "UPDATE store_schema SET version = ?2 WHERE component = ?1",
        params![schema.component, schema.version],
    )?;
    if updated == 0 {
        tx.execute(
            "INSERT INTO store_schema (component, version) VALUES (?1, ?2)",
            params![schema.component, schema.version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_SCHEMA: Schema = Schema {
        component: "test",
        version: 2,
        ddl: "CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY);",
    };

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lienthong-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.db")
    }

    #[test]
    fn writer_connection_is_durable_and_versioned() {
        let path = temp_db("durable");
        let conn = open_writer(&path, &TEST_SCHEMA, &Tuning::default()).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let version: i64 = conn
            .query_row(
                "SELECT version FROM store_schema WHERE component = 'test'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 2);
        drop(conn);
        // Reopening the same version is fine.
        assert!(open_writer(&path, &TEST_SCHEMA, &Tuning::default()).is_ok());
    }

    #[test]
    fn newer_schema_is_refused() {
        let path = temp_db("newer");
        let conn = open_writer(&path, &TEST_SCHEMA, &Tuning::default()).unwrap();
        conn.execute(
            "UPDATE store_schema SET version = 7 WHERE component = 'test'",
            [],
        )
        .unwrap();
        drop(conn);
        let err = open_writer(&path, &TEST_SCHEMA, &Tuning::default()).unwrap_err();
        assert!(err.0.contains("newer lienthong"), "{err}");
        // Another component in the same file is unaffected by `test`'s version.
        let other = Schema {
            component: "other",
            version: 1,
            ddl: "",
        };
        assert!(open_writer(&path, &other, &Tuning::default()).is_ok());
    }

    #[test]
    fn reader_never_creates_a_file() {
        let path = temp_db("reader");
        assert!(open_reader(&path, Duration::from_secs(1)).is_err());
        assert!(!path.exists());
    }
}
