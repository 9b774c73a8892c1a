//! RFC 6962 / RFC 9162 Merkle tree for the lienthong audit log.
//!
//! # Design constraints
//!
//! * **Hash domain separation.** A leaf hash is `SHA-256(0x00 || data)` and an
//!   interior node is `SHA-256(0x01 || left || right)`. The distinct one-byte
//!   prefixes make it impossible to pass off an interior node (64 bytes of
//!   child hashes) as a leaf record, or vice versa, so a prover cannot forge
//!   an inclusion proof for "data" that is really two concatenated hashes
//!   (a second-preimage attack on unprefixed Merkle trees). The empty tree's
//!   root is `SHA-256("")`, which no leaf or node can collide with because
//!   both of those always hash at least one prefix byte.
//! * **Tree shape is fixed by RFC 6962 §2.1.** The root of `n` leaves splits
//!   at the largest power of two strictly below `n`; there is no padding and
//!   no duplicated last leaf (the Bitcoin-style trick that lets two different
//!   leaf lists share a root). Any independent RFC 6962 implementation
//!   therefore computes the same roots and proofs from the same records,
//!   which is the whole point: a counterpart must not have to trust our code.
//! * **What a checkpoint promises.** A signed checkpoint `(origin, size, root)`
//!   commits the log to exactly the first `size` records, in order. Inclusion
//!   proofs show that one record is among them; consistency proofs show that a
//!   later checkpoint extends an earlier one without rewriting history. The
//!   log can only ever append: any edit, deletion, reordering or insertion
//!   before `size` changes the root and is caught against the signature.
//! * **Cheap appends.** The writer keeps only a [`CompactRange`] (the roots of
//!   the maximal perfect subtrees, one per set bit of the size), so an append
//!   costs amortised O(1) and at worst O(log n) hashes, and the current root
//!   costs O(log n) — no need to keep every leaf in memory to sign checkpoints.
//! * **Proof generation** uses [`MerkleTree`], which keeps every perfect
//!   subtree hash (about `2n` hashes), so proofs are assembled from lookups
//!   instead of rehashing the log; it is meant for `audit prove` and tests.
//! * Verification never panics on attacker-supplied input: sizes, indices and
//!   proof lengths are checked and reported through [`MerkleError`].

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

/// Length in bytes of every hash in the tree (SHA-256).
pub const HASH_LEN: usize = 32;

/// A SHA-256 digest: a leaf hash, interior node hash or root.
pub type Hash = [u8; HASH_LEN];

/// Domain-separation prefix for leaf hashes (RFC 6962 §2.1).
pub(crate) const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix for interior node hashes (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// Errors from building or checking proofs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {size} exceeds the {available} leaves available")]
    SizeOutOfRange { size: u64, available: u64 },
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("proof has the wrong number of hashes for these tree sizes")]
    WrongProofLength,
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    #[error("a compact range for size {size} needs {expected} peaks, got {got}")]
    BadCompactRange {
        size: u64,
        expected: usize,
        got: usize,
    },
}

/// One-shot SHA-256 over one contiguous buffer: a streaming context costs a heap
/// allocation and the EVP set-up and tear-down, which for a two-block node hash is more
/// work than the hashing itself.
pub(crate) fn sha256(data: &[u8]) -> Hash {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// Root of the empty tree: `SHA-256("")` (RFC 6962 §2.1).
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// Leaf hash of one record: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    thread_local! {
        // The prefixed copy of the record; kept per thread so hashing allocates nothing.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        b.push(LEAF_PREFIX);
        b.extend_from_slice(data);
        let h = sha256(&b);
        // Do not keep a huge record's copy alive for the life of the thread.
        if b.capacity() > 64 << 10 {
            *b = Vec::new();
        }
        h
    })
}

/// Interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 2 * HASH_LEN];
    buf[0] = NODE_PREFIX;
    buf[1..1 + HASH_LEN].copy_from_slice(left);
    buf[1 + HASH_LEN..].copy_from_slice(right);
    sha256(&buf)
}

/// Largest power of two strictly below `n` (the RFC 6962 split point `k`).
/// Callers guarantee `n >= 2`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Root over a slice of leaf hashes. O(n) time, O(log n) memory.
pub fn root_from_leaf_hashes(leaves: &[Hash]) -> Hash {
    let mut range = CompactRange::new();
    for h in leaves {
        range.append(*h);
    }
    range.root()
}

// ---------------------------------------------------------------------------
// Compact range (the writer's frontier)
// ---------------------------------------------------------------------------

/// The right frontier of a tree of `size` leaves: the root of every maximal
/// perfect subtree, left to right. Bit `k` of `size` set means one peak of
/// height `k`, so there are `size.count_ones()` peaks. This is all a writer
/// needs to append and to compute the current root; it can be persisted next
/// to the log and restored with [`CompactRange::from_parts`] after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCompactRange")]
pub struct CompactRange {
    size: u64,
    #[serde(with = "b64_hashes")]
    peaks: Vec<Hash>,
}

/// Unvalidated persisted form; deserialisation goes through
/// [`CompactRange::from_parts`] so a damaged state file is rejected on load
/// instead of corrupting every later root.
#[derive(Deserialize)]
struct RawCompactRange {
    size: u64,
    #[serde(with = "b64_hashes")]
    peaks: Vec<Hash>,
}

impl TryFrom<RawCompactRange> for CompactRange {
    type Error = MerkleError;

    fn try_from(raw: RawCompactRange) -> Result<Self, MerkleError> {
        CompactRange::from_parts(raw.size, raw.peaks)
    }
}

impl Default for CompactRange {
    fn default() -> Self {
        Self::new()
    }
}

impl CompactRange {
    /// Frontier of the empty tree.
    pub fn new() -> Self {
        Self {
            size: 0,
            peaks: Vec::new(),
        }
    }

    /// Rebuild a frontier from a persisted size and peak list. Rejects a peak
    /// count that cannot belong to `size`, because a wrong count would make
    /// every later root silently wrong.
    pub fn from_parts(size: u64, peaks: Vec<Hash>) -> Result<Self, MerkleError> {
        let expected = size.count_ones() as usize;
        if peaks.len() != expected {
            return Err(MerkleError::BadCompactRange {
                size,
                expected,
                got: peaks.len(),
            });
        }
        Ok(Self { size, peaks })
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Peak hashes, largest (leftmost) subtree first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Append one leaf hash. Each trailing one-bit of the old size is a peak
    /// of the same height as the carry being built, so it merges with it —
    /// exactly like incrementing a binary counter.
    pub fn append(&mut self, leaf: Hash) {
        let mut carry = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            // Invariant: peaks.len() == popcount(size), so a set bit always
            // has a matching peak to pop.
            let left = self.peaks.pop().expect("peak for set bit");
            carry = node_hash(&left, &carry);
            s >>= 1;
        }
        self.peaks.push(carry);
        self.size += 1;
    }

    /// Append a record, hashing it as a leaf.
    pub fn append_data(&mut self, data: &[u8]) {
        self.append(leaf_hash(data));
    }

    /// Current root. Folding the peaks right to left reproduces the RFC 6962
    /// split because the peaks are exactly the binary decomposition of `size`.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(last) => iter.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

// ---------------------------------------------------------------------------
// Full tree for proof generation
// ---------------------------------------------------------------------------

/// An in-memory tree that stores every perfect subtree hash, so the root at
/// any past size and any inclusion or consistency proof can be assembled from
/// lookups: O(log n) hashes per root, O(log² n) per proof in the worst case.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `levels[k][i]` is the hash of leaves `[i * 2^k, (i + 1) * 2^k)`.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// Empty tree.
    pub fn new() -> Self {
        Self { levels: Vec::new() }
    }

    /// Build from leaf hashes in log order.
    pub fn from_leaf_hashes<I: IntoIterator<Item = Hash>>(leaves: I) -> Self {
        let mut t = Self::new();
        for h in leaves {
            t.push(h);
        }
        t
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Leaf hash at `index`, if present.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let i = usize::try_from(index).ok()?;
        self.levels.first()?.get(i).copied()
    }

    /// Append a leaf hash; completes any perfect subtrees it closes.
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// Append a record, hashing it as a leaf.
    pub fn push_data(&mut self, data: &[u8]) {
        self.push(leaf_hash(data));
    }

    /// Root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.size())
            .expect("current size is always in range")
    }

    /// Root of the first `size` leaves (`MTH(D[0:size])`).
    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(empty_root());
        }
        Ok(self.range_hash(0, size))
    }

    fn check_size(&self, size: u64) -> Result<(), MerkleError> {
        if size > self.size() {
            return Err(MerkleError::SizeOutOfRange {
                size,
                available: self.size(),
            });
        }
        Ok(())
    }

    /// MTH(D[lo:hi]) for the ranges that occur in RFC 6962 recursion, where
    /// `lo` is a multiple of a power of two that is >= `hi - lo`. Under that
    /// condition the greedy aligned decomposition is the binary decomposition
    /// of the length, each piece is a stored perfect subtree, and a right fold
    /// gives the same result as the RFC's recursive split.
    fn range_hash(&self, lo: u64, hi: u64) -> Hash {
        debug_assert!(lo < hi && hi <= self.size());
        let mut parts: Vec<Hash> = Vec::with_capacity(64);
        let mut p = lo;
        while p < hi {
            let rem = hi - p;
            let mut k = 63 - rem.leading_zeros();
            if p != 0 {
                k = k.min(p.trailing_zeros());
            }
            parts.push(self.levels[k as usize][(p >> k) as usize]);
            p += 1u64 << k;
        }
        let mut acc = parts.pop().expect("non-empty range");
        while let Some(left) = parts.pop() {
            acc = node_hash(&left, &acc);
        }
        acc
    }

    /// Inclusion proof (audit path, RFC 9162 §2.1.3.1) for leaf `index` in
    /// the tree of the first `size` leaves. Siblings are listed bottom-up.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(size)?;
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        // Walk down from the root; the recursion's outputs are produced after
        // the recursive call, so collect top-down and reverse.
        let mut path = Vec::new();
        let (mut lo, mut hi) = (0u64, size);
        while hi - lo > 1 {
            let k = split_point(hi - lo);
            if index < lo + k {
                path.push(self.range_hash(lo + k, hi));
                hi = lo + k;
            } else {
                path.push(self.range_hash(lo, lo + k));
                lo += k;
            }
        }
        path.reverse();
        Ok(path)
    }

    /// Consistency proof (RFC 9162 §2.1.4.1) that the tree of `old_size`
    /// leaves is a prefix of the tree of `new_size` leaves.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(new_size)?;
        if old_size > new_size {
            return Err(MerkleError::SizesReversed {
                old: old_size,
                new: new_size,
            });
        }
        if old_size == 0 || old_size == new_size {
            return Ok(Vec::new());
        }
        // SUBPROOF(m, D[lo:hi], b), unrolled. `whole` is the RFC's flag `b`:
        // true while the old tree's root is the subtree we are standing on,
        // in which case the verifier already knows that hash and it is omitted.
        let mut path = Vec::new();
        let (mut lo, mut hi, mut m) = (0u64, new_size, old_size);
        let mut whole = true;
        loop {
            let n = hi - lo;
            if m == n {
                if !whole {
                    path.push(self.range_hash(lo, hi));
                }
                break;
            }
            let k = split_point(n);
            if m <= k {
                path.push(self.range_hash(lo + k, hi));
                hi = lo + k;
            } else {
                path.push(self.range_hash(lo, lo + k));
                lo += k;
                m -= k;
                whole = false;
            }
        }
        path.reverse();
        Ok(path)
    }

    /// Frontier of the first `size` leaves, e.g. to resume a writer from a
    /// tree loaded from storage.
    pub fn compact_range(&self, size: u64) -> Result<CompactRange, MerkleError> {
        self.check_size(size)?;
        let mut peaks = Vec::new();
        let mut p = 0u64;
        for k in (0..64).rev() {
            if size & (1u64 << k) != 0 {
                peaks.push(self.levels[k as usize][(p >> k) as usize]);
                p += 1u64 << k;
            }
        }
        CompactRange::from_parts(size, peaks)
    }
}

// ---------------------------------------------------------------------------
// Verification (what a counterpart runs, knowing only hashes)
// ---------------------------------------------------------------------------

/// Recompute the root implied by an inclusion proof, following RFC 9162
/// §2.1.3.2 step by step. Fails if the proof is too long or too short for
/// `(index, size)`.
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            // More hashes than the path from this leaf to the root has levels.
            return Err(MerkleError::WrongProofLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                // We are the last node on a level whose right sibling does not
                // exist; climb until we are a right child again.
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(MerkleError::WrongProofLength);
    }
    Ok(r)
}

/// Check an inclusion proof for leaf hash `leaf` at `index` in the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    let got = root_from_inclusion_proof(index, size, leaf, proof)?;
    if &got != root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// Check a consistency proof between a tree of `old_size` leaves with root
/// `old_root` and a tree of `new_size` leaves with root `new_root`, following
/// RFC 9162 §2.1.4.2. The trivial cases the RFC leaves to the caller are
/// decided strictly: equal sizes need equal roots and an empty proof, and an
/// empty old tree must have the empty-tree root and an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::SizesReversed {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        };
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofLength);
        }
        return if *old_root == empty_root() {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(MerkleError::WrongProofLength);
    }

    // When the old tree is a perfect subtree, its root is the first node of
    // the path and the prover omitted it; put it back.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof.iter());

    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let mut f_r = *path[0];
    let mut s_r = *path[0];
    for c in &path[1..] {
        if s_n == 0 {
            return Err(MerkleError::WrongProofLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(MerkleError::WrongProofLength);
    }
    if &f_r != old_root || &s_r != new_root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Portable proof objects (what `audit prove` hands to a counterpart)
// ---------------------------------------------------------------------------

/// An inclusion proof as exchanged with a counterpart. Hashes are standard
/// base64 in JSON, matching how checkpoints encode the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    #[serde(with = "b64_hash")]
    pub leaf_hash: Hash,
    #[serde(with = "b64_hashes")]
    pub path: Vec<Hash>,
}

impl InclusionProof {
    /// Build a proof for `index` against the tree of `size` leaves.
    pub fn generate(tree: &MerkleTree, index: u64, size: u64) -> Result<Self, MerkleError> {
        let path = tree.inclusion_proof(index, size)?;
        let leaf_hash = tree
            .leaf(index)
            .ok_or(MerkleError::IndexOutOfRange { index, size })?;
        Ok(Self {
            leaf_index: index,
            tree_size: size,
            leaf_hash,
            path,
        })
    }

    /// Check against a root taken from a trusted (signature-verified)
    /// checkpoint of size `tree_size`.
    pub fn verify(&self, root: &Hash) -> Result<(), MerkleError> {
        verify_inclusion(
            self.leaf_index,
            self.tree_size,
            &self.leaf_hash,
            &self.path,
            root,
        )
    }

    /// Like [`InclusionProof::verify`], but also checks that the proven leaf
    /// is the hash of `record` — what a counterpart holding its own copy of
    /// the dossier record actually wants to know.
    pub fn verify_record(&self, record: &[u8], root: &Hash) -> Result<(), MerkleError> {
        if leaf_hash(record) != self.leaf_hash {
            return Err(MerkleError::RootMismatch);
        }
        self.verify(root)
    }
}

/// A consistency proof between two tree sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    #[serde(with = "b64_hashes")]
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    pub fn generate(tree: &MerkleTree, old_size: u64, new_size: u64) -> Result<Self, MerkleError> {
        Ok(Self {
            old_size,
            new_size,
            path: tree.consistency_proof(old_size, new_size)?,
        })
    }

    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), MerkleError> {
        verify_consistency(self.old_size, self.new_size, old_root, new_root, &self.path)
    }
}

/// Decode a standard-base64 string into a hash, rejecting any other length.
pub fn hash_from_base64(s: &str) -> Option<Hash> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    bytes.try_into().ok()
}

/// Standard base64 of a hash.
pub fn hash_to_base64(h: &Hash) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(h)
}

/// Serde helper: a [`Hash`](type@Hash) as standard base64 (`#[serde(with = "b64_hash")]`).
pub mod b64_hash {
    use super::Hash;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hash_to_base64(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        super::hash_from_base64(&s).ok_or_else(|| D::Error::custom("expected base64 of 32 bytes"))
    }
}

/// Serde helper: a list of hashes as standard base64 strings.
pub mod b64_hashes {
    use super::Hash;
    use serde::{de::Error as _, ser::SerializeSeq, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hs: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hs.len()))?;
        for h in hs {
            seq.serialize_element(&super::hash_to_base64(h))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                super::hash_from_base64(s)
                    .ok_or_else(|| D::Error::custom("expected base64 of 32 bytes"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(hex: &str) -> Hash {
        assert_eq!(hex.len(), 64, "{hex}");
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    // --- Published vectors --------------------------------------------------
    //
    // Source: github.com/transparency-dev/merkle — testonly/constants.go
    // (LeafInputs, NodeHashes, RootHashes, CompactTrees), proof/verify_test.go
    // (inclusionProofs, consistencyProofs; leaf numbers there are 1-based),
    // proof/proof_test.go (proof node layouts for trees of size 7 and 8) and
    // rfc6962/rfc6962_test.go (hasher vectors). The same 8-leaf reference tree
    // is used by certificate-transparency-go. Only the values are reused.

    fn leaf_inputs() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            (0x50..=0x57).collect(),
            (0x60..=0x6f).collect(),
        ]
    }

    /// NodeHashes(): level 0 are leaf hashes, level 3 is the root of all 8.
    fn node_hashes() -> Vec<Vec<Hash>> {
        vec![
            vec![
                h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
                h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
                h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
                h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
            ],
            vec![
                h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            ],
            vec![
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
            vec![h(
                "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
            )],
        ]
    }

    /// RootHashes(): index = tree size.
    fn root_hashes() -> Vec<Hash> {
        vec![
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
            h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
            h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
            h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
            h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
        ]
    }

    fn reference_tree() -> MerkleTree {
        MerkleTree::from_leaf_hashes(leaf_inputs().iter().map(|d| leaf_hash(d)))
    }

    #[test]
    fn hasher_vectors() {
        // rfc6962_test.go: empty root, empty leaf, leaf "L123456".
        assert_eq!(
            empty_root(),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(
            leaf_hash(b""),
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
        );
        assert_eq!(
            leaf_hash(b"L123456"),
            h("395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56")
        );
    }

    #[test]
    fn domain_separation_blocks_node_as_leaf() {
        let a = leaf_hash(b"Hello");
        let b = leaf_hash(b"World");
        let node = node_hash(&a, &b);
        let mut concat = a.to_vec();
        concat.extend_from_slice(&b);
        assert_ne!(node, leaf_hash(&concat));
        assert_ne!(node, node_hash(&b, &a));
    }

    #[test]
    fn reference_node_hashes() {
        let nh = node_hashes();
        let t = reference_tree();
        for (k, level) in nh.iter().enumerate() {
            for (i, want) in level.iter().enumerate() {
                assert_eq!(&t.levels[k][i], want, "level {k} index {i}");
            }
        }
    }

    #[test]
    fn reference_roots_all_sizes() {
        let roots = root_hashes();
        let leaves: Vec<Hash> = leaf_inputs().iter().map(|d| leaf_hash(d)).collect();
        let t = reference_tree();
        let mut cr = CompactRange::new();
        for (size, want) in roots.iter().enumerate() {
            assert_eq!(&t.root_at(size as u64).unwrap(), want, "tree size {size}");
            assert_eq!(&root_from_leaf_hashes(&leaves[..size]), want);
            assert_eq!(&cr.root(), want, "compact range size {size}");
            if size < leaves.len() {
                cr.append(leaves[size]);
            }
        }
        assert!(t.root_at(9).is_err());
    }

    #[test]
    fn reference_compact_ranges() {
        // CompactTrees(): the frontier after each append.
        let nh = node_hashes();
        let want: Vec<Vec<Hash>> = vec![
            vec![],
            vec![nh[0][0]],
            vec![nh[1][0]],
            vec![nh[1][0], nh[0][2]],
            vec![nh[2][0]],
            vec![nh[2][0], nh[0][4]],
            vec![nh[2][0], nh[1][2]],
            vec![nh[2][0], nh[1][2], nh[0][6]],
            vec![nh[3][0]],
        ];
        let t = reference_tree();
        let mut cr = CompactRange::new();
        for (size, peaks) in want.iter().enumerate() {
            assert_eq!(cr.peaks(), &peaks[..], "size {size}");
            assert_eq!(t.compact_range(size as u64).unwrap(), cr);
            if size < 8 {
                cr.append_data(&leaf_inputs()[size]);
            }
        }
        let restored = CompactRange::from_parts(7, cr.peaks()[..1].to_vec());
        assert!(restored.is_err());
        // Persisted state round-trips, and a damaged one is refused on load.
        let json = serde_json::to_string(&cr).unwrap();
        assert_eq!(serde_json::from_str::<CompactRange>(&json).unwrap(), cr);
        let bad = json.replace("\"size\":8", "\"size\":9");
        assert!(serde_json::from_str::<CompactRange>(&bad).is_err());
    }

    /// verify_test.go `inclusionProofs` (1-based leaf numbers converted to
    /// 0-based indices here).
    fn inclusion_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                5,
                8,
                vec![
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                3,
                vec![h(
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                )],
            ),
            (
                1,
                5,
                vec![
                    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    /// verify_test.go `consistencyProofs`.
    fn consistency_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                6,
                8,
                vec![
                    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                5,
                vec![
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
            (
                6,
                7,
                vec![
                    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
        ]
    }

    /// Every way verify_test.go's corruptInclusionProof mutates a good proof
    /// must be rejected.
    fn assert_inclusion_mutants_fail(
        index: u64,
        size: u64,
        leaf: &Hash,
        proof: &[Hash],
        root: &Hash,
    ) {
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        let rejects = |i: u64, s: u64, l: &Hash, p: &[Hash], r: &Hash, what: &str| {
            assert!(
                verify_inclusion(i, s, l, p, r).is_err(),
                "accepted {what} for index {index} size {size}"
            );
        };
        rejects(index.wrapping_sub(1), size, leaf, proof, root, "index-1");
        rejects(index + 1, size, leaf, proof, root, "index+1");
        rejects(index ^ 2, size, leaf, proof, root, "index^2");
        rejects(index, size * 2, leaf, proof, root, "size*2");
        rejects(index, size / 2, leaf, proof, root, "size/2");
        rejects(
            index,
            size,
            &leaf_hash(b"WrongLeaf"),
            proof,
            root,
            "wrong leaf",
        );
        rejects(index, size, leaf, proof, &empty_root(), "empty root");
        rejects(index, size, leaf, proof, &some, "random root");
        let mut p = proof.to_vec();
        p.push(*root);
        rejects(index, size, leaf, &p, root, "trailing root");
        let mut p = vec![*root];
        p.extend_from_slice(proof);
        rejects(index, size, leaf, &p, root, "preceding root");
        for i in 0..proof.len() {
            let mut p = proof.to_vec();
            p[i][0] ^= 8;
            rejects(index, size, leaf, &p, root, "flipped bit");
        }
        if !proof.is_empty() {
            rejects(
                index,
                size,
                leaf,
                &proof[..proof.len() - 1],
                root,
                "removed component",
            );
        }
        if proof.len() > 1 {
            let mut p = vec![proof[0], some];
            p.extend_from_slice(&proof[1..]);
            rejects(index, size, leaf, &p, root, "inserted component");
        }
    }

    fn assert_consistency_mutants_fail(s1: u64, s2: u64, r1: &Hash, r2: &Hash, proof: &[Hash]) {
        let rejects = |a: u64, b: u64, x: &Hash, y: &Hash, p: &[Hash], what: &str| {
            assert!(
                verify_consistency(a, b, x, y, p).is_err(),
                "accepted {what} for {s1}->{s2}"
            );
        };
        let wrong = leaf_hash(b"WrongRoot");
        rejects(s1 - 1, s2, r1, r2, proof, "size1-1");
        rejects(s1 + 1, s2, r1, r2, proof, "size1+1");
        rejects(s1 ^ 2, s2, r1, r2, proof, "size1^2");
        rejects(s1, s2 * 2, r1, r2, proof, "size2*2");
        rejects(s1, s2 / 2, r1, r2, proof, "size2/2");
        rejects(s1, s2, &wrong, r2, proof, "wrong root1");
        rejects(s1, s2, r1, &wrong, proof, "wrong root2");
        rejects(s1, s2, r2, r1, proof, "swapped roots");
        rejects(s1, s2, r1, r2, &[], "empty proof");
        for extra in [r1, r2] {
            let mut p = proof.to_vec();
            p.push(*extra);
            rejects(s1, s2, r1, r2, &p, "trailing root");
            let mut p = vec![*extra];
            p.extend_from_slice(proof);
            rejects(s1, s2, r1, r2, &p, "preceding root");
        }
        let mut p = vec![proof[0]];
        p.extend_from_slice(proof);
        rejects(s1, s2, r1, r2, &p, "preceding proof[0]");
        rejects(s1, s2, r1, r2, &proof[..proof.len() - 1], "truncated proof");
        for i in 0..proof.len() {
            let mut p = proof.to_vec();
            p[i][0] ^= 16;
            rejects(s1, s2, r1, r2, &p, "flipped bit");
        }
    }

    #[test]
    fn published_inclusion_proofs() {
        let t = reference_tree();
        let roots = root_hashes();
        let leaves = &node_hashes()[0];
        for (index, size, want) in inclusion_vectors() {
            let got = t.inclusion_proof(index, size).unwrap();
            assert_eq!(got, want, "proof for {index} in {size}");
            let root = roots[size as usize];
            let leaf = leaves[index as usize];
            verify_inclusion(index, size, &leaf, &want, &root).unwrap();
            assert_inclusion_mutants_fail(index, size, &leaf, &want, &root);
        }
    }

    #[test]
    fn published_consistency_proofs() {
        let t = reference_tree();
        let roots = root_hashes();
        for (s1, s2, want) in consistency_vectors() {
            let got = t.consistency_proof(s1, s2).unwrap();
            assert_eq!(got, want, "proof {s1}->{s2}");
            let (r1, r2) = (roots[s1 as usize], roots[s2 as usize]);
            verify_consistency(s1, s2, &r1, &r2, &want).unwrap();
            if !want.is_empty() {
                assert_consistency_mutants_fail(s1, s2, &r1, &r2, &want);
            }
        }
    }

    #[test]
    fn published_proof_layouts() {
        // proof_test.go TestInclusion / TestConsistency name proof nodes by
        // (level, index) in the reference tree; nodes marked "rehash" there
        // are the hash of a right-edge subtree, e.g. l = hash(i, j) in a tree
        // of size 7.
        let nh = node_hashes();
        let id = |level: usize, index: usize| nh[level][index];
        let l7 = node_hash(&id(1, 2), &id(0, 6));
        let t = reference_tree();
        let incl: Vec<(u64, u64, Vec<Hash>)> = vec![
            (0, 2, vec![id(0, 1)]),
            (1, 2, vec![id(0, 0)]),
            (1, 3, vec![id(0, 0), id(0, 2)]),
            (0, 7, vec![id(0, 1), id(1, 1), l7]),
            (1, 7, vec![id(0, 0), id(1, 1), l7]),
            (2, 7, vec![id(0, 3), id(1, 0), l7]),
            (3, 7, vec![id(0, 2), id(1, 0), l7]),
            (4, 7, vec![id(0, 5), id(0, 6), id(2, 0)]),
            (5, 7, vec![id(0, 4), id(0, 6), id(2, 0)]),
            (6, 7, vec![id(1, 2), id(2, 0)]),
            (2, 4, vec![id(0, 3), id(1, 0)]),
            (3, 5, vec![id(0, 2), id(1, 0), id(0, 4)]),
            (3, 6, vec![id(0, 2), id(1, 0), id(1, 2)]),
            (4, 6, vec![id(0, 5), id(2, 0)]),
        ];
        for (index, size, want) in incl {
            assert_eq!(
                t.inclusion_proof(index, size).unwrap(),
                want,
                "{index}@{size}"
            );
        }
        let cons: Vec<(u64, u64, Vec<Hash>)> = vec![
            (1, 2, vec![id(0, 1)]),
            (1, 4, vec![id(0, 1), id(1, 1)]),
            (1, 6, vec![id(0, 1), id(1, 1), id(1, 2)]),
            (2, 3, vec![id(0, 2)]),
            (2, 8, vec![id(1, 1), id(2, 1)]),
            (3, 7, vec![id(0, 2), id(0, 3), id(1, 0), l7]),
            (4, 7, vec![l7]),
            (5, 7, vec![id(0, 4), id(0, 5), id(0, 6), id(2, 0)]),
            (6, 7, vec![id(1, 2), id(0, 6), id(2, 0)]),
            (7, 8, vec![id(0, 6), id(0, 7), id(1, 2), id(2, 0)]),
            (2, 4, vec![id(1, 1)]),
            (3, 5, vec![id(0, 2), id(0, 3), id(1, 0), id(0, 4)]),
            (3, 6, vec![id(0, 2), id(0, 3), id(1, 0), id(1, 2)]),
            (4, 6, vec![id(1, 2)]),
            (1, 7, vec![id(0, 1), id(1, 1), l7]),
        ];
        for (s1, s2, want) in cons {
            assert_eq!(t.consistency_proof(s1, s2).unwrap(), want, "{s1}->{s2}");
        }
        for s in 1..=8 {
            assert!(t.consistency_proof(s, s).unwrap().is_empty());
        }
        assert!(t.consistency_proof(5, 4).is_err());
        assert!(t.consistency_proof(1, 9).is_err());
        assert!(t.inclusion_proof(8, 7).is_err());
        assert!(t.inclusion_proof(0, 0).is_err());
    }

    #[test]
    fn trivial_consistency_cases() {
        // verify_test.go TestVerifyConsistency edge cases, adapted: we insist
        // that a size-0 tree has the empty-tree root.
        let e = empty_root();
        let r = leaf_hash(b"x");
        assert!(verify_consistency(0, 0, &e, &e, &[]).is_ok());
        assert!(verify_consistency(0, 1, &e, &r, &[]).is_ok());
        assert!(verify_consistency(0, 1, &r, &r, &[]).is_err());
        assert!(verify_consistency(1, 1, &r, &r, &[]).is_ok());
        assert!(verify_consistency(1, 1, &r, &e, &[]).is_err());
        assert!(verify_consistency(1, 0, &r, &e, &[]).is_err());
        assert!(verify_consistency(2, 1, &r, &e, &[]).is_err());
        assert!(verify_consistency(1, 2, &r, &e, &[]).is_err());
        assert!(verify_consistency(0, 0, &e, &e, &[e]).is_err());
        assert!(verify_consistency(1, 1, &r, &r, &[e]).is_err());
        // Inclusion edge cases from TestVerifyInclusion.
        for (i, s) in [(0, 0), (1, 1), (2, 1)] {
            assert!(verify_inclusion(i, s, &r, &[], &r).is_err());
        }
        assert!(verify_inclusion(0, 1, &r, &[], &r).is_ok());
    }

    #[test]
    fn proof_objects_roundtrip_json() {
        let t = reference_tree();
        let p = InclusionProof::generate(&t, 5, 8).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let back: InclusionProof = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        back.verify(&t.root()).unwrap();
        back.verify_record(&leaf_inputs()[5], &t.root()).unwrap();
        assert!(back.verify_record(b"other", &t.root()).is_err());

        let c = ConsistencyProof::generate(&t, 3, 7).unwrap();
        let back: ConsistencyProof =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        back.verify(&t.root_at(3).unwrap(), &t.root_at(7).unwrap())
            .unwrap();
        let bad = r#"{"old_size":1,"new_size":2,"path":["AAAA"]}"#;
        assert!(serde_json::from_str::<ConsistencyProof>(bad).is_err());
    }

    // --- Against an independent naive implementation -------------------------
    //
    // A direct transcription of the RFC 6962 §2.1 recursive definitions
    // (MTH, PATH, PROOF/SUBPROOF) over leaf data, sharing nothing with the
    // implementation above except the two primitive hash functions.

    fn naive_mth(d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => leaf_hash(&d[0]),
            n => {
                let k = naive_k(n);
                node_hash(&naive_mth(&d[..k]), &naive_mth(&d[k..]))
            }
        }
    }

    fn naive_k(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn naive_path(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
        let n = d.len();
        if n == 1 {
            return vec![];
        }
        let k = naive_k(n);
        if m < k {
            let mut p = naive_path(m, &d[..k]);
            p.push(naive_mth(&d[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &d[k..]);
            p.push(naive_mth(&d[..k]));
            p
        }
    }

    fn naive_subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![naive_mth(d)] };
        }
        let k = naive_k(n);
        if m <= k {
            let mut p = naive_subproof(m, &d[..k], b);
            p.push(naive_mth(&d[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &d[k..], false);
            p.push(naive_mth(&d[..k]));
            p
        }
    }

    fn naive_consistency(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
        if m == 0 || m == d.len() {
            vec![]
        } else {
            naive_subproof(m, d, true)
        }
    }

    fn data(n: usize, salt: u64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("record-{salt}-{i}").into_bytes())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn roots_and_proofs_match_naive(n in 1usize..=300, salt in any::<u64>(), a in any::<u64>(), b in any::<u64>()) {
            let d = data(n, salt);
            let tree = MerkleTree::from_leaf_hashes(d.iter().map(|x| leaf_hash(x)));
            let size = (a % n as u64) + 1;          // 1..=n
            let m = b % (size + 1);                  // 0..=size
            let sz = size as usize;
            let root = naive_mth(&d[..sz]);
            prop_assert_eq!(tree.root_at(size).unwrap(), root);

            let mut cr = CompactRange::new();
            for x in &d[..sz] { cr.append_data(x); }
            prop_assert_eq!(cr.root(), root);

            // Inclusion of a random leaf below `size`.
            let idx = (b % size) as usize;
            let proof = tree.inclusion_proof(idx as u64, size).unwrap();
            prop_assert_eq!(&proof, &naive_path(idx, &d[..sz]));
            let leaf = leaf_hash(&d[idx]);
            prop_assert!(verify_inclusion(idx as u64, size, &leaf, &proof, &root).is_ok());
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i][(a as usize) % 32] ^= 1 << (b % 8);
                prop_assert!(verify_inclusion(idx as u64, size, &leaf, &bad, &root).is_err());
            }
            if !proof.is_empty() {
                prop_assert!(verify_inclusion(idx as u64, size, &leaf, &proof[1..], &root).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root);
            prop_assert!(verify_inclusion(idx as u64, size, &leaf, &longer, &root).is_err());
            let other = leaf_hash(b"not in the log");
            prop_assert!(verify_inclusion(idx as u64, size, &other, &proof, &root).is_err());
            if size > 1 {
                let wrong_idx = (idx as u64 + 1) % size;
                if leaf_hash(&d[wrong_idx as usize]) != leaf {
                    prop_assert!(verify_inclusion(wrong_idx, size, &leaf, &proof, &root).is_err());
                }
            }

            // Consistency from m to size.
            let old_root = naive_mth(&d[..m as usize]);
            let cproof = tree.consistency_proof(m, size).unwrap();
            prop_assert_eq!(&cproof, &naive_consistency(m as usize, &d[..sz]));
            prop_assert!(verify_consistency(m, size, &old_root, &root, &cproof).is_ok());
            for i in 0..cproof.len() {
                let mut bad = cproof.clone();
                bad[i][(b as usize) % 32] ^= 1 << (a % 8);
                prop_assert!(verify_consistency(m, size, &old_root, &root, &bad).is_err());
            }
            if !cproof.is_empty() {
                prop_assert!(verify_consistency(m, size, &old_root, &root, &cproof[..cproof.len() - 1]).is_err());
                prop_assert!(verify_consistency(m, size, &root, &old_root, &cproof).is_err());
                let mut longer = cproof.clone();
                longer.push(root);
                prop_assert!(verify_consistency(m, size, &old_root, &root, &longer).is_err());
                // A different history of the same length must not be
                // provable consistent with this one.
                let mut forked = d[..sz].to_vec();
                forked[(a % m.max(1)) as usize].push(0xff);
                let forked_old = naive_mth(&forked[..m as usize]);
                prop_assert!(verify_consistency(m, size, &forked_old, &root, &cproof).is_err());
            }
        }
    }

    #[test]
    fn exhaustive_small_trees_match_naive() {
        // Every (m, n) for n <= 40: cheap, and catches off-by-one edges that
        // random sampling can miss.
        let d = data(40, 7);
        let tree = MerkleTree::from_leaf_hashes(d.iter().map(|x| leaf_hash(x)));
        for n in 1..=40usize {
            let root = naive_mth(&d[..n]);
            for m in 0..=n {
                let cp = tree.consistency_proof(m as u64, n as u64).unwrap();
                assert_eq!(cp, naive_consistency(m, &d[..n]), "{m}->{n}");
                verify_consistency(m as u64, n as u64, &naive_mth(&d[..m]), &root, &cp).unwrap();
                if m < n {
                    let ip = tree.inclusion_proof(m as u64, n as u64).unwrap();
                    assert_eq!(ip, naive_path(m, &d[..n]), "leaf {m} in {n}");
                    verify_inclusion(m as u64, n as u64, &leaf_hash(&d[m]), &ip, &root).unwrap();
                }
            }
        }
    }
}
