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

pub mod checkpoint;
pub mod merkle;
pub mod record;
pub mod store;
pub mod verify;
pub mod writer;
