//! One intake channel (issue #6): the canonical dossier (hồ sơ) model and its
//! validation (`dossier`), the durable store with group commit, idempotency and the
//! per-destination outbox (`store`), and the delivery engine (`outbox`).
//!
//! Design constraints (what is promised):
//! - A dossier is committed (WAL, `synchronous=FULL`, one fsync shared by every intake
//!   queued at that moment) before its receipt is returned; never a receipt for
//!   something not on disk. A full spool refuses with a retry time instead.
//! - Idempotency by dossier code or Idempotency-Key: the same content gets the same
//!   receipt, different content a conflict.
//! - Delivery is at-least-once per destination with the dossier code as the receiver's
//!   idempotency key; an update never overtakes its dossier's creation; backoff with
//!   full jitter and a cap; dead letter after N attempts or a permanent refusal.
//! - States: outbox rows go `pending → sending (leased) → delivered | retrying | dead`;
//!   a lease that expires (crash, SIGKILL) makes the row claimable again.
//!
//! Not yet on the request path: the HTTP intake API, routing of deliveries from config
//! and the sandbox counterparts follow.

pub mod dossier;
pub mod outbox;
pub mod store;

use crate::auth::rules::AccessRule;
use crate::config::ExchangeCfg;
use std::sync::Arc;

/// The running intake channel: its store and who may use it.
pub struct Exchange {
    pub cfg: ExchangeCfg,
    pub store: store::SqliteStore,
    pub rule: Option<AccessRule>,
}

impl Exchange {
    pub fn open(cfg: &ExchangeCfg) -> Result<Arc<Exchange>, String> {
        if let Some(dir) = cfg.db.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let opts = store::SqliteOptions {
            spool_capacity: cfg.spool_capacity,
            retry_after_secs: cfg.retry_after.as_secs().max(1),
            ..Default::default()
        };
        let store = store::SqliteStore::open(&cfg.db, opts).map_err(|e| e.to_string())?;
        let rule = cfg.auth.as_ref().and_then(|a| {
            AccessRule::from_config(a.anonymous, &a.agencies, &a.roles, &a.scopes).ok()
        });
        Ok(Arc::new(Exchange {
            cfg: cfg.clone(),
            store,
            rule,
        }))
    }
}
