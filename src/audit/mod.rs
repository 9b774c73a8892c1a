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
//! - With `[audit.timestamp]`, the latest checkpoint is timestamped by an RFC 3161 authority
//!   (`timestamp`), at most once per `min_interval`: the token signs SHA-256 of the
//!   checkpoint's note, so it proves the log had that root (and every record under it) by
//!   the TSA's time, independently of lienthong's own clock and key. Tokens are stored
//!   beside the checkpoints (`crate::store::audit`) and checked by `lienthong audit verify`
//!   against the configured TSA certificate(s) (never a chain a token carries). A TSA that
//!   is down delays a timestamp (retried with backoff; whatever checkpoint is latest by then
//!   is sent); it never holds up records. TSA calls are not
//!   themselves audit records: each would cause the next checkpoint, and that another call.
//! - Persistence is `crate::store::audit` (the store module the exchange uses too).

pub mod checkpoint;
pub mod merkle;
pub mod record;
pub mod timestamp;
pub mod verify;
pub mod writer;

use crate::config::AuditCfg;
use std::path::Path;
use std::sync::{Arc, Weak};
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

    /// Timestamps the latest checkpoint at the configured TSA (`[audit.timestamp]`)
    /// whenever there is a new one, at most once per `min_interval`, from the one
    /// found at start on. A failure is logged, counted and retried with backoff.
    pub fn start_timestamping(self: &Arc<Self>, gw: Weak<crate::runtime::Gateway>) {
        let Some(cfg) = self.cfg.timestamp.clone() else {
            return;
        };
        let tsa = match std::fs::read(&cfg.cert)
            .map_err(|e| e.to_string())
            .and_then(|pem| timestamp::TsaCerts::from_pem(&pem).map_err(|e| e.to_string()))
        {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::error!(cert = %cfg.cert.display(), error = %e, "audit timestamping disabled");
                return;
            }
        };
        let weak = Arc::downgrade(self);
        let mut sizes = self.writer.checkpoints();
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(2);
            // Calls are spaced by `min_interval` after a success (under load checkpoints
            // come every few seconds, and public TSAs limit their callers) and by the
            // backoff after a failure; either way the latest checkpoint is the one sent.
            let mut not_before = tokio::time::Instant::now();
            loop {
                tokio::time::sleep_until(not_before).await;
                let size = *sizes.borrow_and_update();
                if size > 0 {
                    let Some(me) = weak.upgrade() else { return };
                    match me.timestamp_checkpoint(size, &cfg, &tsa, &gw).await {
                        Ok(Some(t)) => {
                            metrics::counter!("lienthong_audit_timestamps_total", "outcome" => "ok")
                                .increment(1);
                            tracing::info!(size, gen_time_ms = t.gen_time_ms, serial = %t.serial, "audit checkpoint timestamped");
                            backoff = Duration::from_secs(2);
                            not_before = tokio::time::Instant::now() + cfg.min_interval;
                        }
                        Ok(None) => backoff = Duration::from_secs(2),
                        Err(e) => {
                            metrics::counter!("lienthong_audit_timestamps_total", "outcome" => "failed")
                                .increment(1);
                            tracing::warn!(size, error = %e, retry_in = ?backoff, "audit checkpoint timestamp failed");
                            not_before = tokio::time::Instant::now() + backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(300));
                            continue;
                        }
                    }
                }
                if sizes.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// One RFC 3161 exchange for the stored checkpoint of `size`: `None` when it
    /// already has a token. The response is verified (status, imprint, nonce, the
    /// TSA's signature) before the token is stored.
    async fn timestamp_checkpoint(
        &self,
        size: u64,
        cfg: &crate::config::AuditTimestampCfg,
        tsa: &timestamp::TsaCerts,
        gw: &Weak<crate::runtime::Gateway>,
    ) -> Result<Option<timestamp::Timestamp>, String> {
        let db = self.cfg.db.clone();
        let note = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
            let store =
                crate::store::audit::Store::open_read_only(&db).map_err(|e| e.to_string())?;
            if store
                .timestamp_at(size)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Ok(None);
            }
            let cp = store.checkpoint_at(size).map_err(|e| e.to_string())?;
            Ok(cp.map(|c| c.to_text()))
        })
        .await
        .map_err(|e| e.to_string())??;
        let Some(note) = note else { return Ok(None) };
        let digest = timestamp::checkpoint_digest(&note);
        let mut nonce = [0u8; 8];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for the nonce")?;
        let nonce = u64::from_be_bytes(nonce);
        let gw = gw.upgrade().ok_or("gateway stopping")?;
        let pool = gw
            .runtime()
            .pools
            .get(&cfg.upstream)
            .cloned()
            .ok_or_else(|| format!("upstream {} is not configured", cfg.upstream))?;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/timestamp-query"),
        );
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/timestamp-reply"),
        );
        let req = crate::upstream::OutboundRequest {
            method: http::Method::POST,
            path_and_query: cfg.path.parse().map_err(|_| "bad TSA path".to_string())?,
            headers,
            body: crate::body::Body::full(timestamp::request(&digest, nonce)),
            // A time-stamp request has no side effect worth protecting: resending is safe.
            idempotent: true,
            timeout: cfg.timeout,
            host_from_endpoint: true,
        };
        // One deadline for the whole exchange: the pool's timeout ends at the
        // response head, and a TSA that stalls in its body must not stall this task.
        let exchange = async {
            let answer = pool.send(req).await.map_err(|e| e.to_string())?;
            let status = answer.response.status();
            if !status.is_success() {
                return Err(format!("TSA answered {status}"));
            }
            crate::body::collect_capped(answer.response.into_body(), timestamp::MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| e.to_string())
        };
        let body = tokio::time::timeout(cfg.timeout, exchange)
            .await
            .map_err(|_| format!("TSA did not answer within {:?}", cfg.timeout))??;
        let t = tsa
            .verify_response(&body, &digest, nonce)
            .map_err(|e| e.to_string())?;
        self.writer
            .store_timestamp(size, t.gen_time_ms, t.token.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(t))
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
