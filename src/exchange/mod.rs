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
