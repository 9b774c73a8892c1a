//! Verification key material: PEM / JWK / JWKS loading, key-type bookkeeping
//! (the basis of the alg-confusion defence), and the JWKS refresh policy.
//!
//! Every key records its [`KeyKind`]; a token's `alg` is only ever tried with a
//! key whose kind supports it (`HS256` ⇒ an HMAC secret configured as such,
//! `ES256` ⇒ a P-256 key, ...). So an RSA or EC *public* key can never be used
//! as an HMAC secret, whatever the token header says.
//!
//! Keys are found only among keys loaded here, by exact `kid` match in memory:
//! token headers that point elsewhere (`jku`, `x5u`, `jwk`, `x5c`) are never read.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aws_lc_rs::signature::{
    ParsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::jwt::{reason, AuthError, ConfigError};

/// Minimum HMAC secret length (bytes). RFC 7518 §3.2: the key must be at least
/// as long as the hash output (32 bytes for HS256).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// RSA keys below 2048 bits are refused at load (aws-lc would refuse to verify
/// with them anyway; failing at load gives a clear config error instead).
const MIN_RSA_MODULUS_BYTES: usize = 256;
const MAX_RSA_MODULUS_BYTES: usize = 1024;
/// Limits on a JWKS document: it comes from the network.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
const MAX_JWKS_KEYS: usize = 64;
/// A `kid` longer than this cannot be one of ours; rejected before lookup.
pub const MAX_KID_LEN: usize = 256;

use crate::clock::Clock;

/// The type of a verification key; decides which algorithms may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A shared secret configured explicitly as such (never a PEM/JWK public key).
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Whether `alg` may be verified with a key of this kind.
    pub fn supports(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Hmac, HS256 | HS384 | HS512)
                | (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One verification key with its identity and type.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    kind: KeyKind,
    /// `alg` pinned by the JWK, if any: then only that algorithm is accepted.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    // Never print key bytes (HMAC secrets in particular).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn key_err(what: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        source_desc: what.to_owned(),
        message: msg.into(),
    }
}

fn check_kid(kid: Option<&str>, what: &str) -> Result<Option<String>, ConfigError> {
    match kid {
        Some(k) if k.is_empty() || k.len() > MAX_KID_LEN => {
            Err(key_err(what, "kid must be 1..=256 bytes"))
        }
        Some(k) => Ok(Some(k.to_owned())),
        None => Ok(None),
    }
}

/// Extracts the label of the first PEM block (`-----BEGIN <label>-----`).
fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

impl VerifyingKey {
    /// A public key in PEM (`PUBLIC KEY` SPKI, or `RSA PUBLIC KEY` PKCS#1).
    /// RSA, EC P-256/P-384 and Ed25519 are recognised from the key itself.
    /// Private-key PEMs are refused: a verifier has no business holding them.
    pub fn from_public_pem(pem: &[u8], kid: Option<&str>) -> Result<Self, ConfigError> {
        let what = "PEM public key";
        let kid = check_kid(kid, what)?;
        match pem_label(pem) {
            Some("PUBLIC KEY") | Some("RSA PUBLIC KEY") => {}
            Some(l) if l.contains("PRIVATE") => {
                return Err(key_err(
                    what,
                    "this is a private key; configure the public key instead",
                ))
            }
            _ => return Err(key_err(what, "expected a -----BEGIN PUBLIC KEY----- block")),
        }
        // jsonwebtoken classifies the PEM by its OID; exactly one of these
        // constructors accepts a given key.
        let (kind, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (KeyKind::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            let kind = match k.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => KeyKind::EcP256,
                Ok(97) => KeyKind::EcP384,
                _ => return Err(key_err(what, "unsupported EC curve (need P-256 or P-384)")),
            };
            (kind, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (KeyKind::Ed25519, k)
        } else {
            return Err(key_err(what, "not an RSA, EC or Ed25519 public key"));
        };
        let vk = VerifyingKey {
            kid,
            kind,
            alg: None,
            key,
        };
        vk.self_check(what)?;
        Ok(vk)
    }

    /// An HMAC shared secret (HS256). Refuses secrets shorter than 32 bytes.
    pub fn from_hmac_secret(secret: &[u8], kid: Option<&str>) -> Result<Self, ConfigError> {
        let what = "HMAC secret";
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(key_err(
                what,
                format!(
                    "HS256 secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} random bytes are required",
                    secret.len()
                ),
            ));
        }
        Ok(VerifyingKey {
            kid: check_kid(kid, what)?,
            kind: KeyKind::Hmac,
            alg: None,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// A single JWK document (a local file). `oct` (HMAC) keys are allowed here
    /// because the file is local configuration; see [`KeySet::from_jwks`] for
    /// published documents.
    pub fn from_jwk_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| key_err("JWK", format!("not JSON: {e}")))?;
        VerifyingKey::from_jwk_value(&v, true)
    }

    /// Parses one JWK object. Private members (`d`, `p`, ...) are refused, as
    /// are keys whose `use` is not `sig`.
    pub fn from_jwk_value(v: &Value, allow_oct: bool) -> Result<Self, ConfigError> {
        let what = "JWK";
        let obj = v
            .as_object()
            .ok_or_else(|| key_err(what, "not an object"))?;
        let s = |name: &str| -> Result<Option<&str>, ConfigError> {
            match obj.get(name) {
                None => Ok(None),
                Some(Value::String(x)) => Ok(Some(x.as_str())),
                Some(_) => Err(key_err(what, format!("member {name} is not a string"))),
            }
        };
        let req = |name: &str| -> Result<&str, ConfigError> {
            s(name)?.ok_or_else(|| key_err(what, format!("missing member {name}")))
        };
        if let Some(u) = s("use")? {
            if u != "sig" {
                return Err(key_err(what, format!("use={u:?} is not a signature key")));
            }
        }
        // RFC 7517 §4.3: if key_ops is present it must allow "verify".
        if let Some(ops) = obj.get("key_ops") {
            let verify = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
            if !verify {
                return Err(key_err(what, "key_ops does not include \"verify\""));
            }
        }
        let kid = check_kid(s("kid")?, what)?;
        let alg = match s("alg")? {
            None => None,
            Some(a) => Some(
                a.parse::<Algorithm>()
                    .map_err(|_| key_err(what, format!("unsupported alg {a:?}")))?,
            ),
        };
        let kty = req("kty")?;
        if kty != "oct"
            && ["d", "p", "q", "dp", "dq", "qi"]
                .iter()
                .any(|m| obj.contains_key(*m))
        {
            return Err(key_err(
                what,
                "contains private key members; publish public keys only",
            ));
        }
        let b64 = |name: &str| -> Result<Vec<u8>, ConfigError> {
            URL_SAFE_NO_PAD
                .decode(req(name)?)
                .map_err(|_| key_err(what, format!("member {name} is not base64url")))
        };
        let (kind, key) = match kty {
            "RSA" => {
                let n = b64("n")?;
                let e = b64("e")?;
                let n_len = n.iter().skip_while(|b| **b == 0).count();
                if !(MIN_RSA_MODULUS_BYTES..=MAX_RSA_MODULUS_BYTES).contains(&n_len) {
                    return Err(key_err(what, "RSA modulus must be 2048..=8192 bits"));
                }
                (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            "EC" => {
                let (kind, len) = match req("crv")? {
                    "P-256" => (KeyKind::EcP256, 32),
                    "P-384" => (KeyKind::EcP384, 48),
                    c => return Err(key_err(what, format!("unsupported curve {c:?}"))),
                };
                let x = b64("x")?;
                let y = b64("y")?;
                if x.len() != len || y.len() != len {
                    return Err(key_err(
                        what,
                        "EC coordinate length does not match the curve",
                    ));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (kind, DecodingKey::from_ec_der(&point))
            }
            "OKP" => {
                if req("crv")? != "Ed25519" {
                    return Err(key_err(what, "only Ed25519 OKP keys are supported"));
                }
                let x = b64("x")?;
                (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
            }
            "oct" if allow_oct => {
                let k = b64("k")?;
                let mut vk = VerifyingKey::from_hmac_secret(&k, kid.as_deref())?;
                vk.alg = alg;
                if alg.is_some_and(|a| !KeyKind::Hmac.supports(a)) {
                    return Err(key_err(what, "alg does not match kty"));
                }
                return Ok(vk);
            }
            "oct" => {
                return Err(key_err(
                    what,
                    "symmetric (oct) keys are not accepted from a published JWKS",
                ))
            }
            other => return Err(key_err(what, format!("unsupported kty {other:?}"))),
        };
        if alg.is_some_and(|a| !kind.supports(a)) {
            return Err(key_err(what, "alg does not match the key type"));
        }
        let vk = VerifyingKey {
            kid,
            kind,
            alg,
            key,
        };
        vk.self_check(what)?;
        Ok(vk)
    }

    /// Validates the public key with aws-lc at load time (point on curve, RSA
    /// modulus size), so that a bad key is a config error and not a mystery
    /// 401 at request time.
    fn self_check(&self, what: &str) -> Result<(), ConfigError> {
        use jsonwebtoken::DecodingKeyKind as K;
        let bad = |m: &str| key_err(what, m);
        match (self.kind, self.key.kind()) {
            (KeyKind::Rsa, K::SecretOrDer(der)) => {
                let pk = aws_lc_rs::rsa::PublicKey::from_der(der)
                    .map_err(|_| bad("RSA public key rejected"))?;
                if !(MIN_RSA_MODULUS_BYTES..=MAX_RSA_MODULUS_BYTES).contains(&pk.modulus_len()) {
                    return Err(bad("RSA modulus must be 2048..=8192 bits"));
                }
            }
            (KeyKind::Rsa, K::RsaModulusExponent { .. }) => {}
            (KeyKind::EcP256, K::SecretOrDer(p)) => {
                ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, p)
                    .map_err(|_| bad("P-256 point rejected"))?;
            }
            (KeyKind::EcP384, K::SecretOrDer(p)) => {
                ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, p)
                    .map_err(|_| bad("P-384 point rejected"))?;
            }
            (KeyKind::Ed25519, K::SecretOrDer(p)) => {
                if p.len() != 32 {
                    return Err(bad("Ed25519 key must be 32 bytes"));
                }
                ParsedPublicKey::new(&ED25519, p).map_err(|_| bad("Ed25519 key rejected"))?;
            }
            (KeyKind::Hmac, _) => {}
            _ => return Err(bad("inconsistent key encoding")),
        }
        Ok(())
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
    pub fn alg(&self) -> Option<Algorithm> {
        self.alg
    }
    /// Whether a token with this `alg` may be checked against this key: the
    /// key type must support it and a JWK-pinned `alg` must equal it.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.supports(alg) && self.alg.is_none_or(|a| a == alg)
    }
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// Outcome of looking a key up for a token.
#[derive(Debug)]
pub enum KeyLookup {
    Found(Arc<VerifyingKey>),
    /// No key with that `kid` (a refetch may help).
    UnknownKid,
    /// Keys with that `kid` exist but none accepts the token's `alg`.
    AlgMismatch,
    /// No `kid` in the token and several keys could apply: ambiguous, refused
    /// rather than trying each (which would multiply signature work per token).
    KidRequired,
}

/// An immutable set of verification keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    /// Keys skipped while parsing a JWKS (unsupported kty, `use: enc`, ...).
    skipped: usize,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        KeySet {
            keys: keys.into_iter().map(Arc::new).collect(),
            skipped: 0,
        }
    }

    /// Parses a published JWKS document (`{"keys": [...]}`). Keys this gateway
    /// cannot use (encryption keys, unknown types, `oct` secrets, keys with
    /// private members) are skipped, not fatal: IdPs publish mixed sets. A
    /// document with no usable key at all is an error.
    pub fn from_jwks(bytes: &[u8]) -> Result<Self, ConfigError> {
        let what = "JWKS";
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(key_err(what, "document too large"));
        }
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| key_err(what, format!("not JSON: {e}")))?;
        let arr = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| key_err(what, "no \"keys\" array"))?;
        if arr.len() > MAX_JWKS_KEYS {
            return Err(key_err(what, "too many keys"));
        }
        let mut set = KeySet::default();
        for k in arr {
            match VerifyingKey::from_jwk_value(k, false) {
                Ok(vk) => set.keys.push(Arc::new(vk)),
                Err(_) => set.skipped += 1,
            }
        }
        if set.keys.is_empty() {
            return Err(key_err(what, "no usable signature key"));
        }
        Ok(set)
    }

    pub fn from_pem_file(path: &Path, kid: Option<&str>) -> Result<Self, ConfigError> {
        let bytes = read_file(path)?;
        Ok(KeySet::new(vec![VerifyingKey::from_public_pem(
            &bytes, kid,
        )?]))
    }

    pub fn from_jwk_file(path: &Path) -> Result<Self, ConfigError> {
        let bytes = read_file(path)?;
        Ok(KeySet::new(vec![VerifyingKey::from_jwk_json(&bytes)?]))
    }

    pub fn from_jwks_file(path: &Path) -> Result<Self, ConfigError> {
        KeySet::from_jwks(&read_file(path)?)
    }

    /// Union of two sets (e.g. a PEM file plus an HMAC secret).
    pub fn merged(mut self, other: KeySet) -> Self {
        self.keys.extend(other.keys);
        self.skipped += other.skipped;
        self
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn skipped(&self) -> usize {
        self.skipped
    }
    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter().map(|k| &**k)
    }
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == Some(kid))
    }

    /// Selects the key for a token: exact `kid` match among loaded keys only.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup {
        match kid {
            Some(kid) => {
                let mut any = false;
                for k in self.keys.iter().filter(|k| k.kid() == Some(kid)) {
                    any = true;
                    if k.accepts(alg) {
                        return KeyLookup::Found(k.clone());
                    }
                }
                if any {
                    KeyLookup::AlgMismatch
                } else {
                    KeyLookup::UnknownKid
                }
            }
            None => {
                let mut found = self.keys.iter().filter(|k| k.accepts(alg));
                match (found.next(), found.next()) {
                    (Some(k), None) => KeyLookup::Found(k.clone()),
                    (None, _) => KeyLookup::AlgMismatch,
                    (Some(_), Some(_)) => KeyLookup::KidRequired,
                }
            }
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| key_err(&path.display().to_string(), format!("cannot read: {e}")))
}

/// Fetches a JWKS document. The gateway implements this with its upstream
/// layer (TLS, proxying); tests use [`CountingFetcher`].
///
/// The implementation must bound the time (e.g. 5 s) and the body size (see
/// [`MAX_JWKS_BYTES`]) itself: a fetch for an unknown `kid` holds the
/// issuer's single-flight lock, and requests that need fresh keys wait on it.
pub trait JwksFetcher: Send + Sync {
    fn fetch(
        &self,
        url: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>>;
}

/// A fetcher for tests and dev mode: serves a settable body (or failure) and
/// records every call, so tests can prove what was (not) fetched.
#[derive(Debug, Default)]
pub struct CountingFetcher {
    response: Mutex<Option<Result<Vec<u8>, String>>>,
    calls: AtomicUsize,
    urls: Mutex<VecDeque<String>>,
}

impl CountingFetcher {
    pub fn new(body: Vec<u8>) -> Self {
        let f = CountingFetcher::default();
        f.set_body(body);
        f
    }
    /// Serve this document from now on.
    pub fn set_body(&self, body: Vec<u8>) {
        *self.response.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(body));
    }
    /// Fail every fetch from now on (endpoint down).
    pub fn set_failure(&self, msg: &str) {
        *self.response.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(msg.to_owned()));
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    /// URLs fetched, oldest first (the last 100).
    pub fn urls(&self) -> Vec<String> {
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl JwksFetcher for CountingFetcher {
    fn fetch(
        &self,
        url: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        {
            let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
            if urls.len() == 100 {
                urls.pop_front();
            }
            urls.push_back(url.to_owned());
        }
        let r = self
            .response
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| Err("no response configured".to_owned()));
        Box::pin(async move { r })
    }
}

/// Refresh policy for a remote JWKS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksPolicy {
    /// Keys older than this are refreshed on next use (opportunistically: a
    /// request does not wait for it if another fetch is already running).
    pub refresh_interval: Duration,
    /// At most one fetch per this interval, whatever triggers it (unknown
    /// `kid`, refresh, failures): an attacker minting tokens with random `kid`s
    /// cannot turn the gateway into a JWKS-endpoint load generator.
    pub min_refetch_interval: Duration,
    /// Last good keys are used while the endpoint is failing, up to this age
    /// (since the last successful fetch); past it the issuer fails closed (503).
    pub max_stale: Duration,
}

impl Default for JwksPolicy {
    fn default() -> Self {
        JwksPolicy {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
            max_stale: Duration::from_secs(6 * 3600),
        }
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    keys: Arc<KeySet>,
    /// Time of the last successful fetch.
    fetched_at: Option<Duration>,
    /// Time of the last fetch attempt (successful or not).
    attempted_at: Option<Duration>,
    last_error: Option<String>,
    /// Whether a fetch has been tried, here or (adopted) in the previous generation.
    tried: bool,
}

/// Counters of one JWKS state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JwksStats {
    pub fetches: u64,
    pub failures: u64,
    pub keys: usize,
    pub age: Option<Duration>,
}

/// Last good key set of a remote JWKS plus the refresh policy (a.k.a. the
/// key-set cache). Cheap to read on every request (an `RwLock` read of an
/// `Arc`); fetches are single-flight under an async mutex.
pub struct JwksState {
    issuer: String,
    url: String,
    policy: JwksPolicy,
    fetcher: Arc<dyn JwksFetcher>,
    clock: Arc<dyn Clock>,
    snap: RwLock<Arc<Snapshot>>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    failures: AtomicU64,
    /// Set by [`JwksState::adopt`]: the first lookup refetches (waiting for it) before
    /// using the adopted keys.
    refresh_first: std::sync::atomic::AtomicBool,
}

/// Alias: the same type under the name used in design notes.
pub type KeySetCache = JwksState;

impl JwksState {
    /// Takes over what `old` (the same issuer's key set from the config before a
    /// reload, fetched from the same URL) knows: its last good keys and when they were
    /// fetched, so that a reload while the key source is down keeps serving them for the
    /// rest of `max_stale` instead of refusing every token. Returns whether it did.
    pub fn adopt(&self, old: &JwksState) -> bool {
        if old.issuer != self.issuer || old.url != self.url {
            return false;
        }
        let snap = old.snap.read().unwrap_or_else(|p| p.into_inner()).clone();
        // The keys and the time they were fetched (which `max_stale` runs from) carry
        // over; the last attempt does not, so the refetch below is not rate-limited.
        let adopted = Snapshot {
            keys: snap.keys.clone(),
            fetched_at: snap.fetched_at,
            attempted_at: None,
            last_error: snap.last_error.clone(),
            tried: snap.tried,
        };
        *self.snap.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(adopted);
        // A reload is also how an operator forces a fresh key set (a key withdrawn at
        // the IdP): the first lookup fetches anew, and the adopted keys serve only if
        // that fails.
        self.refresh_first.store(true, Ordering::Relaxed);
        true
    }
}

impl fmt::Debug for JwksState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksState")
            .field("issuer", &self.issuer)
            .field("url", &self.url)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl JwksState {
    pub fn new(
        issuer: &str,
        url: &str,
        policy: JwksPolicy,
        fetcher: Arc<dyn JwksFetcher>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        JwksState {
            issuer: issuer.to_owned(),
            url: url.to_owned(),
            policy,
            fetcher,
            clock,
            snap: RwLock::new(Arc::new(Snapshot::default())),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            refresh_first: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn policy(&self) -> JwksPolicy {
        self.policy
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snap.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn stats(&self) -> JwksStats {
        let s = self.current();
        JwksStats {
            fetches: self.fetches.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            keys: s.keys.len(),
            age: s
                .fetched_at
                .map(|t| self.clock.since_epoch().saturating_sub(t)),
        }
    }

    /// Whether this key set's state is known: fetched once, tried once, or taken over
    /// from the previous config (readiness waits for it, as for upstream health).
    pub fn known(&self) -> bool {
        let s = self.current();
        s.tried || s.fetched_at.is_some()
    }

    /// The last successfully fetched key set (may be empty before the first).
    pub fn keys(&self) -> Arc<KeySet> {
        self.current().keys.clone()
    }

    /// Unconditional (but single-flight) fetch, for a background refresher or
    /// startup warm-up. Still respects `min_refetch_interval` if another fetch
    /// happened meanwhile.
    pub async fn refresh(&self) -> Result<(), String> {
        let _g = self.fetch_lock.lock().await;
        let r = self.fetch_locked(true).await;
        if r.is_ok() {
            // Fresh keys: an adopted set's first lookup need not fetch again.
            self.refresh_first.store(false, Ordering::Relaxed);
        }
        r
    }

    /// Fetches with the lock held. Unless `force`, skips when an attempt was
    /// made within `min_refetch_interval` (it may have been made by a task we
    /// waited behind: then its result is already in the snapshot).
    async fn fetch_locked(&self, force: bool) -> Result<(), String> {
        let now = self.clock.since_epoch();
        let cur = self.current();
        if !force {
            if let Some(t) = cur.attempted_at {
                if now.saturating_sub(t) < self.policy.min_refetch_interval {
                    return Ok(());
                }
            }
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = match self.fetcher.fetch(&self.url).await {
            Ok(body) => KeySet::from_jwks(&body).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let next = match &result {
            Ok(set) => Snapshot {
                keys: Arc::new(set.clone()),
                fetched_at: Some(now),
                attempted_at: Some(now),
                last_error: None,
                tried: true,
            },
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Snapshot {
                    keys: cur.keys.clone(),
                    fetched_at: cur.fetched_at,
                    attempted_at: Some(now),
                    last_error: Some(e.clone()),
                    tried: true,
                }
            }
        };
        *self.snap.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        result.map(|_| ())
    }

    /// Fetch if allowed by the rate limit. `wait`: queue behind a running fetch
    /// (needed when we have no usable key); otherwise skip if one is running.
    async fn maybe_fetch(&self, wait: bool) {
        let _g = if wait {
            self.fetch_lock.lock().await
        } else {
            match self.fetch_lock.try_lock() {
                Ok(g) => g,
                Err(_) => return,
            }
        };
        // Errors are recorded in the snapshot; the caller re-reads it.
        let _ = self.fetch_locked(false).await;
    }

    fn unavailable(&self, snap: &Snapshot) -> AuthError {
        AuthError::Unavailable {
            issuer: self.issuer.clone(),
            detail: match &snap.last_error {
                Some(e) => format!("JWKS unavailable: {e}"),
                None => "JWKS not loaded".to_owned(),
            },
        }
    }

    /// Finds the key for a token, applying the refresh policy:
    /// stale keys are refreshed opportunistically; keys older than `max_stale`
    /// fail closed; an unknown `kid` triggers at most one refetch per
    /// `min_refetch_interval`.
    pub async fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyingKey>, AuthError> {
        if self.refresh_first.swap(false, Ordering::Relaxed) {
            self.maybe_fetch(true).await;
        }
        let now = self.clock.since_epoch();
        let mut snap = self.current();
        let age = snap.fetched_at.map(|t| now.saturating_sub(t));
        match age {
            None => {
                self.maybe_fetch(true).await;
                snap = self.current();
            }
            Some(a) if a >= self.policy.refresh_interval => {
                // Must wait if the keys are past max_stale: otherwise the
                // request would fail while a fetch that may succeed is running.
                self.maybe_fetch(a >= self.policy.max_stale).await;
                snap = self.current();
            }
            Some(_) => {}
        }
        let fresh_enough = |s: &Snapshot| {
            s.fetched_at
                .is_some_and(|t| self.clock.since_epoch().saturating_sub(t) < self.policy.max_stale)
        };
        if !fresh_enough(&snap) {
            return Err(self.unavailable(&snap));
        }
        match snap.keys.select(kid, alg) {
            KeyLookup::Found(k) => Ok(k),
            KeyLookup::UnknownKid => {
                // Possibly a key rotated in since our last fetch.
                self.maybe_fetch(true).await;
                let snap = self.current();
                if !fresh_enough(&snap) {
                    return Err(self.unavailable(&snap));
                }
                match snap.keys.select(kid, alg) {
                    KeyLookup::Found(k) => Ok(k),
                    other => Err(lookup_error(other)),
                }
            }
            other => Err(lookup_error(other)),
        }
    }
}

/// Maps a failed lookup to the 401 reason.
pub(crate) fn lookup_error(l: KeyLookup) -> AuthError {
    match l {
        KeyLookup::Found(_) | KeyLookup::UnknownKid => {
            AuthError::unauthorized(reason::UNKNOWN_KID, "no loaded key has this kid")
        }
        KeyLookup::AlgMismatch => AuthError::unauthorized(
            reason::ALG_KEY_MISMATCH,
            "token alg does not match the key type",
        ),
        KeyLookup::KidRequired => AuthError::unauthorized(
            reason::KID_REQUIRED,
            "token has no kid and several keys could apply",
        ),
    }
}

/// Test key material generated at test time with aws-lc-rs (nothing committed).
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;
    use std::sync::OnceLock;

    /// A generated key pair in the forms the tests need.
    pub struct TestKey {
        pub private_pem: Vec<u8>,
        pub public_pem: Vec<u8>,
        /// Public JWK members (without kid/alg).
        pub jwk: Value,
    }

    impl TestKey {
        pub fn jwk_with(&self, kid: &str) -> Value {
            let mut j = self.jwk.clone();
            j["kid"] = json!(kid);
            j
        }
    }

    pub fn pem(label: &str, der: &[u8]) -> Vec<u8> {
        let b = STANDARD.encode(der);
        let mut s = format!("-----BEGIN {label}-----\n");
        for chunk in b.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).unwrap());
            s.push('\n');
        }
        s.push_str(&format!("-----END {label}-----\n"));
        s.into_bytes()
    }

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn gen_rsa() -> TestKey {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let private_pem = pem(
            "PRIVATE KEY",
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)
                .unwrap()
                .as_ref(),
        );
        let public_pem = pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref());
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
        TestKey {
            private_pem,
            public_pem,
            jwk: json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)}),
        }
    }

    fn gen_ec(p384: bool) -> TestKey {
        let rng = SystemRandom::new();
        let alg = if p384 {
            &ECDSA_P384_SHA384_FIXED_SIGNING
        } else {
            &ECDSA_P256_SHA256_FIXED_SIGNING
        };
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref()).unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let n = (point.len() - 1) / 2;
        TestKey {
            private_pem: pem("PRIVATE KEY", doc.as_ref()),
            public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
            jwk: json!({"kty": "EC", "crv": if p384 {"P-384"} else {"P-256"},
                        "x": b64(&point[1..=n]), "y": b64(&point[n + 1..])}),
        }
    }

    fn gen_ed() -> TestKey {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        TestKey {
            private_pem: pem("PRIVATE KEY", doc.as_ref()),
            public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key().as_ref())}),
        }
    }

    macro_rules! cached {
        ($name:ident, $e:expr) => {
            pub fn $name() -> &'static TestKey {
                static K: OnceLock<TestKey> = OnceLock::new();
                K.get_or_init(|| $e)
            }
        };
    }
    cached!(rsa, gen_rsa());
    cached!(rsa2, gen_rsa());
    cached!(p256, gen_ec(false));
    cached!(p256_b, gen_ec(false));
    cached!(p384, gen_ec(true));
    cached!(ed25519, gen_ed());

    pub fn jwks(keys: &[Value]) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn pem_kinds_detected_and_private_pem_refused() {
        assert_eq!(
            VerifyingKey::from_public_pem(&rsa().public_pem, None)
                .unwrap()
                .kind(),
            KeyKind::Rsa
        );
        assert_eq!(
            VerifyingKey::from_public_pem(&p256().public_pem, None)
                .unwrap()
                .kind(),
            KeyKind::EcP256
        );
        assert_eq!(
            VerifyingKey::from_public_pem(&p384().public_pem, None)
                .unwrap()
                .kind(),
            KeyKind::EcP384
        );
        assert_eq!(
            VerifyingKey::from_public_pem(&ed25519().public_pem, Some("ed"))
                .unwrap()
                .kind(),
            KeyKind::Ed25519
        );
        for k in [rsa(), p256(), ed25519()] {
            let e = VerifyingKey::from_public_pem(&k.private_pem, None).unwrap_err();
            assert!(e.to_string().contains("private key"), "{e}");
        }
        assert!(VerifyingKey::from_public_pem(b"garbage", None).is_err());
        assert!(
            VerifyingKey::from_public_pem(&pem("PUBLIC KEY", b"\x30\x03\x02\x01\x01"), None)
                .is_err()
        );
    }

    #[test]
    fn hmac_secret_length_enforced() {
        let e = VerifyingKey::from_hmac_secret(b"short-secret", None).unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
        assert!(VerifyingKey::from_hmac_secret(&[7u8; 31], None).is_err());
        assert!(VerifyingKey::from_hmac_secret(&[7u8; 32], None).is_ok());
        let k = URL_SAFE_NO_PAD.encode([1u8; 16]);
        assert!(
            VerifyingKey::from_jwk_json(json!({"kty": "oct", "k": k}).to_string().as_bytes())
                .is_err()
        );
    }

    #[test]
    fn key_kinds_gate_algorithms() {
        use Algorithm::*;
        assert!(KeyKind::Hmac.supports(HS256) && !KeyKind::Hmac.supports(RS256));
        for alg in [HS256, HS384, HS512, ES256, ES384, EdDSA] {
            assert!(!KeyKind::Rsa.supports(alg), "{alg:?}");
        }
        assert!(KeyKind::EcP256.supports(ES256) && !KeyKind::EcP256.supports(ES384));
        assert!(KeyKind::EcP384.supports(ES384) && !KeyKind::EcP384.supports(ES256));
        assert!(!KeyKind::Ed25519.supports(HS256));
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        let doc = jwks(&[
            rsa().jwk_with("r1"),
            json!({"kty": "RSA", "use": "enc", "kid": "enc1", "n": rsa().jwk["n"], "e": "AQAB"}),
            json!({"kty": "oct", "kid": "leak", "k": URL_SAFE_NO_PAD.encode([9u8; 32])}),
            json!({"kty": "OKP", "crv": "X25519", "x": "abc"}),
            json!({"kty": "EC", "crv": "P-256", "kid": "priv", "x": p256().jwk["x"], "y": p256().jwk["y"], "d": "AAAA"}),
            json!({"kty": "EC", "crv": "P-256", "kid": "offcurve", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])}),
            p256().jwk_with("e1"),
            ed25519().jwk_with("ed1"),
            {
                let mut j = p384().jwk_with("e384");
                j["alg"] = json!("ES384");
                j
            },
        ]);
        let set = KeySet::from_jwks(&doc).unwrap();
        assert_eq!(set.len(), 4);
        assert_eq!(set.skipped(), 5);
        assert!(matches!(
            set.select(Some("r1"), Algorithm::RS256),
            KeyLookup::Found(_)
        ));
        assert!(matches!(
            set.select(Some("r1"), Algorithm::HS256),
            KeyLookup::AlgMismatch
        ));
        assert!(matches!(
            set.select(Some("e384"), Algorithm::ES384),
            KeyLookup::Found(_)
        ));
        assert!(matches!(
            set.select(Some("leak"), Algorithm::HS256),
            KeyLookup::UnknownKid
        ));
        assert!(matches!(
            set.select(None, Algorithm::EdDSA),
            KeyLookup::Found(_)
        ));
        assert!(KeySet::from_jwks(b"{\"keys\": []}").is_err());
        assert!(KeySet::from_jwks(b"[]").is_err());
        assert!(KeySet::from_jwks(&vec![b' '; MAX_JWKS_BYTES + 1]).is_err());
    }

    #[test]
    fn kid_lookup_is_exact_in_memory_only() {
        let set = KeySet::new(vec![
            VerifyingKey::from_public_pem(&rsa().public_pem, Some("k1")).unwrap(),
            VerifyingKey::from_public_pem(&rsa2().public_pem, Some("k2")).unwrap(),
        ]);
        for kid in [
            "../../etc/passwd",
            "' OR 1=1 --",
            "k1\0",
            "K1",
            "k1 ",
            "/k1",
            "%6b1",
            "",
        ] {
            assert!(
                matches!(
                    set.select(Some(kid), Algorithm::RS256),
                    KeyLookup::UnknownKid
                ),
                "{kid:?}"
            );
        }
        assert!(matches!(
            set.select(None, Algorithm::RS256),
            KeyLookup::KidRequired
        ));
    }

    #[test]
    fn key_files_load() {
        let dir = std::env::temp_dir().join(format!("lienthong-auth-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem_path = dir.join("k.pem");
        std::fs::write(&pem_path, &ed25519().public_pem).unwrap();
        let jwk_path = dir.join("k.jwk");
        std::fs::write(&jwk_path, p256().jwk_with("p").to_string()).unwrap();
        let jwks_path = dir.join("k.jwks");
        std::fs::write(&jwks_path, jwks(&[rsa().jwk_with("r")])).unwrap();
        let set = KeySet::from_pem_file(&pem_path, Some("e"))
            .unwrap()
            .merged(KeySet::from_jwk_file(&jwk_path).unwrap())
            .merged(KeySet::from_jwks_file(&jwks_path).unwrap());
        assert_eq!(set.len(), 3);
        assert!(set.contains_kid("e") && set.contains_kid("p") && set.contains_kid("r"));
        assert!(KeySet::from_pem_file(&dir.join("missing.pem"), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
