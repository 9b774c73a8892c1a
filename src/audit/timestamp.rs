//! RFC 3161 time-stamping of signed checkpoints.
//!
//! A checkpoint (see `checkpoint`) is our own statement of when the log had a
//! given root. An RFC 3161 Time-Stamp Authority (TSA) adds a third party's
//! statement "these bytes existed at genTime": the caller hashes the note with
//! SHA-256, sends [`request`] to the TSA over HTTP, checks the answer with
//! [`verify_response`] and stores [`Timestamp::token`]. Anyone can later check
//! a stored token with [`verify_token`] against the TSA's certificate.
//!
//! What is checked, and why:
//! * The token is a CMS `SignedData` (RFC 5652) over a `TSTInfo` (RFC 3161
//!   §2.4.2) with exactly one signer, and that signer must be the configured
//!   TSA certificate (by issuer+serial or subject key identifier). Chains and
//!   certificates carried in the token are ignored: trust is pinned to the one
//!   certificate in our configuration.
//! * The signature covers the DER of the signed attributes, which must carry
//!   content-type = id-ct-TSTInfo and message-digest = hash of the TSTInfo
//!   (RFC 5652 §5.4); an ESS signing-certificate(-v2) attribute, when present,
//!   must name the TSA certificate (RFC 5035), so a token cannot be re-bound to
//!   another certificate holding the same key.
//! * The signed attributes are verified over the bytes as received (re-tagged
//!   from `[0]` to `SET OF`), not over a re-encoding: a decoder that re-sorts
//!   the set would otherwise break signatures from lax encoders.
//! * The TSA certificate must have a critical extendedKeyUsage containing
//!   id-kp-timeStamping (RFC 3161 §2.3), and genTime must fall within its
//!   validity; whether the certificate is still trusted today is the
//!   caller's configuration, not this module's business.
//!
//! [`TestTsa`] is a small TSA for tests (unit and integration): it signs with a
//! key and certificate the caller provides (e.g. made with rcgen).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, UnparsedPublicKey,
    VerificationAlgorithm,
};
use cms::cert::x509::attr::Attribute;
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{
    BitStringRef, GeneralizedTime, Int, ObjectIdentifier, OctetString, SetOfVec, Utf8StringRef,
};
use der::{Any, AnyRef, Decode, Encode, Reader, SliceReader, Tag, TagNumber, Tagged as _};
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::ext::Extensions;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_tsp::{Accuracy, MessageImprint, TimeStampReq, TspVersion, TstInfo};

// ---------------------------------------------------------------------------
// Object identifiers
// ---------------------------------------------------------------------------

const fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

const ID_SHA1: ObjectIdentifier = oid("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = oid("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = oid("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = oid("2.16.840.1.101.3.4.2.3");

const ID_SIGNED_DATA: ObjectIdentifier = oid("1.2.840.113549.1.7.2");
const ID_CT_TST_INFO: ObjectIdentifier = oid("1.2.840.113549.1.9.16.1.4");
const ID_CONTENT_TYPE: ObjectIdentifier = oid("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = oid("1.2.840.113549.1.9.4");
const ID_SIGNING_CERT: ObjectIdentifier = oid("1.2.840.113549.1.9.16.2.12");
const ID_SIGNING_CERT_V2: ObjectIdentifier = oid("1.2.840.113549.1.9.16.2.47");

const ID_CE_SUBJECT_KEY_ID: ObjectIdentifier = oid("2.5.29.14");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = oid("2.5.29.37");
const ID_KP_TIME_STAMPING: ObjectIdentifier = oid("1.3.6.1.5.5.7.3.8");

const ID_EC_PUBLIC_KEY: ObjectIdentifier = oid("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = oid("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = oid("1.3.132.0.34");
const SECP521R1: ObjectIdentifier = oid("1.3.132.0.35");
const ECDSA_WITH_SHA256: ObjectIdentifier = oid("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = oid("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = oid("1.2.840.10045.4.3.4");
const RSA_ENCRYPTION: ObjectIdentifier = oid("1.2.840.113549.1.1.1");
const ID_MGF1: ObjectIdentifier = oid("1.2.840.113549.1.1.8");
const ID_RSASSA_PSS: ObjectIdentifier = oid("1.2.840.113549.1.1.10");
const SHA256_WITH_RSA: ObjectIdentifier = oid("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = oid("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = oid("1.2.840.113549.1.1.13");
const ID_ED25519: ObjectIdentifier = oid("1.3.101.112");

/// Policy under which [`TestTsa`] issues its tokens (an example OID, as in OpenSSL's docs).
pub const TEST_TSA_POLICY: &str = "1.2.3.4.1";

// ---------------------------------------------------------------------------
// Errors and results
// ---------------------------------------------------------------------------

/// Errors from building, parsing or verifying time-stamps. Messages name what
/// failed; they never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("TSA certificate: {0}")]
    BadCertificate(String),
    #[error("TSA certificate is not for time-stamping: RFC 3161 requires a critical extendedKeyUsage with id-kp-timeStamping")]
    NotTimeStamping,
    #[error("TSA did not grant the time-stamp: PKIStatus {status} ({name}){detail}")]
    NotGranted {
        status: u64,
        name: &'static str,
        detail: String,
    },
    #[error("TSA granted the request but sent no time-stamp token")]
    MissingToken,
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("time-stamp token is for other data: its message imprint does not match")]
    ImprintMismatch,
    #[error("time-stamp token nonce does not match the request")]
    NonceMismatch,
    #[error("time-stamp token is not signed by the configured TSA certificate")]
    WrongSigner,
    #[error("time-stamp token signed attributes: {0}")]
    BadSignedAttributes(&'static str),
    #[error("time-stamp token's ESS signing-certificate names another certificate than the TSA's")]
    SigningCertificateMismatch,
    #[error("time-stamp token signature does not verify with the TSA certificate")]
    BadSignature,
    #[error("time-stamp genTime {gen_time_ms} ms is outside the TSA certificate's validity")]
    OutsideValidity { gen_time_ms: u64 },
    #[error("test TSA key: {0}")]
    BadKey(&'static str),
}

fn malformed(what: &'static str) -> impl Fn(der::Error) -> TimestampError {
    move |e| TimestampError::Malformed {
        what,
        detail: e.to_string(),
    }
}

fn malformed_msg(what: &'static str, detail: &str) -> TimestampError {
    TimestampError::Malformed {
        what,
        detail: detail.to_owned(),
    }
}

/// A verified time-stamp token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    /// TSTInfo genTime, Unix milliseconds (fractional seconds beyond ms are dropped).
    pub gen_time_ms: u64,
    /// TSTInfo serialNumber, lowercase hex of its two's-complement value.
    pub serial: String,
    /// TSTInfo policy, as a dotted OID.
    pub policy: String,
    /// DER `ContentInfo` of the TimeStampToken: what gets stored and re-verified.
    pub token: Vec<u8>,
}

// ---------------------------------------------------------------------------
// Hash algorithms
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: ObjectIdentifier) -> Option<Hash> {
        match oid {
            ID_SHA256 => Some(Hash::Sha256),
            ID_SHA384 => Some(Hash::Sha384),
            ID_SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// A hash AlgorithmIdentifier: known OID, parameters absent or NULL (RFC 5754 §2).
    fn from_alg(alg: &AlgorithmIdentifierOwned) -> Option<Hash> {
        match &alg.parameters {
            Some(p) if !p.is_null() => None,
            _ => Hash::from_oid(alg.oid),
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            Hash::Sha256 => ID_SHA256,
            Hash::Sha384 => ID_SHA384,
            Hash::Sha512 => ID_SHA512,
        }
    }

    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.algorithm(), data).as_ref().to_vec()
    }

    fn len(self) -> usize {
        self.algorithm().output_len()
    }

    /// As an AlgorithmIdentifier with absent parameters (RFC 5754 §2 "SHOULD omit").
    fn alg_id(self) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: self.oid(),
            parameters: None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A u64 as a DER INTEGER (positive, so with a 0x00 sign byte when the top bit is set).
fn int_from_u64(n: u64) -> Result<Int, der::Error> {
    Int::from_der(&n.to_der()?)
}

// ---------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------

/// The largest TimeStampResp accepted from a TSA (a token with a certificate
/// chain is a few KiB).
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// What a checkpoint's time-stamp token signs: SHA-256 of its signed note text
/// (`SignedCheckpoint::to_text`), so the token covers the root and the log's
/// own signature.
pub fn checkpoint_digest(note: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, note.as_bytes()).as_ref());
    out
}

/// DER `TimeStampReq` (RFC 3161 §2.4.1) for a SHA-256 digest: version 1, the
/// imprint, `nonce` as a positive INTEGER, certReq = TRUE, no policy and no
/// extensions. The nonce should be random (e.g. from `aws_lc_rs::rand`) so a
/// replayed old response is detected by [`verify_response`].
pub fn request(digest: &[u8; 32], nonce: u64) -> Vec<u8> {
    // Encoding a fixed-shape structure of a 32-byte string and a u64 cannot fail.
    build_request(digest, nonce).expect("TimeStampReq encoding is infallible")
}

fn build_request(digest: &[u8; 32], nonce: u64) -> Result<Vec<u8>, der::Error> {
    let req = TimeStampReq {
        version: TspVersion::V1,
        message_imprint: MessageImprint {
            // NULL parameters, as OpenSSL sends them: every TSA accepts that form.
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: ID_SHA256,
                parameters: Some(Any::null()),
            },
            hashed_message: OctetString::new(digest.as_slice())?,
        },
        req_policy: None,
        nonce: Some(int_from_u64(nonce)?),
        cert_req: true,
        extensions: None,
    };
    req.to_der()
}

// ---------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------

/// PKIStatusInfo (RFC 3161 §2.4.2). Own definition rather than cmpv2's: the
/// status is kept as a number so that an unknown value is reported rather
/// than failing the parse, and failInfo bits are named per RFC 3161 (cmpv2's
/// flag set uses RFC 4210 names and rejects bits it does not know).
#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct StatusInfo<'a> {
    status: u64,
    #[asn1(optional = "true")]
    status_string: Option<Vec<Utf8StringRef<'a>>>,
    #[asn1(optional = "true")]
    fail_info: Option<BitStringRef<'a>>,
}

/// TimeStampResp with the token kept as raw DER (it is what gets stored).
#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct Resp<'a> {
    status: StatusInfo<'a>,
    #[asn1(optional = "true")]
    token: Option<AnyRef<'a>>,
}

fn status_name(status: u64) -> &'static str {
    match status {
        0 => "granted",
        1 => "grantedWithMods",
        2 => "rejection",
        3 => "waiting",
        4 => "revocationWarning",
        5 => "revocationNotification",
        _ => "unknown",
    }
}

/// PKIFailureInfo bit names from RFC 3161 §2.4.2.
fn fail_info_name(bit: usize) -> Option<&'static str> {
    Some(match bit {
        0 => "badAlg",
        2 => "badRequest",
        5 => "badDataFormat",
        14 => "timeNotAvailable",
        15 => "unacceptedPolicy",
        16 => "unacceptedExtension",
        17 => "addInfoNotAvailable",
        25 => "systemFailure",
        _ => return None,
    })
}

/// Human-readable statusString / failInfo, bounded so a hostile TSA cannot
/// flood our logs through the error text.
fn status_detail(si: &StatusInfo<'_>) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    if let Some(texts) = &si.status_string {
        let joined = texts
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let cut: String = joined.chars().take(MAX).collect();
        out.push_str(&format!(": {cut:?}"));
    }
    if let Some(bits) = &si.fail_info {
        let names: Vec<String> = (0..bits.bit_len())
            .filter(|&i| {
                bits.raw_bytes()
                    .get(i / 8)
                    .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
            })
            .take(32)
            .map(|i| fail_info_name(i).map_or_else(|| format!("bit{i}"), str::to_owned))
            .collect();
        if !names.is_empty() {
            out.push_str(&format!(" failInfo {}", names.join(",")));
        }
    }
    out
}

/// Parses a DER `TimeStampResp` (RFC 3161 §2.4.2): the status must be granted
/// (0) or grantedWithMods (1); then the token is checked with [`verify_token`]
/// and its nonce must equal the request's (§2.4.2: "MUST be present if ... in
/// the TimeStampReq", which [`request`] always sends).
pub fn verify_response(
    resp: &[u8],
    digest: &[u8; 32],
    nonce: u64,
    tsa: &TsaCert,
) -> Result<Timestamp, TimestampError> {
    let resp = Resp::from_der(resp).map_err(malformed("time-stamp response"))?;
    let status = resp.status.status;
    if status > 1 {
        return Err(TimestampError::NotGranted {
            status,
            name: status_name(status),
            detail: status_detail(&resp.status),
        });
    }
    let token = resp.token.ok_or(TimestampError::MissingToken)?;
    let token = token.to_der().map_err(malformed("time-stamp token"))?;
    let (ts, token_nonce) = verify_token_inner(&token, digest, tsa)?;
    let expected = int_from_u64(nonce).map_err(malformed("nonce"))?;
    match token_nonce {
        Some(n) if n == expected => Ok(ts),
        _ => Err(TimestampError::NonceMismatch),
    }
}

// ---------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------

/// TSTInfo (RFC 3161 §2.4.2) for decoding. x509-tsp's `TstInfo` uses der's
/// `GeneralizedTime`, which refuses fractional seconds; RFC 3161 allows them
/// (and OpenSSL, DigiCert etc. send them), so genTime is taken raw here.
#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct TstInfoIn<'a> {
    version: u8,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: Int,
    gen_time: AnyRef<'a>,
    #[asn1(optional = "true")]
    accuracy: Option<Accuracy>,
    #[asn1(default = "Default::default")]
    ordering: bool,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    tsa: Option<AnyRef<'a>>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    extensions: Option<Extensions>,
}

/// `GeneralizedTime` as RFC 3161 §2.4.2 constrains it — `YYYYMMDDhhmmss[.f+]Z` —
/// to Unix milliseconds. Fractions beyond milliseconds are truncated.
fn parse_gen_time(s: &[u8]) -> Option<u64> {
    let (body, rest) = s.split_at_checked(14)?;
    if !body.iter().all(u8::is_ascii_digit) || rest.last() != Some(&b'Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> u32 {
        body[r].iter().fold(0, |a, d| a * 10 + u32::from(d - b'0'))
    };
    let frac = &rest[..rest.len() - 1];
    let ms = match frac.split_first() {
        None => 0,
        Some((b'.', digits)) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            (0..3).fold(0u64, |a, i| {
                a * 10 + digits.get(i).map_or(0, |d| u64::from(d - b'0'))
            })
        }
        _ => return None,
    };
    let month = time::Month::try_from(u8::try_from(n(4..6)).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(n(0..4)).ok()?,
        month,
        u8::try_from(n(6..8)).ok()?,
    )
    .ok()?;
    let tod = time::Time::from_hms(
        u8::try_from(n(8..10)).ok()?,
        u8::try_from(n(10..12)).ok()?,
        u8::try_from(n(12..14)).ok()?,
    )
    .ok()?;
    let secs = time::PrimitiveDateTime::new(date, tod)
        .assume_utc()
        .unix_timestamp();
    u64::try_from(secs).ok()?.checked_mul(1000)?.checked_add(ms)
}

/// The elements inside a constructed DER value.
fn children<'a>(any: AnyRef<'a>) -> Result<Vec<AnyRef<'a>>, der::Error> {
    let mut r = SliceReader::new(any.value())?;
    let mut out = Vec::new();
    while !r.is_finished() {
        out.push(r.decode()?);
    }
    Ok(out)
}

const CTX0: Tag = Tag::ContextSpecific {
    constructed: true,
    number: TagNumber::N0,
};
const CTX1: Tag = Tag::ContextSpecific {
    constructed: true,
    number: TagNumber::N1,
};

/// The pieces of a TimeStampToken that verification needs.
struct ParsedToken {
    encap: EncapsulatedContentInfo,
    signer: SignerInfo,
    /// The signed attributes as received, re-tagged as SET OF (RFC 5652 §5.4).
    signed_attrs_der: Option<Vec<u8>>,
}

/// Walks ContentInfo → SignedData by hand so that (a) the signed attributes
/// keep their received bytes and (b) certificates and CRLs carried in the token
/// — which we do not use — are never decoded and cannot make parsing fail.
fn parse_token(token: &[u8]) -> Result<ParsedToken, TimestampError> {
    const WHAT: &str = "time-stamp token";
    let bad = |d: &str| malformed_msg(WHAT, d);
    let ci = AnyRef::from_der(token).map_err(malformed(WHAT))?;
    if ci.tag() != Tag::Sequence {
        return Err(bad("ContentInfo is not a SEQUENCE"));
    }
    let [content_type, content] = <[AnyRef; 2]>::try_from(children(ci).map_err(malformed(WHAT))?)
        .map_err(|_| bad("ContentInfo must have 2 elements"))?;
    let content_type: ObjectIdentifier = content_type.decode_as().map_err(malformed(WHAT))?;
    if content_type != ID_SIGNED_DATA || content.tag() != CTX0 {
        return Err(bad("content is not id-signedData"));
    }
    let [sd] = <[AnyRef; 1]>::try_from(children(content).map_err(malformed(WHAT))?)
        .map_err(|_| bad("[0] content must hold one SignedData"))?;
    if sd.tag() != Tag::Sequence {
        return Err(bad("SignedData is not a SEQUENCE"));
    }
    // SignedData ::= SEQUENCE { version, digestAlgorithms SET, encapContentInfo,
    //   certificates [0] OPTIONAL, crls [1] OPTIONAL, signerInfos SET }
    let items = children(sd).map_err(malformed(WHAT))?;
    if !(4..=6).contains(&items.len())
        || items[0].tag() != Tag::Integer
        || items[1].tag() != Tag::Set
        || items[2].tag() != Tag::Sequence
        || items[items.len() - 1].tag() != Tag::Set
    {
        return Err(bad("SignedData layout"));
    }
    let middle: Vec<Tag> = items[3..items.len() - 1].iter().map(|a| a.tag()).collect();
    if !matches!(middle.as_slice(), [] | [CTX0] | [CTX1] | [CTX0, CTX1]) {
        return Err(bad("SignedData layout"));
    }
    // CMSVersion is 3 when eContentType is not id-data (RFC 5652 §5.1); 1 is
    // tolerated for PKCS#7-era encoders.
    let version: u8 = items[0].decode_as().map_err(malformed(WHAT))?;
    if version != 3 && version != 1 {
        return Err(bad("SignedData version must be 3"));
    }
    let digest_algorithms: Vec<ObjectIdentifier> = children(items[1])
        .and_then(|algs| {
            algs.into_iter()
                .map(|a| a.decode_as::<AlgorithmIdentifierOwned>().map(|a| a.oid))
                .collect()
        })
        .map_err(malformed(WHAT))?;
    let encap: EncapsulatedContentInfo = items[2].decode_as().map_err(malformed(WHAT))?;
    let signer_infos = children(items[items.len() - 1]).map_err(malformed(WHAT))?;
    let [si] = <[AnyRef; 1]>::try_from(signer_infos)
        .map_err(|_| bad("a time-stamp token must have exactly one SignerInfo"))?;
    let signer: SignerInfo = si.decode_as().map_err(malformed(WHAT))?;
    // digestAlgorithms lists the signers' digest algorithms (RFC 5652 §5.1).
    if !digest_algorithms.contains(&signer.digest_alg.oid) {
        return Err(bad(
            "the signer's digest algorithm is not in digestAlgorithms",
        ));
    }
    let signed_attrs_der = match children(si)
        .map_err(malformed(WHAT))?
        .into_iter()
        .find(|a| a.tag() == CTX0)
    {
        Some(a) => Some(
            AnyRef::new(Tag::Set, a.value())
                .and_then(|s| s.to_der())
                .map_err(malformed(WHAT))?,
        ),
        None => None,
    };
    Ok(ParsedToken {
        encap,
        signer,
        signed_attrs_der,
    })
}

/// The single value of a signed attribute that must occur at most once
/// (RFC 5652 §11: content-type and message-digest "MUST have a single
/// attribute value"; ESS attributes likewise).
fn single_attr<'s>(
    attrs: &'s [Attribute],
    oid: ObjectIdentifier,
    what: &'static str,
) -> Result<Option<&'s Any>, TimestampError> {
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let Some(attr) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() || attr.values.len() != 1 {
        return Err(TimestampError::BadSignedAttributes(what));
    }
    Ok(attr.values.get(0))
}

/// Verifies a stored TimeStampToken (DER ContentInfo) for `digest` against
/// the TSA certificate. No nonce is available here; [`verify_response`]
/// checks it for fresh responses.
pub fn verify_token(
    token: &[u8],
    digest: &[u8; 32],
    tsa: &TsaCert,
) -> Result<Timestamp, TimestampError> {
    verify_token_inner(token, digest, tsa).map(|(ts, _)| ts)
}

/// The TSA certificates a log trusts: the current one and those it was renewed
/// from, so tokens issued under an earlier certificate still verify. A token is
/// accepted when one of them verifies it.
#[derive(Debug, Clone)]
pub struct TsaCerts(pub Vec<TsaCert>);

impl TsaCerts {
    /// Every CERTIFICATE block of a PEM bundle; each must be a TSA certificate.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TimestampError> {
        use rustls_pki_types::pem::PemObject as _;
        let mut certs = Vec::new();
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let der =
                der.map_err(|_| TimestampError::BadCertificate("unreadable PEM block".into()))?;
            certs.push(TsaCert::from_der(&der)?);
        }
        if certs.is_empty() {
            return Err(TimestampError::BadCertificate(
                "no PEM CERTIFICATE block found".into(),
            ));
        }
        Ok(TsaCerts(certs))
    }

    /// SHA-256 fingerprints (hex), comma-separated.
    pub fn fingerprints(&self) -> String {
        let f: Vec<String> = self.0.iter().map(TsaCert::fingerprint_hex).collect();
        f.join(",")
    }

    /// [`verify_token`] against each certificate; the error reported is one
    /// from a certificate the token names as its signer, if any does.
    pub fn verify_token(
        &self,
        token: &[u8],
        digest: &[u8; 32],
    ) -> Result<Timestamp, TimestampError> {
        self.first_ok(|c| verify_token(token, digest, c))
    }

    /// [`verify_response`] against each certificate, likewise.
    pub fn verify_response(
        &self,
        resp: &[u8],
        digest: &[u8; 32],
        nonce: u64,
    ) -> Result<Timestamp, TimestampError> {
        self.first_ok(|c| verify_response(resp, digest, nonce, c))
    }

    fn first_ok(
        &self,
        f: impl Fn(&TsaCert) -> Result<Timestamp, TimestampError>,
    ) -> Result<Timestamp, TimestampError> {
        let mut err = TimestampError::WrongSigner;
        for c in &self.0 {
            match f(c) {
                Ok(t) => return Ok(t),
                Err(TimestampError::WrongSigner) => {}
                Err(e) => err = e,
            }
        }
        Err(err)
    }
}

fn verify_token_inner(
    token: &[u8],
    digest: &[u8; 32],
    tsa: &TsaCert,
) -> Result<(Timestamp, Option<Int>), TimestampError> {
    let p = parse_token(token)?;

    // The signed content must be a TSTInfo (RFC 3161 §2.4.2), embedded.
    if p.encap.econtent_type != ID_CT_TST_INFO {
        return Err(malformed_msg(
            "time-stamp token",
            "eContentType is not id-ct-TSTInfo",
        ));
    }
    let econtent = p
        .encap
        .econtent
        .as_ref()
        .ok_or_else(|| malformed_msg("time-stamp token", "TSTInfo is not embedded"))?;
    if econtent.tag() != Tag::OctetString {
        return Err(malformed_msg(
            "time-stamp token",
            "eContent is not an OCTET STRING",
        ));
    }
    let tst_der = econtent.value();
    let tst = TstInfoIn::from_der(tst_der).map_err(malformed("TSTInfo"))?;

    // The signer must be the configured TSA certificate. SignerInfo version
    // is 1 with issuerAndSerialNumber and 3 with subjectKeyIdentifier (RFC 5652 §5.3).
    let si = &p.signer;
    let (names_tsa, version) = match &si.sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => (
            ias.issuer == tsa.cert.tbs_certificate.issuer
                && ias.serial_number == tsa.cert.tbs_certificate.serial_number,
            CmsVersion::V1,
        ),
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            (ski.0.as_bytes() == tsa.key_id.as_slice(), CmsVersion::V3)
        }
    };
    if si.version != version {
        return Err(malformed_msg(
            "time-stamp token",
            "SignerInfo version does not match its sid",
        ));
    }
    if !names_tsa {
        return Err(TimestampError::WrongSigner);
    }

    // Signed attributes are mandatory for TSTInfo content (RFC 5652 §5.3: they
    // MUST be present when eContentType is not id-data).
    let (Some(attrs), Some(signed_attrs_der)) = (&si.signed_attrs, &p.signed_attrs_der) else {
        return Err(TimestampError::BadSignedAttributes("missing"));
    };
    let attrs = attrs.as_slice();
    let digest_alg = Hash::from_alg(&si.digest_alg).ok_or_else(|| {
        TimestampError::Unsupported(format!("digest algorithm {}", si.digest_alg.oid))
    })?;

    let content_type = single_attr(attrs, ID_CONTENT_TYPE, "content-type must occur once")?
        .ok_or(TimestampError::BadSignedAttributes("content-type missing"))?;
    if content_type.decode_as::<ObjectIdentifier>().ok() != Some(ID_CT_TST_INFO) {
        return Err(TimestampError::BadSignedAttributes(
            "content-type is not id-ct-TSTInfo",
        ));
    }
    let md = single_attr(attrs, ID_MESSAGE_DIGEST, "message-digest must occur once")?.ok_or(
        TimestampError::BadSignedAttributes("message-digest missing"),
    )?;
    let md = md.decode_as::<OctetString>().map_err(|_| {
        TimestampError::BadSignedAttributes("message-digest is not an OCTET STRING")
    })?;
    if md.as_bytes() != digest_alg.digest(tst_der).as_slice() {
        return Err(TimestampError::BadSignedAttributes(
            "message-digest does not match the TSTInfo",
        ));
    }
    // RFC 3161 §2.4.2: the ESS signing-certificate attribute (v1, or v2 per
    // RFC 5816) is required; it binds the signature to the certificate, not
    // just its key.
    let ess_v2 = single_attr(
        attrs,
        ID_SIGNING_CERT_V2,
        "signing-certificate-v2 must occur once",
    )?;
    let ess_v1 = single_attr(
        attrs,
        ID_SIGNING_CERT,
        "signing-certificate must occur once",
    )?;
    if ess_v1.is_none() && ess_v2.is_none() {
        return Err(TimestampError::BadSignedAttributes(
            "ESS signing-certificate attribute missing",
        ));
    }
    if let Some(v) = ess_v2 {
        check_ess(v, tsa, true)?;
    }
    if let Some(v) = ess_v1 {
        check_ess(v, tsa, false)?;
    }

    // The signature over the DER of the signed attributes.
    let alg = verification_alg(tsa.key, &si.signature_algorithm, digest_alg)?;
    UnparsedPublicKey::new(alg, &tsa.public_key)
        .verify(signed_attrs_der, si.signature.as_bytes())
        .map_err(|_| TimestampError::BadSignature)?;

    // Now that the TSTInfo is authenticated, its meaning.
    if tst.version != 1 {
        return Err(TimestampError::Unsupported(format!(
            "TSTInfo version {}",
            tst.version
        )));
    }
    if let Some(ext) = tst.extensions.iter().flatten().find(|e| e.critical) {
        return Err(TimestampError::Unsupported(format!(
            "critical TSTInfo extension {}",
            ext.extn_id
        )));
    }
    let imprint = &tst.message_imprint;
    if Hash::from_alg(&imprint.hash_algorithm) != Some(Hash::Sha256)
        || imprint.hashed_message.as_bytes() != digest.as_slice()
    {
        return Err(TimestampError::ImprintMismatch);
    }
    if tst.gen_time.tag() != Tag::GeneralizedTime {
        return Err(malformed_msg("TSTInfo", "genTime is not a GeneralizedTime"));
    }
    let gen_time_ms = parse_gen_time(tst.gen_time.value())
        .ok_or_else(|| malformed_msg("TSTInfo", "genTime is not YYYYMMDDhhmmss[.f]Z"))?;
    if gen_time_ms < tsa.not_before_ms || gen_time_ms > tsa.not_after_ms {
        return Err(TimestampError::OutsideValidity { gen_time_ms });
    }

    let serial = tst.serial_number.as_bytes();
    // Drop the DER sign byte of a positive serial so "00ff" reads as "ff".
    let serial = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    };
    Ok((
        Timestamp {
            gen_time_ms,
            serial: hex(serial),
            policy: tst.policy.to_string(),
            token: token.to_vec(),
        },
        tst.nonce,
    ))
}

/// ESS signing-certificate (RFC 2634 §5.4, `v2 = false`) or
/// signing-certificate-v2 (RFC 5035): the first ESSCertID names the signing
/// certificate by hash, and optionally by issuer and serial number.
fn check_ess(value: &Any, tsa: &TsaCert, v2: bool) -> Result<(), TimestampError> {
    const WHAT: &str = "ESS signing-certificate attribute";
    let bad = |d: &str| malformed_msg(WHAT, d);
    let value = AnyRef::from(value);
    if value.tag() != Tag::Sequence {
        return Err(bad("not a SEQUENCE"));
    }
    // SigningCertificate(V2) ::= SEQUENCE { certs SEQUENCE OF ESSCertID(v2), policies OPTIONAL }
    let outer = children(value).map_err(malformed(WHAT))?;
    let certs = outer.first().ok_or_else(|| bad("empty"))?;
    if certs.tag() != Tag::Sequence {
        return Err(bad("certs is not a SEQUENCE"));
    }
    let ids = children(*certs).map_err(malformed(WHAT))?;
    let first = ids
        .first()
        .ok_or_else(|| bad("no certificate identifiers"))?;
    if first.tag() != Tag::Sequence {
        return Err(bad("ESSCertID is not a SEQUENCE"));
    }
    // ESSCertIDv2 ::= SEQUENCE { hashAlgorithm DEFAULT sha256, certHash, issuerSerial OPTIONAL }
    // ESSCertID   ::= SEQUENCE { certHash (SHA-1), issuerSerial OPTIONAL }
    let mut fields = children(*first)
        .map_err(malformed(WHAT))?
        .into_iter()
        .peekable();
    let algorithm: &'static digest::Algorithm = if !v2 {
        &digest::SHA1_FOR_LEGACY_USE_ONLY
    } else if fields.peek().is_some_and(|f| f.tag() == Tag::Sequence) {
        let alg: AlgorithmIdentifierOwned = fields
            .next()
            .map(|f| f.decode_as())
            .transpose()
            .map_err(malformed(WHAT))?
            .ok_or_else(|| bad("hashAlgorithm"))?;
        match &alg.parameters {
            Some(p) if !p.is_null() => None,
            _ if alg.oid == ID_SHA1 => Some(&digest::SHA1_FOR_LEGACY_USE_ONLY),
            _ => Hash::from_oid(alg.oid).map(Hash::algorithm),
        }
        .ok_or_else(|| TimestampError::Unsupported(format!("ESS hash algorithm {}", alg.oid)))?
    } else {
        &digest::SHA256
    };
    let cert_hash = fields
        .next()
        .filter(|f| f.tag() == Tag::OctetString)
        .ok_or_else(|| bad("certHash"))?;
    if cert_hash.value() != digest::digest(algorithm, &tsa.der).as_ref() {
        return Err(TimestampError::SigningCertificateMismatch);
    }
    // IssuerSerial ::= SEQUENCE { issuer GeneralNames, serialNumber INTEGER }
    if let Some(issuer_serial) = fields.next() {
        if issuer_serial.tag() != Tag::Sequence {
            return Err(bad("issuerSerial is not a SEQUENCE"));
        }
        let parts = children(issuer_serial).map_err(malformed(WHAT))?;
        let [names, serial] = parts.as_slice() else {
            return Err(bad("issuerSerial"));
        };
        if names.tag() != Tag::Sequence {
            return Err(bad("issuerSerial issuer is not GeneralNames"));
        }
        let serial_ok = serial.tag() == Tag::Integer
            && serial.value() == tsa.cert.tbs_certificate.serial_number.as_bytes();
        // The issuer is a directoryName ([4] EXPLICIT Name) among the GeneralNames.
        let issuer_der = tsa
            .cert
            .tbs_certificate
            .issuer
            .to_der()
            .map_err(malformed(WHAT))?;
        let dir_names: Vec<Vec<u8>> = children(*names)
            .map_err(malformed(WHAT))?
            .into_iter()
            .filter(|g| {
                g.tag()
                    == Tag::ContextSpecific {
                        constructed: true,
                        number: TagNumber::N4,
                    }
            })
            .map(|g| g.value().to_vec())
            .collect();
        let issuer_ok = dir_names.is_empty() || dir_names.contains(&issuer_der);
        if !serial_ok || !issuer_ok {
            return Err(TimestampError::SigningCertificateMismatch);
        }
    }
    Ok(())
}

/// RSASSA-PSS-params (RFC 4055 §3.1); absent fields mean SHA-1 defaults,
/// which we do not accept.
#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct PssParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    mgf: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    salt_len: Option<u32>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    trailer: Option<u32>,
}

impl PssParams {
    fn for_hash(h: Hash) -> PssParams {
        PssParams {
            hash: Some(h.alg_id()),
            mgf: Some(AlgorithmIdentifierOwned {
                oid: ID_MGF1,
                parameters: Any::encode_from(&h.alg_id()).ok(),
            }),
            salt_len: u32::try_from(h.len()).ok(),
            trailer: None,
        }
    }
}

/// The aws-lc-rs verification algorithm for a SignerInfo's signatureAlgorithm
/// with the TSA's key. In CMS the signed attributes are hashed with the
/// SignerInfo's digestAlgorithm (RFC 5652 §5.4), so a signature algorithm
/// that names a different hash is refused; bare `rsaEncryption` /
/// `id-ecPublicKey` (as OpenSSL writes) take the hash from digestAlgorithm.
fn verification_alg(
    key: KeyKind,
    sig: &AlgorithmIdentifierOwned,
    digest_alg: Hash,
) -> Result<&'static dyn VerificationAlgorithm, TimestampError> {
    let unsupported =
        || TimestampError::Unsupported(format!("signature algorithm {} for a {key} key", sig.oid));
    let params_absent_or_null = sig.parameters.as_ref().is_none_or(|p| p.is_null());
    let hash = match sig.oid {
        ECDSA_WITH_SHA256 | SHA256_WITH_RSA => Some(Hash::Sha256),
        ECDSA_WITH_SHA384 | SHA384_WITH_RSA => Some(Hash::Sha384),
        ECDSA_WITH_SHA512 | SHA512_WITH_RSA => Some(Hash::Sha512),
        _ => None,
    };
    if hash.is_some_and(|h| h != digest_alg) {
        return Err(TimestampError::Unsupported(format!(
            "signature algorithm {} with digest algorithm {}",
            sig.oid,
            digest_alg.oid()
        )));
    }
    let h = digest_alg;
    let ecdsa = matches!(
        sig.oid,
        ECDSA_WITH_SHA256 | ECDSA_WITH_SHA384 | ECDSA_WITH_SHA512
    ) && sig.parameters.is_none()
        || sig.oid == ID_EC_PUBLIC_KEY;
    let rsa = matches!(sig.oid, SHA256_WITH_RSA | SHA384_WITH_RSA | SHA512_WITH_RSA)
        || sig.oid == RSA_ENCRYPTION;
    Ok(match key {
        KeyKind::EcP256 | KeyKind::EcP384 | KeyKind::EcP521 if ecdsa => match (key, h) {
            (KeyKind::EcP256, Hash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyKind::EcP256, Hash::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
            (KeyKind::EcP256, Hash::Sha512) => &signature::ECDSA_P256_SHA512_ASN1,
            (KeyKind::EcP384, Hash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
            (KeyKind::EcP384, Hash::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
            (KeyKind::EcP384, Hash::Sha512) => &signature::ECDSA_P384_SHA512_ASN1,
            // KeyKind::EcP521
            (_, Hash::Sha256) => &signature::ECDSA_P521_SHA256_ASN1,
            (_, Hash::Sha384) => &signature::ECDSA_P521_SHA384_ASN1,
            (_, Hash::Sha512) => &signature::ECDSA_P521_SHA512_ASN1,
        },
        KeyKind::Rsa if rsa && params_absent_or_null => match h {
            Hash::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Hash::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Hash::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        },
        KeyKind::Rsa if sig.oid == ID_RSASSA_PSS => {
            let params: PssParams = sig
                .parameters
                .as_ref()
                .ok_or_else(unsupported)?
                .decode_as()
                .map_err(malformed("RSASSA-PSS parameters"))?;
            // aws-lc-rs verifies PSS with MGF1 over the same hash and a salt as
            // long as the hash: the profile RFC 8017 recommends and TSAs use.
            let mgf_hash = params
                .mgf
                .as_ref()
                .filter(|m| m.oid == ID_MGF1)
                .and_then(|m| m.parameters.as_ref()?.decode_as().ok())
                .and_then(|a: AlgorithmIdentifierOwned| Hash::from_alg(&a));
            let profile_ok = params.hash.as_ref().and_then(Hash::from_alg) == Some(h)
                && mgf_hash == Some(h)
                && params.salt_len.and_then(|l| usize::try_from(l).ok()) == Some(h.len())
                && params.trailer.is_none_or(|t| t == 1);
            if !profile_ok {
                return Err(TimestampError::Unsupported(
                    "RSASSA-PSS parameters: need the digest algorithm's hash, MGF1 with it, \
                     and a salt as long as the hash"
                        .into(),
                ));
            }
            match h {
                Hash::Sha256 => &signature::RSA_PSS_2048_8192_SHA256,
                Hash::Sha384 => &signature::RSA_PSS_2048_8192_SHA384,
                Hash::Sha512 => &signature::RSA_PSS_2048_8192_SHA512,
            }
        }
        // Ed25519 in CMS (RFC 8419): PureEdDSA over the signed attributes.
        KeyKind::Ed25519 if sig.oid == ID_ED25519 && sig.parameters.is_none() => {
            &signature::ED25519
        }
        _ => return Err(unsupported()),
    })
}

// ---------------------------------------------------------------------------
// TSA certificate
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    EcP256,
    EcP384,
    EcP521,
    Rsa,
    Ed25519,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::EcP256 => "ECDSA P-256",
            KeyKind::EcP384 => "ECDSA P-384",
            KeyKind::EcP521 => "ECDSA P-521",
            KeyKind::Rsa => "RSA",
            KeyKind::Ed25519 => "Ed25519",
        })
    }
}

/// The X.509 certificate of the Time-Stamp Authority that tokens must be
/// signed with. Parsing checks that it is a time-stamping certificate.
#[derive(Clone)]
pub struct TsaCert {
    der: Vec<u8>,
    cert: Certificate,
    key: KeyKind,
    /// subjectPublicKey bits: EC point, PKCS#1 RSAPublicKey or raw Ed25519 key.
    public_key: Vec<u8>,
    /// subjectKeyIdentifier, or RFC 5280 §4.2.1.2 method 1 (SHA-1 of the key bits).
    key_id: Vec<u8>,
    not_before_ms: u64,
    not_after_ms: u64,
}

impl fmt::Debug for TsaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsaCert")
            .field("subject", &self.cert.tbs_certificate.subject.to_string())
            .field("key", &self.key)
            .field("sha256", &self.fingerprint_hex())
            .finish()
    }
}

impl TsaCert {
    /// Parses a PEM `CERTIFICATE` (the first one in the input).
    pub fn from_pem(pem: &[u8]) -> Result<Self, TimestampError> {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem)
            .map_err(|_| TimestampError::BadCertificate("no PEM CERTIFICATE block found".into()))?;
        Self::from_der(&der)
    }

    /// Parses a DER certificate and checks it can sign time-stamps: a critical
    /// extendedKeyUsage extension containing id-kp-timeStamping (RFC 3161
    /// §2.3) and a supported public key.
    pub fn from_der(der: &[u8]) -> Result<Self, TimestampError> {
        let bad = |e: der::Error| TimestampError::BadCertificate(e.to_string());
        let cert = Certificate::from_der(der).map_err(bad)?;
        let tbs = &cert.tbs_certificate;
        let exts = tbs.extensions.as_deref().unwrap_or_default();

        let mut eku = exts.iter().filter(|e| e.extn_id == ID_CE_EXT_KEY_USAGE);
        let (Some(eku_ext), None) = (eku.next(), eku.next()) else {
            return Err(TimestampError::NotTimeStamping);
        };
        let purposes = ExtendedKeyUsage::from_der(eku_ext.extn_value.as_bytes()).map_err(bad)?;
        // RFC 3161 §2.3: critical, and id-kp-timeStamping as its only purpose.
        if !eku_ext.critical || purposes.0 != [ID_KP_TIME_STAMPING] {
            return Err(TimestampError::NotTimeStamping);
        }

        let spki = &tbs.subject_public_key_info;
        let public_key = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| TimestampError::BadCertificate("public key bit string".into()))?
            .to_vec();
        let curve = || {
            let params = spki.algorithm.parameters.as_ref()?;
            params.decode_as::<ObjectIdentifier>().ok()
        };
        let key = match spki.algorithm.oid {
            ID_EC_PUBLIC_KEY if curve() == Some(SECP256R1) => KeyKind::EcP256,
            ID_EC_PUBLIC_KEY if curve() == Some(SECP384R1) => KeyKind::EcP384,
            ID_EC_PUBLIC_KEY if curve() == Some(SECP521R1) => KeyKind::EcP521,
            RSA_ENCRYPTION => KeyKind::Rsa,
            ID_ED25519 => KeyKind::Ed25519,
            other => {
                return Err(TimestampError::Unsupported(format!(
                    "TSA public key algorithm {other}"
                )))
            }
        };

        let key_id = match exts.iter().find(|e| e.extn_id == ID_CE_SUBJECT_KEY_ID) {
            Some(e) => OctetString::from_der(e.extn_value.as_bytes())
                .map_err(bad)?
                .as_bytes()
                .to_vec(),
            None => digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &public_key)
                .as_ref()
                .to_vec(),
        };
        let ms = |t: x509_cert::time::Time| -> u64 {
            u64::try_from(t.to_unix_duration().as_millis()).unwrap_or(u64::MAX)
        };
        let not_before_ms = ms(tbs.validity.not_before);
        let not_after_ms = ms(tbs.validity.not_after);
        Ok(TsaCert {
            der: der.to_vec(),
            cert,
            key,
            public_key,
            key_id,
            not_before_ms,
            not_after_ms,
        })
    }

    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        hex(digest::digest(&digest::SHA256, &self.der).as_ref())
    }

    /// The certificate's DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

// ---------------------------------------------------------------------------
// Test TSA
// ---------------------------------------------------------------------------

enum TestKey {
    Ecdsa(EcdsaKeyPair, Hash, ObjectIdentifier),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair, bool),
}

/// ESSCertIDv2 with the default hash (SHA-256, so hashAlgorithm is omitted as
/// DER requires for DEFAULT values) and no issuerSerial.
#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct EssCertIdV2Out {
    cert_hash: OctetString,
}

#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct SigningCertificateV2Out {
    certs: Vec<EssCertIdV2Out>,
}

/// A minimal Time-Stamp Authority for tests: answers DER requests with tokens
/// signed by the given key and certificate (ECDSA P-256/P-384, Ed25519 or RSA
/// PKCS#1 v1.5), policy [`TEST_TSA_POLICY`], serial numbers counting from 1.
pub struct TestTsa {
    cert: TsaCert,
    key: TestKey,
    /// Name the signer by subjectKeyIdentifier instead of issuer and serial.
    sid_by_key_id: bool,
    /// Leave out the ESS signing-certificate attribute (tests of its absence).
    without_ess: bool,
    serial: AtomicU64,
    policy: ObjectIdentifier,
    rng: SystemRandom,
}

impl fmt::Debug for TestTsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestTsa")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl TestTsa {
    /// A TSA with `cert_der` (which must pass [`TsaCert::from_der`]) and its
    /// PKCS#8 private key.
    pub fn new(cert_der: Vec<u8>, pkcs8_key_der: &[u8]) -> Result<Self, TimestampError> {
        let cert = TsaCert::from_der(&cert_der)?;
        let rejected =
            |_| TimestampError::BadKey("not a PKCS#8 key for the certificate's algorithm");
        let key = match cert.key {
            KeyKind::EcP256 => TestKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8_key_der)
                    .map_err(rejected)?,
                Hash::Sha256,
                ECDSA_WITH_SHA256,
            ),
            KeyKind::EcP384 => TestKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8_key_der)
                    .map_err(rejected)?,
                Hash::Sha384,
                ECDSA_WITH_SHA384,
            ),
            KeyKind::Ed25519 => {
                TestKey::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8_key_der).map_err(rejected)?)
            }
            KeyKind::Rsa => TestKey::Rsa(
                RsaKeyPair::from_pkcs8(pkcs8_key_der).map_err(rejected)?,
                false,
            ),
            KeyKind::EcP521 => return Err(TimestampError::BadKey("P-521 is not supported here")),
        };
        let public: &[u8] = match &key {
            TestKey::Ecdsa(k, ..) => k.public_key().as_ref(),
            TestKey::Ed25519(k) => k.public_key().as_ref(),
            TestKey::Rsa(k, _) => k.public_key().as_ref(),
        };
        if public != cert.public_key.as_slice() {
            return Err(TimestampError::BadKey(
                "private key does not match the certificate",
            ));
        }
        Ok(TestTsa {
            cert,
            key,
            sid_by_key_id: false,
            without_ess: false,
            serial: AtomicU64::new(1),
            policy: ObjectIdentifier::new_unwrap(TEST_TSA_POLICY),
            rng: SystemRandom::new(),
        })
    }

    /// The TSA's certificate, as a verifier would configure it.
    pub fn cert(&self) -> &TsaCert {
        &self.cert
    }

    /// Signs with RSASSA-PSS instead of PKCS#1 v1.5 (RSA keys only).
    #[cfg(test)]
    fn use_rsa_pss(mut self) -> Self {
        if let TestKey::Rsa(_, pss) = &mut self.key {
            *pss = true;
        }
        self
    }

    /// Signs without the ESS signing-certificate attribute RFC 3161 requires.
    #[cfg(test)]
    fn without_ess(mut self) -> Self {
        self.without_ess = true;
        self
    }

    /// Names the signer by subjectKeyIdentifier (SignerInfo version 3).
    #[cfg(test)]
    fn use_key_id_sid(mut self) -> Self {
        self.sid_by_key_id = true;
        self
    }

    /// Answers a DER TimeStampReq with a granted TimeStampResp, or a rejection
    /// (badDataFormat, badAlg, unacceptedPolicy, unacceptedExtension) for a
    /// request it cannot honour, as a real TSA would.
    pub fn respond(&self, req_der: &[u8]) -> Vec<u8> {
        self.answer(req_der, 0)
    }

    /// Like [`respond`](Self::respond) but with the PKIStatus the caller
    /// chooses: 0 or 1 grant a token under that status; anything else is a
    /// refusal carrying a statusString and failInfo badRequest.
    pub fn reject(&self, req_der: &[u8], status: u8) -> Vec<u8> {
        if status <= 1 {
            return self.answer(req_der, u64::from(status));
        }
        status_only(u64::from(status), "refused by the test TSA", 2)
    }

    fn answer(&self, req_der: &[u8], status: u64) -> Vec<u8> {
        let Ok(req) = TimeStampReq::from_der(req_der) else {
            return status_only(2, "request is not a DER TimeStampReq", 5);
        };
        let imprint = &req.message_imprint;
        let imprint_ok = Hash::from_alg(&imprint.hash_algorithm)
            .is_some_and(|h| h.len() == imprint.hashed_message.as_bytes().len());
        if !imprint_ok {
            return status_only(2, "unsupported hash algorithm", 0);
        }
        if req.req_policy.is_some_and(|p| p != self.policy) {
            return status_only(2, "unsupported policy", 15);
        }
        if req.extensions.is_some() {
            return status_only(2, "extensions are not supported", 16);
        }
        match self.sign_token(&req) {
            Ok(token) => encode_resp(status, None, None, Some(&token)).unwrap_or_default(),
            Err(_) => status_only(2, "internal error", 25),
        }
    }

    /// Builds the TimeStampToken: SignedData over a TSTInfo (RFC 3161 §2.4.2),
    /// signed attributes content-type, message-digest and
    /// signing-certificate-v2 (RFC 5035), signature over their DER.
    fn sign_token(&self, req: &TimeStampReq) -> Result<Vec<u8>, der::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let tst = TstInfo {
            version: TspVersion::V1,
            policy: self.policy,
            message_imprint: req.message_imprint.clone(),
            serial_number: int_from_u64(self.serial.fetch_add(1, Ordering::Relaxed))?,
            gen_time: GeneralizedTime::from_unix_duration(Duration::from_secs(now))?,
            accuracy: None,
            ordering: false,
            nonce: req.nonce.clone(),
            tsa: None,
            extensions: None,
        };
        let tst_der = tst.to_der()?;

        let (digest_alg, sig_alg) = match &self.key {
            TestKey::Ecdsa(_, h, oid) => (
                *h,
                AlgorithmIdentifierOwned {
                    oid: *oid,
                    parameters: None,
                },
            ),
            // RFC 8419 §3: SHA-512 for the message digest with Ed25519.
            TestKey::Ed25519(_) => (
                Hash::Sha512,
                AlgorithmIdentifierOwned {
                    oid: ID_ED25519,
                    parameters: None,
                },
            ),
            TestKey::Rsa(_, false) => (
                Hash::Sha256,
                AlgorithmIdentifierOwned {
                    oid: SHA256_WITH_RSA,
                    parameters: Some(Any::null()),
                },
            ),
            TestKey::Rsa(_, true) => (
                Hash::Sha256,
                AlgorithmIdentifierOwned {
                    oid: ID_RSASSA_PSS,
                    parameters: Some(Any::encode_from(&PssParams::for_hash(Hash::Sha256))?),
                },
            ),
        };

        let attr = |oid: ObjectIdentifier, value: Any| -> Result<Attribute, der::Error> {
            Ok(Attribute {
                oid,
                values: SetOfVec::try_from(vec![value])?,
            })
        };
        let ess = SigningCertificateV2Out {
            certs: vec![EssCertIdV2Out {
                cert_hash: OctetString::new(Hash::Sha256.digest(&self.cert.der))?,
            }],
        };
        let mut attrs = vec![
            attr(ID_CONTENT_TYPE, Any::encode_from(&ID_CT_TST_INFO)?)?,
            attr(
                ID_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(digest_alg.digest(&tst_der))?)?,
            )?,
        ];
        if !self.without_ess {
            attrs.push(attr(ID_SIGNING_CERT_V2, Any::encode_from(&ess)?)?);
        }
        let signed_attrs = SetOfVec::try_from(attrs)?;
        let to_sign = signed_attrs.to_der()?;
        let signature = self
            .sign(&to_sign)
            .map_err(|_| der::Error::from(der::ErrorKind::Failed))?;

        let tbs = &self.cert.cert.tbs_certificate;
        let (version, sid) = if self.sid_by_key_id {
            let ski = OctetString::new(self.cert.key_id.clone())?;
            (
                CmsVersion::V3,
                SignerIdentifier::SubjectKeyIdentifier(ski.into()),
            )
        } else {
            (
                CmsVersion::V1,
                SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                    issuer: tbs.issuer.clone(),
                    serial_number: tbs.serial_number.clone(),
                }),
            )
        };
        let signer = SignerInfo {
            version,
            sid,
            digest_alg: digest_alg.alg_id(),
            signed_attrs: Some(signed_attrs),
            signature_algorithm: sig_alg,
            signature: OctetString::new(signature)?,
            unsigned_attrs: None,
        };
        let certificates = if req.cert_req {
            Some(CertificateSet::try_from(vec![
                CertificateChoices::Certificate(self.cert.cert.clone()),
            ])?)
        } else {
            None
        };
        let sd = SignedData {
            // v3: eContentType is not id-data (RFC 5652 §5.1).
            version: CmsVersion::V3,
            digest_algorithms: SetOfVec::try_from(vec![digest_alg.alg_id()])?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_CT_TST_INFO,
                econtent: Some(Any::new(Tag::OctetString, tst_der)?),
            },
            certificates,
            crls: None,
            signer_infos: SignerInfos::try_from(vec![signer])?,
        };
        ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::encode_from(&sd)?,
        }
        .to_der()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        Ok(match &self.key {
            TestKey::Ecdsa(k, ..) => k.sign(&self.rng, msg)?.as_ref().to_vec(),
            TestKey::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
            TestKey::Rsa(k, pss) => {
                let mut sig = vec![0; k.public_modulus_len()];
                let padding: &'static dyn signature::RsaEncoding = if *pss {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                k.sign(padding, &self.rng, msg, &mut sig)?;
                sig
            }
        })
    }
}

fn encode_resp(
    status: u64,
    text: Option<&str>,
    fail_bit: Option<usize>,
    token: Option<&[u8]>,
) -> Result<Vec<u8>, der::Error> {
    // A named-bit BIT STRING in DER has no trailing zero bits (X.690 §11.2.2).
    let fail_bytes = fail_bit.map(|bit| {
        let mut bytes = vec![0u8; bit / 8 + 1];
        bytes[bit / 8] = 0x80 >> (bit % 8);
        (bytes, 7 - (bit % 8) as u8)
    });
    let status_string = text
        .map(|t| Utf8StringRef::new(t).map(|s| vec![s]))
        .transpose()?;
    let fail_info = match &fail_bytes {
        Some((bytes, unused)) => Some(BitStringRef::new(*unused, bytes)?),
        None => None,
    };
    let token = token.map(AnyRef::from_der).transpose()?;
    Resp {
        status: StatusInfo {
            status,
            status_string,
            fail_info,
        },
        token,
    }
    .to_der()
}

/// A TimeStampResp without a token; encoding three small fields cannot fail,
/// and an empty answer would read as malformed rather than panic.
fn status_only(status: u64, text: &str, fail_bit: usize) -> Vec<u8> {
    encode_resp(status, Some(text), Some(fail_bit), None).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, KeyPair};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    // ---- fixtures --------------------------------------------------------

    #[derive(Clone, Copy)]
    enum Eku {
        /// What RFC 3161 §2.3 requires: critical, id-kp-timeStamping.
        TimeStamping,
        /// rcgen's own EKU support, which marks the extension non-critical.
        TimeStampingNonCritical,
        ServerAuthOnly,
        Absent,
    }

    struct Made {
        cert_der: Vec<u8>,
        key_der: Vec<u8>,
        cert_pem: String,
        key_pem: String,
    }

    fn params(cn: &str, eku: Eku) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        // SEQUENCE { OID id-kp-timeStamping } / { OID id-kp-serverAuth }
        let ts = vec![
            0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08,
        ];
        let server = vec![
            0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01,
        ];
        let critical_eku = |content| {
            let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 37], content);
            e.set_criticality(true);
            e
        };
        match eku {
            Eku::TimeStamping => p.custom_extensions.push(critical_eku(ts)),
            Eku::ServerAuthOnly => p.custom_extensions.push(critical_eku(server)),
            Eku::TimeStampingNonCritical => {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::TimeStamping]
            }
            Eku::Absent => {}
        }
        p
    }

    fn make_with(alg: &'static rcgen::SignatureAlgorithm, p: CertificateParams) -> Made {
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = p.self_signed(&key).unwrap();
        Made {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn make(alg: &'static rcgen::SignatureAlgorithm, eku: Eku) -> Made {
        make_with(alg, params("lienthong test TSA", eku))
    }

    fn test_tsa(alg: &'static rcgen::SignatureAlgorithm) -> TestTsa {
        let m = make(alg, Eku::TimeStamping);
        TestTsa::new(m.cert_der, &m.key_der).unwrap()
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        let mut out = [0; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
        out
    }

    fn now_ms() -> u64 {
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    }

    /// Issues a token and checks the round trip; returns it for further abuse.
    fn round_trip(tsa: &TestTsa) -> (Timestamp, [u8; 32], u64) {
        let digest = sha256(b"lienthong.test/audit\n3\nroot\n");
        let nonce = 0x8000_0000_0000_0001; // top bit set: needs a DER sign byte
        let before = now_ms() / 1000 * 1000;
        let resp = tsa.respond(&request(&digest, nonce));
        let ts = verify_response(&resp, &digest, nonce, tsa.cert()).unwrap();
        assert!(
            ts.gen_time_ms >= before && ts.gen_time_ms <= now_ms(),
            "{ts:?}"
        );
        assert_eq!(ts.gen_time_ms % 1000, 0, "test TSA sends whole seconds");
        assert_eq!(ts.policy, TEST_TSA_POLICY);
        // The stored token verifies alone, to the same result.
        assert_eq!(verify_token(&ts.token, &digest, tsa.cert()).unwrap(), ts);
        (ts, digest, nonce)
    }

    // ---- round trips -----------------------------------------------------

    #[test]
    fn round_trip_ecdsa_p256() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (ts, ..) = round_trip(&tsa);
        assert_eq!(ts.serial, "01");
        let (ts, ..) = round_trip(&tsa);
        assert_eq!(ts.serial, "02", "serial numbers count up");
    }

    #[test]
    fn round_trip_other_algorithms() {
        for alg in [
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            round_trip(&test_tsa(alg));
        }
        round_trip(&test_tsa(&rcgen::PKCS_RSA_SHA256).use_rsa_pss());
    }

    #[test]
    fn signer_named_by_subject_key_identifier() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256).use_key_id_sid();
        let (ts, digest, _) = round_trip(&tsa);
        let other = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            verify_token(&ts.token, &digest, other.cert()),
            Err(TimestampError::WrongSigner)
        );
    }

    #[test]
    fn shareable_across_threads() {
        // A mock TSA server holds these behind an Arc.
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TestTsa>();
        send_sync::<TsaCert>();
    }

    #[test]
    fn granted_with_mods_is_accepted() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let digest = sha256(b"x");
        let resp = tsa.reject(&request(&digest, 7), 1);
        verify_response(&resp, &digest, 7, tsa.cert()).unwrap();
    }

    #[test]
    fn request_is_a_timestampreq_with_nonce_and_cert_req() {
        let digest = sha256(b"note");
        for nonce in [0, 1, 0x7f, 0x80, u64::MAX] {
            let req = TimeStampReq::from_der(&request(&digest, nonce)).unwrap();
            assert_eq!(req.version, TspVersion::V1);
            assert_eq!(req.message_imprint.hash_algorithm.oid, ID_SHA256);
            assert_eq!(req.message_imprint.hashed_message.as_bytes(), digest);
            assert!(req.cert_req);
            assert!(req.req_policy.is_none() && req.extensions.is_none());
            let n = req.nonce.unwrap();
            assert!(
                n.as_bytes()[0] < 0x80,
                "nonce {nonce} must encode as a positive INTEGER"
            );
            assert_eq!(n, int_from_u64(nonce).unwrap());
        }
    }

    // ---- rejections ------------------------------------------------------

    #[test]
    fn wrong_digest_is_rejected() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (ts, _, nonce) = round_trip(&tsa);
        let other = sha256(b"another note");
        assert_eq!(
            verify_token(&ts.token, &other, tsa.cert()),
            Err(TimestampError::ImprintMismatch)
        );
        let resp = tsa.respond(&request(&sha256(b"a"), nonce));
        assert_eq!(
            verify_response(&resp, &sha256(b"b"), nonce, tsa.cert()),
            Err(TimestampError::ImprintMismatch)
        );
    }

    #[test]
    fn wrong_nonce_is_rejected() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let digest = sha256(b"note");
        let resp = tsa.respond(&request(&digest, 41));
        assert_eq!(
            verify_response(&resp, &digest, 42, tsa.cert()),
            Err(TimestampError::NonceMismatch)
        );
    }

    #[test]
    fn another_tsa_certificate_is_rejected() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (ts, digest, _) = round_trip(&tsa);
        // A different TSA (different key, same subject name).
        let other = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            verify_token(&ts.token, &digest, other.cert()),
            Err(TimestampError::WrongSigner)
        );
        let other = test_tsa(&rcgen::PKCS_ED25519);
        assert_eq!(
            verify_token(&ts.token, &digest, other.cert()),
            Err(TimestampError::WrongSigner)
        );
    }

    #[test]
    fn same_key_other_certificate_fails_the_ess_check() {
        // Two certificates with the same key, issuer and serial: the sid cannot
        // tell them apart, the signing-certificate-v2 hash can.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = |days: i64| {
            let mut p = params("same TSA", Eku::TimeStamping);
            p.serial_number = Some(rcgen::SerialNumber::from(77u64));
            p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
            p.self_signed(&key).unwrap().der().to_vec()
        };
        let tsa = TestTsa::new(cert(30), &key.serialize_der()).unwrap();
        let (ts, digest, _) = round_trip(&tsa);
        let twin = TsaCert::from_der(&cert(60)).unwrap();
        assert_eq!(
            verify_token(&ts.token, &digest, &twin),
            Err(TimestampError::SigningCertificateMismatch)
        );
    }

    #[test]
    fn flipped_bytes_in_tst_info_and_signature_are_rejected() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (ts, digest, _) = round_trip(&tsa);
        // The imprint inside the TSTInfo is the first occurrence of the digest.
        let at = ts.token.windows(32).position(|w| w == digest).unwrap();
        let mut t = ts.token.clone();
        t[at + 5] ^= 1;
        assert_eq!(
            verify_token(&t, &digest, tsa.cert()),
            Err(TimestampError::BadSignedAttributes(
                "message-digest does not match the TSTInfo"
            ))
        );
        // genTime: its last digit before 'Z'.
        let z = ts
            .token
            .windows(2)
            .position(|w| w[1] == b'Z' && w[0].is_ascii_digit())
            .unwrap();
        let mut t = ts.token.clone();
        t[z] ^= 1;
        assert!(verify_token(&t, &digest, tsa.cert()).is_err());
        // The signature is the token's last field.
        let mut t = ts.token.clone();
        *t.last_mut().unwrap() ^= 1;
        assert_eq!(
            verify_token(&t, &digest, tsa.cert()),
            Err(TimestampError::BadSignature)
        );
    }

    #[test]
    fn every_byte_of_a_certless_token_is_protected() {
        // Without certificates (which are not used, hence not checked) every
        // byte of the token is either structure or authenticated: changing any
        // one of them must make verification fail, never panic.
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let digest = sha256(b"every byte");
        let mut req = TimeStampReq::from_der(&request(&digest, 5)).unwrap();
        req.cert_req = false;
        let resp = tsa.respond(&req.to_der().unwrap());
        let ts = verify_response(&resp, &digest, 5, tsa.cert()).unwrap();
        for i in 0..ts.token.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut t = ts.token.clone();
                t[i] ^= mask;
                assert!(
                    verify_token(&t, &digest, tsa.cert()).is_err(),
                    "byte {i} ^ {mask:#x} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let digest = sha256(b"t");
        let resp = tsa.respond(&request(&digest, 9));
        for n in 0..resp.len() {
            assert!(verify_response(&resp[..n], &digest, 9, tsa.cert()).is_err());
        }
        let mut trailing = resp.clone();
        trailing.push(0);
        assert!(matches!(
            verify_response(&trailing, &digest, 9, tsa.cert()),
            Err(TimestampError::Malformed { .. })
        ));
        assert!(verify_token(b"\x30\x03\x02\x01\x01", &digest, tsa.cert()).is_err());
        assert!(TsaCert::from_der(b"not a certificate").is_err());
        assert!(TsaCert::from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }

    #[test]
    fn rejection_status_is_reported() {
        let tsa = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
        let digest = sha256(b"r");
        let req = request(&digest, 3);
        let err = verify_response(&tsa.reject(&req, 2), &digest, 3, tsa.cert()).unwrap_err();
        assert_eq!(
            err,
            TimestampError::NotGranted {
                status: 2,
                name: "rejection",
                detail: ": \"refused by the test TSA\" failInfo badRequest".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "TSA did not grant the time-stamp: PKIStatus 2 (rejection): \"refused by the test TSA\" failInfo badRequest"
        );
        let err = verify_response(&tsa.reject(&req, 3), &digest, 3, tsa.cert()).unwrap_err();
        assert!(
            matches!(
                err,
                TimestampError::NotGranted {
                    status: 3,
                    name: "waiting",
                    ..
                }
            ),
            "{err}"
        );
        // The test TSA refuses requests it cannot honour, as a real one would.
        let err = verify_response(&tsa.respond(b"\x30\x00"), &digest, 3, tsa.cert()).unwrap_err();
        assert!(err.to_string().contains("failInfo badDataFormat"), "{err}");
        // Granted but empty.
        let empty = encode_resp(0, None, None, None).unwrap();
        assert_eq!(
            verify_response(&empty, &digest, 3, tsa.cert()),
            Err(TimestampError::MissingToken)
        );
    }

    #[test]
    fn certificate_without_time_stamping_eku_is_refused() {
        for eku in [
            Eku::Absent,
            Eku::ServerAuthOnly,
            Eku::TimeStampingNonCritical,
        ] {
            let m = make(&rcgen::PKCS_ECDSA_P256_SHA256, eku);
            assert_eq!(
                TsaCert::from_der(&m.cert_der).unwrap_err(),
                TimestampError::NotTimeStamping
            );
            assert_eq!(
                TsaCert::from_pem(m.cert_pem.as_bytes()).unwrap_err(),
                TimestampError::NotTimeStamping
            );
            assert!(TestTsa::new(m.cert_der, &m.key_der).is_err());
        }
        // Critical and timeStamping, but not only timeStamping (RFC 3161 §2.3).
        let mut p = params("two purposes", Eku::Absent);
        // SEQUENCE { id-kp-timeStamping, id-kp-serverAuth }
        let both = vec![
            0x30, 0x14, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08, 0x06, 0x08,
            0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01,
        ];
        let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 37], both);
        e.set_criticality(true);
        p.custom_extensions.push(e);
        let m = make_with(&rcgen::PKCS_ECDSA_P256_SHA256, p);
        assert_eq!(
            TsaCert::from_der(&m.cert_der).unwrap_err(),
            TimestampError::NotTimeStamping
        );
        let m = make(&rcgen::PKCS_ECDSA_P256_SHA256, Eku::TimeStamping);
        let c = TsaCert::from_pem(m.cert_pem.as_bytes()).unwrap();
        assert_eq!(c.der(), m.cert_der);
        assert_eq!(c.fingerprint_hex(), hex(&sha256(&m.cert_der)));
    }

    #[test]
    fn token_without_ess_signing_certificate_is_rejected() {
        let m = make(&rcgen::PKCS_ECDSA_P256_SHA256, Eku::TimeStamping);
        let tsa = TestTsa::new(m.cert_der, &m.key_der).unwrap().without_ess();
        let digest = sha256(b"note");
        let resp = tsa.respond(&request(&digest, 7));
        assert_eq!(
            verify_response(&resp, &digest, 7, tsa.cert()).unwrap_err(),
            TimestampError::BadSignedAttributes("ESS signing-certificate attribute missing")
        );
    }

    #[test]
    fn a_bundle_verifies_tokens_of_each_certificate() {
        let old = make(&rcgen::PKCS_ECDSA_P256_SHA256, Eku::TimeStamping);
        let new = make(&rcgen::PKCS_ECDSA_P384_SHA384, Eku::TimeStamping);
        let stranger = make(&rcgen::PKCS_ECDSA_P256_SHA256, Eku::TimeStamping);
        let bundle =
            TsaCerts::from_pem(format!("{}{}", old.cert_pem, new.cert_pem).as_bytes()).unwrap();
        assert_eq!(bundle.0.len(), 2);
        let digest = sha256(b"note");
        for m in [&old, &new] {
            let tsa = TestTsa::new(m.cert_der.clone(), &m.key_der).unwrap();
            let resp = tsa.respond(&request(&digest, 9));
            let t = bundle.verify_response(&resp, &digest, 9).unwrap();
            assert!(bundle.verify_token(&t.token, &digest).is_ok());
            assert!(bundle.verify_token(&t.token, &sha256(b"other")).is_err());
        }
        let tsa = TestTsa::new(stranger.cert_der, &stranger.key_der).unwrap();
        let resp = tsa.respond(&request(&digest, 9));
        assert_eq!(
            bundle.verify_response(&resp, &digest, 9).unwrap_err(),
            TimestampError::WrongSigner
        );
        assert!(TsaCerts::from_pem(b"no certificates here").is_err());
    }

    #[test]
    fn test_tsa_refuses_a_key_that_is_not_the_certificates() {
        let a = make(&rcgen::PKCS_ECDSA_P256_SHA256, Eku::TimeStamping);
        let b = make(&rcgen::PKCS_ECDSA_P256_SHA256, Eku::TimeStamping);
        assert_eq!(
            TestTsa::new(a.cert_der, &b.key_der).unwrap_err(),
            TimestampError::BadKey("private key does not match the certificate")
        );
    }

    #[test]
    fn gen_time_outside_certificate_validity_is_rejected() {
        let mut p = params("expired TSA", Eku::TimeStamping);
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let m = make_with(&rcgen::PKCS_ECDSA_P256_SHA256, p);
        let tsa = TestTsa::new(m.cert_der, &m.key_der).unwrap();
        let digest = sha256(b"late");
        let resp = tsa.respond(&request(&digest, 1));
        assert!(matches!(
            verify_response(&resp, &digest, 1, tsa.cert()),
            Err(TimestampError::OutsideValidity { .. })
        ));
    }

    #[test]
    fn gen_time_parsing() {
        assert_eq!(parse_gen_time(b"19700101000000Z"), Some(0));
        assert_eq!(parse_gen_time(b"20240531123456Z"), Some(1_717_158_896_000));
        assert_eq!(
            parse_gen_time(b"20240531123456.5Z"),
            Some(1_717_158_896_500)
        );
        assert_eq!(
            parse_gen_time(b"20240531123456.123456Z"),
            Some(1_717_158_896_123)
        );
        for bad in [
            &b"20240531123456"[..],
            b"20240531123456.Z",
            b"20240531123456+0100",
            b"20241331123456Z",
            b"20240230123456Z",
            b"20240531246000Z",
            b"2024053112345Z",
            b"19691231235959Z",
            b"",
        ] {
            assert_eq!(
                parse_gen_time(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    // ---- interoperability with OpenSSL -----------------------------------

    /// A scratch directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "lienthong-tsp-{name}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, file: &str, bytes: impl AsRef<[u8]>) -> &Self {
            std::fs::write(self.0.join(file), bytes).unwrap();
            self
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `openssl` in `dir`; a missing binary fails the test loudly rather
    /// than skipping it.
    fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("these interop tests need the `openssl` command (OpenSSL 3) on PATH: {e}")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    #[test]
    fn openssl_verifies_test_tsa_tokens() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_RSA_SHA256] {
            let m = make(alg, Eku::TimeStamping);
            let tsa = TestTsa::new(m.cert_der.clone(), &m.key_der).unwrap();
            let digest = sha256(b"checkpoint for openssl");
            let req = request(&digest, 0xdead_beef_0bad_cafe);
            let resp = tsa.respond(&req);
            let dir = Scratch::new("verify");
            dir.write("tsa.pem", &m.cert_pem)
                .write("req.tsq", &req)
                .write("resp.tsr", &resp);
            let d = dir.0.as_path();

            let hex_digest = hex(&digest);
            let by_digest = [
                "ts",
                "-verify",
                "-digest",
                &hex_digest,
                "-in",
                "resp.tsr",
                "-CAfile",
                "tsa.pem",
            ];
            let (ok, out) = openssl(d, &by_digest);
            assert!(
                ok && out.contains("Verification: OK"),
                "openssl ts -verify -digest:\n{out}"
            );
            // With the query, OpenSSL also checks the nonce and the imprint algorithm.
            let by_query = [
                "ts",
                "-verify",
                "-queryfile",
                "req.tsq",
                "-in",
                "resp.tsr",
                "-CAfile",
                "tsa.pem",
            ];
            let (ok, out) = openssl(d, &by_query);
            assert!(
                ok && out.contains("Verification: OK"),
                "openssl ts -verify -queryfile:\n{out}"
            );
            // Control: OpenSSL does refuse a wrong digest, so the OKs above mean something.
            let wrong = hex(&sha256(b"other"));
            let (ok, out) = openssl(
                d,
                &[
                    "ts", "-verify", "-digest", &wrong, "-in", "resp.tsr", "-CAfile", "tsa.pem",
                ],
            );
            assert!(!ok, "openssl accepted a wrong digest:\n{out}");
            // OpenSSL reads our request as we meant it.
            let (ok, out) = openssl(d, &["ts", "-query", "-in", "req.tsq", "-text"]);
            assert!(ok, "{out}");
            assert!(out.contains("Certificate required: yes"), "{out}");
            assert!(out.contains("0xDEADBEEF0BADCAFE"), "{out}");
        }
    }

    /// OpenSSL as the TSA: a response from `openssl ts -reply` verifies here.
    /// Two configurations between them cover RSA PKCS#1 with ESS
    /// signing-certificate v1 (SHA-1) and fractional-second genTime, and
    /// ECDSA P-384/SHA-384 with signing-certificate-v2, accuracy and TSA name.
    #[test]
    fn openssl_tsa_responses_verify_here() {
        struct Case {
            alg: &'static rcgen::SignatureAlgorithm,
            signer_digest: &'static str,
            ess_alg: &'static str,
            precision: u8,
        }
        let cases = [
            Case {
                alg: &rcgen::PKCS_RSA_SHA256,
                signer_digest: "sha256",
                ess_alg: "sha1",
                precision: 3,
            },
            Case {
                alg: &rcgen::PKCS_ECDSA_P384_SHA384,
                signer_digest: "sha384",
                ess_alg: "sha256",
                precision: 0,
            },
        ];
        for case in cases {
            let m = make(case.alg, Eku::TimeStamping);
            let cert = TsaCert::from_pem(m.cert_pem.as_bytes()).unwrap();
            let dir = Scratch::new("reply");
            let config = format!(
                "[ tsa ]\n\
                 default_tsa = tsa_config1\n\
                 [ tsa_config1 ]\n\
                 dir = .\n\
                 serial = $dir/tsaserial\n\
                 crypto_device = builtin\n\
                 signer_cert = $dir/tsa.pem\n\
                 certs = $dir/tsa.pem\n\
                 signer_key = $dir/tsa.key\n\
                 signer_digest = {}\n\
                 default_policy = 1.2.3.4.1\n\
                 digests = sha256, sha384, sha512\n\
                 accuracy = secs:1, millisecs:500, microsecs:100\n\
                 clock_precision_digits = {}\n\
                 ordering = yes\n\
                 tsa_name = yes\n\
                 ess_cert_id_chain = no\n\
                 ess_cert_id_alg = {}\n",
                case.signer_digest, case.precision, case.ess_alg
            );
            let digest = sha256(b"checkpoint stamped by openssl");
            let nonce = 0x0123_4567_89ab_cdef;
            dir.write("tsa.cnf", config)
                .write("tsaserial", "2a\n")
                .write("tsa.pem", &m.cert_pem)
                .write("tsa.key", &m.key_pem)
                .write("req.tsq", request(&digest, nonce));
            let d = dir.0.as_path();
            let before = now_ms();
            let (ok, out) = openssl(
                d,
                &[
                    "ts",
                    "-reply",
                    "-config",
                    "tsa.cnf",
                    "-queryfile",
                    "req.tsq",
                    "-out",
                    "resp.tsr",
                ],
            );
            assert!(ok, "openssl ts -reply:\n{out}");
            let resp = std::fs::read(d.join("resp.tsr")).unwrap();

            let ts = verify_response(&resp, &digest, nonce, &cert).unwrap();
            assert_eq!(
                ts.serial, "2b",
                "the serial file holds the last serial used"
            );
            assert_eq!(ts.policy, "1.2.3.4.1");
            assert!(
                ts.gen_time_ms + 2000 >= before && ts.gen_time_ms <= now_ms() + 1000,
                "{ts:?}"
            );
            assert_eq!(verify_token(&ts.token, &digest, &cert).unwrap(), ts);

            // And the negative paths hold on OpenSSL's tokens too.
            assert_eq!(
                verify_response(&resp, &digest, nonce ^ 1, &cert),
                Err(TimestampError::NonceMismatch)
            );
            assert_eq!(
                verify_token(&ts.token, &sha256(b"x"), &cert),
                Err(TimestampError::ImprintMismatch)
            );
            let other = test_tsa(&rcgen::PKCS_ECDSA_P256_SHA256);
            assert_eq!(
                verify_token(&ts.token, &digest, other.cert()),
                Err(TimestampError::WrongSigner)
            );
            let mut t = ts.token.clone();
            *t.last_mut().unwrap() ^= 1;
            assert_eq!(
                verify_token(&t, &digest, &cert),
                Err(TimestampError::BadSignature)
            );

            // Same fingerprint as OpenSSL computes.
            let (ok, out) = openssl(
                d,
                &[
                    "x509",
                    "-in",
                    "tsa.pem",
                    "-noout",
                    "-fingerprint",
                    "-sha256",
                ],
            );
            assert!(ok, "{out}");
            let theirs: String = out
                .trim()
                .rsplit('=')
                .next()
                .unwrap()
                .chars()
                .filter(|c| *c != ':')
                .collect();
            assert_eq!(theirs.to_lowercase(), cert.fingerprint_hex());
        }
    }
}
