//! JWT bearer-token verification (RFC 7519 / RFC 7515, hardened per RFC 8725).
//!
//! Pipeline for one request ([`Authenticator::authenticate`]):
//!
//! 1. [`extract_bearer`]: exactly one token, from exactly one `Authorization:
//!    Bearer` header (none in the query string).
//! 2. Size cap, checked before any decoding.
//! 3. Verified-token cache (moka, keyed by SHA-256 of the token): a repeat
//!    caller costs a hash and a lookup. Entries never outlive the token's `exp`
//!    (nor `AuthOptions::cache_max_ttl`, which bounds how long a removed key
//!    keeps working for already-seen tokens).
//! 4. Strict compact-JWS parse: three base64url segments without padding,
//!    header a JSON object, `alg` never `none` (any casing), `crit` refused
//!    (no extension is understood), `kid` bounded. `jku`, `x5u`, `jwk` and `x5c`
//!    are never read: keys come only from configuration.
//! 5. Issuer chosen by the (not yet trusted) `iss`; from then on that issuer's
//!    policy applies: its algorithm allow-list, `typ`, size cap, and its keys.
//!    The algorithm is *never* taken from the token alone: it must be in the
//!    issuer's list *and* supported by the selected key's type (see
//!    `super::keys::KeyKind`), which blocks RSA/EC-public-key-as-HMAC-secret
//!    confusion.
//! 6. Signature (jsonwebtoken's aws-lc-rs backend), then `exp` (required),
//!    `nbf`, `iat`, maximum lifetime, `aud` (required), then the [`Caller`].
//!
//! Errors carry a machine reason code (see [`reason`]) for logs and metrics;
//! clients only ever see `invalid_token` (401), `insufficient_scope` (403) or
//! `issuer_unavailable` (503).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value};

use super::caller::{Caller, ClaimMapping};
use super::keys::{
    lookup_error, JwksFetcher, JwksPolicy, JwksState, KeyKind, KeySet, VerifyingKey, MAX_KID_LEN,
    MIN_HMAC_SECRET_BYTES,
};
use crate::clock::Clock;

/// Reason codes (`&'static str`, low cardinality) for metrics and logs.
pub mod reason {
    // 401
    pub const MISSING_TOKEN: &str = "missing_token";
    pub const MULTIPLE_TOKENS: &str = "multiple_tokens";
    pub const TOKEN_IN_QUERY: &str = "token_in_query";
    pub const BAD_SCHEME: &str = "bad_scheme";
    pub const TOKEN_TOO_LARGE: &str = "token_too_large";
    pub const MALFORMED: &str = "malformed";
    pub const ALG_NONE: &str = "alg_none";
    pub const ALG_NOT_ALLOWED: &str = "alg_not_allowed";
    pub const ALG_KEY_MISMATCH: &str = "alg_key_mismatch";
    pub const CRIT_UNSUPPORTED: &str = "crit_unsupported";
    pub const WRONG_TYP: &str = "wrong_typ";
    pub const UNKNOWN_KID: &str = "unknown_kid";
    pub const KID_REQUIRED: &str = "kid_required";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const MISSING_ISS: &str = "missing_iss";
    pub const UNKNOWN_ISSUER: &str = "unknown_issuer";
    pub const MISSING_EXP: &str = "missing_exp";
    pub const EXPIRED: &str = "expired";
    pub const NOT_YET_VALID: &str = "not_yet_valid";
    pub const IAT_IN_FUTURE: &str = "iat_in_future";
    pub const LIFETIME_TOO_LONG: &str = "lifetime_too_long";
    pub const MISSING_AUD: &str = "missing_aud";
    pub const WRONG_AUDIENCE: &str = "wrong_audience";
    pub const MISSING_SUB: &str = "missing_sub";
    pub const INVALID_CLAIMS: &str = "invalid_claims";
    // 403
    pub const NO_RULE: &str = "no_rule";
    pub const AGENCY_NOT_ALLOWED: &str = "agency_not_allowed";
    pub const ROLE_MISSING: &str = "role_missing";
    pub const SCOPE_MISSING: &str = "scope_missing";
    pub const CERT_BINDING_MISMATCH: &str = "cert_binding_mismatch";
    // 503
    pub const ISSUER_UNAVAILABLE: &str = "issuer_unavailable";
}

/// An authentication or authorization failure.
///
/// `detail` is for operators (logs). It never contains the token, key bytes or
/// attacker-chosen strings such as the `kid`; clients must not be shown it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unauthorized ({reason}): {detail}")]
    Unauthorized {
        reason: &'static str,
        detail: String,
    },
    #[error("forbidden ({reason}): {detail}")]
    Forbidden {
        reason: &'static str,
        detail: String,
    },
    #[error("issuer {issuer:?} unavailable: {detail}")]
    Unavailable { issuer: String, detail: String },
}

/// Classification of an [`AuthError`] for the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorKind<'a> {
    /// 401; the reason code is for metrics/logs only.
    Unauthorized(&'static str),
    /// 403.
    Forbidden(&'static str),
    /// 503: the issuer's keys cannot be obtained (fail closed). Carries the
    /// issuer name.
    Unavailable(&'a str),
}

impl AuthError {
    pub fn unauthorized(reason: &'static str, detail: impl Into<String>) -> Self {
        AuthError::Unauthorized {
            reason,
            detail: detail.into(),
        }
    }
    pub fn forbidden(reason: &'static str, detail: impl Into<String>) -> Self {
        AuthError::Forbidden {
            reason,
            detail: detail.into(),
        }
    }
    pub fn kind(&self) -> AuthErrorKind<'_> {
        match self {
            AuthError::Unauthorized { reason, .. } => AuthErrorKind::Unauthorized(reason),
            AuthError::Forbidden { reason, .. } => AuthErrorKind::Forbidden(reason),
            AuthError::Unavailable { issuer, .. } => AuthErrorKind::Unavailable(issuer),
        }
    }
    /// Reason code for the `auth_failures_total{reason=...}` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Unauthorized { reason, .. } | AuthError::Forbidden { reason, .. } => reason,
            AuthError::Unavailable { .. } => reason::ISSUER_UNAVAILABLE,
        }
    }
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Unauthorized { .. } => 401,
            AuthError::Forbidden { .. } => 403,
            AuthError::Unavailable { .. } => 503,
        }
    }
    /// The only error code a client sees (RFC 6750 §3.1 codes for 401/403).
    /// Distinguishing `expired` from `bad_signature` to clients would help
    /// attackers probe; operators have [`AuthError::reason`].
    pub fn client_error(&self) -> &'static str {
        match self {
            AuthError::Unauthorized { .. } => "invalid_token",
            AuthError::Forbidden { .. } => "insufficient_scope",
            AuthError::Unavailable { .. } => reason::ISSUER_UNAVAILABLE,
        }
    }
    /// Value for a `WWW-Authenticate` response header (401/403 only).
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            // RFC 6750 §3.1: no error code when the request had no token.
            AuthError::Unauthorized { reason, .. } if *reason == reason::MISSING_TOKEN => {
                Some("Bearer".to_owned())
            }
            AuthError::Unauthorized { .. } | AuthError::Forbidden { .. } => {
                Some(format!("Bearer error=\"{}\"", self.client_error()))
            }
            AuthError::Unavailable { .. } => None,
        }
    }
}

fn unauth(reason: &'static str, detail: &str) -> AuthError {
    AuthError::unauthorized(reason, detail)
}

/// Configuration errors, raised when building issuers, keys and rules (never
/// at request time).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("auth issuer {issuer:?}: {message}")]
    Issuer { issuer: String, message: String },
    #[error("auth key ({source_desc}): {message}")]
    Key {
        source_desc: String,
        message: String,
    },
    #[error("access rule: {0}")]
    Rule(String),
}

/// Algorithms an issuer may allow. HS256 additionally needs a locally
/// configured secret of at least 32 bytes. (HS384/512, PS384/512 are left out
/// on purpose: no issuer in scope uses them, and every extra algorithm is
/// attack surface.)
pub const ALLOWED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::HS256,
];

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Fixed keys from PEM / JWK / JWKS files or an HMAC secret.
    Static(KeySet),
    /// A remote JWKS, fetched through the gateway's [`JwksFetcher`].
    Jwks { url: String, policy: JwksPolicy },
}

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Stable label for logs/metrics; becomes [`Caller::issuer`].
    pub name: String,
    /// Exact expected `iss` value.
    pub iss: String,
    /// Accepted `aud` values (token must carry at least one of them).
    pub audiences: Vec<String>,
    /// Accepted `alg` values (subset of [`ALLOWED_ALGORITHMS`]).
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew allowance for `exp`/`nbf`/`iat`.
    pub leeway: Duration,
    /// Longest accepted token lifetime: `exp - iat`, or `exp - now` without `iat`.
    pub max_lifetime: Duration,
    /// Required `typ` header (e.g. `JWT`, `at+jwt`), compared case-insensitively
    /// with or without the `application/` prefix. `None`: not checked.
    pub required_typ: Option<String>,
    /// Size cap for this issuer's tokens (bytes of the compact form).
    pub max_token_bytes: usize,
    pub keys: KeySource,
    pub claims: ClaimMapping,
    /// Agencies this issuer may vouch for; empty: any. A token naming another agency is
    /// refused: with several issuers trusted, one must not speak for another's agencies.
    pub agencies: Vec<crate::auth::rules::AgencyPattern>,
}

impl IssuerConfig {
    /// An issuer with conservative defaults: leeway 60 s, max lifetime 1 h,
    /// no `typ` requirement, 8 KiB token cap, default claim mapping.
    pub fn new(
        name: &str,
        iss: &str,
        audiences: Vec<String>,
        algorithms: Vec<Algorithm>,
        keys: KeySource,
    ) -> Self {
        IssuerConfig {
            name: name.to_owned(),
            iss: iss.to_owned(),
            audiences,
            algorithms,
            leeway: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(3600),
            required_typ: None,
            max_token_bytes: 8 * 1024,
            keys,
            claims: ClaimMapping::default(),
            agencies: Vec::new(),
        }
    }
}

/// Authenticator-wide options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthOptions {
    /// Max entries in the verified-token cache.
    pub cache_capacity: u64,
    /// Upper bound on how long a verified token is served from the cache
    /// (besides its `exp`): bounds the window in which a key removed from a
    /// JWKS still validates tokens that were already seen.
    pub cache_max_ttl: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            cache_capacity: 10_000,
            cache_max_ttl: Duration::from_secs(300),
        }
    }
}

/// `typ` comparison form: ASCII-lowercase, without `application/` (RFC 7515 §4.1.9).
fn normalize_typ(t: &str) -> String {
    let l = t.to_ascii_lowercase();
    match l.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => l,
    }
}

enum IssuerKeys {
    Static(Arc<KeySet>),
    Jwks(Arc<JwksState>),
}

struct Issuer {
    cfg: IssuerConfig,
    typ: Option<String>,
    keys: IssuerKeys,
}

impl Issuer {
    async fn select_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyingKey>, AuthError> {
        match &self.keys {
            IssuerKeys::Static(set) => match set.select(kid, alg) {
                super::keys::KeyLookup::Found(k) => Ok(k),
                other => Err(lookup_error(other)),
            },
            IssuerKeys::Jwks(state) => state.select(kid, alg).await,
        }
    }
}

#[derive(Debug)]
struct CachedCaller {
    caller: Arc<Caller>,
    /// Unix seconds after which the entry must not be served.
    valid_until: u64,
    /// For moka's per-entry expiry (eviction only; `valid_until` is authoritative).
    ttl: Duration,
}

struct EntryExpiry;

impl moka::Expiry<[u8; 32], Arc<CachedCaller>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<CachedCaller>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Verified-token cache counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

/// Verifies bearer tokens against a set of configured issuers.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    max_token_bytes: usize,
    clock: Arc<dyn Clock>,
    options: AuthOptions,
    cache: moka::sync::Cache<[u8; 32], Arc<CachedCaller>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.cfg.name).collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn issuer_err(cfg: &IssuerConfig, message: impl Into<String>) -> ConfigError {
    ConfigError::Issuer {
        issuer: cfg.name.clone(),
        message: message.into(),
    }
}

fn validate_issuer(cfg: &IssuerConfig) -> Result<(), ConfigError> {
    if cfg.name.is_empty() || cfg.iss.is_empty() {
        return Err(issuer_err(cfg, "name and iss must be non-empty"));
    }
    if cfg.audiences.is_empty() || cfg.audiences.iter().any(String::is_empty) {
        return Err(issuer_err(
            cfg,
            "at least one non-empty audience is required (aud is always checked)",
        ));
    }
    if cfg.algorithms.is_empty() {
        return Err(issuer_err(cfg, "no algorithms allowed"));
    }
    for alg in &cfg.algorithms {
        if !ALLOWED_ALGORITHMS.contains(alg) {
            return Err(issuer_err(
                cfg,
                format!("algorithm {alg:?} is not allowed (allowed: {ALLOWED_ALGORITHMS:?})"),
            ));
        }
    }
    if cfg.max_lifetime.is_zero() || cfg.max_token_bytes == 0 {
        return Err(issuer_err(
            cfg,
            "max_lifetime and max_token_bytes must be > 0",
        ));
    }
    let wants_hs = cfg.algorithms.contains(&Algorithm::HS256);
    match &cfg.keys {
        KeySource::Static(set) => {
            if set.is_empty() {
                return Err(issuer_err(cfg, "no keys configured"));
            }
            if wants_hs && !set.iter().any(|k| k.kind() == KeyKind::Hmac) {
                return Err(issuer_err(
                    cfg,
                    format!(
                        "HS256 is allowed but no HMAC secret is configured \
                         (it must be at least {MIN_HMAC_SECRET_BYTES} bytes)"
                    ),
                ));
            }
            if !set
                .iter()
                .any(|k| cfg.algorithms.iter().any(|a| k.accepts(*a)))
            {
                return Err(issuer_err(
                    cfg,
                    "none of the configured keys can verify any allowed algorithm",
                ));
            }
        }
        KeySource::Jwks { url, policy } => {
            if wants_hs {
                return Err(issuer_err(
                    cfg,
                    "HS256 needs a locally configured secret; a JWKS never supplies HMAC keys",
                ));
            }
            let local_http = url
                .strip_prefix("http://")
                .and_then(|rest| rest.split('/').next())
                .map(|authority| match authority.rsplit_once(':') {
                    Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                    _ => authority,
                })
                .is_some_and(is_loopback_host);
            if !(url.starts_with("https://") || local_http) {
                return Err(issuer_err(
                    cfg,
                    "JWKS url must be https:// (plain http only on loopback)",
                ));
            }
            if policy.min_refetch_interval.is_zero() || policy.max_stale < policy.refresh_interval {
                return Err(issuer_err(
                    cfg,
                    "JWKS policy needs min_refetch_interval > 0 and max_stale >= refresh_interval",
                ));
            }
        }
    }
    Ok(())
}

impl Authenticator {
    /// Builds the authenticator, validating every issuer. `fetcher` serves the
    /// JWKS issuers (unused when all keys are static); `clock` is
    /// `Arc::new(SystemClock)` outside tests.
    pub fn new(
        issuers: Vec<IssuerConfig>,
        options: AuthOptions,
        fetcher: Arc<dyn JwksFetcher>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        // Pin jsonwebtoken to the aws-lc-rs backend explicitly, so that another
        // crate enabling `rust_crypto` cannot make provider selection ambiguous
        // (which would panic at first use). Err = a provider is already set.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();

        let mut names = HashSet::new();
        let mut by_iss = HashMap::new();
        let mut built = Vec::with_capacity(issuers.len());
        for cfg in issuers {
            validate_issuer(&cfg)?;
            if !names.insert(cfg.name.clone()) {
                return Err(issuer_err(&cfg, "duplicate issuer name"));
            }
            if by_iss.insert(cfg.iss.clone(), built.len()).is_some() {
                return Err(issuer_err(&cfg, "another issuer has the same iss"));
            }
            let keys = match &cfg.keys {
                KeySource::Static(set) => IssuerKeys::Static(Arc::new(set.clone())),
                KeySource::Jwks { url, policy } => IssuerKeys::Jwks(Arc::new(JwksState::new(
                    &cfg.name,
                    url,
                    *policy,
                    fetcher.clone(),
                    clock.clone(),
                ))),
            };
            built.push(Issuer {
                typ: cfg.required_typ.as_deref().map(normalize_typ),
                cfg,
                keys,
            });
        }
        let max_token_bytes = built
            .iter()
            .map(|i| i.cfg.max_token_bytes)
            .max()
            .unwrap_or(0);
        let cache = moka::sync::Cache::builder()
            .max_capacity(options.cache_capacity)
            .expire_after(EntryExpiry)
            .build();
        Ok(Authenticator {
            issuers: built,
            by_iss,
            max_token_bytes,
            clock,
            options,
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The JWKS-backed issuers, for a background refresher / readiness probe.
    pub fn jwks_states(&self) -> Vec<Arc<JwksState>> {
        self.issuers
            .iter()
            .filter_map(|i| match &i.keys {
                IssuerKeys::Jwks(s) => Some(s.clone()),
                IssuerKeys::Static(_) => None,
            })
            .collect()
    }

    /// Fetches every JWKS once (startup warm-up); returns per-issuer results.
    pub async fn warm_up(&self) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for s in self.jwks_states() {
            out.push((s.issuer().to_owned(), s.refresh().await));
        }
        out
    }

    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
        }
    }

    /// Drops a token from the verified cache (benchmarks, logout hooks).
    pub fn invalidate(&self, token: &str) {
        self.cache.invalidate(&token_hash(token));
    }

    /// Request entry point: the raw values of every `Authorization` header and
    /// whether the query string carries `access_token`.
    pub async fn authenticate(
        &self,
        authorization_headers: &[&[u8]],
        query_has_access_token: bool,
    ) -> Result<Arc<Caller>, AuthError> {
        let token = extract_bearer(authorization_headers, query_has_access_token)?;
        self.verify(token).await
    }

    /// The caller of a token this authenticator has verified and still holds in its
    /// cache, unexpired: what [`Authenticator::authenticate`] would answer without
    /// verifying anything. None for anything else (no or several tokens, a miss, an
    /// expired entry), which `authenticate` then decides. Synchronous, for the HTTP/1
    /// fast path. Not counted as a cache hit: a caller that then takes the fast path
    /// counts it ([`Authenticator::count_hit`]); one that falls back is counted by
    /// `authenticate`.
    pub fn cached(
        &self,
        authorization_headers: &[&[u8]],
        query_has_access_token: bool,
    ) -> Option<Arc<Caller>> {
        let token = extract_bearer(authorization_headers, query_has_access_token).ok()?;
        if token.len() > self.max_token_bytes {
            return None;
        }
        let hit = self.cache.get(&token_hash(token))?;
        if self.clock.since_epoch().as_secs() >= hit.valid_until {
            return None;
        }
        Some(hit.caller.clone())
    }

    /// Counts a verified-token cache hit that [`Authenticator::authenticate`] did not
    /// see (the fast path's, after [`Authenticator::cached`]).
    pub fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Verifies one compact JWT into a [`Caller`], using the cache.
    pub async fn verify(&self, token: &str) -> Result<Arc<Caller>, AuthError> {
        // Cap first: nothing below (hashing included) runs on oversized input.
        if token.len() > self.max_token_bytes {
            return Err(unauth(reason::TOKEN_TOO_LARGE, "token exceeds size cap"));
        }
        let key = token_hash(token);
        let now = self.clock.since_epoch().as_secs();
        if let Some(hit) = self.cache.get(&key) {
            if now < hit.valid_until {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit.caller.clone());
            }
            self.cache.invalidate(&key);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let caller = Arc::new(self.verify_uncached(token).await?);
        let now = self.clock.since_epoch().as_secs();
        let valid_until = caller
            .expires_at
            .min(now.saturating_add(self.options.cache_max_ttl.as_secs()));
        if valid_until > now {
            self.cache.insert(
                key,
                Arc::new(CachedCaller {
                    caller: caller.clone(),
                    valid_until,
                    ttl: Duration::from_secs(valid_until - now),
                }),
            );
        }
        Ok(caller)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Caller, AuthError> {
        let jws = parse_compact(token)?;
        let claims = parse_claims(&jws.payload)?;
        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(unauth(reason::INVALID_CLAIMS, "iss is not a string")),
            None => return Err(unauth(reason::MISSING_ISS, "no iss claim")),
        };
        let issuer = self
            .by_iss
            .get(iss)
            .map(|i| &self.issuers[*i])
            .ok_or_else(|| unauth(reason::UNKNOWN_ISSUER, "iss is not a configured issuer"))?;
        let cfg = &issuer.cfg;
        if token.len() > cfg.max_token_bytes {
            return Err(unauth(
                reason::TOKEN_TOO_LARGE,
                "token exceeds issuer size cap",
            ));
        }
        if !cfg.algorithms.contains(&jws.header.alg) {
            return Err(unauth(
                reason::ALG_NOT_ALLOWED,
                "alg not allowed for this issuer",
            ));
        }
        if let Some(want) = &issuer.typ {
            match &jws.header.typ {
                Some(t) if normalize_typ(t) == *want => {}
                _ => return Err(unauth(reason::WRONG_TYP, "typ header missing or wrong")),
            }
        }
        let key = issuer
            .select_key(jws.header.kid.as_deref(), jws.header.alg)
            .await?;
        verify_signature(&jws, &key)?;

        let now = self.clock.since_epoch().as_secs();
        let times = validate_time_claims(
            &claims,
            now,
            cfg.leeway.as_secs(),
            Some(cfg.max_lifetime.as_secs()),
        )?;
        validate_audience(&claims, &cfg.audiences)?;
        let caller = cfg.claims.map_claims(&cfg.name, &claims, times.exp)?;
        if let Some(a) = &caller.agency {
            if !cfg.agencies.is_empty() && !cfg.agencies.iter().any(|p| p.matches(a)) {
                return Err(unauth(
                    reason::INVALID_CLAIMS,
                    "the issuer may not vouch for this agency",
                ));
            }
        }
        Ok(caller)
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// RFC 6750 §2.1 `b64token` characters.
fn is_b64token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Extracts the single bearer token of a request.
///
/// Rejects: no token (`missing_token`); more than one `Authorization` header,
/// or a header token plus an `access_token` query parameter (`multiple_tokens`,
/// RFC 6750 §2: one method per request); a token only in the query
/// (`token_in_query`: URLs end up in logs, so this gateway does not accept
/// RFC 6750 §2.3); a scheme other than `Bearer` (`bad_scheme`); anything that
/// is not one `b64token` (`malformed`, which also catches comma-joined values).
pub fn extract_bearer<'a>(
    authorization_headers: &[&'a [u8]],
    query_has_access_token: bool,
) -> Result<&'a str, AuthError> {
    let h = match authorization_headers {
        [] if query_has_access_token => {
            return Err(unauth(
                reason::TOKEN_IN_QUERY,
                "access_token in the query string is not accepted",
            ))
        }
        [] => return Err(unauth(reason::MISSING_TOKEN, "no Authorization header")),
        [_, _, ..] => {
            return Err(unauth(
                reason::MULTIPLE_TOKENS,
                "more than one Authorization header",
            ))
        }
        [h] => *h,
    };
    if query_has_access_token {
        return Err(unauth(
            reason::MULTIPLE_TOKENS,
            "token in both Authorization header and query string",
        ));
    }
    let s = std::str::from_utf8(h)
        .map_err(|_| unauth(reason::MALFORMED, "Authorization header is not UTF-8"))?;
    let (scheme, rest) = s
        .split_once(' ')
        .ok_or_else(|| unauth(reason::BAD_SCHEME, "Authorization is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauth(
            reason::BAD_SCHEME,
            "Authorization scheme is not Bearer",
        ));
    }
    let token = rest.trim_start_matches(' ').trim_end_matches([' ', '\t']);
    if token.is_empty() {
        return Err(unauth(reason::MISSING_TOKEN, "empty bearer token"));
    }
    if !token.bytes().all(is_b64token_char) {
        return Err(unauth(
            reason::MALFORMED,
            "bearer token has invalid characters",
        ));
    }
    Ok(token)
}

/// The protected header fields this verifier acts on. Anything else in the
/// header (`jku`, `x5u`, `jwk`, `x5c`, `x5t`, ...) is deliberately never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// A parsed compact JWS (signature not yet verified).
#[derive(Debug)]
pub struct CompactJws<'a> {
    pub header: JoseHeader,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`.
    pub signing_input: &'a str,
    pub payload: Vec<u8>,
    /// The signature segment (base64url).
    pub signature: &'a str,
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `crit` extensions this verifier understands (RFC 7515 §4.1.11): none.
/// Any token listing an extension must be refused, since we cannot honour it.
const UNDERSTOOD_CRIT: &[&str] = &[];

/// Strict compact-serialization parse (RFC 7515 §7.1) and header policy.
pub fn parse_compact(token: &str) -> Result<CompactJws<'_>, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unauth(reason::MALFORMED, "not a three-part compact JWS"));
    };
    if h.is_empty() || p.is_empty() || !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
        return Err(unauth(
            reason::MALFORMED,
            "segments must be non-empty base64url without padding",
        ));
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| unauth(reason::MALFORMED, "header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
        .map_err(|_| unauth(reason::MALFORMED, "header is not a JSON object"))?;

    let alg = match header.get("alg") {
        Some(Value::String(a)) => {
            // RFC 8725 §3.1 / RFC 7518 §3.6: never accept unsecured JWS, in
            // whatever spelling a lenient parser elsewhere might accept.
            if a.eq_ignore_ascii_case("none") {
                return Err(unauth(reason::ALG_NONE, "alg none is never accepted"));
            }
            // Exact, case-sensitive names (RFC 7515 §4.1.1).
            a.parse::<Algorithm>()
                .map_err(|_| unauth(reason::ALG_NOT_ALLOWED, "unknown alg"))?
        }
        _ => return Err(unauth(reason::MALFORMED, "alg missing or not a string")),
    };
    if let Some(crit) = header.get("crit") {
        let ok = match crit {
            Value::Array(items) if !items.is_empty() => items.iter().all(|i| {
                i.as_str()
                    .is_some_and(|n| UNDERSTOOD_CRIT.contains(&n) && header.contains_key(n))
            }),
            _ => false,
        };
        if !ok {
            return Err(unauth(
                reason::CRIT_UNSUPPORTED,
                "crit lists an extension this verifier does not understand",
            ));
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= MAX_KID_LEN => Some(k.clone()),
        Some(_) => return Err(unauth(reason::MALFORMED, "kid is not a short string")),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(unauth(reason::MALFORMED, "typ is not a string")),
    };
    if s.is_empty() {
        return Err(unauth(reason::MALFORMED, "signature segment is empty"));
    }
    // Decode strictly here (canonical base64url) even though jsonwebtoken
    // decodes again: one token string ↔ one signature, for the cache key.
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| unauth(reason::MALFORMED, "signature is not base64url"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| unauth(reason::MALFORMED, "payload is not base64url"))?;
    Ok(CompactJws {
        header: JoseHeader { alg, kid, typ },
        signing_input: &token[..h.len() + 1 + p.len()],
        payload,
        signature: s,
    })
}

/// Lowest layer: checks a raw signature over `message` with `key` under `alg`.
/// The key type gate runs first; jsonwebtoken (aws-lc-rs backend) does the
/// cryptography. `signature_b64` is base64url without padding.
pub fn verify_raw(
    key: &VerifyingKey,
    alg: Algorithm,
    message: &[u8],
    signature_b64: &str,
) -> Result<(), AuthError> {
    if !key.accepts(alg) {
        return Err(unauth(
            reason::ALG_KEY_MISMATCH,
            "alg does not match the key type",
        ));
    }
    match jsonwebtoken::crypto::verify(signature_b64, message, key.decoding_key(), alg) {
        Ok(true) => Ok(()),
        Ok(false) => Err(unauth(reason::BAD_SIGNATURE, "signature does not verify")),
        // The backend refused the key/alg pairing, or the signature is not
        // decodable: either way, not a valid signature.
        Err(_) => Err(unauth(reason::BAD_SIGNATURE, "signature check failed")),
    }
}

fn verify_signature(jws: &CompactJws<'_>, key: &VerifyingKey) -> Result<(), AuthError> {
    verify_raw(
        key,
        jws.header.alg,
        jws.signing_input.as_bytes(),
        jws.signature,
    )
}

/// JWS-level verification of a compact token with one known key and an
/// algorithm allow-list (no claims checks). Used by the vector tests and by
/// tools; the gateway path is [`Authenticator::verify`].
pub fn verify_jws<'a>(
    token: &'a str,
    key: &VerifyingKey,
    algorithms: &[Algorithm],
) -> Result<CompactJws<'a>, AuthError> {
    let jws = parse_compact(token)?;
    if !algorithms.contains(&jws.header.alg) {
        return Err(unauth(reason::ALG_NOT_ALLOWED, "alg not allowed"));
    }
    verify_signature(&jws, key)?;
    Ok(jws)
}

/// The payload must be a JSON object (RFC 7519 §7.2 step 10).
pub fn parse_claims(payload: &[u8]) -> Result<Map<String, Value>, AuthError> {
    serde_json::from_slice::<Map<String, Value>>(payload)
        .map_err(|_| unauth(reason::MALFORMED, "payload is not a JSON object"))
}

/// Registered time claims after validation (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeClaims {
    pub exp: u64,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
}

/// RFC 7519 NumericDate: a JSON number (possibly fractional) of seconds.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_u64().map(|u| u as f64).or_else(|| n.as_f64());
            match v {
                // 2^53: beyond it f64 cannot hold whole seconds exactly.
                Some(f) if (0.0..9_007_199_254_740_992.0).contains(&f) => {
                    Ok(Some(f.floor() as u64))
                }
                _ => Err(unauth(reason::INVALID_CLAIMS, "time claim out of range")),
            }
        }
        Some(_) => Err(unauth(reason::INVALID_CLAIMS, "time claim is not a number")),
    }
}

/// `exp` (required), `nbf`, `iat` with `leeway`, and the lifetime cap.
pub fn validate_time_claims(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
    max_lifetime: Option<u64>,
) -> Result<TimeClaims, AuthError> {
    let exp =
        numeric_date(claims, "exp")?.ok_or_else(|| unauth(reason::MISSING_EXP, "no exp claim"))?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    // RFC 7519 §4.1.4: now must be before exp.
    if now >= exp.saturating_add(leeway) {
        return Err(unauth(reason::EXPIRED, "token expired"));
    }
    if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(unauth(reason::NOT_YET_VALID, "nbf is in the future"));
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(unauth(reason::IAT_IN_FUTURE, "iat is in the future"));
    }
    if let Some(max) = max_lifetime {
        let lifetime = match iat {
            Some(iat) => exp.saturating_sub(iat),
            None => exp.saturating_sub(now),
        };
        if lifetime > max {
            return Err(unauth(
                reason::LIFETIME_TOO_LONG,
                "token lifetime exceeds the issuer maximum",
            ));
        }
    }
    Ok(TimeClaims { exp, nbf, iat })
}

/// `aud` is required and must contain one of `audiences` (string or array).
pub fn validate_audience(
    claims: &Map<String, Value>,
    audiences: &[String],
) -> Result<(), AuthError> {
    let ok = match claims.get("aud") {
        None => return Err(unauth(reason::MISSING_AUD, "no aud claim")),
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(items)) => {
            let mut hit = false;
            for i in items {
                match i {
                    Value::String(a) => hit |= audiences.iter().any(|x| x == a),
                    _ => return Err(unauth(reason::INVALID_CLAIMS, "aud entry is not a string")),
                }
            }
            hit
        }
        Some(_) => {
            return Err(unauth(
                reason::INVALID_CLAIMS,
                "aud is not a string or array",
            ))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(unauth(reason::WRONG_AUDIENCE, "aud does not match"))
    }
}

/// Error from [`mint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot mint token: {0}")]
pub struct MintError(pub String);

/// Signs a dev/test token (`lienthong token`, tests). `key_pem_or_secret` is
/// the raw HMAC secret for HS* (≥ 32 bytes) or a PKCS#8 / PKCS#1 private-key PEM
/// for the asymmetric algorithms. The header is `{"typ":"JWT","alg":..,"kid":..}`.
/// Claims are signed as given: callers set `iss`, `aud`, `exp`, ...
pub fn mint(
    key_pem_or_secret: &[u8],
    alg: Algorithm,
    claims: serde_json::Value,
    kid: Option<&str>,
) -> Result<String, MintError> {
    if !claims.is_object() {
        return Err(MintError("claims must be a JSON object".into()));
    }
    let bad = |e: jsonwebtoken::errors::Error| MintError(format!("bad key for {alg:?}: {e}"));
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            if key_pem_or_secret.len() < MIN_HMAC_SECRET_BYTES {
                return Err(MintError(format!(
                    "HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes"
                )));
            }
            EncodingKey::from_secret(key_pem_or_secret)
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(key_pem_or_secret).map_err(bad)?,
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(key_pem_or_secret).map_err(bad)?
        }
        Algorithm::EdDSA => EncodingKey::from_ed_pem(key_pem_or_secret).map_err(bad)?,
        // `Algorithm` is non-exhaustive: refuse whatever a future version adds.
        _ => return Err(MintError(format!("unsupported algorithm {alg:?}"))),
    };
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let mut header = Header::new(alg);
    header.typ = Some("JWT".to_owned());
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| MintError(e.to_string()))
}

/// Result of [`bench_verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchReport {
    /// First verification of the token (includes a JWKS fetch if the issuer's
    /// keys were not loaded yet, and any lazy initialisation).
    pub first_use: Duration,
    /// Mean full verification (cache bypassed: parse + signature + claims).
    pub uncached_mean: Duration,
    /// Mean verified-cache hit (SHA-256 + moka lookup).
    pub cached_mean: Duration,
    pub iterations: u32,
}

/// Measures per-token cost: first use vs. full verification vs. cache hit.
///
/// How to benchmark per algorithm: build one [`Authenticator`] per algorithm
/// (or one with several issuers), mint a token per algorithm with [`mint`],
/// then call this in a release build on an otherwise idle core (e.g. `taskset
/// -c 1`) with a few thousand iterations and compare `uncached_mean` (the
/// signature dominates: RSA-2048 verify ≪ ECDSA P-256 verify < Ed25519 on
/// aws-lc) against `cached_mean` (should be ~1 µs regardless of algorithm).
/// `shared/bench/jwt-bench.sh` gives the raw jsonwebtoken numbers to compare
/// with. Timings are wall-clock and never asserted in tests.
pub async fn bench_verify(
    auth: &Authenticator,
    token: &str,
    iterations: u32,
) -> Result<BenchReport, AuthError> {
    let iterations = iterations.max(1);
    auth.invalidate(token);
    let t = Instant::now();
    auth.verify(token).await?;
    let first_use = t.elapsed();

    let t = Instant::now();
    for _ in 0..iterations {
        auth.invalidate(token);
        auth.verify(token).await?;
    }
    let uncached_mean = t.elapsed() / iterations;

    auth.verify(token).await?;
    let t = Instant::now();
    for _ in 0..iterations {
        auth.verify(token).await?;
    }
    let cached_mean = t.elapsed() / iterations;
    Ok(BenchReport {
        first_use,
        uncached_mean,
        cached_mean,
        iterations,
    })
}

/// `localhost` or a literal loopback address (`127.0.0.0/8`, `::1`, bracketed or not):
/// the only hosts keys may be fetched from over plain http. A name that merely starts
/// like one (`127.example.net`, `localhost.example.net`) is not one.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::super::caller::check_cert_binding;
    use super::super::keys::testkit::{self, jwks, TestKey};
    use super::super::keys::CountingFetcher;
    use super::*;

    #[test]
    fn only_literal_loopback_hosts_may_serve_keys_over_plain_http() {
        for host in [
            "localhost",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "127.example.net",
            "localhost.example.net",
            "10.0.0.1",
            "[::2]",
            "example.gov.vn",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
    use crate::clock::ManualClock;
    use serde_json::json;

    const NOW: u64 = 1_760_000_000;
    const ISS: &str = "https://idp.test";
    const AUD: &str = "lienthong";
    const JWKS_URL: &str = "https://idp.test/jwks";
    /// Throwaway dev secret (test only).
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-dev-only";

    fn claims_at(now: u64) -> Value {
        json!({"iss": ISS, "aud": AUD, "sub": "svc-1", "iat": now, "exp": now + 600,
               "agency": "000.00.01.H22", "roles": ["officer"], "scope": "dossier.read"})
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    fn without(mut v: Value, k: &str) -> Value {
        v.as_object_mut().unwrap().remove(k);
        v
    }

    fn b64j(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// Signs arbitrary header + claims (tests need headers `mint` never makes).
    fn sign_raw(header: Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
        let input = format!("{}.{}", b64j(&header), b64j(claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
        format!("{input}.{sig}")
    }

    fn enc_rsa(k: &TestKey) -> EncodingKey {
        EncodingKey::from_rsa_pem(&k.private_pem).unwrap()
    }

    fn static_keys() -> KeySet {
        KeySet::new(vec![
            VerifyingKey::from_public_pem(&testkit::rsa().public_pem, Some("rsa-1")).unwrap(),
            VerifyingKey::from_public_pem(&testkit::p256().public_pem, Some("ec-1")).unwrap(),
            VerifyingKey::from_public_pem(&testkit::p384().public_pem, Some("ec384")).unwrap(),
            VerifyingKey::from_public_pem(&testkit::ed25519().public_pem, Some("ed-1")).unwrap(),
            VerifyingKey::from_hmac_secret(SECRET, Some("hs-1")).unwrap(),
        ])
    }

    fn static_issuer(algs: Vec<Algorithm>) -> IssuerConfig {
        IssuerConfig::new(
            "local",
            ISS,
            vec![AUD.into()],
            algs,
            KeySource::Static(static_keys()),
        )
    }

    fn all_algs() -> Vec<Algorithm> {
        ALLOWED_ALGORITHMS.to_vec()
    }

    fn test_policy() -> JwksPolicy {
        JwksPolicy {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
        }
    }

    fn jwks_issuer(algs: Vec<Algorithm>) -> IssuerConfig {
        IssuerConfig::new(
            "idp",
            ISS,
            vec![AUD.into()],
            algs,
            KeySource::Jwks {
                url: JWKS_URL.into(),
                policy: test_policy(),
            },
        )
    }

    struct Env {
        auth: Authenticator,
        clock: Arc<ManualClock>,
        fetcher: Arc<CountingFetcher>,
    }

    impl Env {
        fn now(&self) -> u64 {
            self.clock.since_epoch().as_secs()
        }
        async fn reason(&self, token: &str) -> &'static str {
            let e = self
                .auth
                .verify(token)
                .await
                .expect_err("token must be rejected");
            assert_eq!(e.http_status(), 401, "{e}");
            assert_eq!(e.client_error(), "invalid_token");
            e.reason()
        }
    }

    fn env_with(issuers: Vec<IssuerConfig>, jwks_body: Option<Vec<u8>>) -> Env {
        let clock = Arc::new(ManualClock::at(Duration::from_secs(NOW)));
        let fetcher = Arc::new(match jwks_body {
            Some(b) => CountingFetcher::new(b),
            None => CountingFetcher::default(),
        });
        let auth = Authenticator::new(
            issuers,
            AuthOptions::default(),
            fetcher.clone(),
            clock.clone(),
        )
        .unwrap();
        Env {
            auth,
            clock,
            fetcher,
        }
    }

    fn env_static(algs: Vec<Algorithm>) -> Env {
        env_with(vec![static_issuer(algs)], None)
    }

    fn rs256(claims: &Value, kid: &str) -> String {
        mint(
            &testkit::rsa().private_pem,
            Algorithm::RS256,
            claims.clone(),
            Some(kid),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn valid_tokens_pass_for_every_algorithm() {
        let env = env_static(all_algs());
        let c = claims_at(NOW);
        let cases: [(Algorithm, &[u8], &str); 6] = [
            (Algorithm::RS256, &testkit::rsa().private_pem, "rsa-1"),
            (Algorithm::PS256, &testkit::rsa().private_pem, "rsa-1"),
            (Algorithm::ES256, &testkit::p256().private_pem, "ec-1"),
            (Algorithm::ES384, &testkit::p384().private_pem, "ec384"),
            (Algorithm::EdDSA, &testkit::ed25519().private_pem, "ed-1"),
            (Algorithm::HS256, SECRET, "hs-1"),
        ];
        for (alg, key, kid) in cases {
            let token = mint(key, alg, c.clone(), Some(kid)).unwrap();
            let caller = env
                .auth
                .verify(&token)
                .await
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(caller.issuer, "local");
            assert_eq!(caller.subject, "svc-1");
            assert_eq!(caller.agency.as_ref().unwrap().as_str(), "000.00.01.H22");
            assert_eq!(caller.roles, vec!["officer"]);
            assert_eq!(caller.scopes, vec!["dossier.read"]);
            assert_eq!(caller.expires_at, NOW + 600);
        }
        // Without kid: accepted only when exactly one key fits the alg.
        let no_kid = mint(
            &testkit::ed25519().private_pem,
            Algorithm::EdDSA,
            c.clone(),
            None,
        )
        .unwrap();
        assert!(env.auth.verify(&no_kid).await.is_ok());
        let stats = env.auth.cache_stats();
        assert_eq!((stats.hits, stats.misses), (0, 7));
    }

    #[tokio::test]
    async fn alg_none_rejected_in_every_casing() {
        let env = env_static(all_algs());
        let c = claims_at(NOW);
        for alg in ["none", "None", "NONE", "nOnE", "NoNe"] {
            for sig in ["", "c2ln"] {
                let token = format!(
                    "{}.{}.{sig}",
                    b64j(&json!({"alg": alg, "kid": "hs-1"})),
                    b64j(&c)
                );
                assert_eq!(
                    env.reason(&token).await,
                    reason::ALG_NONE,
                    "{alg} sig={sig:?}"
                );
            }
        }
        // Other spellings of algorithms are not folded either.
        let t = format!("{}.{}.c2ln", b64j(&json!({"alg": "hs256"})), b64j(&c));
        assert_eq!(env.reason(&t).await, reason::ALG_NOT_ALLOWED);
        let t = format!("{}.{}.c2ln", b64j(&json!({"alg": ["RS256"]})), b64j(&c));
        assert_eq!(env.reason(&t).await, reason::MALFORMED);
    }

    #[tokio::test]
    async fn alg_confusion_public_key_as_hmac_secret_rejected() {
        let c = claims_at(NOW);
        let rsa_pem_secret = EncodingKey::from_secret(&testkit::rsa().public_pem);
        let ec_pem_secret = EncodingKey::from_secret(&testkit::p256().public_pem);
        let hs = |kid: Option<&str>, key: &EncodingKey| {
            let mut h = json!({"alg": "HS256", "typ": "JWT"});
            if let Some(k) = kid {
                h["kid"] = json!(k);
            }
            sign_raw(h, &c, key, Algorithm::HS256)
        };
        // Issuer that only allows asymmetric algorithms: HS256 is refused outright.
        let env = env_static(vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(
            env.reason(&hs(Some("rsa-1"), &rsa_pem_secret)).await,
            reason::ALG_NOT_ALLOWED
        );
        assert_eq!(
            env.reason(&hs(Some("ec-1"), &ec_pem_secret)).await,
            reason::ALG_NOT_ALLOWED
        );
        assert_eq!(
            env.reason(&hs(None, &rsa_pem_secret)).await,
            reason::ALG_NOT_ALLOWED
        );

        // Issuer that allows HS256 too: the kid selects the RSA/EC key, whose type
        // cannot verify HS256, so the public key is never used as a secret.
        let env = env_static(all_algs());
        assert_eq!(
            env.reason(&hs(Some("rsa-1"), &rsa_pem_secret)).await,
            reason::ALG_KEY_MISMATCH
        );
        assert_eq!(
            env.reason(&hs(Some("ec-1"), &ec_pem_secret)).await,
            reason::ALG_KEY_MISMATCH
        );
        // Without kid the only HS256-capable key is the real secret: bad signature.
        assert_eq!(
            env.reason(&hs(None, &rsa_pem_secret)).await,
            reason::BAD_SIGNATURE
        );
        assert_eq!(
            env.reason(&hs(Some("hs-1"), &ec_pem_secret)).await,
            reason::BAD_SIGNATURE
        );
        // Same with the DER / JWK encodings of the public key as the secret.
        let n = URL_SAFE_NO_PAD
            .decode(testkit::rsa().jwk["n"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            env.reason(&hs(Some("rsa-1"), &EncodingKey::from_secret(&n)))
                .await,
            reason::ALG_KEY_MISMATCH
        );
        // Lowest layer too.
        let rsa_key = VerifyingKey::from_public_pem(&testkit::rsa().public_pem, None).unwrap();
        let e = verify_raw(&rsa_key, Algorithm::HS256, b"m", "c2ln").unwrap_err();
        assert_eq!(e.reason(), reason::ALG_KEY_MISMATCH);
        // ES256 token against the P-384 key and vice versa.
        let es = mint(
            &testkit::p256().private_pem,
            Algorithm::ES256,
            c.clone(),
            Some("ec384"),
        )
        .unwrap();
        assert_eq!(env.reason(&es).await, reason::ALG_KEY_MISMATCH);
    }

    #[tokio::test]
    async fn stripped_or_altered_signature_and_payload_rejected() {
        let env = env_static(all_algs());
        let c = claims_at(NOW);
        let good = rs256(&c, "rsa-1");
        let (input, sig) = good.rsplit_once('.').unwrap();
        let (h, _p) = input.split_once('.').unwrap();

        assert_eq!(env.reason(&format!("{input}.")).await, reason::MALFORMED);
        assert_eq!(env.reason(input).await, reason::MALFORMED);
        // Flip one signature character in the middle (keeps it canonical base64url).
        let mut s: Vec<u8> = sig.bytes().collect();
        let mid = s.len() / 2;
        s[mid] = if s[mid] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{input}.{}", String::from_utf8(s).unwrap());
        assert_eq!(env.reason(&flipped).await, reason::BAD_SIGNATURE);
        // Truncated signature.
        // Truncated signature (may also leave non-canonical base64url).
        let r = env
            .reason(&format!("{input}.{}", &sig[..sig.len() - 4]))
            .await;
        assert!(r == reason::BAD_SIGNATURE || r == reason::MALFORMED, "{r}");
        // Payload altered, original signature kept.
        let evil = with(c.clone(), "roles", json!(["admin"]));
        let forged = format!("{h}.{}.{sig}", b64j(&evil));
        assert_eq!(env.reason(&forged).await, reason::BAD_SIGNATURE);
        // Header alg switched RS256 -> PS256 with the same signature.
        let h2 = b64j(&json!({"typ": "JWT", "alg": "PS256", "kid": "rsa-1"}));
        let swapped = format!("{h2}.{}.{sig}", input.split_once('.').unwrap().1);
        assert_eq!(env.reason(&swapped).await, reason::BAD_SIGNATURE);
        // Signed by another RSA key under our kid.
        let other = mint(
            &testkit::rsa2().private_pem,
            Algorithm::RS256,
            c.clone(),
            Some("rsa-1"),
        )
        .unwrap();
        assert_eq!(env.reason(&other).await, reason::BAD_SIGNATURE);
        // The original still passes.
        assert!(env.auth.verify(&good).await.is_ok());
    }

    #[tokio::test]
    async fn compact_form_is_strict() {
        let env = env_static(all_algs());
        let good = rs256(&claims_at(NOW), "rsa-1");
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        for bad in [
            format!("{h}.{p}.{s}.{s}"),
            format!("{h}.{p}.{s}.{s}.{s}"),
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}.{s}="),
            format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/")),
            format!(" {good}"),
            format!("{h}..{s}"),
            format!(".{p}.{s}"),
            format!("{}.{p}.{s}", b64j(&json!(["alg", "RS256"]))),
            format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(b"not json")),
            format!("{h}.{}.{s}", b64j(&json!([1, 2]))),
            "".to_owned(),
            "...".to_owned(),
        ] {
            let r = env.reason(&bad).await;
            assert!(
                r == reason::MALFORMED || r == reason::BAD_SIGNATURE,
                "{bad:?} -> {r}"
            );
        }
    }

    #[tokio::test]
    async fn embedded_key_headers_are_never_used_or_fetched() {
        let legit = jwks(&[testkit::rsa().jwk_with("rsa-1")]);
        let env = env_with(vec![jwks_issuer(vec![Algorithm::RS256])], Some(legit));
        let c = claims_at(NOW);
        // Warm up: the only fetch the issuer's own URL gets.
        assert!(env.auth.verify(&rs256(&c, "rsa-1")).await.is_ok());
        assert_eq!(env.fetcher.calls(), 1);

        let attacker = enc_rsa(testkit::rsa2());
        let attacker_jwk = testkit::rsa2().jwk_with("rsa-1");
        let headers = [
            json!({"alg": "RS256", "kid": "rsa-1", "jwk": attacker_jwk}),
            json!({"alg": "RS256", "jwk": attacker_jwk}),
            json!({"alg": "RS256", "kid": "rsa-1", "jku": "https://evil.example/jwks.json"}),
            json!({"alg": "RS256", "kid": "rsa-1", "x5u": "https://evil.example/cert.pem"}),
            json!({"alg": "RS256", "kid": "rsa-1", "x5c": [URL_SAFE_NO_PAD.encode(b"attacker cert")]}),
        ];
        for h in headers {
            let t = sign_raw(h.clone(), &c, &attacker, Algorithm::RS256);
            assert_eq!(env.reason(&t).await, reason::BAD_SIGNATURE, "{h}");
        }
        assert_eq!(env.fetcher.calls(), 1, "no fetch for jku/x5u/jwk/x5c");

        // An unknown kid *with* a jku: one rate-limited refetch of the configured
        // URL (the rotation policy), never of the jku.
        env.clock.advance(Duration::from_secs(31));
        for kid in ["evil-1", "evil-2", "evil-3"] {
            let t = sign_raw(
                json!({"alg": "RS256", "kid": kid, "jku": "https://evil.example/jwks.json",
                       "x5u": "https://evil.example/x"}),
                &c,
                &attacker,
                Algorithm::RS256,
            );
            assert_eq!(env.reason(&t).await, reason::UNKNOWN_KID);
        }
        assert_eq!(env.fetcher.calls(), 2);
        assert!(
            env.fetcher.urls().iter().all(|u| u == JWKS_URL),
            "{:?}",
            env.fetcher.urls()
        );
    }

    #[tokio::test]
    async fn kid_injection_just_misses() {
        let c = claims_at(NOW);
        let evil_kids = [
            "../../etc/passwd",
            "' OR 1=1 --",
            "..\\..\\windows\\win.ini",
            "rsa-1' --",
            "/dev/null",
            "rsa-1\u{0}",
            "*",
            "%2e%2e%2f",
        ];
        let env = env_static(all_algs());
        for kid in evil_kids {
            let t = mint(
                &testkit::rsa().private_pem,
                Algorithm::RS256,
                c.clone(),
                Some(kid),
            )
            .unwrap();
            assert_eq!(env.reason(&t).await, reason::UNKNOWN_KID, "{kid:?}");
        }
        let long = "a".repeat(MAX_KID_LEN + 1);
        let t = mint(
            &testkit::rsa().private_pem,
            Algorithm::RS256,
            c.clone(),
            Some(&long),
        )
        .unwrap();
        assert_eq!(env.reason(&t).await, reason::MALFORMED);
        let t = sign_raw(
            json!({"alg": "RS256", "kid": 7}),
            &c,
            &enc_rsa(testkit::rsa()),
            Algorithm::RS256,
        );
        assert_eq!(env.reason(&t).await, reason::MALFORMED);

        // JWKS issuer: the same kids cause at most one (rate-limited) refetch.
        let env = env_with(
            vec![jwks_issuer(vec![Algorithm::RS256])],
            Some(jwks(&[testkit::rsa().jwk_with("rsa-1")])),
        );
        for kid in evil_kids {
            let t = mint(
                &testkit::rsa().private_pem,
                Algorithm::RS256,
                c.clone(),
                Some(kid),
            )
            .unwrap();
            assert_eq!(env.reason(&t).await, reason::UNKNOWN_KID, "{kid:?}");
        }
        assert_eq!(env.fetcher.calls(), 1);
    }

    #[tokio::test]
    async fn crit_header_rejected() {
        let env = env_static(all_algs());
        let c = claims_at(NOW);
        let key = enc_rsa(testkit::rsa());
        for extra in [
            json!({"crit": ["exp"], "exp": 1}),
            json!({"crit": ["b64"], "b64": false}),
            json!({"crit": ["http://example.invalid/ext"]}),
            json!({"crit": []}),
            json!({"crit": "b64"}),
        ] {
            let mut h = json!({"alg": "RS256", "kid": "rsa-1"});
            for (k, v) in extra.as_object().unwrap() {
                h[k] = v.clone();
            }
            let t = sign_raw(h.clone(), &c, &key, Algorithm::RS256);
            assert_eq!(env.reason(&t).await, reason::CRIT_UNSUPPORTED, "{h}");
        }
    }

    #[tokio::test]
    async fn time_claims_enforced() {
        let env = env_static(all_algs());
        let c = claims_at(NOW);
        let cases = [
            (
                with(
                    with(c.clone(), "exp", json!(NOW - 61)),
                    "iat",
                    json!(NOW - 600),
                ),
                reason::EXPIRED,
            ),
            (
                with(c.clone(), "nbf", json!(NOW + 120)),
                reason::NOT_YET_VALID,
            ),
            (
                with(c.clone(), "iat", json!(NOW + 120)),
                reason::IAT_IN_FUTURE,
            ),
            (
                with(c.clone(), "exp", json!(NOW + 3601)),
                reason::LIFETIME_TOO_LONG,
            ),
            (
                with(without(c.clone(), "iat"), "exp", json!(NOW + 3601)),
                reason::LIFETIME_TOO_LONG,
            ),
            (without(c.clone(), "exp"), reason::MISSING_EXP),
            (
                with(c.clone(), "exp", json!("1760000600")),
                reason::INVALID_CLAIMS,
            ),
            (with(c.clone(), "exp", json!(-5)), reason::INVALID_CLAIMS),
            (with(c.clone(), "nbf", json!(null)), reason::INVALID_CLAIMS),
        ];
        for (claims, why) in cases {
            assert_eq!(env.reason(&rs256(&claims, "rsa-1")).await, why, "{claims}");
        }
        // Within leeway (60 s) and fractional NumericDates are fine.
        for ok in [
            with(
                with(c.clone(), "exp", json!(NOW - 30)),
                "iat",
                json!(NOW - 600),
            ),
            with(c.clone(), "nbf", json!(NOW + 30)),
            with(c.clone(), "exp", json!((NOW + 100) as f64 + 0.5)),
            with(without(c.clone(), "iat"), "exp", json!(NOW + 3600)),
        ] {
            assert!(env.auth.verify(&rs256(&ok, "rsa-1")).await.is_ok(), "{ok}");
        }
    }

    #[tokio::test]
    async fn issuer_and_audience_required_and_matched() {
        let other_iss = IssuerConfig::new(
            "partner",
            "https://partner.test",
            vec!["partner-aud".into()],
            vec![Algorithm::ES256],
            KeySource::Static(KeySet::new(vec![VerifyingKey::from_public_pem(
                &testkit::p256_b().public_pem,
                Some("p-1"),
            )
            .unwrap()])),
        );
        let env = env_with(vec![static_issuer(all_algs()), other_iss], None);
        let c = claims_at(NOW);
        let cases = [
            (without(c.clone(), "iss"), reason::MISSING_ISS),
            (
                with(c.clone(), "iss", json!("https://evil.test")),
                reason::UNKNOWN_ISSUER,
            ),
            (
                with(c.clone(), "iss", json!(ISS.to_owned() + "/")),
                reason::UNKNOWN_ISSUER,
            ),
            (with(c.clone(), "iss", json!(["x"])), reason::INVALID_CLAIMS),
            (without(c.clone(), "aud"), reason::MISSING_AUD),
            (
                with(c.clone(), "aud", json!("someone-else")),
                reason::WRONG_AUDIENCE,
            ),
            (
                with(c.clone(), "aud", json!(["a", "b"])),
                reason::WRONG_AUDIENCE,
            ),
            (
                with(c.clone(), "aud", json!([AUD, 5])),
                reason::INVALID_CLAIMS,
            ),
            (without(c.clone(), "sub"), reason::MISSING_SUB),
        ];
        for (claims, why) in cases {
            assert_eq!(env.reason(&rs256(&claims, "rsa-1")).await, why, "{claims}");
        }
        assert!(env
            .auth
            .verify(&rs256(&with(c.clone(), "aud", json!(["x", AUD])), "rsa-1"))
            .await
            .is_ok());
        // A token claiming the partner issuer but signed with our key: the
        // partner's key set has no such kid.
        let cross = with(
            with(c.clone(), "iss", json!("https://partner.test")),
            "aud",
            json!("partner-aud"),
        );
        assert_eq!(
            env.reason(&rs256(&cross, "rsa-1")).await,
            reason::ALG_NOT_ALLOWED
        );
        let cross_es = mint(
            &testkit::p256().private_pem,
            Algorithm::ES256,
            cross.clone(),
            Some("ec-1"),
        )
        .unwrap();
        assert_eq!(env.reason(&cross_es).await, reason::UNKNOWN_KID);
        let ok = mint(
            &testkit::p256_b().private_pem,
            Algorithm::ES256,
            cross,
            Some("p-1"),
        )
        .unwrap();
        assert_eq!(env.auth.verify(&ok).await.unwrap().issuer, "partner");
    }

    #[tokio::test]
    async fn oversized_token_rejected_before_decoding() {
        let mut small = static_issuer(all_algs());
        small.max_token_bytes = 700;
        let env = env_with(vec![small], None);
        // Not even base64url: a decoder would say "malformed"; the cap says first.
        let junk = "!".repeat(701);
        assert_eq!(env.reason(&junk).await, reason::TOKEN_TOO_LARGE);
        assert_eq!(
            env.auth.cache_stats().misses,
            0,
            "rejected before the cache"
        );
        let big_claims = with(claims_at(NOW), "pad", json!("x".repeat(800)));
        assert_eq!(
            env.reason(&rs256(&big_claims, "rsa-1")).await,
            reason::TOKEN_TOO_LARGE
        );
        // Per-issuer cap below the global one.
        let mut b = IssuerConfig::new(
            "b",
            "https://b.test",
            vec![AUD.into()],
            vec![Algorithm::RS256],
            KeySource::Static(KeySet::new(vec![VerifyingKey::from_public_pem(
                &testkit::rsa().public_pem,
                Some("rsa-1"),
            )
            .unwrap()])),
        );
        b.max_token_bytes = 400;
        let env = env_with(vec![static_issuer(all_algs()), b], None);
        let t = rs256(
            &with(claims_at(NOW), "iss", json!("https://b.test")),
            "rsa-1",
        );
        assert!(t.len() > 400 && t.len() < 8192);
        assert_eq!(env.reason(&t).await, reason::TOKEN_TOO_LARGE);
    }

    #[tokio::test]
    async fn exactly_one_bearer_token_per_request() {
        let env = env_static(all_algs());
        let t = rs256(&claims_at(NOW), "rsa-1");
        let hdr = format!("Bearer {t}");
        fn r<'a>(headers: &[&'a [u8]], q: bool) -> Result<&'a str, &'static str> {
            extract_bearer(headers, q).map_err(|e| e.reason())
        }
        assert_eq!(r(&[], false), Err(reason::MISSING_TOKEN));
        assert_eq!(r(&[], true), Err(reason::TOKEN_IN_QUERY));
        assert_eq!(
            r(&[hdr.as_bytes(), hdr.as_bytes()], false),
            Err(reason::MULTIPLE_TOKENS)
        );
        assert_eq!(r(&[hdr.as_bytes()], true), Err(reason::MULTIPLE_TOKENS));
        assert_eq!(r(&[b"Basic dXNlcjpwYXNz"], false), Err(reason::BAD_SCHEME));
        assert_eq!(r(&[b"Bearer"], false), Err(reason::BAD_SCHEME));
        assert_eq!(r(&[b"Bearer "], false), Err(reason::MISSING_TOKEN));
        assert_eq!(r(&[b"BearerX abc"], false), Err(reason::BAD_SCHEME));
        assert_eq!(
            r(&[b"Bearer a.b.c, Bearer d.e.f"], false),
            Err(reason::MALFORMED)
        );
        assert_eq!(r(&[b"Bearer a.b.c d.e.f"], false), Err(reason::MALFORMED));
        assert_eq!(r(&[b"Bearer \xff\xfe"], false), Err(reason::MALFORMED));
        assert_eq!(r(&[b"bearer   a.b.c"], false), Ok("a.b.c"));
        assert_eq!(r(&[b"BEARER a.b.c "], false), Ok("a.b.c"));
        let caller = env
            .auth
            .authenticate(&[hdr.as_bytes()], false)
            .await
            .unwrap();
        assert_eq!(caller.subject, "svc-1");
        let e = env
            .auth
            .authenticate(&[hdr.as_bytes(), hdr.as_bytes()], false)
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            AuthErrorKind::Unauthorized(reason::MULTIPLE_TOKENS)
        );
        assert_eq!(
            e.www_authenticate().unwrap(),
            "Bearer error=\"invalid_token\""
        );
        let e = env.auth.authenticate(&[], false).await.unwrap_err();
        assert_eq!(e.www_authenticate().unwrap(), "Bearer");
    }

    #[tokio::test]
    async fn typ_checked_when_configured() {
        let mut iss = static_issuer(all_algs());
        iss.required_typ = Some("at+jwt".into());
        let env = env_with(vec![iss], None);
        let c = claims_at(NOW);
        let key = enc_rsa(testkit::rsa());
        let tok = |typ: Option<&str>| {
            let mut h = json!({"alg": "RS256", "kid": "rsa-1"});
            if let Some(t) = typ {
                h["typ"] = json!(t);
            }
            sign_raw(h, &c, &key, Algorithm::RS256)
        };
        for ok in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+JWT",
        ] {
            assert!(env.auth.verify(&tok(Some(ok))).await.is_ok(), "{ok}");
        }
        for bad in [
            Some("JWT"),
            Some("application/jwt"),
            Some("at+jwt; x"),
            None,
        ] {
            assert_eq!(env.reason(&tok(bad)).await, reason::WRONG_TYP, "{bad:?}");
        }
        let mut iss = static_issuer(all_algs());
        iss.required_typ = Some("JWT".into());
        let env = env_with(vec![iss], None);
        assert!(env.auth.verify(&rs256(&c, "rsa-1")).await.is_ok());
        assert!(env.auth.verify(&tok(Some("application/JWT"))).await.is_ok());
        assert_eq!(env.reason(&tok(Some("at+jwt"))).await, reason::WRONG_TYP);
    }

    #[tokio::test]
    async fn verified_cache_hits_and_never_serves_past_exp() {
        let env = env_static(all_algs());
        let c = with(claims_at(NOW), "exp", json!(NOW + 100));
        let t = rs256(&c, "rsa-1");
        let bearer = format!("Bearer {t}");
        let header = [bearer.as_bytes()];
        // The synchronous lookup (the fast path's) knows only verified tokens.
        assert!(env.auth.cached(&header, false).is_none());
        let a = env.auth.verify(&t).await.unwrap();
        let b = env.auth.verify(&t).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second call served from the cache");
        let s = env.auth.cache_stats();
        assert_eq!((s.hits, s.misses), (1, 1));
        env.clock.advance(Duration::from_secs(99));
        assert!(env.auth.verify(&t).await.is_ok());
        assert_eq!(env.auth.cache_stats().hits, 2);
        let c = env.auth.cached(&header, false).expect("a fresh entry");
        assert!(Arc::ptr_eq(&a, &c));
        // Counted only when its caller counts it.
        assert_eq!(env.auth.cache_stats().hits, 2);
        env.auth.count_hit();
        assert_eq!(env.auth.cache_stats().hits, 3);
        // Two tokens, or one in the query as well: `authenticate` refuses those.
        assert!(env.auth.cached(&header, true).is_none());
        assert!(env.auth.cached(&[header[0], header[0]], false).is_none());
        // At exp the entry is dead; full verification then applies the leeway
        // (accepts until exp + 60 s) and after that rejects.
        env.clock.advance(Duration::from_secs(1));
        assert!(env.auth.cached(&header, false).is_none());
        assert!(env.auth.verify(&t).await.is_ok());
        assert_eq!(env.auth.cache_stats().misses, 2);
        env.clock.advance(Duration::from_secs(60));
        assert_eq!(env.reason(&t).await, reason::EXPIRED);
        let s = env.auth.cache_stats();
        assert_eq!((s.hits, s.misses), (3, 3));
        // Failures are not cached.
        let forged = format!("{}x", &t[..t.len() - 1]);
        let _ = env.auth.verify(&forged).await;
        let _ = env.auth.verify(&forged).await;
        assert_eq!(env.auth.cache_stats().hits, 3);
        // cache_max_ttl bounds entries even for long-lived tokens.
        let long = rs256(
            &with(claims_at(env.now()), "exp", json!(env.now() + 3000)),
            "rsa-1",
        );
        env.auth.verify(&long).await.unwrap();
        env.clock.advance(AuthOptions::default().cache_max_ttl);
        let before = env.auth.cache_stats().misses;
        env.auth.verify(&long).await.unwrap();
        assert_eq!(env.auth.cache_stats().misses, before + 1);
    }

    #[tokio::test]
    async fn rotation_new_kid_accepted_after_exactly_one_refetch() {
        let env = env_with(
            vec![jwks_issuer(vec![Algorithm::RS256, Algorithm::ES256])],
            Some(jwks(&[testkit::rsa().jwk_with("rsa-1")])),
        );
        assert!(env
            .auth
            .verify(&rs256(&claims_at(env.now()), "rsa-1"))
            .await
            .is_ok());
        assert_eq!(env.fetcher.calls(), 1);
        // The IdP publishes a new key.
        env.fetcher.set_body(jwks(&[
            testkit::rsa().jwk_with("rsa-1"),
            testkit::p256().jwk_with("ec-new"),
        ]));
        env.clock.advance(Duration::from_secs(31));
        let c = claims_at(env.now());
        let t = mint(
            &testkit::p256().private_pem,
            Algorithm::ES256,
            c.clone(),
            Some("ec-new"),
        )
        .unwrap();
        assert!(env.auth.verify(&t).await.is_ok());
        assert_eq!(env.fetcher.calls(), 2, "exactly one refetch");
        // Repeated unknown kids inside the interval: no extra fetches.
        for i in 0..25 {
            let t = mint(
                &testkit::p256().private_pem,
                Algorithm::ES256,
                c.clone(),
                Some(&format!("rand-{i}")),
            )
            .unwrap();
            assert_eq!(env.reason(&t).await, reason::UNKNOWN_KID);
        }
        assert_eq!(env.fetcher.calls(), 2);
        // Once the interval has passed, one more is allowed.
        env.clock.advance(Duration::from_secs(30));
        let t = mint(
            &testkit::p256().private_pem,
            Algorithm::ES256,
            claims_at(env.now()),
            Some("rand-x"),
        )
        .unwrap();
        assert_eq!(env.reason(&t).await, reason::UNKNOWN_KID);
        assert_eq!(env.fetcher.calls(), 3);
    }

    #[tokio::test]
    async fn rotation_unknown_kid_right_after_fetch_waits_for_interval() {
        let env = env_with(
            vec![jwks_issuer(vec![Algorithm::RS256])],
            Some(jwks(&[testkit::rsa().jwk_with("rsa-1")])),
        );
        assert!(env
            .auth
            .verify(&rs256(&claims_at(env.now()), "rsa-1"))
            .await
            .is_ok());
        env.fetcher.set_body(jwks(&[
            testkit::rsa().jwk_with("rsa-1"),
            testkit::rsa2().jwk_with("rsa-2"),
        ]));
        let t2 = mint(
            &testkit::rsa2().private_pem,
            Algorithm::RS256,
            claims_at(env.now()),
            Some("rsa-2"),
        )
        .unwrap();
        // Within min_refetch_interval of the last fetch: no fetch, unknown kid.
        assert_eq!(env.reason(&t2).await, reason::UNKNOWN_KID);
        assert_eq!(env.fetcher.calls(), 1);
        env.clock.advance(Duration::from_secs(30));
        assert!(env.auth.verify(&t2).await.is_ok());
        assert_eq!(env.fetcher.calls(), 2);
    }

    #[tokio::test]
    async fn rotation_removed_key_rejected_after_refresh() {
        let env = env_with(
            vec![jwks_issuer(vec![Algorithm::RS256])],
            Some(jwks(&[
                testkit::rsa().jwk_with("rsa-1"),
                testkit::rsa2().jwk_with("rsa-2"),
            ])),
        );
        let old = rs256(
            &with(claims_at(env.now()), "exp", json!(env.now() + 3000)),
            "rsa-1",
        );
        assert!(env.auth.verify(&old).await.is_ok());
        env.fetcher
            .set_body(jwks(&[testkit::rsa2().jwk_with("rsa-2")]));
        // Before the refresh interval the old key still works.
        env.clock.advance(Duration::from_secs(200));
        let fresh_old = rs256(&claims_at(env.now()), "rsa-1");
        assert!(env.auth.verify(&fresh_old).await.is_ok());
        assert_eq!(env.fetcher.calls(), 1);
        // After it: the refresh drops rsa-1 (one fetch; the unknown-kid refetch
        // that follows is rate-limited away).
        env.clock.advance(Duration::from_secs(101));
        let t = rs256(&with(claims_at(env.now()), "jti", json!("n1")), "rsa-1");
        assert_eq!(env.reason(&t).await, reason::UNKNOWN_KID);
        assert_eq!(env.fetcher.calls(), 2);
        // The token verified at the start is past cache_max_ttl: re-verified, rejected.
        assert_eq!(env.reason(&old).await, reason::UNKNOWN_KID);
        let t2 = mint(
            &testkit::rsa2().private_pem,
            Algorithm::RS256,
            claims_at(env.now()),
            Some("rsa-2"),
        )
        .unwrap();
        assert!(env.auth.verify(&t2).await.is_ok());
        assert_eq!(env.fetcher.calls(), 2);
    }

    #[tokio::test]
    async fn jwks_down_serves_last_good_keys_until_max_stale_then_fails_closed() {
        let env = env_with(
            vec![jwks_issuer(vec![Algorithm::RS256])],
            Some(jwks(&[testkit::rsa().jwk_with("rsa-1")])),
        );
        assert!(env
            .auth
            .verify(&rs256(&claims_at(env.now()), "rsa-1"))
            .await
            .is_ok());
        env.fetcher.set_failure("connection refused");
        // Past the refresh interval: refresh fails, old keys still serve.
        env.clock.advance(Duration::from_secs(301));
        assert!(env
            .auth
            .verify(&rs256(&claims_at(env.now()), "rsa-1"))
            .await
            .is_ok());
        assert_eq!(env.fetcher.calls(), 2);
        // Many requests within min_refetch_interval: no extra fetch.
        for i in 0..10 {
            let t = rs256(&with(claims_at(env.now()), "jti", json!(i)), "rsa-1");
            assert!(env.auth.verify(&t).await.is_ok());
        }
        assert_eq!(env.fetcher.calls(), 2);
        // Just before max_stale (3600 s after the last good fetch): still served.
        env.clock.set(Duration::from_secs(NOW + 3599));
        assert!(env
            .auth
            .verify(&rs256(&claims_at(env.now()), "rsa-1"))
            .await
            .is_ok());
        let calls = env.fetcher.calls();
        // At max_stale: fail closed with 503 for this issuer.
        env.clock.set(Duration::from_secs(NOW + 3600));
        let e = env
            .auth
            .verify(&rs256(&claims_at(env.now()), "rsa-1"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), AuthErrorKind::Unavailable("idp"));
        assert_eq!(
            (e.http_status(), e.reason(), e.client_error()),
            (503, reason::ISSUER_UNAVAILABLE, "issuer_unavailable")
        );
        assert!(e.www_authenticate().is_none());
        // The refetch attempt made one second earlier rate-limits this one.
        assert_eq!(env.fetcher.calls(), calls);
        // Still down: past the interval one more fetch is tried, then none.
        env.clock.advance(Duration::from_secs(30));
        for i in 0..5 {
            let t = rs256(&with(claims_at(env.now()), "jti", json!(i)), "rsa-1");
            assert_eq!(env.auth.verify(&t).await.unwrap_err().http_status(), 503);
        }
        assert_eq!(env.fetcher.calls(), calls + 1);
        // Recovery.
        env.fetcher
            .set_body(jwks(&[testkit::rsa().jwk_with("rsa-1")]));
        env.clock.advance(Duration::from_secs(30));
        assert!(env
            .auth
            .verify(&rs256(&claims_at(env.now()), "rsa-1"))
            .await
            .is_ok());
        let st = env.auth.jwks_states()[0].stats();
        assert_eq!(st.keys, 1);
        assert!(st.failures >= 2);
    }

    #[tokio::test]
    async fn jwks_unreachable_at_start_is_unavailable_without_fetch_storm() {
        let env = env_with(vec![jwks_issuer(vec![Algorithm::RS256])], None);
        env.fetcher.set_failure("dns error");
        for i in 0..10 {
            let t = rs256(&with(claims_at(env.now()), "jti", json!(i)), "rsa-1");
            let e = env.auth.verify(&t).await.unwrap_err();
            assert_eq!(e.kind(), AuthErrorKind::Unavailable("idp"));
        }
        assert_eq!(env.fetcher.calls(), 1);
        // A JWKS that parses to nothing usable counts as a failure too.
        env.fetcher
            .set_body(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.to_vec());
        env.clock.advance(Duration::from_secs(30));
        let e = env
            .auth
            .verify(&rs256(&claims_at(env.now()), "rsa-1"))
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), 503);
        assert_eq!(env.fetcher.calls(), 2);
        let warm = env.auth.warm_up().await;
        assert!(warm[0].1.is_err());
    }

    #[test]
    fn config_validation() {
        let err = |cfg: IssuerConfig| {
            Authenticator::new(
                vec![cfg],
                AuthOptions::default(),
                Arc::new(CountingFetcher::default()),
                Arc::new(ManualClock::at(Duration::from_secs(NOW))),
            )
            .unwrap_err()
            .to_string()
        };
        // Short HMAC secret: refused when the key is built from config.
        let e = VerifyingKey::from_hmac_secret(b"too-short-secret", Some("hs")).unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
        // HS256 allowed but only public keys configured.
        let rsa_only = KeySource::Static(KeySet::new(vec![VerifyingKey::from_public_pem(
            &testkit::rsa().public_pem,
            None,
        )
        .unwrap()]));
        let e = err(IssuerConfig::new(
            "a",
            ISS,
            vec![AUD.into()],
            vec![Algorithm::HS256],
            rsa_only.clone(),
        ));
        assert!(e.contains("HMAC secret"), "{e}");
        let e = err(IssuerConfig::new(
            "a",
            ISS,
            vec![AUD.into()],
            vec![Algorithm::HS512],
            rsa_only.clone(),
        ));
        assert!(e.contains("not allowed"), "{e}");
        let e = err(IssuerConfig::new(
            "a",
            ISS,
            vec![],
            vec![Algorithm::RS256],
            rsa_only.clone(),
        ));
        assert!(e.contains("audience"), "{e}");
        let e = err(IssuerConfig::new(
            "a",
            ISS,
            vec![AUD.into()],
            vec![Algorithm::ES256],
            rsa_only.clone(),
        ));
        assert!(e.contains("none of the configured keys"), "{e}");
        let mut j = jwks_issuer(vec![Algorithm::RS256, Algorithm::HS256]);
        assert!(err(j.clone()).contains("HS256"));
        j.algorithms = vec![Algorithm::RS256];
        j.keys = KeySource::Jwks {
            url: "http://idp.example/jwks".into(),
            policy: test_policy(),
        };
        assert!(err(j).contains("https"));
        let dup = Authenticator::new(
            vec![static_issuer(all_algs()), {
                let mut x = static_issuer(all_algs());
                x.name = "other".into();
                x
            }],
            AuthOptions::default(),
            Arc::new(CountingFetcher::default()),
            Arc::new(ManualClock::at(Duration::from_secs(NOW))),
        )
        .unwrap_err();
        assert!(dup.to_string().contains("same iss"), "{dup}");
    }

    #[test]
    fn authenticator_is_shareable_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Authenticator>();
        let env = env_static(all_algs());
        // hyper services need Send futures.
        let f = env.auth.authenticate(&[], false);
        send(&f);
        drop(f);
    }

    #[tokio::test]
    async fn mint_round_trip_and_errors() {
        let c = claims_at(NOW);
        assert!(mint(b"short", Algorithm::HS256, c.clone(), None).is_err());
        assert!(mint(SECRET, Algorithm::HS256, json!([1]), None).is_err());
        assert!(mint(
            &testkit::p256().private_pem,
            Algorithm::RS256,
            c.clone(),
            None
        )
        .is_err());
        assert!(mint(
            &testkit::rsa().public_pem,
            Algorithm::RS256,
            c.clone(),
            None
        )
        .is_err());
        let t = mint(SECRET, Algorithm::HS256, c, Some("hs-1")).unwrap();
        let jws = parse_compact(&t).unwrap();
        assert_eq!(jws.header.typ.as_deref(), Some("JWT"));
        assert_eq!(jws.header.kid.as_deref(), Some("hs-1"));
        assert_eq!(jws.header.alg, Algorithm::HS256);
    }

    #[tokio::test]
    async fn cert_bound_token_end_to_end() {
        let env = env_static(all_algs());
        let tp = super::super::caller::cert_thumbprint_s256(b"client cert DER");
        let t = rs256(
            &with(claims_at(NOW), "cnf", json!({"x5t#S256": tp})),
            "rsa-1",
        );
        let caller = env.auth.verify(&t).await.unwrap();
        assert!(check_cert_binding(&caller, Some(&tp)).is_ok());
        let e = check_cert_binding(&caller, None).unwrap_err();
        assert_eq!(
            e.kind(),
            AuthErrorKind::Forbidden(reason::CERT_BINDING_MISMATCH)
        );
    }

    #[tokio::test]
    async fn bench_verify_reports_without_timing_assertions() {
        let env = env_static(all_algs());
        let t = mint(
            &testkit::p256().private_pem,
            Algorithm::ES256,
            claims_at(NOW),
            Some("ec-1"),
        )
        .unwrap();
        let r = bench_verify(&env.auth, &t, 3).await.unwrap();
        assert_eq!(r.iterations, 3);
        // 1 first use + 3 uncached = 4 misses; the warm-up call before the
        // cached loop hits the entry left by the last uncached run: 4 hits.
        let s = env.auth.cache_stats();
        assert_eq!((s.hits, s.misses), (4, 4));
    }
}

/// Published test vectors: RFC 7515/7519/8037 JOSE examples and Wycheproof
/// raw-signature suites, run through this module's verification layers.
#[cfg(test)]
mod vector_tests {
    use super::super::keys::VerifyingKey;
    use super::*;
    use std::path::PathBuf;

    /// `LIENTHONG_SHARED`, else `<crate>/../shared`.
    fn shared_dir() -> PathBuf {
        let candidates = [
            std::env::var_os("LIENTHONG_SHARED").map(PathBuf::from),
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|p| p.join("corpora/jwt").is_dir())
            .unwrap_or_else(|| {
                panic!(
                    "shared/ test corpora not found: set LIENTHONG_SHARED to the shared \
                     directory (containing corpora/jwt), or place it at <crate>/../shared"
                )
            })
    }

    fn load(rel: &str) -> Value {
        let p = shared_dir().join(rel);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_slice(&bytes).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key_from_jwk(jwk: &Value) -> VerifyingKey {
        VerifyingKey::from_jwk_value(jwk, true).unwrap()
    }

    fn alg_of(v: &Value, field: &str) -> Algorithm {
        v[field].as_str().unwrap().parse().unwrap()
    }

    /// Signature-level verdict: parse + alg allow-list + key type + signature.
    fn sig_ok(token: &str, key: &VerifyingKey, alg: Algorithm) -> Result<(), &'static str> {
        verify_jws(token, key, &[alg])
            .map(|_| ())
            .map_err(|e| e.reason())
    }

    /// JWT-level verdict at `now`: signature, JSON claims, time claims.
    fn jwt_ok(
        token: &str,
        key: &VerifyingKey,
        alg: Algorithm,
        now: u64,
    ) -> Result<(), &'static str> {
        let jws = verify_jws(token, key, &[alg]).map_err(|e| e.reason())?;
        let claims = parse_claims(&jws.payload).map_err(|e| e.reason())?;
        validate_time_claims(&claims, now, 0, None).map_err(|e| e.reason())?;
        Ok(())
    }

    #[test]
    fn rfc_jose_vectors() {
        let doc = load("corpora/jwt/rfc_jose_vectors.json");
        let now = SystemClock.now_secs();
        let (mut checked, mut mismatches) = (0usize, Vec::new());
        let mut expect = |id: &str, what: &str, want: bool, got: Result<(), &'static str>| {
            checked += 1;
            if want != got.is_ok() {
                mismatches.push(format!("{id} {what}: want accept={want}, got {got:?}"));
            }
        };
        let mut keys_by_alg: HashMap<String, VerifyingKey> = HashMap::new();

        for v in doc["vectors"].as_array().unwrap() {
            let id = v["id"].as_str().unwrap();
            let token = v["token"].as_str().unwrap();
            let exp = &v["expected"];
            if v["alg"] == "none" {
                // No key to configure: every configured verifier must refuse it;
                // the cross checks below try it against each key. Here: parse.
                let r = parse_compact(token).map(|_| ()).map_err(|e| e.reason());
                assert_eq!(r, Err(reason::ALG_NONE), "{id}");
                expect(id, "accept_with_exp_check_disabled", false, r);
                expect(id, "accept_at_current_time", false, r);
                continue;
            }
            let alg = alg_of(v, "alg");
            let key = key_from_jwk(&v["verifier_key_jwk"]);
            // The PEM form of the same key must give the same verdicts.
            if let Some(pem) = v["verifier_key_pem_derived"].as_str() {
                let pk = VerifyingKey::from_public_pem(pem.as_bytes(), None).unwrap();
                expect(
                    id,
                    "signature_valid (PEM key)",
                    exp["signature_valid"] == true,
                    sig_ok(token, &pk, alg),
                );
            } else {
                let secret = hex(v["hmac_secret_hex"].as_str().unwrap());
                let hk = VerifyingKey::from_hmac_secret(&secret, None).unwrap();
                expect(
                    id,
                    "signature_valid (hex secret)",
                    exp["signature_valid"] == true,
                    sig_ok(token, &hk, alg),
                );
            }
            expect(
                id,
                "signature_valid",
                exp["signature_valid"] == true,
                sig_ok(token, &key, alg),
            );
            if let Some(w) = exp["accept_with_exp_check_disabled_or_clock_before_exp"].as_bool() {
                expect(
                    id,
                    "clock_before_exp",
                    w,
                    jwt_ok(token, &key, alg, 1_300_819_379),
                );
            }
            if let Some(w) = exp["accept_at_current_time"].as_bool() {
                let got = jwt_ok(token, &key, alg, now);
                if !w {
                    assert_eq!(got, Err(reason::EXPIRED), "{id}: must fail as expired");
                }
                expect(id, "accept_at_current_time", w, got);
            }
            if let Some(w) = exp["accept_as_jws_signature_only"].as_bool() {
                expect(id, "jws_signature_only", w, sig_ok(token, &key, alg));
            }
            if let Some(w) = exp["accept_as_jwt"].as_bool() {
                expect(id, "as_jwt", w, jwt_ok(token, &key, alg, now));
            }
            keys_by_alg.entry(format!("{alg:?}")).or_insert(key);
        }

        for v in doc["derived_negative_vectors"].as_array().unwrap() {
            let id = v["id"].as_str().unwrap();
            let alg = alg_of(v, "verifier_alg");
            let key = key_from_jwk(&v["verifier_key_jwk"]);
            let token = v["token"].as_str().unwrap();
            let want = v["expected"]["accept"].as_bool().unwrap();
            expect(id, "accept", want, jwt_ok(token, &key, alg, 1_300_819_379));
            expect(
                id,
                "signature_valid",
                v["expected"]["signature_valid"] == true,
                sig_ok(token, &key, alg),
            );
        }

        let tokens: HashMap<&str, &str> = doc["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["id"].as_str().unwrap(), v["token"].as_str().unwrap()))
            .collect();
        for c in doc["cross_configuration_checks"]["checks"]
            .as_array()
            .unwrap()
        {
            let id = c["token_id"].as_str().unwrap();
            let alg = alg_of(c, "verifier_alg");
            let key = &keys_by_alg[&format!("{alg:?}")];
            let want = c["expected"] != "reject";
            expect(
                id,
                &format!("cross vs {alg:?}"),
                want,
                sig_ok(tokens[id], key, alg),
            );
        }

        eprintln!(
            "rfc_jose_vectors: {checked} verdicts checked, {} mismatches",
            mismatches.len()
        );
        assert!(mismatches.is_empty(), "{mismatches:#?}");
        assert!(checked >= 40, "too few verdicts checked: {checked}");
    }

    /// Wycheproof raw-signature suites through the lowest verification layer
    /// (key loaded by our PEM loader, signature checked by `verify_raw`).
    fn wycheproof(file: &str, alg: Algorithm) -> (usize, usize, usize) {
        let doc = load(&format!("corpora/jwt/wycheproof/testvectors_v1/{file}"));
        let (mut valid, mut invalid, mut acceptable) = (0, 0, 0);
        let mut mismatches = Vec::new();
        for g in doc["testGroups"].as_array().unwrap() {
            let key =
                VerifyingKey::from_public_pem(g["publicKeyPem"].as_str().unwrap().as_bytes(), None);
            for t in g["tests"].as_array().unwrap() {
                let msg = hex(t["msg"].as_str().unwrap());
                let sig = URL_SAFE_NO_PAD.encode(hex(t["sig"].as_str().unwrap()));
                let ok = match &key {
                    Ok(k) => verify_raw(k, alg, &msg, &sig).is_ok(),
                    Err(_) => false,
                };
                match t["result"].as_str().unwrap() {
                    "valid" => {
                        valid += 1;
                        if !ok {
                            mismatches.push(format!("tcId {} valid but rejected", t["tcId"]));
                        }
                    }
                    "invalid" => {
                        invalid += 1;
                        if ok {
                            mismatches.push(format!("tcId {} invalid but accepted", t["tcId"]));
                        }
                    }
                    _ => acceptable += 1,
                }
            }
        }
        eprintln!(
            "wycheproof {file}: {valid} valid, {invalid} invalid, {acceptable} acceptable (either verdict), {} mismatches",
            mismatches.len()
        );
        assert!(mismatches.is_empty(), "{file}: {mismatches:#?}");
        (valid, invalid, acceptable)
    }

    /// Wycheproof JSON Web Signature suite: compact JWS + JWK per group,
    /// JWS-level verdicts (payloads are not JWT claims). Vectors for algorithms
    /// this verifier does not implement (ES512, ...) must simply be rejected;
    /// `valid` ones of those are counted as skipped.
    #[test]
    fn wycheproof_json_web_signature() {
        let doc = load("corpora/jwt/wycheproof/testvectors_v1/json_web_signature_test.json");
        let (mut agree, mut skipped, mut mismatches) = (0usize, 0usize, Vec::new());
        for g in doc["testGroups"].as_array().unwrap() {
            let jwk = if g["public"].is_object() {
                &g["public"]
            } else {
                &g["private"]
            };
            let key = VerifyingKey::from_jwk_value(jwk, true);
            for t in g["tests"].as_array().unwrap() {
                let want = t["result"] == "valid";
                let got = match (&key, t["jws"].as_str()) {
                    // JSON serialization is not accepted on a bearer path.
                    (_, None) | (Err(_), _) => None,
                    (Ok(k), Some(jws)) => {
                        let algs: Vec<Algorithm> = match k.alg() {
                            Some(a) => vec![a],
                            None => ALLOWED_ALGORITHMS.to_vec(),
                        };
                        Some(verify_jws(jws, k, &algs).is_ok())
                    }
                };
                let accepted = got.unwrap_or(false);
                if accepted == want {
                    agree += 1;
                } else if want && got.is_none() {
                    skipped += 1;
                } else {
                    mismatches.push(format!("tcId {} {} want {want}", t["tcId"], t["comment"]));
                }
            }
        }
        // Deliberate, documented disagreements (each checked to stay exactly so):
        // - emptyPayload (259..325): a JWT payload is a JSON object, so an empty
        //   payload segment is refused by the compact parser on purpose;
        // - Figure20 (346, 350): header alg PS384 with a JWK pinned to
        //   alg=PS256; RFC 7517 §4.4 pins the key, we refuse the mismatch;
        // - 367, 370 ("invalidBase64Padding…"): in this copy of the corpus the
        //   token is byte-identical to tcId 357 (valid), padding absent; we
        //   agree with 357;
        // - 372, 373 ("InvalidCharacterInserted…", marked valid): a `?` inside a
        //   base64url segment is not base64url; strict parsing refuses it.
        let deviations = [259, 264, 268, 272, 320, 325, 346, 350, 367, 370, 372, 373];
        let got_ids: Vec<u64> = mismatches
            .iter()
            .map(|m| m.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        eprintln!(
            "wycheproof json_web_signature: {agree} agree, {skipped} valid-but-unsupported skipped, {} documented deviations",
            mismatches.len()
        );
        assert_eq!(got_ids, deviations, "{mismatches:#?}");
    }

    #[test]
    fn wycheproof_es256_p1363() {
        let (v, i, _) = wycheproof("ecdsa_secp256r1_sha256_p1363_test.json", Algorithm::ES256);
        assert!(v > 100 && i > 50);
    }

    #[test]
    fn wycheproof_rs256_pkcs1() {
        let (v, i, _) = wycheproof("rsa_signature_2048_sha256_test.json", Algorithm::RS256);
        assert!(v > 0 && i > 100);
    }

    trait NowSecs {
        fn now_secs(&self) -> u64;
    }
    impl NowSecs for SystemClock {
        fn now_secs(&self) -> u64 {
            self.since_epoch().as_secs()
        }
    }
    use crate::clock::SystemClock;
}
