//! One audit record: what the gateway did for one request or admin action.
//!
//! A record is serialised as one JSON object; those exact bytes are the
//! Merkle leaf data (see `verify.rs`), so a record is never re-serialised
//! after it has been written — readers keep the stored bytes when they need
//! to prove or verify anything.
//!
//! # What a record may contain
//!
//! * **No credentials, by construction.** There is no header map, no query
//!   map and no free-form "extra" bag: every field is a typed scalar the
//!   gateway fills deliberately. Tokens, cookies, API keys and client
//!   secrets travel in headers, which simply have nowhere to go.
//!   [`contains_secret_like`] exists so tests (here and in the gateway) can
//!   assert that nothing slipped in through a string field anyway.
//! * **No citizen identifiers in paths.** [`RecordPath`] can only be built
//!   through [`mask_path`], which masks long digit runs (CCCD, CMND, tax
//!   codes, phone numbers). Other personal data belongs in bodies, which are
//!   only kept (in [`Bodies`]) for routes configured to keep them.
//! * Digests are typed ([`Sha256Hex`]): exactly 64 lowercase hex digits, so a
//!   digest field cannot be abused to carry text either.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

/// What kind of exchange a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A request reverse-proxied to an upstream.
    Proxy,
    /// A dossier or document received from a counterpart.
    Intake,
    /// An event published or received.
    Event,
    /// A delivery to a subscriber or counterpart.
    Delivery,
    /// A lookup against a registry (population, enterprise, ...).
    Lookup,
    /// An administrative action, including retention deletions of this log.
    Admin,
    /// A request refused before reaching any handler (auth, limits, policy).
    Rejected,
}

impl RecordKind {
    /// The JSON spelling, also used in queries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Intake => "intake",
            Self::Event => "event",
            Self::Delivery => "delivery",
            Self::Lookup => "lookup",
            Self::Admin => "admin",
            Self::Rejected => "rejected",
        }
    }

    /// The kind spelled `s` (the inverse of [`RecordKind::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Proxy,
            Self::Intake,
            Self::Event,
            Self::Delivery,
            Self::Lookup,
            Self::Admin,
            Self::Rejected,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The authenticated caller, as established by the auth layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Agency code of the caller (e.g. the LGSP/NGSP member code).
    pub agency: String,
    /// Subject within the agency (service account, officer id), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// base64url SHA-256 of the client certificate (RFC 8705 `x5t#S256`),
    /// identifying the credential without storing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_s256: Option<String>,
}

/// Why a request failed, in the gateway's own vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable error class (e.g. `upstream_timeout`, `auth_denied`).
    pub kind: String,
    /// Finer code, e.g. the counterpart's own error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The translation adapter that handled the exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adapter {
    pub id: String,
    pub version: String,
}

/// Bodies, kept only for routes configured to keep them. Binary bodies are
/// the caller's business to encode (e.g. base64) before putting them here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bodies {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// A SHA-256 digest as 64 lowercase hex digits. Construction and
/// deserialisation both enforce the shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_bytes(digest::digest(&digest::SHA256, data).as_ref())
    }

    /// From a digest computed elsewhere (e.g. incrementally while streaming a
    /// body). Returns `None` unless `raw` is 32 bytes.
    pub fn from_digest(raw: &[u8]) -> Option<Self> {
        (raw.len() == 32).then(|| Self::from_bytes(raw))
    }

    fn from_bytes(raw: &[u8]) -> Self {
        let raw: &[u8; 32] = raw.try_into().expect("SHA-256 digests are 32 bytes");
        Self(ascii(&hex32(raw)).to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s))
        } else {
            Err(serde::de::Error::custom("expected 64 lowercase hex digits"))
        }
    }
}

/// A request path (plus query) that has been normalised and masked by
/// [`mask_path`]. The only constructor masks, so an unmasked path cannot be
/// put into a record by mistake. Deserialisation takes stored text as is: it
/// was masked when it was written, and re-masking would not change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordPath(String);

impl RecordPath {
    /// Normalise and mask a raw request target (`/path?query`).
    pub fn new(raw: &str) -> Self {
        Self(mask_path(raw))
    }

    /// [`RecordPath::new`] of a target the caller no longer needs: a path with
    /// nothing to mask (most) is kept as it is, without a copy.
    pub fn from_owned(raw: String) -> Self {
        if needs_masking(&raw) {
            Self(mask_path(&raw))
        } else {
            Self(raw)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One audit record. Optional fields are omitted from the JSON when absent,
/// so records stay small (the log keeps every one of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the exchange started: RFC 3339 UTC with milliseconds,
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (see [`format_rfc3339_ms`]). That single
    /// form sorts lexicographically in time order and is what the store's
    /// time index parses.
    pub time: String,
    pub request_id: String,
    pub kind: RecordKind,
    /// Name of the listener that accepted the connection.
    #[serde(default)]
    pub listener: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<RecordPath>,
    /// HTTP status returned to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default)]
    pub latency_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_latency_us: Option<u64>,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    /// Request body as received from the caller (absent when there was no
    /// body: `bytes_in` is then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sha256: Option<Sha256Hex>,
    /// Request body as sent upstream after translation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_translated_sha256: Option<Sha256Hex>,
    /// Response body as received from the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_sha256: Option<Sha256Hex>,
    /// Response body as returned to the caller after translation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_translated_sha256: Option<Sha256Hex>,
    /// Dossier (hồ sơ) code the exchange belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dossier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<Adapter>,
    /// Human-readable description, used by `admin` records (e.g. what a
    /// retention deletion removed). Never put request data here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Bodies>,
}

impl AuditRecord {
    /// A record stamped with the current time and everything else empty.
    pub fn new(kind: RecordKind, request_id: impl Into<String>) -> Self {
        Self {
            time: format_rfc3339_ms(SystemTime::now()),
            request_id: request_id.into(),
            kind,
            listener: String::new(),
            caller: None,
            route: None,
            upstream: None,
            endpoint: None,
            method: None,
            path: None,
            status: None,
            error: None,
            latency_us: 0,
            upstream_latency_us: None,
            bytes_in: 0,
            bytes_out: 0,
            request_sha256: None,
            request_translated_sha256: None,
            response_sha256: None,
            response_translated_sha256: None,
            dossier: None,
            adapter: None,
            detail: None,
            body: None,
        }
    }

    /// Set the path from a raw request target, masking it.
    pub fn set_path(&mut self, raw: &str) {
        self.path = Some(RecordPath::new(raw));
    }

    /// The JSON bytes that become the Merkle leaf: `serde_json::to_vec(self)`,
    /// byte for byte, written by [`RecordView::write_json`].
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.view().write_json(&mut out);
        out
    }

    /// The record borrowed as a [`RecordView`].
    pub fn view(&self) -> RecordView<'_> {
        fn digest(d: &Option<Sha256Hex>) -> Option<DigestRef<'_>> {
            d.as_ref().map(|d| DigestRef::Hex(d.as_str()))
        }
        RecordView {
            time: TimeRef::Text(&self.time),
            request_id: &self.request_id,
            kind: self.kind,
            listener: &self.listener,
            caller: self.caller.as_ref().map(|c| CallerView {
                agency: &c.agency,
                subject: c.subject.as_deref(),
                cert_s256: c.cert_s256.as_deref(),
            }),
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            endpoint: self.endpoint.as_deref(),
            method: self.method.as_deref(),
            path: self.path.as_ref(),
            status: self.status,
            error: self
                .error
                .as_ref()
                .map(|e| (e.kind.as_str(), e.code.as_deref())),
            latency_us: self.latency_us,
            upstream_latency_us: self.upstream_latency_us,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            request_sha256: digest(&self.request_sha256),
            request_translated_sha256: digest(&self.request_translated_sha256),
            response_sha256: digest(&self.response_sha256),
            response_translated_sha256: digest(&self.response_translated_sha256),
            dossier: self.dossier.as_deref(),
            adapter: self.adapter.as_ref(),
            detail: self.detail.as_deref(),
            body: self
                .body
                .as_ref()
                .map(|b| (b.request.as_deref(), b.response.as_deref())),
        }
    }

    /// Milliseconds since the epoch of `time`, if it is in canonical form.
    pub fn time_ms(&self) -> Option<u64> {
        parse_rfc3339_ms(&self.time)
    }
}

/// A digest as [`RecordView`] holds it: the hex text of a stored record, or the raw
/// bytes the request path computed (written as hex without an allocation).
#[derive(Debug, Clone, Copy)]
pub enum DigestRef<'a> {
    Hex(&'a str),
    Raw(&'a [u8; 32]),
}

/// The time of a [`RecordView`]: stored text, or milliseconds since the epoch
/// (formatted as [`format_epoch_ms`] would, straight into the output).
#[derive(Debug, Clone, Copy)]
pub enum TimeRef<'a> {
    Text(&'a str),
    EpochMs(u64),
}

/// The caller of a [`RecordView`].
#[derive(Debug, Clone, Copy)]
pub struct CallerView<'a> {
    pub agency: &'a str,
    pub subject: Option<&'a str>,
    pub cert_s256: Option<&'a str>,
}

/// An audit record as borrowed parts: what [`AuditRecord::to_json`] writes, and
/// what the request path fills from its own state (shared route names, raw
/// digests) so that recording a request does not first copy each of them into a
/// fresh [`AuditRecord`]. Both give the same bytes for the same record.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub time: TimeRef<'a>,
    pub request_id: &'a str,
    pub kind: RecordKind,
    pub listener: &'a str,
    pub caller: Option<CallerView<'a>>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub method: Option<&'a str>,
    /// Masked by construction (see [`RecordPath`]).
    pub path: Option<&'a RecordPath>,
    pub status: Option<u16>,
    /// Error kind and code.
    pub error: Option<(&'a str, Option<&'a str>)>,
    pub latency_us: u64,
    pub upstream_latency_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_sha256: Option<DigestRef<'a>>,
    pub request_translated_sha256: Option<DigestRef<'a>>,
    pub response_sha256: Option<DigestRef<'a>>,
    pub response_translated_sha256: Option<DigestRef<'a>>,
    pub dossier: Option<&'a str>,
    pub adapter: Option<&'a Adapter>,
    pub detail: Option<&'a str>,
    /// Kept request and response bodies.
    pub body: Option<(Option<&'a str>, Option<&'a str>)>,
}

impl RecordView<'_> {
    /// Append the record's JSON (the Merkle leaf data) to `out`.
    ///
    /// Written by hand rather than through serde: this runs once per audited
    /// request, and serde_json's byte-at-a-time string escaping was the
    /// largest single cost of building a record. The output is byte for byte
    /// what `serde_json::to_vec` of the equivalent [`AuditRecord`] gives (same
    /// member order, same omitted members, same escapes);
    /// `to_json_matches_serde` checks that on random records, and stored
    /// records from earlier versions keep verifying because the verifier
    /// hashes the stored bytes, never a re-serialisation.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = JsonOut(out);
        w.raw(b"{\"time\":");
        match self.time {
            TimeRef::Text(t) => w.str(t),
            TimeRef::EpochMs(ms) => w.plain_bytes(&format_epoch_ms_bytes(ms)),
        }
        w.raw(b",\"request_id\":");
        w.str(self.request_id);
        w.raw(b",\"kind\":\"");
        w.raw(self.kind.as_str().as_bytes());
        w.raw(b"\",\"listener\":");
        w.str(self.listener);
        if let Some(c) = &self.caller {
            w.raw(b",\"caller\":{\"agency\":");
            w.str(c.agency);
            w.opt_str(b",\"subject\":", c.subject);
            w.opt_str(b",\"cert_s256\":", c.cert_s256);
            w.raw(b"}");
        }
        w.opt_str(b",\"route\":", self.route);
        w.opt_str(b",\"upstream\":", self.upstream);
        w.opt_str(b",\"endpoint\":", self.endpoint);
        w.opt_str(b",\"method\":", self.method);
        w.opt_str(b",\"path\":", self.path.map(RecordPath::as_str));
        if let Some(s) = self.status {
            w.raw(b",\"status\":");
            w.int(u64::from(s));
        }
        if let Some((kind, code)) = self.error {
            w.raw(b",\"error\":{\"kind\":");
            w.str(kind);
            w.opt_str(b",\"code\":", code);
            w.raw(b"}");
        }
        w.raw(b",\"latency_us\":");
        w.int(self.latency_us);
        if let Some(u) = self.upstream_latency_us {
            w.raw(b",\"upstream_latency_us\":");
            w.int(u);
        }
        w.raw(b",\"bytes_in\":");
        w.int(self.bytes_in);
        w.raw(b",\"bytes_out\":");
        w.int(self.bytes_out);
        w.opt_digest(b",\"request_sha256\":", self.request_sha256);
        w.opt_digest(
            b",\"request_translated_sha256\":",
            self.request_translated_sha256,
        );
        w.opt_digest(b",\"response_sha256\":", self.response_sha256);
        w.opt_digest(
            b",\"response_translated_sha256\":",
            self.response_translated_sha256,
        );
        w.opt_str(b",\"dossier\":", self.dossier);
        if let Some(a) = self.adapter {
            w.raw(b",\"adapter\":{\"id\":");
            w.str(&a.id);
            w.raw(b",\"version\":");
            w.str(&a.version);
            w.raw(b"}");
        }
        w.opt_str(b",\"detail\":", self.detail);
        if let Some((request, response)) = self.body {
            w.raw(b",\"body\":{");
            let mut sep: &[u8] = b"";
            if let Some(r) = request {
                w.raw(b"\"request\":");
                w.str(r);
                sep = b",";
            }
            if let Some(r) = response {
                w.raw(sep);
                w.raw(b"\"response\":");
                w.str(r);
            }
            w.raw(b"}");
        }
        w.raw(b"}");
    }
}

/// The JSON writer behind [`RecordView::write_json`]: raw bytes, strings with
/// serde_json's escapes (the translation engine's chunked escaper, which
/// emits exactly those), and unsigned integers.
struct JsonOut<'a>(&'a mut Vec<u8>);

impl JsonOut<'_> {
    #[inline]
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    #[inline]
    fn str(&mut self, s: &str) {
        self.0.push(b'"');
        crate::translate::escape_json(self.0, s.as_bytes());
        self.0.push(b'"');
    }

    /// A string known to need no escaping (digest hex, the canonical time).
    #[inline]
    fn plain_str(&mut self, s: &str) {
        self.plain_bytes(s.as_bytes());
    }

    /// [`JsonOut::plain_str`] of ASCII this module formatted itself.
    #[inline]
    fn plain_bytes(&mut self, b: &[u8]) {
        self.0.push(b'"');
        self.0.extend_from_slice(b);
        self.0.push(b'"');
    }

    #[inline]
    fn opt_str(&mut self, key: &[u8], v: Option<&str>) {
        if let Some(v) = v {
            self.raw(key);
            self.str(v);
        }
    }

    #[inline]
    fn opt_digest(&mut self, key: &[u8], d: Option<DigestRef<'_>>) {
        match d {
            Some(DigestRef::Hex(h)) => {
                self.raw(key);
                self.plain_str(h);
            }
            Some(DigestRef::Raw(raw)) => {
                self.raw(key);
                self.plain_bytes(&hex32(raw));
            }
            None => {}
        }
    }

    #[inline]
    fn int(&mut self, n: u64) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date. Works in 400-year
/// eras (146 097 days each) with years starting on 1 March, so the leap day
/// is the last day of the shifted year and needs no special case.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time at or after the epoch (earlier
/// times are clamped to the epoch; the gateway never logs the past).
pub fn format_rfc3339_ms(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format_epoch_ms(ms)
}

/// Same as [`format_rfc3339_ms`] from milliseconds since the epoch.
pub fn format_epoch_ms(ms: u64) -> String {
    ascii(&format_epoch_ms_bytes(ms)).to_owned()
}

/// 64 lowercase hex digits of a SHA-256 digest.
pub(crate) fn hex32(raw: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (pair, &b) in out.chunks_exact_mut(2).zip(raw) {
        pair.copy_from_slice(&HEX_PAIRS[b as usize]);
    }
    out
}

/// The two lowercase hex digits of every byte: one load per byte instead of two
/// nibble lookups (a record carries up to four digests).
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// Text this module formatted from ASCII digits and separators.
fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("formatted text is ASCII")
}

/// [`format_epoch_ms`] without the allocation.
fn format_epoch_ms_bytes(ms: u64) -> [u8; 24] {
    let secs = ms / 1000;
    // One record per request is stamped, mostly many within the same second: the
    // date and time of day are formatted once per second and thread, then reused.
    let mut out = LAST_SECOND.with(|last| {
        let (cached, text) = last.get();
        if cached == secs {
            return text;
        }
        let text = format_second(secs);
        // Past year 9999 the text is clamped and would not parse back to `secs`.
        if secs < 253_402_300_800 {
            last.set((secs, text));
        }
        text
    });
    let mut v = ms % 1000;
    for i in (20..23).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out
}

thread_local! {
    /// The last second [`format_epoch_ms`] formatted (`u64::MAX`: none yet) and its
    /// text; the same text up to the seconds is what [`parse_rfc3339_ms`] recognises
    /// without re-checking the calendar.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 24])> =
        const { std::cell::Cell::new((u64::MAX, [0; 24])) };
}

/// `YYYY-MM-DDTHH:MM:SS.000Z` for the second `secs` after the epoch, written digit
/// by digit (the formatting machinery costs more than the rest of this).
fn format_second(secs: u64) -> [u8; 24] {
    let secs = secs as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.clamp(0, 9999) as u64);
    put(5, 2, u64::from(mo));
    put(8, 2, u64::from(d));
    put(11, 2, (sod / 3600) as u64);
    put(14, 2, ((sod / 60) % 60) as u64);
    put(17, 2, (sod % 60) as u64);
    out
}

/// Parse exactly the form [`format_rfc3339_ms`] writes. Anything else
/// (offsets, other precisions) is `None`: records carry one canonical form.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    // A time this thread just formatted (the request path indexes the record it
    // stamped): the part up to the seconds is known to be valid.
    let (secs, text) = LAST_SECOND.with(std::cell::Cell::get);
    if secs != u64::MAX && b[..20] == text[..20] && b[23] == b'Z' {
        let ms = &b[20..23];
        if ms.iter().all(u8::is_ascii_digit) {
            let ms = ms
                .iter()
                .fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0'));
            return Some(secs * 1000 + ms);
        }
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &b[r];
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0u32, |acc, c| Some(acc * 10 + u32::from(c - b'0')))
    };
    let seps = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ];
    if seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || d == 0 || h > 23 || mi > 59 || sec > 59 || y < 1970 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    // Reject 31 April and friends: the date must survive a round trip.
    if civil_from_days(days) != (i64::from(y), mo, d) {
        return None;
    }
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + sec);
    Some(secs as u64 * 1000 + u64::from(ms))
}

/// The wall-clock time of a monotonic instant: what a record is dated with, since a
/// record's `time` is when its exchange started, and the record is built when the
/// exchange is over.
///
/// It is worked out from an anchor, a pair of readings of both clocks taken on this
/// thread at most [`WALL_ANCHOR_MS`] ago, so that dating a record reads neither clock
/// (the coarse clock that ages the anchor costs no timestamp-counter read). A step of
/// the wall clock therefore reaches records within that second; a slew changes the
/// result by well under a millisecond over it.
pub fn wall_time_of(start: std::time::Instant) -> SystemTime {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, SystemTime, u64)>> = const { Cell::new(None) };
    }
    let coarse = crate::clock::mono_ms();
    let (at, wall, _) = ANCHOR.with(|a| match a.get() {
        Some(anchor) if coarse.saturating_sub(anchor.2) < WALL_ANCHOR_MS => anchor,
        _ => {
            let fresh = (Instant::now(), SystemTime::now(), coarse);
            a.set(Some(fresh));
            fresh
        }
    });
    let t = match start.checked_duration_since(at) {
        Some(after) => wall.checked_add(after),
        None => wall.checked_sub(at.duration_since(start)),
    };
    t.unwrap_or(wall)
}

/// How long a thread's clock anchor for [`wall_time_of`] is used before it is read again.
pub const WALL_ANCHOR_MS: u64 = 1000;

/// Milliseconds since the epoch (0 for earlier times).
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

// ---------------------------------------------------------------------------
// Path masking
// ---------------------------------------------------------------------------

/// Digit runs at least this long are treated as personal identifiers:
/// 9 (old CMND), 10 (tax code, mobile number), 12 (CCCD), and anything
/// longer (bank cards, tax code + branch). Shorter runs — years, page
/// numbers, ids of records in a registry — stay readable.
pub const MASK_MIN_DIGITS: usize = 9;

/// Digits left visible at the end of a masked run.
pub const MASK_KEEP_LAST: usize = 2;

/// Normalise a request target and mask personal identifiers in it.
///
/// Normalisation (RFC 3986 §6.2.2): the fragment is dropped, percent-encoded
/// unreserved characters are decoded (so `%30%37...` cannot smuggle digits
/// past the mask) and the remaining percent-encodings get uppercase hex.
/// Dot segments are deliberately *not* resolved: a traversal attempt is
/// exactly what an auditor wants to see.
///
/// Masking: in every path segment and in the query, each run of at least
/// [`MASK_MIN_DIGITS`] digits is replaced by `*` except its last
/// [`MASK_KEEP_LAST`] digits, keeping the length:
/// `/dan-cu/079201001234` → `/dan-cu/**********34`. Digit groups joined by a
/// single `.` or space (also `+` and `%20` in the query), as in
/// `0912.345.678`, count as one run. Leading digits are *not* kept: in a
/// CCCD they encode province, sex, century and birth year, which together
/// narrow a person down far more than the last digits do. The length still
/// tells an investigator which kind of identifier it was, and the last two
/// digits let support staff match a complaint without revealing the number.
/// `-` does not join groups, so dates and dossier codes such as
/// `000.00.01.H01-240101-0001` stay readable.
pub fn mask_path(raw: &str) -> String {
    if !needs_masking(raw) {
        return raw.to_string();
    }
    let raw = raw.split('#').next().unwrap_or("");
    let normalised = normalise_percent(raw);
    match normalised.split_once('?') {
        None => mask_digit_runs(&normalised, false),
        Some((path, query)) => {
            let mut out = mask_digit_runs(path, false);
            out.push('?');
            out.push_str(&mask_digit_runs(query, true));
            out
        }
    }
}

/// Whether [`mask_path`] could change `raw`. Most paths have nothing to decode or
/// mask: no `%`, no `#` and no run of digits long enough to be an identifier
/// (counting the separators that join groups as digits only over-approximates).
fn needs_masking(raw: &str) -> bool {
    let mut run = 0;
    !raw.bytes().all(|b| {
        run = if b.is_ascii_digit() || matches!(b, b'.' | b' ' | b'+') {
            run + 1
        } else {
            0
        };
        b != b'%' && b != b'#' && run < MASK_MIN_DIGITS
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|v| v as u8)
}

fn normalise_percent(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                let v = h * 16 + l;
                if is_unreserved(v) {
                    out.push(v as char);
                } else {
                    out.push('%');
                    out.push(b[i + 1].to_ascii_uppercase() as char);
                    out.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        // Copy one whole UTF-8 character (the input is a &str, so `i` is on
        // a character boundary here).
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Length of a group separator starting at `i`, if there is one there.
fn separator_len(b: &[u8], i: usize, query: bool) -> usize {
    match b[i] {
        b'.' | b' ' => 1,
        b'+' if query => 1,
        b'%' if query && b[i..].starts_with(b"%20") => 3,
        _ => 0,
    }
}

fn mask_digit_runs(s: &str, query: bool) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0; // bytes of `s` already emitted
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // Extend over digits and single separators that sit between digits.
        let start = i;
        let mut digits = 0;
        let mut end;
        let mut j = i;
        loop {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
                digits += 1;
            }
            end = j;
            if j >= b.len() {
                break;
            }
            let sep = separator_len(b, j, query);
            if sep > 0 && j + sep < b.len() && b[j + sep].is_ascii_digit() {
                j += sep;
            } else {
                break;
            }
        }
        if digits >= MASK_MIN_DIGITS {
            out.push_str(&s[copied..start]);
            let mut seen = 0;
            let mut k = start;
            while k < end {
                let c = b[k];
                if c.is_ascii_digit() {
                    seen += 1;
                    out.push(if seen > digits - MASK_KEEP_LAST {
                        c as char
                    } else {
                        '*'
                    });
                    k += 1;
                } else {
                    // A separator; `%20` has digits of its own that are not
                    // part of the number.
                    let sep = separator_len(b, k, query).max(1);
                    out.push_str(&s[k..k + sep]);
                    k += sep;
                }
            }
            copied = end;
        }
        i = end.max(start + 1);
    }
    out.push_str(&s[copied..]);
    out
}

// ---------------------------------------------------------------------------
// Secret detection (for tests and defence in depth)
// ---------------------------------------------------------------------------

/// Heuristic: does `s` look like it contains a credential? Detects bearer
/// and basic authorisation values, JWTs, PEM private keys, and `key=value` /
/// `"key":"value"` pairs whose key names a secret (password, token, api key,
/// client secret, cookie, ...). Used by tests to assert that serialised
/// records never carry such material; false positives are acceptable there,
/// false negatives are what the structural design prevents.
pub fn contains_secret_like(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    if lower.contains("-----begin") && lower.contains("private key") {
        return true;
    }
    for scheme in ["bearer ", "basic ", "bearer%20", "basic%20"] {
        let mut from = 0;
        while let Some(p) = lower[from..].find(scheme) {
            let rest = &s[from + p + scheme.len()..];
            let token_len = rest
                .bytes()
                .take_while(|c| c.is_ascii_alphanumeric() || b"-._~+/=".contains(c))
                .count();
            if token_len >= 8 {
                return true;
            }
            from += p + scheme.len();
        }
    }
    if looks_like_jwt(s) {
        return true;
    }
    const KEYS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "api-key",
        "authorization",
        "cookie",
        "session",
        "private_key",
        "signature",
    ];
    for key in KEYS {
        let mut from = 0;
        while let Some(p) = lower[from..].find(key) {
            let after = &lower[from + p + key.len()..];
            // Skip the rest of the key name (e.g. `access_token_x`), optional
            // closing quote, then an assignment with a non-empty value.
            let after = after
                .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let after = after.strip_prefix('"').unwrap_or(after);
            let after = after.trim_start();
            if let Some(v) = after.strip_prefix('=').or_else(|| after.strip_prefix(':')) {
                let v = v.trim_start().trim_start_matches('"');
                if v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
                    return true;
                }
            }
            from += p + key.len();
        }
    }
    false
}

/// Three dot-separated base64url parts, the first decoding to a JSON object
/// (`eyJ` is base64 of `{"`).
fn looks_like_jwt(s: &str) -> bool {
    let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut from = 0;
    while let Some(p) = s[from..].find("eyJ") {
        let tail = &s[from + p..];
        let parts: Vec<&str> = tail
            .split(|c: char| !(b64url(c) || c == '.'))
            .next()
            .unwrap_or("")
            .split('.')
            .collect();
        if parts.len() >= 3 && parts[0].len() >= 10 && parts[1].len() >= 4 {
            return true;
        }
        from += p + 3;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_time_of_an_instant_is_that_long_ago() {
        // Each instant is taken after `before` is read and before `after` is, so its
        // wall time lies between them; 1 ms of slack covers the truncation to whole
        // milliseconds and the gap between the anchor's two clock readings.
        let before = epoch_ms(SystemTime::now());
        let start = std::time::Instant::now() - Duration::from_millis(500);
        let t = epoch_ms(wall_time_of(start));
        let after = epoch_ms(SystemTime::now());
        assert!(
            t + 500 + 1 >= before && t + 500 <= after + 1,
            "{before} {t} {after}"
        );
        // Once the thread has an anchor, an instant after it is dated forwards from it.
        let before = epoch_ms(SystemTime::now());
        let later = std::time::Instant::now() + Duration::from_millis(250);
        let t = epoch_ms(wall_time_of(later));
        let after = epoch_ms(SystemTime::now());
        assert!(
            t + 1 >= before + 250 && t <= after + 250 + 1,
            "{before} {t} {after}"
        );
    }

    #[test]
    fn path_masking_hides_citizen_ids() {
        let cases = [
            ("/dan-cu/079201001234", "/dan-cu/**********34"),
            ("/cmnd/123456789/anh", "/cmnd/*******89/anh"),
            ("/dn/0101234567", "/dn/********67"),
            ("/dn/0101234567-001", "/dn/********67-001"),
            (
                "/tra-cuu?cccd=079201001234&ky=2024",
                "/tra-cuu?cccd=**********34&ky=2024",
            ),
            ("/sdt?so=0912.345.678", "/sdt?so=****.***.*78"),
            ("/sdt?so=0912+345+678", "/sdt?so=****+***+*78"),
            ("/sdt?so=0912%20345%20678", "/sdt?so=****%20***%20*78"),
            (
                "/hs/000.00.01.H01-240101-0001",
                "/hs/000.00.01.H01-240101-0001",
            ),
            ("/nam/2024/trang/12345678", "/nam/2024/trang/12345678"),
            // Percent-encoded digits are decoded before masking.
            ("/dan-cu/%30%37%3920%31001234", "/dan-cu/**********34"),
            ("/a%2fb/%7e?x=%2a", "/a%2Fb/~?x=%2A"),
            ("/dan-cu/079201001234#frag", "/dan-cu/**********34"),
            ("CCCD079201001234x", "CCCD**********34x"),
            ("/đường/079201001234", "/đường/**********34"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(mask_path(raw), want, "masking {raw:?}");
            assert_eq!(RecordPath::from_owned(raw.to_string()).as_str(), want);
            // Idempotent: masked output has no long digit runs left.
            assert_eq!(mask_path(want), want);
        }
        let mut rec = AuditRecord::new(RecordKind::Lookup, "r1");
        rec.set_path("/dan-cu/079201001234?cmnd=123456789");
        let json = String::from_utf8(rec.to_json()).unwrap();
        assert!(!json.contains("079201001234"));
        assert!(!json.contains("123456789"));
        assert!(json.contains("/dan-cu/**********34?cmnd=*******89"));
    }

    #[test]
    fn raw_digests_and_epoch_time_write_what_the_owned_record_does() {
        let d1 = [0xabu8; 32];
        let d2: [u8; 32] = std::array::from_fn(|i| i as u8);
        let ms = 1_764_201_600_123;
        let mut owned = AuditRecord::new(RecordKind::Proxy, "req-1");
        owned.time = format_epoch_ms(ms);
        owned.request_sha256 = Sha256Hex::from_digest(&d1);
        owned.response_sha256 = Sha256Hex::from_digest(&d2);
        owned.status = Some(200);
        let mut view = owned.view();
        view.time = TimeRef::EpochMs(ms);
        view.request_sha256 = Some(DigestRef::Raw(&d1));
        view.response_sha256 = Some(DigestRef::Raw(&d2));
        let mut out = Vec::new();
        view.write_json(&mut out);
        assert_eq!(out, serde_json::to_vec(&owned).unwrap());
        assert_eq!(out, owned.to_json());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\"time\":\"2025-11-27T00:00:00.123Z\""),
            "{text}"
        );
        assert!(text.contains(&"ab".repeat(32)), "{text}");
    }

    #[test]
    fn to_json_matches_serde() {
        use proptest::prelude::*;
        // Text with every class the escaper distinguishes: controls, quotes, backslashes,
        // `>`, DEL, Vietnamese and astral characters; long enough to cross 8-byte chunks.
        let text = || "[\\x00-\\x1f\"\\\\>\\x7fa-zA-Z0-9 ạđườ😀]{0,24}";
        let opt = || proptest::option::of(text());
        let num = || proptest::option::of(any::<u64>());
        let digest = || proptest::option::of(any::<[u8; 32]>());
        let strategy = (
            (text(), text(), 0usize..7, text(), opt(), opt(), opt()),
            (
                opt(),
                opt(),
                opt(),
                opt(),
                proptest::option::of(any::<u16>()),
                opt(),
                opt(),
            ),
            (any::<u64>(), num(), any::<u64>(), any::<u64>()),
            (digest(), digest(), digest(), digest()),
            (opt(), opt(), opt(), opt(), opt(), opt()),
            (any::<bool>(), any::<bool>(), any::<bool>()),
        );
        let kinds = [
            RecordKind::Proxy,
            RecordKind::Intake,
            RecordKind::Event,
            RecordKind::Delivery,
            RecordKind::Lookup,
            RecordKind::Admin,
            RecordKind::Rejected,
        ];
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&strategy, |(a, b, c, d, e, f)| {
                let (time, request_id, kind, listener, agency, subject, cert) = a;
                let (route, upstream, endpoint, method, status, err_kind, err_code) = b;
                let (latency_us, upstream_latency_us, bytes_in, bytes_out) = c;
                let hex = |d: Option<[u8; 32]>| d.and_then(|d| Sha256Hex::from_digest(&d));
                let (dossier, adapter_id, adapter_version, detail, body_req, body_resp) = e;
                let (has_caller, has_error, has_body) = f;
                let rec = AuditRecord {
                    time,
                    request_id,
                    kind: kinds[kind],
                    listener,
                    caller: has_caller.then(|| Caller {
                        agency: agency.unwrap_or_default(),
                        subject,
                        cert_s256: cert,
                    }),
                    route,
                    upstream,
                    endpoint,
                    method,
                    path: body_req.as_deref().map(RecordPath::new),
                    status,
                    error: has_error.then(|| ErrorInfo {
                        kind: err_kind.unwrap_or_default(),
                        code: err_code,
                    }),
                    latency_us,
                    upstream_latency_us,
                    bytes_in,
                    bytes_out,
                    request_sha256: hex(d.0),
                    request_translated_sha256: hex(d.1),
                    response_sha256: hex(d.2),
                    response_translated_sha256: hex(d.3),
                    dossier,
                    adapter: adapter_id.map(|id| Adapter {
                        id,
                        version: adapter_version.unwrap_or_default(),
                    }),
                    detail,
                    body: has_body.then_some(Bodies {
                        request: body_req,
                        response: body_resp,
                    }),
                };
                let ours = rec.to_json();
                prop_assert_eq!(&ours, &serde_json::to_vec(&rec).unwrap());
                let back: AuditRecord = serde_json::from_slice(&ours).unwrap();
                prop_assert_eq!(back, rec);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn masking_never_leaves_nine_digit_runs() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&"[0-9./?=+%a-z ]{0,40}", |s| {
                let out = mask_path(&s);
                let longest = out
                    .split(|c: char| !c.is_ascii_digit())
                    .map(str::len)
                    .max()
                    .unwrap_or(0);
                prop_assert!(longest < MASK_MIN_DIGITS, "{s:?} -> {out:?}");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn time_roundtrip() {
        assert_eq!(format_epoch_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_epoch_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            format_epoch_ms(1_717_171_717_171),
            "2024-05-31T16:08:37.171Z"
        );
        for ms in [
            0u64,
            1,
            86_399_999,
            951_782_400_123,
            1_717_171_717_171,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_rfc3339_ms(&format_epoch_ms(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339_ms("2024-04-31T00:00:00.000Z"), None);
        // The per-thread cache of the last second formatted gives what the full parse
        // gives (a fresh thread has no cache), and still refuses a bad ending.
        for ms in [
            0,
            999,
            1_717_171_717_171,
            1_717_171_717_999,
            4_102_444_799_000,
        ] {
            let text = format_epoch_ms(ms);
            assert_eq!(parse_rfc3339_ms(&text), Some(ms));
            let t = text.clone();
            let uncached = std::thread::spawn(move || parse_rfc3339_ms(&t))
                .join()
                .unwrap();
            assert_eq!(uncached, Some(ms));
            for bad in [
                format!("{}1x1Z", &text[..20]),
                format!("{}Z", &text[..23].replace('.', ",")),
                format!("{}+", &text[..23]),
            ] {
                assert_eq!(parse_rfc3339_ms(&bad), None, "{bad}");
            }
        }
        assert_eq!(parse_rfc3339_ms("2024-05-31T16:08:37Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-05-31T16:08:37.171+07:00"), None);
    }

    #[test]
    fn no_secret_like_strings_in_records() {
        // The detector itself catches the usual suspects...
        for s in [
            "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "bearer abcdefgh12345678",
            "Basic dXNlcjpwYXNzd29yZA==",
            "/cb?access_token=abc123",
            r#"{"client_secret":"s3cr3t"}"#,
            "password=hunter2",
            "-----BEGIN PRIVATE KEY-----",
            "x eyJhbGciOiJIUzI1NiJ9.eyJhIjoxfQ.sig y",
        ] {
            assert!(contains_secret_like(s), "missed {s:?}");
        }
        for s in [
            "/dan-cu/**********34",
            "token_count",
            "route secret-santa",
            "basic",
        ] {
            assert!(!contains_secret_like(s), "false positive {s:?}");
        }
        // ...and a fully populated record, built the way the gateway builds
        // one from a request that carried credentials, contains none: the
        // credential-bearing parts (headers) have no field to go into, and a
        // token in the query is not a digit run but is still only in `path`
        // if the caller put it there — which the gateway must not do, so the
        // record below mirrors what the pipeline records.
        let mut rec = AuditRecord::new(RecordKind::Proxy, "req-7f3a");
        rec.listener = "public".into();
        rec.caller = Some(Caller {
            agency: "000.00.01.H01".into(),
            subject: Some("svc-motcua".into()),
            cert_s256: Some("nOD7jC2C3WcGu6iaRkwSg0ctMRH_ByrdNvFH6oZgYsk".into()),
        });
        rec.route = Some("dan-cu".into());
        rec.upstream = Some("csdlqg-dc".into());
        rec.endpoint = Some("https://dc.example.gov.vn".into());
        rec.method = Some("GET".into());
        rec.set_path("/dan-cu/079201001234?ky=2024");
        rec.status = Some(200);
        rec.error = Some(ErrorInfo {
            kind: "none".into(),
            code: None,
        });
        rec.latency_us = 1234;
        rec.upstream_latency_us = Some(1000);
        rec.bytes_in = 10;
        rec.bytes_out = 20;
        rec.request_sha256 = Some(Sha256Hex::of(b"req"));
        rec.response_sha256 = Some(Sha256Hex::of(b"resp"));
        rec.request_translated_sha256 = Some(Sha256Hex::of(b"req2"));
        rec.response_translated_sha256 = Some(Sha256Hex::of(b"resp2"));
        rec.dossier = Some("000.00.01.H01-240101-0001".into());
        rec.adapter = Some(Adapter {
            id: "dc-v2".into(),
            version: "2.1.0".into(),
        });
        let json = String::from_utf8(rec.to_json()).unwrap();
        assert!(!contains_secret_like(&json), "{json}");
        let back: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        // Digest fields reject anything but a digest.
        let bad = json.replace(Sha256Hex::of(b"req").as_str(), "Bearer abcdefgh12345678");
        assert!(serde_json::from_str::<AuditRecord>(&bad).is_err());
    }
}
