//! Offline verification of an audit log, and the frame format records are
//! stored and exported in.
//!
//! # Frames
//!
//! Every record is stored as one self-delimiting, self-checking frame:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "LTA1" (also versions the format)
//! 4       4     payload length n, u32 big-endian
//! 8       4     !n (bitwise NOT of n), guards the length against bit rot
//! 12      8     record index, u64 big-endian
//! 20      n     payload (the record bytes, i.e. the Merkle leaf data)
//! 20+n    32    SHA-256(0x00 || payload) — the record's RFC 6962 leaf hash
//! ```
//!
//! The trailer is the leaf hash itself rather than a CRC, so the checksum the
//! scanner verifies is the very value the Merkle tree is built from, and a
//! writer or prover never has to hash a record twice. The inverted length
//! copy matters for crash recovery: without it, a flipped bit in a length
//! field in the *middle* of the file would make that frame look like it runs
//! past the end, i.e. like a torn tail, and "repairing" it would silently
//! cut every valid record after it.
//!
//! # Torn tails
//!
//! A crash during an append can leave a partial or garbled last frame. The
//! scanner stops at the first frame that does not check out and then looks
//! for any valid frame after it. Only if there is none is the damage a torn
//! tail that may be cut ([`TornTail::is_cuttable`]); otherwise it is
//! corruption in the middle of the log, which is reported, never repaired.
//!
//! # What verification can and cannot name
//!
//! [`VerifyReport::first_bad`] is always a *lower bound*: every record before
//! it was checked and is intact. Damage that breaks a frame's own hash, or the
//! contiguity of indices (deletion, insertion, reordering), is pinned to the
//! exact position. Damage by someone who also rewrote the frame hashes and
//! renumbered the indices can only be caught by signed checkpoints, and then
//! the most precise statement possible is "somewhere between the last
//! checkpoint that matched and the first that did not": nothing else is
//! signed, so nothing else can tell the records in that window apart. The
//! report names the start of that window.

use super::checkpoint::{CheckpointError, SignedCheckpoint, VerifierKey};
use super::merkle::{leaf_hash, sha256, CompactRange, Hash, HASH_LEN, LEAF_PREFIX};

/// Magic bytes at the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"LTA1";
/// Bytes before the payload.
pub const FRAME_HEADER_LEN: usize = 20;
/// Bytes after the payload (the leaf hash).
pub const FRAME_TRAILER_LEN: usize = HASH_LEN;
/// Largest accepted record. Bounds what a corrupted length can make us read.
pub const MAX_RECORD_LEN: usize = 16 << 20;

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame ends early: needs {needed} bytes, {available} present")]
    Incomplete { needed: usize, available: usize },
    #[error("bad frame magic")]
    BadMagic,
    #[error("frame length field is corrupt")]
    BadLength,
    #[error("frame payload of {len} bytes exceeds the limit")]
    TooLarge { len: usize },
    #[error("frame payload does not match its stored hash")]
    HashMismatch,
}

/// Total encoded size of a frame carrying `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len + FRAME_TRAILER_LEN
}

/// Append one frame to `out` and return the record's leaf hash, which the
/// writer feeds straight into its [`CompactRange`].
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    index: u64,
    payload: &[u8],
) -> Result<Hash, FrameError> {
    if payload.len() > MAX_RECORD_LEN {
        return Err(FrameError::TooLarge { len: payload.len() });
    }
    // Checked above: the length fits in u32.
    let n = payload.len() as u32;
    out.reserve(frame_len(payload.len()));
    let at = out.len();
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&(!n).to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(payload);
    // The leaf hash is over the prefix byte and the payload: hash them where they
    // now lie (in cache), the index's last byte standing in for the prefix for the
    // moment, rather than copying the payload once more behind a prefix.
    let before = at + FRAME_HEADER_LEN - 1;
    let kept = std::mem::replace(&mut out[before], LEAF_PREFIX);
    let h = sha256(&out[before..]);
    out[before] = kept;
    out.extend_from_slice(&h);
    Ok(h)
}

/// Rewrite the index of the frame at the start of `frame` (the writer renumbers the
/// frames of records queued behind a batch whose commit failed: their indices go to
/// the next records). The leaf hash does not cover the index, so it stays valid.
pub fn set_frame_index(frame: &mut [u8], index: u64) {
    frame[FRAME_HEADER_LEN - 8..FRAME_HEADER_LEN].copy_from_slice(&index.to_be_bytes());
}

/// One frame as a fresh buffer.
pub fn encode_frame(index: u64, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut v = Vec::with_capacity(frame_len(payload.len()));
    encode_frame_into(&mut v, index, payload)?;
    Ok(v)
}

/// A frame that checked out, borrowing its payload from the scanned buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Byte offset of the frame in the buffer.
    pub offset: usize,
    pub index: u64,
    pub payload: &'a [u8],
    pub leaf_hash: Hash,
}

/// Where and why scanning stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first bad byte (equals the valid prefix length).
    pub offset: usize,
    /// Bytes from `offset` to the end of the buffer.
    pub len: usize,
    /// What was wrong with the frame at `offset`.
    pub error: FrameError,
    /// Offset of the next frame that does check out, if any. When present,
    /// the damage is in the middle of the log, not a torn append.
    pub next_valid_offset: Option<usize>,
}

impl TornTail {
    /// True when nothing valid follows the damage, i.e. it is the remains of
    /// an interrupted append and cutting it loses no committed record.
    pub fn is_cuttable(&self) -> bool {
        self.next_valid_offset.is_none()
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Where the frame at `off` ends and which index its header claims, checking
/// only its structure (magic, length and its inverted copy, bounds), not its
/// hash: how a store splits a run of frames before each is hash-checked.
pub fn frame_extent(buf: &[u8], off: usize) -> Result<(u64, usize), FrameError> {
    let avail = buf.len() - off;
    let head = &buf[off..];
    // Check the magic on whatever is present first, so garbage is reported as
    // garbage rather than as a short frame.
    let m = avail.min(FRAME_MAGIC.len());
    if head[..m] != FRAME_MAGIC[..m] {
        return Err(FrameError::BadMagic);
    }
    if avail < FRAME_HEADER_LEN {
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_LEN,
            available: avail,
        });
    }
    let n = be_u32(&head[4..8]);
    if n != !be_u32(&head[8..12]) {
        return Err(FrameError::BadLength);
    }
    let len = n as usize;
    if len > MAX_RECORD_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let total = frame_len(len);
    if avail < total {
        return Err(FrameError::Incomplete {
            needed: total,
            available: avail,
        });
    }
    Ok((be_u64(&head[12..20]), off + total))
}

/// Decode the frame at `off`; on success also return the offset after it.
fn decode_frame(buf: &[u8], off: usize) -> Result<(Frame<'_>, usize), FrameError> {
    let (index, end) = frame_extent(buf, off)?;
    let head = &buf[off..end];
    let trailer = head.len() - FRAME_TRAILER_LEN;
    let payload = &head[FRAME_HEADER_LEN..trailer];
    let mut stored = [0u8; HASH_LEN];
    stored.copy_from_slice(&head[trailer..]);
    if leaf_hash(payload) != stored {
        return Err(FrameError::HashMismatch);
    }
    Ok((
        Frame {
            offset: off,
            index,
            payload,
            leaf_hash: stored,
        },
        end,
    ))
}

/// How many frame-shaped candidates (right magic, consistent length, fully
/// present) the resync search may hash before giving up. Each costs a
/// SHA-256 of up to [`MAX_RECORD_LEN`] bytes, so without a bound a crafted
/// export full of fake headers would make verification quadratic.
const MAX_RESYNC_CANDIDATES: usize = 1024;

/// Find the first offset after `from` where a complete, valid frame starts.
/// Only offsets that begin with the magic are decoded, so this is a cheap
/// linear pass in practice; it runs only when something is already wrong.
/// If the candidate budget runs out, the first frame-shaped candidate is
/// returned: "something that looks like a frame follows" errs on the side of
/// not cutting, which is the safe direction for an audit log.
fn find_next_valid(buf: &[u8], from: usize) -> Option<usize> {
    let mut start = from;
    let mut tried = 0usize;
    let mut first_shaped = None;
    while start + frame_len(0) <= buf.len() {
        let rel = buf[start..]
            .windows(FRAME_MAGIC.len())
            .position(|w| w == FRAME_MAGIC)?;
        let cand = start + rel;
        match decode_frame(buf, cand) {
            Ok(_) => return Some(cand),
            Err(FrameError::HashMismatch) => {
                first_shaped.get_or_insert(cand);
                tried += 1;
                if tried >= MAX_RESYNC_CANDIDATES {
                    return first_shaped;
                }
            }
            Err(_) => {}
        }
        start = cand + 1;
    }
    None
}

/// Scan a buffer of frames (a log segment or an export).
///
/// Returns the frames that check out, in order, the length of the valid
/// prefix they occupy, and — if the buffer does not end exactly after a
/// valid frame — where and why scanning stopped. Indices are *not* checked
/// here; that is the verifier's job, so that a reordered log is reported as
/// reordered rather than as unreadable.
pub fn scan_frames(buf: &[u8]) -> (Vec<Frame<'_>>, usize, Option<TornTail>) {
    let mut frames = Vec::new();
    let mut off = 0usize;
    while off < buf.len() {
        match decode_frame(buf, off) {
            Ok((frame, next)) => {
                frames.push(frame);
                off = next;
            }
            Err(error) => {
                let tail = TornTail {
                    offset: off,
                    len: buf.len() - off,
                    error,
                    next_valid_offset: find_next_valid(buf, off + 1),
                };
                return (frames, off, Some(tail));
            }
        }
    }
    (frames, off, None)
}

/// Crash recovery for an in-memory segment: cut a torn tail if (and only if)
/// it is cuttable. Returns what was cut, or the damage that must not be cut.
/// A file-backed store does the same with `File::set_len(valid_prefix_len)`.
pub fn cut_torn_tail(buf: &mut Vec<u8>) -> Result<Option<TornTail>, TornTail> {
    let (_, valid, tail) = scan_frames(buf);
    match tail {
        None => Ok(None),
        Some(t) if t.is_cuttable() => {
            buf.truncate(valid);
            Ok(Some(t))
        }
        Some(t) => Err(t),
    }
}

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

/// What is wrong, if anything, with a record that claims `index` arriving at
/// `position` (the number of records before it) with leaf hash `h`, against the
/// hash stored beside it: the record index to name and the problem. Shared by
/// the offline verifier and the writer's resumed verification.
pub(crate) fn leaf_problem(
    position: u64,
    index: u64,
    h: &Hash,
    stored: Option<&Hash>,
) -> Option<(u64, Problem)> {
    if index > position {
        Some((
            position,
            Problem::MissingIndex {
                expected: position,
                found: index,
            },
        ))
    } else if index < position {
        Some((
            index,
            Problem::RepeatedIndex {
                expected: position,
                found: index,
            },
        ))
    } else if stored.is_some_and(|s| s != h) {
        Some((position, Problem::HashMismatch))
    } else {
        None
    }
}

/// The first thing found wrong, attached to a record index in the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Position `expected` holds a later index: records were deleted or
    /// moved. The report names `expected`.
    #[error("expected record {expected}, found record {found}: records deleted or reordered")]
    MissingIndex { expected: u64, found: u64 },
    /// Position `expected` holds an earlier index: a record was inserted or
    /// duplicated. The report names `found`, the earliest index that may
    /// have been displaced.
    #[error(
        "expected record {expected}, found record {found} again: record inserted or duplicated"
    )]
    RepeatedIndex { expected: u64, found: u64 },
    /// The record's bytes do not hash to the hash stored with them.
    #[error("record bytes do not match their stored hash")]
    HashMismatch,
    /// An unreadable frame in the middle of the log (not a torn tail).
    #[error("unreadable frame in the middle of the log: {0}")]
    CorruptFrame(FrameError),
    /// The records do not reproduce a signed root. Some record between the
    /// named index and `checkpoint_size` was altered.
    #[error("records do not match the signed root of checkpoint at size {checkpoint_size}")]
    CheckpointRootMismatch { checkpoint_size: u64 },
    /// A stored checkpoint is not validly signed by the trusted key for this
    /// log (wrong key, tampered text, or another log's origin), so the
    /// records it was meant to vouch for are not vouched for.
    #[error("checkpoint at size {checkpoint_size} is not valid: {error}")]
    CheckpointInvalid {
        checkpoint_size: u64,
        error: CheckpointError,
    },
    /// A checkpoint covers records the log no longer has: truncation.
    #[error("checkpoint covers {checkpoint_size} records but only {records} are present")]
    MissingRecords { checkpoint_size: u64, records: u64 },
    /// The records before `size` are gone, but the record the prune point names
    /// (`admin_idx`) is not the retention record announcing their deletion. A prune
    /// point is not signed itself: without its announcement it is a deletion (or, with
    /// the records still there, a way to skip them) that nobody recorded.
    #[error(
        "records before {size} are deleted, but record {admin_idx} is not the retention \
         record announcing it"
    )]
    UnannouncedDeletion { size: u64, admin_idx: u64 },
}

/// Outcome of verifying a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read (in storage order), including any after the first problem.
    pub records: u64,
    /// Checkpoints whose signature and root both checked out.
    pub checkpoints_ok: usize,
    /// Lowest record index that cannot be vouched for, and why. `None` means
    /// the log verified.
    pub first_bad: Option<(u64, Problem)>,
    /// RFC 6962 root over all `records` in storage order; the state a new
    /// checkpoint would sign if the log is good.
    pub root: Hash,
    /// A cuttable torn tail found after the last valid frame (frame input
    /// only). Not an error by itself: a crash leaves one. If it held records
    /// a checkpoint had covered, `first_bad` reports them missing.
    pub torn_tail: Option<TornTail>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Incremental verifier: feed records in storage order, then call
/// [`LogVerifier::finish`]. Memory is O(log n + number of checkpoints), so a
/// store of any size can be streamed through it.
pub struct LogVerifier {
    /// (size, signed root or why the checkpoint is unusable), sorted by size.
    checkpoints: Vec<(u64, Result<Hash, CheckpointError>)>,
    next_checkpoint: usize,
    /// Size of the last checkpoint that matched; everything below it is
    /// vouched for by a signature.
    vouched: u64,
    tree: CompactRange,
    checkpoints_ok: usize,
    first_bad: Option<(u64, Problem)>,
}

impl LogVerifier {
    /// `key` is the trusted checkpoint key and `origin` the log's identity;
    /// checkpoints naming another origin are rejected so that a validly
    /// signed checkpoint of another lienthong log cannot be replayed here.
    pub fn new(key: &VerifierKey, origin: &str, checkpoints: &[SignedCheckpoint]) -> Self {
        Self::resume(key, origin, checkpoints, CompactRange::new())
    }

    /// A verifier that starts after the records `start` covers (the stored
    /// frontier of a pruned log) instead of at record 0. Checkpoints below
    /// `start` cannot be checked against records any more and are left out.
    pub(crate) fn resume(
        key: &VerifierKey,
        origin: &str,
        checkpoints: &[SignedCheckpoint],
        start: CompactRange,
    ) -> Self {
        let mut cps: Vec<(u64, Result<Hash, CheckpointError>)> = checkpoints
            .iter()
            .filter(|sc| sc.checkpoint().size >= start.size())
            .map(|sc| {
                let cp = sc.checkpoint();
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
                (cp.size, checked)
            })
            .collect();
        cps.sort_by_key(|(size, _)| *size);
        let mut v = Self {
            checkpoints: cps,
            next_checkpoint: 0,
            vouched: start.size(),
            tree: start,
            checkpoints_ok: 0,
            first_bad: None,
        };
        v.check_checkpoints_here();
        v
    }

    fn fail(&mut self, index: u64, problem: Problem) {
        if self.first_bad.is_none() {
            self.first_bad = Some((index, problem));
        }
    }

    /// Check every checkpoint whose size equals the number of records so far.
    fn check_checkpoints_here(&mut self) {
        let size = self.tree.size();
        while self
            .checkpoints
            .get(self.next_checkpoint)
            .is_some_and(|(cp_size, _)| *cp_size == size)
        {
            let checked = self.checkpoints[self.next_checkpoint].1.clone();
            self.next_checkpoint += 1;
            if self.first_bad.is_some() {
                continue;
            }
            let problem = match checked {
                Err(error) => Some(Problem::CheckpointInvalid {
                    checkpoint_size: size,
                    error,
                }),
                Ok(root) if root != self.tree.root() => Some(Problem::CheckpointRootMismatch {
                    checkpoint_size: size,
                }),
                Ok(_) => None,
            };
            match problem {
                // Name the first record not already vouched for: the altered
                // one is somewhere in [vouched, size).
                Some(p) => {
                    let at = self.vouched;
                    self.fail(at, p);
                }
                None => {
                    self.checkpoints_ok += 1;
                    self.vouched = size;
                }
            }
        }
    }

    /// Feed the next record in storage order. `stored_hash` is the hash kept
    /// alongside the record, when the storage has one.
    pub fn push(&mut self, index: u64, payload: &[u8], stored_hash: Option<&Hash>) {
        let h = leaf_hash(payload);
        self.push_leaf(index, h, stored_hash);
    }

    /// Like [`LogVerifier::push`] for a frame whose hash was already checked
    /// by [`scan_frames`], avoiding a second SHA-256 of the payload.
    pub fn push_frame(&mut self, frame: &Frame<'_>) {
        self.push_leaf(frame.index, frame.leaf_hash, None);
    }

    fn push_leaf(&mut self, index: u64, h: Hash, stored_hash: Option<&Hash>) {
        if let Some((at, p)) = leaf_problem(self.tree.size(), index, &h, stored_hash) {
            self.fail(at, p);
        }
        self.tree.append(h);
        self.check_checkpoints_here();
    }

    /// Record an unreadable frame at the current position.
    pub fn push_corrupt(&mut self, error: FrameError) {
        let at = self.tree.size();
        self.fail(at, Problem::CorruptFrame(error));
    }

    /// Records fed so far.
    pub fn records(&self) -> u64 {
        self.tree.size()
    }

    /// Finish: any checkpoint larger than the log means records are missing.
    pub fn finish(mut self, torn_tail: Option<TornTail>) -> VerifyReport {
        let records = self.tree.size();
        if let Some((cp_size, _)) = self.checkpoints.get(self.next_checkpoint) {
            // Sorted, so this is the smallest checkpoint beyond the end.
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
            torn_tail,
        }
    }
}

/// Verify records given as `(index, bytes)` in storage order against the
/// stored checkpoints.
pub fn verify_records<I, B>(
    records: I,
    checkpoints: &[SignedCheckpoint],
    key: &VerifierKey,
    origin: &str,
) -> VerifyReport
where
    I: IntoIterator<Item = (u64, B)>,
    B: AsRef<[u8]>,
{
    let mut v = LogVerifier::new(key, origin, checkpoints);
    for (index, bytes) in records {
        v.push(index, bytes.as_ref(), None);
    }
    v.finish(None)
}

/// Verify a framed segment or export. A cuttable torn tail is reported in
/// [`VerifyReport::torn_tail`]; damage with valid frames after it is a
/// [`Problem::CorruptFrame`] at the position where it occurs.
pub fn verify_frames(
    buf: &[u8],
    checkpoints: &[SignedCheckpoint],
    key: &VerifierKey,
    origin: &str,
) -> VerifyReport {
    let (frames, _, tail) = scan_frames(buf);
    let mut v = LogVerifier::new(key, origin, checkpoints);
    for f in &frames {
        v.push_frame(f);
    }
    match tail {
        Some(t) if !t.is_cuttable() => {
            v.push_corrupt(t.error);
            v.finish(Some(t))
        }
        other => v.finish(other),
    }
}

#[cfg(test)]
mod tests {
    use super::super::checkpoint::{Checkpoint, CheckpointSigner};
    use super::super::merkle::{leaf_hash, root_from_leaf_hashes, MerkleTree};
    use super::*;

    const ORIGIN: &str = "lienthong.test/audit";

    fn signer() -> CheckpointSigner {
        CheckpointSigner::from_seed(ORIGIN, &[42; 32]).unwrap()
    }

    fn payloads(n: u64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"seq\":{i},\"from\":\"bhxh\",\"to\":\"dancu\",\"dossier\":\"HS-{i:05}\"}}"
                )
                .into_bytes()
            })
            .collect()
    }

    fn records(n: u64) -> Vec<(u64, Vec<u8>)> {
        payloads(n)
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p))
            .collect()
    }

    fn frames_of(recs: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (i, p) in recs {
            encode_frame_into(&mut buf, *i, p).unwrap();
        }
        buf
    }

    /// Checkpoints signed by `signer` over the honest log at the given sizes.
    fn checkpoints(
        s: &CheckpointSigner,
        recs: &[(u64, Vec<u8>)],
        sizes: &[u64],
    ) -> Vec<SignedCheckpoint> {
        let tree = MerkleTree::from_leaf_hashes(recs.iter().map(|(_, p)| leaf_hash(p)));
        sizes
            .iter()
            .map(|&size| {
                s.sign(&Checkpoint {
                    origin: ORIGIN.into(),
                    size,
                    root: tree.root_at(size).unwrap(),
                    timestamp_ms: 1_700_000_000_000 + size,
                })
                .unwrap()
            })
            .collect()
    }

    /// Frame offsets of an encoded log, for surgery on the bytes.
    fn offsets(buf: &[u8]) -> Vec<(usize, usize)> {
        scan_frames(buf)
            .0
            .iter()
            .map(|f| (f.offset, frame_len(f.payload.len())))
            .collect()
    }

    fn first_bad(r: &VerifyReport) -> u64 {
        r.first_bad.as_ref().expect("verification should fail").0
    }

    #[test]
    fn honest_log_verifies() {
        let recs = records(20);
        let s = signer();
        let cps = checkpoints(&s, &recs, &[0, 1, 8, 13, 20]);
        let key = s.verifier_key();
        let r = verify_records(recs.clone(), &cps, &key, ORIGIN);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.records, 20);
        assert_eq!(r.checkpoints_ok, 5);
        let leaves: Vec<Hash> = recs.iter().map(|(_, p)| leaf_hash(p)).collect();
        assert_eq!(r.root, root_from_leaf_hashes(&leaves));

        let buf = frames_of(&recs);
        let r = verify_frames(&buf, &cps, &key, ORIGIN);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!((r.records, r.checkpoints_ok, r.torn_tail), (20, 5, None));
    }

    #[test]
    fn flipped_byte_is_named() {
        let recs = records(12);
        let s = signer();
        let cps = checkpoints(&s, &recs, &[4, 8, 12]);
        let key = s.verifier_key();

        // In a framed store the record's own hash pins the exact record,
        // wherever the flipped byte is in its payload.
        let buf = frames_of(&recs);
        let offs = offsets(&buf);
        for target in [0usize, 5, 9] {
            let mut bad = buf.clone();
            bad[offs[target].0 + FRAME_HEADER_LEN + 3] ^= 0x01;
            let r = verify_frames(&bad, &cps, &key, ORIGIN);
            assert_eq!(first_bad(&r), target as u64, "{r:?}");
            assert!(matches!(
                r.first_bad,
                Some((_, Problem::CorruptFrame(FrameError::HashMismatch)))
            ));
        }

        // A flip in the stored index is caught by contiguity.
        let mut bad = buf.clone();
        bad[offs[6].0 + 19] ^= 0x01; // index 6 -> 7
        let r = verify_frames(&bad, &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 6);

        // Without per-record hashes (or if an attacker rewrote them), only
        // signed roots can tell, and the report names the first record not
        // vouched for by a matching checkpoint: record 9 changed, the
        // checkpoint at 8 still matches, the one at 12 does not.
        let mut tampered = recs.clone();
        tampered[9].1[3] ^= 0x01;
        let r = verify_records(tampered.clone(), &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 8);
        assert_eq!(r.checkpoints_ok, 2);
        assert!(matches!(
            r.first_bad,
            Some((
                _,
                Problem::CheckpointRootMismatch {
                    checkpoint_size: 12
                }
            ))
        ));
        // Same with a re-framed (hash-recomputed) forgery.
        let r = verify_frames(&frames_of(&tampered), &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 8);
        // A stored hash alongside the record pins it exactly again.
        let mut v = LogVerifier::new(&key, ORIGIN, &cps);
        for (i, (idx, p)) in tampered.iter().enumerate() {
            v.push(*idx, p, Some(&leaf_hash(&recs[i].1)));
        }
        let r = v.finish(None);
        assert_eq!(r.first_bad, Some((9, Problem::HashMismatch)));
    }

    #[test]
    fn deleted_record_is_named() {
        let recs = records(10);
        let s = signer();
        let cps = checkpoints(&s, &recs, &[10]);
        let key = s.verifier_key();
        let mut del = recs.clone();
        del.remove(4);
        let r = verify_records(del.clone(), &cps, &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((
                4,
                Problem::MissingIndex {
                    expected: 4,
                    found: 5
                }
            ))
        );
        // Same through frames (whole frame cut out of the file).
        let buf = frames_of(&recs);
        let offs = offsets(&buf);
        let mut bad = buf[..offs[4].0].to_vec();
        bad.extend_from_slice(&buf[offs[5].0..]);
        let r = verify_frames(&bad, &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 4);
        // Deleting the first record is named too.
        let r = verify_records(recs[1..].to_vec(), &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 0);
    }

    #[test]
    fn swapped_records_are_named() {
        let recs = records(10);
        let s = signer();
        let cps = checkpoints(&s, &recs, &[10]);
        let key = s.verifier_key();
        let mut sw = recs.clone();
        sw.swap(3, 4);
        let r = verify_records(sw.clone(), &cps, &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((
                3,
                Problem::MissingIndex {
                    expected: 3,
                    found: 4
                }
            ))
        );
        let r = verify_frames(&frames_of(&sw), &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 3);
        // Swapping payloads but keeping indices in order: only the signed
        // root sees it; nothing before the checkpoint is vouched for.
        let mut sp = recs.clone();
        let (a, b) = (sp[3].1.clone(), sp[4].1.clone());
        sp[3].1 = b;
        sp[4].1 = a;
        let r = verify_records(sp, &cps, &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((
                0,
                Problem::CheckpointRootMismatch {
                    checkpoint_size: 10
                }
            ))
        );
    }

    #[test]
    fn inserted_record_is_named() {
        let recs = records(10);
        let s = signer();
        let cps = checkpoints(&s, &recs, &[4, 10]);
        let key = s.verifier_key();
        // A forged record claiming index 4, slipped in before the real one:
        // index 4 is then claimed twice, and 4 is named.
        let mut ins = recs.clone();
        ins.insert(4, (4, b"{\"forged\":true}".to_vec()));
        let r = verify_records(ins.clone(), &cps, &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((
                4,
                Problem::RepeatedIndex {
                    expected: 5,
                    found: 4
                }
            ))
        );
        assert_eq!(r.checkpoints_ok, 1);
        // If a checkpoint fails before the repeat is seen, the report names
        // the first record no matching checkpoint vouches for (here 0: the
        // only checkpoint, at 5, already includes the forged record).
        let cps5 = checkpoints(&s, &recs, &[5, 10]);
        let r = verify_records(ins.clone(), &cps5, &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((0, Problem::CheckpointRootMismatch { checkpoint_size: 5 }))
        );
        let r = verify_frames(&frames_of(&ins), &[], &key, ORIGIN);
        assert_eq!(first_bad(&r), 4);
        // Inserted *after* the genuine record 4: same name.
        let mut ins2 = recs.clone();
        ins2.insert(5, (4, b"{\"forged\":true}".to_vec()));
        let r = verify_frames(&frames_of(&ins2), &[], &key, ORIGIN);
        assert_eq!(first_bad(&r), 4);
        // Inserted and renumbered (indices stay contiguous): the checkpoint
        // at 5 still matches, the one at 10 does not, so 5 is named.
        let mut ren = recs.clone();
        ren.insert(6, (0, b"{\"forged\":true}".to_vec()));
        for (i, r) in ren.iter_mut().enumerate() {
            r.0 = i as u64;
        }
        let r = verify_records(ren, &cps5, &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((
                5,
                Problem::CheckpointRootMismatch {
                    checkpoint_size: 10
                }
            ))
        );
    }

    #[test]
    fn truncated_log_fails_checkpoint() {
        let recs = records(10);
        let s = signer();
        let cps = checkpoints(&s, &recs, &[5, 10]);
        let key = s.verifier_key();
        let r = verify_records(recs[..7].to_vec(), &cps, &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((
                7,
                Problem::MissingRecords {
                    checkpoint_size: 10,
                    records: 7
                }
            ))
        );
        assert_eq!(r.checkpoints_ok, 1);
        // Clean truncation of the framed file at a frame boundary.
        let buf = frames_of(&recs);
        let offs = offsets(&buf);
        let r = verify_frames(&buf[..offs[7].0], &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 7);
        assert_eq!(r.torn_tail, None);
        // Truncation mid-frame looks like a torn tail, but the checkpoint
        // still reports the records it covered as missing.
        let r = verify_frames(&buf[..offs[7].0 + 10], &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 7);
        assert!(r.torn_tail.as_ref().is_some_and(TornTail::is_cuttable));
        // Truncated to nothing.
        let r = verify_records(Vec::<(u64, Vec<u8>)>::new(), &cps, &key, ORIGIN);
        assert_eq!(first_bad(&r), 0);
    }

    #[test]
    fn torn_last_frame_is_cut() {
        let recs = records(5);
        let buf = frames_of(&recs);
        let offs = offsets(&buf);
        let last = offs[4].0;
        let s = signer();
        let key = s.verifier_key();

        // Every possible crash point inside the last frame's write.
        for keep in 1..frame_len(recs[4].1.len()) {
            let mut torn = buf[..last + keep].to_vec();
            let (frames, valid, tail) = scan_frames(&torn);
            assert_eq!(frames.len(), 4);
            assert_eq!(valid, last);
            let tail = tail.expect("torn tail");
            assert!(tail.is_cuttable(), "keep={keep}: {tail:?}");
            assert_eq!((tail.offset, tail.len), (last, keep));
            let cut = cut_torn_tail(&mut torn).unwrap();
            assert!(cut.is_some());
            assert_eq!(torn, buf[..last]);
        }

        // A fully written frame whose tail bytes never reached the disk
        // (zero-filled) is also a torn tail.
        let mut zeroed = buf.clone();
        let n = zeroed.len();
        zeroed[n - 10..].fill(0);
        let (frames, _, tail) = scan_frames(&zeroed);
        assert_eq!(frames.len(), 4);
        assert_eq!(
            tail.as_ref().map(|t| t.error),
            Some(FrameError::HashMismatch)
        );
        assert!(cut_torn_tail(&mut zeroed).unwrap().is_some());

        // After cutting, the writer re-appends record 4 and the log verifies
        // against a checkpoint signed over the new state.
        let mut repaired = buf[..last + 7].to_vec();
        cut_torn_tail(&mut repaired).unwrap();
        encode_frame_into(&mut repaired, 4, &recs[4].1).unwrap();
        let cps = checkpoints(&s, &recs, &[5]);
        let r = verify_frames(&repaired, &cps, &key, ORIGIN);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.records, 5);

        // Damage followed by valid frames is corruption, not a torn tail:
        // it is refused by the cutter and named by the verifier.
        let mut mid = buf.clone();
        mid[offs[2].0 + 5] ^= 0x40; // length field of frame 2
        let (frames, valid, tail) = scan_frames(&mid);
        assert_eq!((frames.len(), valid), (2, offs[2].0));
        let tail = tail.unwrap();
        assert_eq!(tail.error, FrameError::BadLength);
        assert_eq!(tail.next_valid_offset, Some(offs[3].0));
        assert!(cut_torn_tail(&mut mid.clone()).is_err());
        let r = verify_frames(&mid, &[], &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((2, Problem::CorruptFrame(FrameError::BadLength)))
        );
    }

    #[test]
    fn checkpoint_wrong_key_fails() {
        let recs = records(6);
        let s = signer();
        let cps = checkpoints(&s, &recs, &[3, 6]);
        // Verifier holding a different key (same name).
        let other = CheckpointSigner::from_seed(ORIGIN, &[7; 32]).unwrap();
        let r = verify_records(recs.clone(), &cps, &other.verifier_key(), ORIGIN);
        assert_eq!(r.checkpoints_ok, 0);
        assert!(matches!(
            r.first_bad,
            Some((
                0,
                Problem::CheckpointInvalid {
                    checkpoint_size: 3,
                    error: CheckpointError::NoSignatureFromKey { .. }
                }
            ))
        ));
        // Checkpoints signed by an impostor key, checked with the real key.
        let forged = checkpoints(&other, &recs, &[3, 6]);
        let r = verify_records(recs.clone(), &forged, &s.verifier_key(), ORIGIN);
        assert_eq!(first_bad(&r), 0);
        // A real checkpoint of another log (different origin) is refused.
        let r = verify_records(recs, &cps, &s.verifier_key(), "other.log/audit");
        assert!(matches!(
            r.first_bad,
            Some((
                0,
                Problem::CheckpointInvalid {
                    error: CheckpointError::OriginMismatch { .. },
                    ..
                }
            ))
        ));
    }

    #[test]
    fn checkpoint_wrong_size_fails() {
        let recs = records(8);
        let s = signer();
        let key = s.verifier_key();
        let tree = MerkleTree::from_leaf_hashes(recs.iter().map(|(_, p)| leaf_hash(p)));
        // Validly signed, but claims size 7 for the root of 8 records.
        let lying = s
            .sign(&Checkpoint {
                origin: ORIGIN.into(),
                size: 7,
                root: tree.root_at(8).unwrap(),
                timestamp_ms: 1,
            })
            .unwrap();
        let r = verify_records(recs.clone(), std::slice::from_ref(&lying), &key, ORIGIN);
        assert!(matches!(
            r.first_bad,
            Some((0, Problem::CheckpointRootMismatch { checkpoint_size: 7 }))
        ));
        assert!(matches!(
            lying.verify_matches(&key, ORIGIN, 8, &tree.root()),
            Err(CheckpointError::SizeMismatch {
                expected: 8,
                got: 7
            })
        ));
        // The size line edited after signing: the signature no longer holds.
        let good = &checkpoints(&s, &recs, &[8])[0];
        let edited =
            SignedCheckpoint::parse(&good.to_text().replacen("\n8\n", "\n6\n", 1)).unwrap();
        assert_eq!(edited.checkpoint().size, 6);
        let r = verify_records(recs, std::slice::from_ref(&edited), &key, ORIGIN);
        assert!(matches!(
            r.first_bad,
            Some((
                0,
                Problem::CheckpointInvalid {
                    checkpoint_size: 6,
                    error: CheckpointError::BadSignature { .. }
                }
            ))
        ));
    }

    #[test]
    fn checkpoint_wrong_root_fails() {
        let recs = records(8);
        let s = signer();
        let key = s.verifier_key();
        // Validly signed, but over a root the records do not produce.
        let lying = s
            .sign(&Checkpoint {
                origin: ORIGIN.into(),
                size: 8,
                root: leaf_hash(b"something else"),
                timestamp_ms: 1,
            })
            .unwrap();
        let r = verify_records(recs.clone(), std::slice::from_ref(&lying), &key, ORIGIN);
        assert_eq!(
            r.first_bad,
            Some((0, Problem::CheckpointRootMismatch { checkpoint_size: 8 }))
        );
        // The root line edited after signing.
        let good = &checkpoints(&s, &recs, &[8])[0];
        let old = super::super::merkle::hash_to_base64(&good.checkpoint().root);
        let new = super::super::merkle::hash_to_base64(&leaf_hash(b"x"));
        let edited = SignedCheckpoint::parse(&good.to_text().replacen(&old, &new, 1)).unwrap();
        let r = verify_records(recs.clone(), std::slice::from_ref(&edited), &key, ORIGIN);
        assert!(matches!(
            r.first_bad,
            Some((
                0,
                Problem::CheckpointInvalid {
                    error: CheckpointError::BadSignature { .. },
                    ..
                }
            ))
        ));
        // And the untouched one still verifies.
        let r = verify_records(recs, std::slice::from_ref(good), &key, ORIGIN);
        assert!(r.is_ok());
    }

    /// Frames appended to a buffer carry their index and the leaf hash of their
    /// payload alone (hashed in place, behind a borrowed prefix byte that is then
    /// restored); renumbering one rewrites only its index.
    #[test]
    fn frames_carry_their_index_and_payload_leaf_hash_and_can_be_renumbered() {
        let payloads: [&[u8]; 3] = [b"{\"a\":1}", b"", &[0xff; 200]];
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let idx = 0x0102_0304_0506_0700 + i as u64;
            assert_eq!(encode_frame_into(&mut buf, idx, p).unwrap(), leaf_hash(p));
            ends.push(buf.len());
        }
        let (frames, valid, tail) = scan_frames(&buf);
        assert_eq!((frames.len(), valid, tail), (3, buf.len(), None));
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.index, 0x0102_0304_0506_0700 + i as u64);
            assert_eq!(f.payload, payloads[i]);
            assert_eq!(f.leaf_hash, leaf_hash(payloads[i]));
        }
        set_frame_index(&mut buf[ends[0]..ends[1]], 7);
        let (frames, _, tail) = scan_frames(&buf);
        assert_eq!(tail, None);
        let indices: Vec<u64> = frames.iter().map(|f| f.index).collect();
        assert_eq!(indices, [0x0102_0304_0506_0700, 7, 0x0102_0304_0506_0702]);
        assert_eq!(frames[1].payload, payloads[1]);
    }

    #[test]
    fn garbage_and_oversized_frames_are_not_misread() {
        // A corrupted length that claims a huge payload is refused by the
        // length guard before any allocation or read.
        let mut f = encode_frame(0, b"abc").unwrap();
        let huge = (MAX_RECORD_LEN as u32) + 1;
        f[4..8].copy_from_slice(&huge.to_be_bytes());
        f[8..12].copy_from_slice(&(!huge).to_be_bytes());
        assert_eq!(
            scan_frames(&f).2.map(|t| t.error),
            Some(FrameError::TooLarge { len: huge as usize })
        );
        assert_eq!(
            scan_frames(b"not a frame at all").2.map(|t| t.error),
            Some(FrameError::BadMagic)
        );
        let (frames, valid, tail) = scan_frames(&[]);
        assert!(frames.is_empty() && valid == 0 && tail.is_none());
        assert!(encode_frame(0, &vec![0u8; MAX_RECORD_LEN + 1]).is_err());
        // Empty payloads are legal records.
        let e = encode_frame(0, b"").unwrap();
        let (frames, _, tail) = scan_frames(&e);
        assert_eq!((frames.len(), tail), (1, None));
        assert_eq!(frames[0].leaf_hash, leaf_hash(b""));
    }

    #[test]
    fn resync_search_is_bounded() {
        // Thousands of frame-shaped fakes after a bad frame: the scan still
        // finishes quickly and refuses to call the damage cuttable.
        let mut buf = encode_frame(0, b"good").unwrap();
        buf.extend_from_slice(b"XXXX");
        for i in 0..(MAX_RESYNC_CANDIDATES as u64 + 50) {
            let mut f = encode_frame(i, b"fake").unwrap();
            let n = f.len();
            f[n - 1] ^= 1;
            buf.extend_from_slice(&f);
        }
        let (frames, _, tail) = scan_frames(&buf);
        assert_eq!(frames.len(), 1);
        let tail = tail.unwrap();
        assert_eq!(tail.error, FrameError::BadMagic);
        assert!(!tail.is_cuttable());
    }

    #[test]
    fn streaming_writer_and_prover_agree_with_verifier() {
        // What the gateway will do: append frames while keeping only a
        // compact range, sign checkpoints from it, and later prove inclusion.
        let s = signer();
        let key = s.verifier_key();
        let mut store = Vec::new();
        let mut frontier = CompactRange::new();
        let mut cps = Vec::new();
        for (i, p) in payloads(300).iter().enumerate() {
            let h = encode_frame_into(&mut store, i as u64, p).unwrap();
            frontier.append(h);
            if (i + 1) % 64 == 0 {
                cps.push(
                    s.sign(&Checkpoint {
                        origin: ORIGIN.into(),
                        size: frontier.size(),
                        root: frontier.root(),
                        timestamp_ms: i as u64,
                    })
                    .unwrap(),
                );
            }
        }
        let r = verify_frames(&store, &cps, &key, ORIGIN);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.checkpoints_ok, 4);
        assert_eq!(r.root, frontier.root());

        let (frames, _, _) = scan_frames(&store);
        let tree = MerkleTree::from_leaf_hashes(frames.iter().map(|f| f.leaf_hash));
        let cp = cps[2].verify(&key).unwrap();
        let proof = super::super::merkle::InclusionProof::generate(&tree, 150, cp.size).unwrap();
        proof.verify_record(frames[150].payload, &cp.root).unwrap();
        let older = cps[0].verify(&key).unwrap();
        let cons =
            super::super::merkle::ConsistencyProof::generate(&tree, older.size, cp.size).unwrap();
        cons.verify(&older.root, &cp.root).unwrap();
    }
}
