//! Signed checkpoints of the audit log.
//!
//! A checkpoint is lienthong's signed statement "the first `size` records of
//! log `origin` have Merkle root `root`, as of `timestamp_ms`". It is encoded
//! in the C2SP `tlog-checkpoint` layout and wrapped in a C2SP `signed-note`,
//! the format used by Go's `sumdb/note`, Sigstore and transparency-dev
//! witnesses, so that counterparts can check our checkpoints with tooling
//! they already trust rather than with code we ship:
//!
//! ```text
//! lienthong.example.gov.vn/audit      <- origin (the log's identity)
//! 1234                                <- tree size, decimal
//! 3q2+7w...=                          <- base64 of the 32-byte root
//! timestamp_ms 1717171717171          <- extension line (ours)
//!                                     <- blank line ends the signed text
//! — lienthong.example.gov.vn/audit AbCd...   <- em dash, key name, base64(key id || signature)
//! ```
//!
//! Why this shape:
//! * The body is canonical (one encoding per checkpoint; parsing rejects
//!   anything that does not re-serialize byte for byte), so "the same
//!   checkpoint" always means the same signed bytes.
//! * The key id is `SHA-256(name || "\n" || 0x01 || public key)[..4]`, as the
//!   signed-note spec recommends for Ed25519. It binds the key *name* too, so
//!   a signature cannot be replayed under another name, and a verifier can
//!   skip signatures from keys it does not know (e.g. witness cosignatures).
//! * Verification fails closed: unknown key, bad signature, wrong origin,
//!   wrong size or wrong root are all errors, and a note may not be trusted
//!   on a signature by any key other than the one the caller supplies.

use std::fmt;

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::merkle::{hash_from_base64, hash_to_base64, Hash};

/// Signature type byte for Ed25519 in the signed-note spec.
pub const SIG_TYPE_ED25519: u8 = 0x01;

/// Upper bound on signature lines per note (the Go reference uses the same),
/// so a hostile note cannot make us do unbounded work.
const MAX_SIGNATURES: usize = 100;

/// Prefix of every signature line: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Keyword of the extension line carrying the checkpoint time.
const TIMESTAMP_KEYWORD: &str = "timestamp_ms";

/// Errors from encoding, parsing, signing or verifying checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint body: {0}")]
    MalformedCheckpoint(&'static str),
    #[error("malformed signed note: {0}")]
    MalformedNote(&'static str),
    #[error("invalid key name {0:?}: must be non-empty, without spaces or '+'")]
    BadKeyName(String),
    #[error("malformed key: {0}")]
    BadKey(&'static str),
    #[error("no signature by key {name}+{key_id:08x}")]
    NoSignatureFromKey { name: String, key_id: u32 },
    #[error("signature by key {name}+{key_id:08x} does not verify")]
    BadSignature { name: String, key_id: u32 },
    #[error("checkpoint origin {got:?} is not the expected {expected:?}")]
    OriginMismatch { expected: String, got: String },
    #[error("checkpoint size {got} is not the expected {expected}")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("checkpoint root does not match the log's root at size {size}")]
    RootMismatch { size: u64 },
    #[error("signing failed")]
    SigningFailed,
}

// ---------------------------------------------------------------------------
// Checkpoint body
// ---------------------------------------------------------------------------

/// The statement a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Identity of the log, unique per log; conventionally the key name.
    pub origin: String,
    /// Number of records committed to.
    pub size: u64,
    /// RFC 6962 root of the first `size` records.
    #[serde(with = "super::merkle::b64_hash")]
    pub root: Hash,
    /// Wall-clock time of signing, milliseconds since the Unix epoch. Purely
    /// informative for auditors; ordering is given by `size`.
    pub timestamp_ms: u64,
}

/// A line of note text must be non-empty and free of control characters
/// (which would let it smuggle in extra lines or a blank separator).
fn valid_line(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_control)
}

/// Strict decimal: digits only and no leading zero, so each number has
/// exactly one encoding.
fn parse_canonical_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl Checkpoint {
    /// The exact text that is signed.
    pub fn to_body(&self) -> String {
        format!(
            "{}\n{}\n{}\n{} {}\n",
            self.origin,
            self.size,
            hash_to_base64(&self.root),
            TIMESTAMP_KEYWORD,
            self.timestamp_ms
        )
    }

    /// Parse a checkpoint body, accepting only the canonical encoding.
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        use CheckpointError::MalformedCheckpoint as M;
        let inner = text.strip_suffix('\n').ok_or(M("missing final newline"))?;
        let lines: Vec<&str> = inner.split('\n').collect();
        if lines.len() != 4 {
            return Err(M("expected origin, size, root and timestamp lines"));
        }
        if !valid_line(lines[0]) {
            return Err(M("invalid origin line"));
        }
        let size = parse_canonical_u64(lines[1]).ok_or(M("invalid size line"))?;
        let root = hash_from_base64(lines[2]).ok_or(M("invalid root line"))?;
        let ts = lines[3]
            .strip_prefix(TIMESTAMP_KEYWORD)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(parse_canonical_u64)
            .ok_or(M("invalid timestamp line"))?;
        let cp = Checkpoint {
            origin: lines[0].to_string(),
            size,
            root,
            timestamp_ms: ts,
        };
        // Catches non-canonical base64 (e.g. stray padding bits) and anything
        // else that decodes but would not be produced by `to_body`.
        if cp.to_body() != text {
            return Err(M("not in canonical form"));
        }
        Ok(cp)
    }
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// Key names follow the signed-note rules: non-empty, no Unicode whitespace,
/// no '+' (which separates fields in the text key encodings).
pub(crate) fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty()
        || name.contains('+')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(CheckpointError::BadKeyName(name.to_string()));
    }
    Ok(())
}

/// The signed-note key id of an Ed25519 key:
/// `SHA-256(name || 0x0A || 0x01 || public_key)[..4]` read big-endian.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[SIG_TYPE_ED25519]);
    ctx.update(public_key);
    let d = ctx.finish();
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A public key that checkpoint readers trust, with its name.
///
/// Text form (shared with counterparts, same as Go `sumdb/note` verifier
/// keys): `<name>+<8 hex digits of key id>+<base64(0x01 || public key)>`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    public_key: [u8; 32],
}

impl VerifierKey {
    /// Wrap a raw Ed25519 public key, deriving its key id.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_string(),
            key_id: key_id(name, &public_key),
            public_key,
        })
    }

    /// Parse the text form. The embedded key id must match the one derived
    /// from the name and key, so a typo or splice is caught on load rather
    /// than surfacing later as "no signature from this key".
    pub fn parse(vkey: &str) -> Result<Self, CheckpointError> {
        let (name, rest) = vkey
            .split_once('+')
            .ok_or(CheckpointError::BadKey("missing '+' separators"))?;
        let (hex, b64) = rest
            .split_once('+')
            .ok_or(CheckpointError::BadKey("missing '+' separators"))?;
        check_key_name(name)?;
        if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CheckpointError::BadKey("key id is not 8 hex digits"));
        }
        let claimed_id =
            u32::from_str_radix(hex, 16).map_err(|_| CheckpointError::BadKey("bad key id"))?;
        let raw = B64
            .decode(b64)
            .map_err(|_| CheckpointError::BadKey("bad base64"))?;
        if raw.len() != 33 || raw[0] != SIG_TYPE_ED25519 {
            return Err(CheckpointError::BadKey("not an Ed25519 key"));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        let key = Self::new(name, pk)?;
        if key.key_id != claimed_id {
            return Err(CheckpointError::BadKey("key id does not match key"));
        }
        Ok(key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&signature::ED25519, &self.public_key)
            .verify(msg, sig)
            .is_ok()
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(SIG_TYPE_ED25519);
        raw.extend_from_slice(&self.public_key);
        write!(f, "{}+{:08x}+{}", self.name, self.key_id, B64.encode(raw))
    }
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

/// lienthong's checkpoint signing key.
pub struct CheckpointSigner {
    name: String,
    key_id: u32,
    key_pair: Ed25519KeyPair,
}

impl fmt::Debug for CheckpointSigner {
    // Never print key material, even by accident in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointSigner({}+{:08x})", self.name, self.key_id)
    }
}

impl CheckpointSigner {
    fn from_key_pair(name: &str, key_pair: Ed25519KeyPair) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        let pk: [u8; 32] = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| CheckpointError::BadKey("unexpected public key length"))?;
        Ok(Self {
            name: name.to_string(),
            key_id: key_id(name, &pk),
            key_pair,
        })
    }

    /// From a raw 32-byte Ed25519 seed (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8]) -> Result<Self, CheckpointError> {
        if seed.len() != 32 {
            return Err(CheckpointError::BadKey("Ed25519 seed must be 32 bytes"));
        }
        let kp = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| CheckpointError::BadKey("rejected Ed25519 seed"))?;
        Self::from_key_pair(name, kp)
    }

    /// From a PKCS#8 document (v1 or v2), e.g. one made by [`Self::generate`].
    pub fn from_pkcs8(name: &str, der: &[u8]) -> Result<Self, CheckpointError> {
        let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| CheckpointError::BadKey("rejected PKCS#8 Ed25519 key"))?;
        Self::from_key_pair(name, kp)
    }

    /// Fresh key; returns the signer and its PKCS#8 encoding for storage.
    pub fn generate(name: &str) -> Result<(Self, Vec<u8>), CheckpointError> {
        let kp = Ed25519KeyPair::generate().map_err(|_| CheckpointError::SigningFailed)?;
        let der = kp
            .to_pkcs8()
            .map_err(|_| CheckpointError::SigningFailed)?
            .as_ref()
            .to_vec();
        Ok((Self::from_key_pair(name, kp)?, der))
    }

    /// From the signed-note private key text form
    /// `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`, as written by
    /// Go's `note.GenerateKey`; lets operators reuse existing tooling.
    pub fn from_note_key(skey: &str) -> Result<Self, CheckpointError> {
        let rest = skey
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(CheckpointError::BadKey("missing PRIVATE+KEY+ prefix"))?;
        let (name, rest) = rest
            .split_once('+')
            .ok_or(CheckpointError::BadKey("missing '+' separators"))?;
        let (hex, b64) = rest
            .split_once('+')
            .ok_or(CheckpointError::BadKey("missing '+' separators"))?;
        let claimed_id = u32::from_str_radix(hex, 16)
            .ok()
            .filter(|_| hex.len() == 8)
            .ok_or(CheckpointError::BadKey("key id is not 8 hex digits"))?;
        let raw = B64
            .decode(b64)
            .map_err(|_| CheckpointError::BadKey("bad base64"))?;
        if raw.len() != 33 || raw[0] != SIG_TYPE_ED25519 {
            return Err(CheckpointError::BadKey("not an Ed25519 key"));
        }
        let signer = Self::from_seed(name, &raw[1..])?;
        if signer.key_id != claimed_id {
            return Err(CheckpointError::BadKey("key id does not match key"));
        }
        Ok(signer)
    }

    /// The public half, to publish to counterparts.
    pub fn verifier_key(&self) -> VerifierKey {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.key_pair.public_key().as_ref());
        VerifierKey {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key: pk,
        }
    }

    /// Sign arbitrary note text (must satisfy the signed-note text rules).
    pub fn sign_note(&self, text: &str) -> Result<SignedNote, CheckpointError> {
        check_note_text(text)?;
        let sig = self
            .key_pair
            .try_sign(text.as_bytes())
            .map_err(|_| CheckpointError::SigningFailed)?;
        Ok(SignedNote {
            text: text.to_string(),
            signatures: vec![NoteSignature {
                name: self.name.clone(),
                key_id: self.key_id,
                signature: sig.as_ref().to_vec(),
            }],
        })
    }

    /// Sign a checkpoint.
    pub fn sign(&self, checkpoint: &Checkpoint) -> Result<SignedCheckpoint, CheckpointError> {
        let body = checkpoint.to_body();
        // Re-parse so we can never emit a checkpoint we would refuse to read
        // (e.g. an origin containing a newline).
        let parsed = Checkpoint::parse_body(&body)?;
        let note = self.sign_note(&body)?;
        Ok(SignedCheckpoint {
            checkpoint: parsed,
            note,
        })
    }
}

// ---------------------------------------------------------------------------
// Signed notes
// ---------------------------------------------------------------------------

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    pub signature: Vec<u8>,
}

/// Text plus signatures, in the C2SP signed-note format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    text: String,
    signatures: Vec<NoteSignature>,
}

/// Signed text must end in a newline and contain no control characters
/// other than newlines, so the blank-line separator is unambiguous.
fn check_note_text(text: &str) -> Result<(), CheckpointError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(CheckpointError::MalformedNote(
            "text must end with a newline",
        ));
    }
    if text.chars().any(|c| c != '\n' && c.is_control()) {
        return Err(CheckpointError::MalformedNote("control character in text"));
    }
    Ok(())
}

impl SignedNote {
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Add a signature produced elsewhere (e.g. a witness cosignature).
    pub fn push_signature(&mut self, sig: NoteSignature) {
        self.signatures.push(sig);
    }

    /// Parse a note. Like the reference implementation, the signed text is
    /// everything up to and including the newline before the *last* blank
    /// line, and every line after it must be a well-formed signature line.
    pub fn parse(msg: &str) -> Result<Self, CheckpointError> {
        use CheckpointError::MalformedNote as M;
        if msg.chars().any(|c| c != '\n' && c.is_control()) {
            return Err(M("control character"));
        }
        let split = msg
            .rfind("\n\n")
            .ok_or(M("no blank line before signatures"))?;
        let text = &msg[..split + 1];
        let sigs = &msg[split + 2..];
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(M("signature block must end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(M("too many signatures"));
            }
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(M("signature line must start with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(M("signature line needs name and signature"))?;
            check_key_name(name).map_err(|_| M("invalid key name in signature"))?;
            let raw = B64.decode(b64).map_err(|_| M("signature is not base64"))?;
            if raw.len() < 5 {
                return Err(M("signature too short"));
            }
            signatures.push(NoteSignature {
                name: name.to_string(),
                key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
                signature: raw[4..].to_vec(),
            });
        }
        Ok(Self {
            text: text.to_string(),
            signatures,
        })
    }

    /// Wire form: text, blank line, one line per signature.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 128 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for s in &self.signatures {
            let mut raw = Vec::with_capacity(4 + s.signature.len());
            raw.extend_from_slice(&s.key_id.to_be_bytes());
            raw.extend_from_slice(&s.signature);
            out.push_str(SIG_PREFIX);
            out.push_str(&s.name);
            out.push(' ');
            out.push_str(&B64.encode(raw));
            out.push('\n');
        }
        out
    }

    /// Check the signature by `key`. Signatures by other keys are ignored
    /// (they may be witnesses), but the first signature that claims to be by
    /// `key` (same name and key id) decides: if it does not verify the note
    /// is rejected, so a forged line cannot hide behind a later good one.
    pub fn verify(&self, key: &VerifierKey) -> Result<(), CheckpointError> {
        let sig = self
            .signatures
            .iter()
            .find(|s| s.name == key.name && s.key_id == key.key_id)
            .ok_or_else(|| CheckpointError::NoSignatureFromKey {
                name: key.name.clone(),
                key_id: key.key_id,
            })?;
        if key.verify_raw(self.text.as_bytes(), &sig.signature) {
            Ok(())
        } else {
            Err(CheckpointError::BadSignature {
                name: key.name.clone(),
                key_id: key.key_id,
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Signed checkpoints
// ---------------------------------------------------------------------------

/// A checkpoint together with the note that signs it. Fields are private so
/// the parsed checkpoint can never drift from the signed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    note: SignedNote,
}

impl SignedCheckpoint {
    /// Parse the wire form. This checks syntax only; call
    /// [`SignedCheckpoint::verify`] before believing anything in it.
    pub fn parse(msg: &str) -> Result<Self, CheckpointError> {
        let note = SignedNote::parse(msg)?;
        let checkpoint = Checkpoint::parse_body(&note.text)?;
        Ok(Self { checkpoint, note })
    }

    pub fn to_text(&self) -> String {
        self.note.to_text()
    }

    /// The (not yet verified) checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn note(&self) -> &SignedNote {
        &self.note
    }

    /// Mutable access to the note, e.g. to add witness cosignatures.
    pub fn note_mut(&mut self) -> &mut SignedNote {
        &mut self.note
    }

    /// Verify the signature by `key` and return the checkpoint it vouches for.
    pub fn verify(&self, key: &VerifierKey) -> Result<&Checkpoint, CheckpointError> {
        self.note.verify(key)?;
        Ok(&self.checkpoint)
    }

    /// Verify the signature and that the checkpoint describes exactly the
    /// expected log state: origin, size and root. This is the check a
    /// counterpart runs against a tree it recomputed or was proven.
    pub fn verify_matches(
        &self,
        key: &VerifierKey,
        origin: &str,
        size: u64,
        root: &Hash,
    ) -> Result<(), CheckpointError> {
        let cp = self.verify(key)?;
        if cp.origin != origin {
            return Err(CheckpointError::OriginMismatch {
                expected: origin.to_string(),
                got: cp.origin.clone(),
            });
        }
        if cp.size != size {
            return Err(CheckpointError::SizeMismatch {
                expected: size,
                got: cp.size,
            });
        }
        if &cp.root != root {
            return Err(CheckpointError::RootMismatch { size });
        }
        Ok(())
    }
}

impl fmt::Display for SignedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

#[cfg(test)]
mod tests {
    use super::super::merkle::{leaf_hash, node_hash};
    use super::*;

    // Go sumdb/note reference vector (golang.org/x/mod/sumdb/note, note.go
    // package documentation and note_test.go): an independent signed-note
    // implementation. Ed25519 is deterministic, so we must reproduce the
    // signature byte for byte.
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_SIG: &str =
        "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

    fn go_note() -> String {
        format!("{GO_TEXT}\n\u{2014} PeterNeumann {GO_SIG}\n")
    }

    fn signer(seed_byte: u8) -> CheckpointSigner {
        CheckpointSigner::from_seed("lienthong.test/audit", &[seed_byte; 32]).unwrap()
    }

    fn sample() -> Checkpoint {
        Checkpoint {
            origin: "lienthong.test/audit".into(),
            size: 3,
            root: node_hash(&leaf_hash(b"a"), &leaf_hash(b"b")),
            timestamp_ms: 1_717_171_717_171,
        }
    }

    #[test]
    fn go_reference_note_verifies() {
        let key = VerifierKey::parse(GO_VKEY).unwrap();
        assert_eq!(key.key_id(), 0xc74f20a3);
        assert_eq!(key.to_string(), GO_VKEY);
        let note = SignedNote::parse(&go_note()).unwrap();
        assert_eq!(note.text(), GO_TEXT);
        note.verify(&key).unwrap();
        assert_eq!(note.to_text(), go_note());
    }

    #[test]
    fn go_reference_note_is_reproduced_by_signing() {
        let s = CheckpointSigner::from_note_key(GO_SKEY).unwrap();
        assert_eq!(s.verifier_key().to_string(), GO_VKEY);
        assert_eq!(s.sign_note(GO_TEXT).unwrap().to_text(), go_note());
    }

    #[test]
    fn go_reference_note_tampering_fails() {
        let key = VerifierKey::parse(GO_VKEY).unwrap();
        let tampered = go_note().replace("answer", "Answer");
        let note = SignedNote::parse(&tampered).unwrap();
        assert!(matches!(
            note.verify(&key),
            Err(CheckpointError::BadSignature { .. })
        ));
        // A key with a spliced id is refused at load time.
        assert!(VerifierKey::parse(&GO_VKEY.replace("c74f20a3", "c74f20a4")).is_err());
    }

    #[test]
    fn body_roundtrip_and_canonical() {
        let cp = sample();
        let body = cp.to_body();
        assert!(body.starts_with("lienthong.test/audit\n3\n"));
        assert!(body.ends_with("\ntimestamp_ms 1717171717171\n"));
        assert_eq!(Checkpoint::parse_body(&body).unwrap(), cp);
        for bad in [
            body.replace("\n3\n", "\n03\n"),
            body.replace("\n3\n", "\n+3\n"),
            body.replace("timestamp_ms ", "timestamp_ms  "),
            body.trim_end().to_string(),
            format!("{body}extra\n"),
            body.replacen("lienthong.test/audit", "", 1),
        ] {
            assert!(Checkpoint::parse_body(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sign_parse_verify_roundtrip() {
        let s = signer(7);
        let signed = s.sign(&sample()).unwrap();
        let text = signed.to_text();
        let parsed = SignedCheckpoint::parse(&text).unwrap();
        assert_eq!(parsed, signed);
        let key = VerifierKey::parse(&s.verifier_key().to_string()).unwrap();
        assert_eq!(parsed.verify(&key).unwrap(), &sample());
        let cp = sample();
        parsed
            .verify_matches(&key, &cp.origin, cp.size, &cp.root)
            .unwrap();
    }

    #[test]
    fn wrong_key_is_rejected() {
        let signed = signer(1).sign(&sample()).unwrap();
        // Same name, different key: different key id, so no usable signature.
        let other = signer(2).verifier_key();
        assert!(matches!(
            signed.verify(&other),
            Err(CheckpointError::NoSignatureFromKey { .. })
        ));
        // A forged line that claims the right key id but carries another
        // key's signature must fail, not be skipped.
        let mut forged = signer(2).sign(&sample()).unwrap();
        forged.note_mut().signatures[0].key_id = signer(1).verifier_key().key_id();
        assert!(matches!(
            forged.verify(&signer(1).verifier_key()),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    #[test]
    fn size_and_root_mismatch_are_rejected() {
        let s = signer(3);
        let key = s.verifier_key();
        let cp = sample();
        let signed = s.sign(&cp).unwrap();
        assert!(matches!(
            signed.verify_matches(&key, &cp.origin, cp.size + 1, &cp.root),
            Err(CheckpointError::SizeMismatch { .. })
        ));
        assert!(matches!(
            signed.verify_matches(&key, &cp.origin, cp.size, &leaf_hash(b"x")),
            Err(CheckpointError::RootMismatch { .. })
        ));
        assert!(matches!(
            signed.verify_matches(&key, "other.log", cp.size, &cp.root),
            Err(CheckpointError::OriginMismatch { .. })
        ));
        // Editing the size or root in the text breaks the signature.
        let text = signed.to_text();
        let edited = SignedCheckpoint::parse(&text.replacen("\n3\n", "\n4\n", 1)).unwrap();
        assert!(matches!(
            edited.verify(&key),
            Err(CheckpointError::BadSignature { .. })
        ));
        let other_root = hash_to_base64(&leaf_hash(b"x"));
        let edited =
            SignedCheckpoint::parse(&text.replacen(&hash_to_base64(&cp.root), &other_root, 1))
                .unwrap();
        assert!(matches!(
            edited.verify(&key),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    #[test]
    fn cosignatures_from_unknown_keys_are_ignored() {
        let log = signer(4);
        let witness = CheckpointSigner::from_seed("witness.example", &[9; 32]).unwrap();
        let mut signed = log.sign(&sample()).unwrap();
        let cosig = witness.sign_note(signed.note().text()).unwrap();
        signed
            .note_mut()
            .push_signature(cosig.signatures()[0].clone());
        let reparsed = SignedCheckpoint::parse(&signed.to_text()).unwrap();
        reparsed.verify(&log.verifier_key()).unwrap();
        reparsed.verify(&witness.verifier_key()).unwrap();
    }

    #[test]
    fn malformed_notes_and_keys_are_rejected() {
        let good = signer(5).sign(&sample()).unwrap().to_text();
        for bad in [
            good.replace('\u{2014}', "-"),
            good.trim_end().to_string(),
            good.replace("\n\n", "\n"),
            format!("{good}\u{2014} name\n"),
            format!("{good}\u{2014} name AAAA\n"),
            good.replace("timestamp_ms", "time"),
            good.replacen("lienthong", "lien\u{7}thong", 1),
        ] {
            assert!(SignedCheckpoint::parse(&bad).is_err(), "{bad:?}");
        }
        assert!(CheckpointSigner::from_seed("bad name", &[1; 32]).is_err());
        assert!(CheckpointSigner::from_seed("a+b", &[1; 32]).is_err());
        assert!(CheckpointSigner::from_seed("ok", &[1; 31]).is_err());
        assert!(VerifierKey::parse("name+00000000").is_err());
        assert!(VerifierKey::parse("name+zzzzzzzz+AAAA").is_err());
        let origin_with_newline = Checkpoint {
            origin: "a\nb".into(),
            ..sample()
        };
        assert!(signer(5).sign(&origin_with_newline).is_err());
    }

    #[test]
    fn generated_key_roundtrips_through_pkcs8() {
        let (s, der) = CheckpointSigner::generate("lienthong.test/audit").unwrap();
        let again = CheckpointSigner::from_pkcs8("lienthong.test/audit", &der).unwrap();
        assert_eq!(s.verifier_key(), again.verifier_key());
        let signed = s.sign(&sample()).unwrap();
        signed.verify(&again.verifier_key()).unwrap();
        assert!(!format!("{s:?}").contains(&format!("{der:?}")));
    }
}
