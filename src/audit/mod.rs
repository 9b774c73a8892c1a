//! Tamper-evident audit of all cross-system traffic (issue #7).
//!
//! Design constraints:
//! - Records are leaves of an RFC 6962 Merkle tree (`merkle`); leaf = SHA-256(0x00 ‖ record),
//!   node = SHA-256(0x01 ‖ left ‖ right), so a leaf can never be passed off as a node.
//! - Periodic checkpoints (`checkpoint`) sign (origin, size, root, time) with lienthong's
//!   Ed25519 key in the C2SP signed-note format; anyone holding the public key can check
//!   that a record is included (`InclusionProof`) and that the log only grew (`ConsistencyProof`).
//! - Stored records are framed (`verify`): magic, length, inverted length, index, payload
//!   and its leaf hash, so a torn or edited record is detected and the first bad index named.
//! - A checkpoint's note can also be time-stamped by an RFC 3161 authority (`timestamp`);
//!   tokens are checked against the one TSA certificate configured, never a chain they carry.

pub mod checkpoint;
pub mod merkle;
pub mod record;
pub mod timestamp;
pub mod verify;
pub mod writer;

use crate::config::AuditCfg;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Loads the checkpoint signing key: an Ed25519 PKCS#8 key, PEM or DER.
pub fn load_signing_key(path: &Path, name: &str) -> Result<checkpoint::CheckpointSigner, String> {
    use rustls_pki_types::pem::PemObject;
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let der = if raw.starts_with(b"-----BEGIN") {
        rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&raw)
            .map_err(|_| format!("{}: not a PKCS#8 private key", path.display()))?
            .secret_pkcs8_der()
            .to_vec()
    } else {
        raw
    };
    checkpoint::CheckpointSigner::from_pkcs8(name, &der)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The running audit log: its writer and the key that verifies its checkpoints.
pub struct Auditor {
    pub cfg: AuditCfg,
    pub writer: writer::AuditWriter,
    pub verifier: checkpoint::VerifierKey,
}

impl Auditor {
    /// Opens (or creates) the audit database and starts the writer thread. On start
    /// the writer checks the stored tail and refuses a database whose frames do not
    /// verify, naming the index.
    pub fn start(cfg: &AuditCfg) -> Result<Arc<Auditor>, String> {
        let signer = load_signing_key(&cfg.key, &cfg.origin)?;
        let verifier = signer.verifier_key();
        if let Some(dir) = cfg.db.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut wc = writer::WriterConfig::new(&cfg.db, &cfg.origin, signer);
        wc.batch_max = cfg.batch_max;
        wc.batch_linger = cfg.batch_linger;
        wc.batch_linger_fail_open = cfg.batch_linger_fail_open;
        wc.checkpoint_every_records = cfg.checkpoint_every_records;
        wc.checkpoint_every = cfg.checkpoint_every;
        wc.queue_capacity = cfg.queue_capacity;
        let writer = writer::AuditWriter::start(wc).map_err(|e| e.to_string())?;
        Ok(Arc::new(Auditor {
            cfg: cfg.clone(),
            writer,
            verifier,
        }))
    }

    /// Deletes records past the retention period once an hour; the deletion itself is
    /// recorded and checkpointed by the writer before anything is removed.
    pub fn start_retention(self: &Arc<Self>) {
        let Some(keep) = self.cfg.retention else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(a) = weak.upgrade() else { return };
                if let Some(cutoff) = SystemTime::now().checked_sub(keep) {
                    match a.writer.prune(writer::PruneTarget::OlderThan(cutoff)).await {
                        Ok(o) => tracing::info!(outcome = ?o, "audit retention applied"),
                        Err(e) => tracing::warn!(error = %e, "audit retention failed"),
                    }
                }
                drop(a);
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
    }
}
