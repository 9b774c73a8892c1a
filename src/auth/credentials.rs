//! Credentials lienthong presents to upstreams, obtained, cached and refreshed here so
//! that agencies don't have to: OAuth2 client_credentials (as WSO2-based NGSP/LGSP
//! platforms require), a JWT signed by lienthong's own key, or a static header (API
//! keys, the LGSP base64 JSON credential header).
//!
//! OAuth2 tokens are fetched single-flight (one token request serves every concurrent
//! call), cached until `expires_in` minus a margin, and dropped when the upstream answers
//! 401 so that exactly one re-authentication follows.

use crate::body::{collect_capped, Body};
use crate::config::{CredentialsConfig, SecretValue};
use crate::error::{ErrorKind, GatewayError};
use crate::upstream::{OutboundRequest, Pool};
use http::header::{self, HeaderName, HeaderValue};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest an upstream token is kept, whatever its endpoint says (seconds).
const MAX_TOKEN_LIFETIME_S: u64 = 86_400;

/// After a failed token fetch, requests fail fast for this long instead of each
/// fetching again.
const FETCH_BACKOFF: Duration = Duration::from_secs(1);

/// The shortest lifetime an upstream token is taken to have.
const MIN_TOKEN_LIFETIME_S: u64 = 2;

/// lienthong's own signing key (`[auth.signing]`).
pub struct OwnKey {
    pub kid: String,
    pub issuer: String,
    alg: jsonwebtoken::Algorithm,
    pem: Vec<u8>,
    /// The public half as a JWK, for `/.well-known/jwks.json`.
    pub public_jwk: serde_json::Value,
}

impl OwnKey {
    /// Loads an Ed25519 or P-256 private key (PKCS#8 PEM).
    pub fn load(path: &std::path::Path, kid: &str, issuer: &str) -> Result<OwnKey, String> {
        use aws_lc_rs::signature::KeyPair;
        use base64::Engine;
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|_| format!("{}: not a PKCS#8 private key", path.display()))?;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        if let Ok(kp) = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der()) {
            let x = b64(kp.public_key().as_ref());
            return Ok(OwnKey {
                kid: kid.into(),
                issuer: issuer.into(),
                alg: jsonwebtoken::Algorithm::EdDSA,
                pem,
                public_jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
            });
        }
        if let Ok(kp) = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
        ) {
            let point = kp.public_key().as_ref();
            // Uncompressed SEC1 point: 0x04 ‖ X ‖ Y.
            if point.len() == 65 {
                return Ok(OwnKey {
                    kid: kid.into(),
                    issuer: issuer.into(),
                    alg: jsonwebtoken::Algorithm::ES256,
                    pem,
                    public_jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]), "kid": kid, "alg": "ES256", "use": "sig"}),
                });
            }
        }
        Err(format!(
            "{}: only Ed25519 and P-256 keys are supported",
            path.display()
        ))
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [self.public_jwk]})
    }

    pub fn mint(&self, audience: &str, ttl: Duration) -> Result<(String, Instant), String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": self.issuer, "aud": audience,
            "iat": now, "nbf": now, "exp": now + ttl.as_secs(),
        });
        let t = super::jwt::mint(&self.pem, self.alg, claims, Some(&self.kid))
            .map_err(|e| e.to_string())?;
        Ok((t, Instant::now() + ttl))
    }
}

pub struct CachedToken {
    value: HeaderValue,
    /// Refresh from this moment on.
    refresh_at: Instant,
}

pub enum Credentials {
    OAuth2 {
        upstream: String,
        token_pool: Arc<Pool>,
        token_path: String,
        client_id: String,
        client_secret: SecretValue,
        basic_auth: bool,
        scope: Option<String>,
        margin: Duration,
        cached: RwLock<Option<CachedToken>>,
        /// Single flight for fetches; holds when the last one failed.
        refresh: tokio::sync::Mutex<Option<Instant>>,
    },
    Jwt {
        key: Arc<OwnKey>,
        audience: String,
        ttl: Duration,
        cached: RwLock<Option<CachedToken>>,
    },
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn unavailable(code: &'static str, msg: &str) -> GatewayError {
    let mut e = GatewayError::new(ErrorKind::BadGateway, code, msg);
    e.retry_after = Some(5);
    e
}

impl Credentials {
    pub fn build(
        upstream: &str,
        cfg: &CredentialsConfig,
        pools: &std::collections::BTreeMap<String, Arc<Pool>>,
        own: Option<&Arc<OwnKey>>,
    ) -> Result<Credentials, String> {
        Ok(match cfg {
            CredentialsConfig::Oauth2 {
                token_upstream,
                token_path,
                client_id,
                client_secret,
                basic_auth,
                scope,
                refresh_margin,
            } => Credentials::OAuth2 {
                upstream: upstream.to_string(),
                token_pool: pools
                    .get(token_upstream)
                    .cloned()
                    .ok_or_else(|| format!("unknown token upstream {token_upstream}"))?,
                token_path: token_path.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                basic_auth: *basic_auth,
                scope: scope.clone(),
                margin: *refresh_margin,
                cached: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(None),
            },
            CredentialsConfig::Jwt { audience, ttl } => Credentials::Jwt {
                key: own.cloned().ok_or("type = \"jwt\" needs [auth.signing]")?,
                audience: audience.clone(),
                ttl: *ttl,
                cached: RwLock::new(None),
            },
            CredentialsConfig::Header { name, value } => Credentials::Header {
                name: HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
                value: {
                    let mut v = HeaderValue::from_bytes(value.expose()).map_err(|_| {
                        "the credential value is not a valid header value".to_string()
                    })?;
                    // Never indexed by HTTP/2 header compression, nor shown by Debug.
                    v.set_sensitive(true);
                    v
                },
            },
        })
    }

    fn fresh(cached: &RwLock<Option<CachedToken>>) -> Option<HeaderValue> {
        let g = cached.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
            .map(|t| t.value.clone())
    }

    /// Sets this upstream's credential on an outgoing request.
    pub async fn apply(&self, h: &mut http::HeaderMap) -> Result<(), GatewayError> {
        match self {
            Credentials::Header { name, value } => {
                h.insert(name.clone(), value.clone());
            }
            Credentials::Jwt {
                key,
                audience,
                ttl,
                cached,
            } => {
                let v = match Self::fresh(cached) {
                    Some(v) => v,
                    None => {
                        let (t, until) = key.mint(audience, *ttl).map_err(|e| {
                            GatewayError::internal(format!("minting upstream JWT: {e}"))
                        })?;
                        let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                            .map_err(GatewayError::internal)?;
                        v.set_sensitive(true);
                        let refresh_at = until.checked_sub(*ttl / 5).unwrap_or(until);
                        *cached.write().unwrap_or_else(|e| e.into_inner()) = Some(CachedToken {
                            value: v.clone(),
                            refresh_at,
                        });
                        v
                    }
                };
                h.insert(header::AUTHORIZATION, v);
            }
            Credentials::OAuth2 {
                cached, refresh, ..
            } => {
                let v = match Self::fresh(cached) {
                    Some(v) => v,
                    None => {
                        // Single flight: the first caller fetches, the others wait and
                        // then find the fresh token. A fetch that just failed is not
                        // repeated by every waiter in turn (each bounded only by the
                        // token endpoint's timeout): for `FETCH_BACKOFF` they fail fast.
                        let mut failed_at = refresh.lock().await;
                        match Self::fresh(cached) {
                            Some(v) => v,
                            None if failed_at.is_some_and(|t| t.elapsed() < FETCH_BACKOFF) => {
                                return Err(unavailable(
                                    "credentials_unavailable",
                                    "the upstream's token endpoint failed just now",
                                ));
                            }
                            None => match self.fetch_oauth2().await {
                                Ok(v) => {
                                    *failed_at = None;
                                    v
                                }
                                Err(e) => {
                                    *failed_at = Some(Instant::now());
                                    return Err(e);
                                }
                            },
                        }
                    }
                };
                h.insert(header::AUTHORIZATION, v);
            }
        }
        Ok(())
    }

    /// The upstream refused the credential: forget a cached token so the next
    /// `apply` re-authenticates. Returns whether a retry can help.
    pub fn invalidate(&self, used: Option<&HeaderValue>) -> bool {
        match self {
            Credentials::OAuth2 { cached, .. } | Credentials::Jwt { cached, .. } => {
                let mut g = cached.write().unwrap_or_else(|e| e.into_inner());
                // Only drop the token that failed; a concurrent refresh may already
                // have replaced it.
                if g.as_ref().map(|t| &t.value) == used || used.is_none() {
                    *g = None;
                }
                true
            }
            Credentials::Header { .. } => false,
        }
    }

    async fn fetch_oauth2(&self) -> Result<HeaderValue, GatewayError> {
        let Credentials::OAuth2 {
            upstream,
            token_pool,
            token_path,
            client_id,
            client_secret,
            basic_auth,
            scope,
            margin,
            cached,
            ..
        } = self
        else {
            return Err(GatewayError::internal("not oauth2"));
        };
        let mut form = String::from("grant_type=client_credentials");
        if let Some(s) = scope {
            form.push_str("&scope=");
            form.push_str(&form_encode(s));
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let secret = String::from_utf8_lossy(client_secret.expose()).into_owned();
        if *basic_auth {
            use base64::Engine;
            // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            let pair = format!("{}:{}", form_encode(client_id), form_encode(&secret));
            let v = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            let mut hv = HeaderValue::from_str(&v).map_err(GatewayError::internal)?;
            hv.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, hv);
        } else {
            form.push_str("&client_id=");
            form.push_str(&form_encode(client_id));
            form.push_str("&client_secret=");
            form.push_str(&form_encode(&secret));
        }
        let req = OutboundRequest {
            method: http::Method::POST,
            path_and_query: token_path.parse().map_err(GatewayError::internal)?,
            headers,
            body: Body::full(form),
            idempotent: false,
            timeout: Duration::from_secs(10),
            host_from_endpoint: true,
        };
        let count = |result: &'static str| {
            metrics::counter!("lienthong_upstream_token_refreshes_total", "upstream" => upstream.clone(), "result" => result)
                .increment(1);
        };
        // Boxed: the token pool is an upstream pool too, and `Pool::send` calls `apply`.
        let answer = Box::pin(token_pool.send(req))
            .await
            .inspect_err(|_| count("error"))?;
        let status = answer.response.status();
        let body = collect_capped(answer.response.into_body(), 64 * 1024)
            .await
            .map_err(|_| {
                unavailable(
                    "credentials_unavailable",
                    "the upstream's token endpoint failed",
                )
            })?;
        if !status.is_success() {
            count("refused");
            tracing::warn!(upstream = %upstream, %status, "token endpoint refused the client credentials");
            return Err(unavailable(
                "credentials_unavailable",
                "lienthong could not obtain credentials for the upstream",
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            count("error");
            unavailable(
                "credentials_unavailable",
                "the upstream's token endpoint answered nonsense",
            )
        })?;
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                count("error");
                unavailable(
                    "credentials_unavailable",
                    "the upstream's token endpoint sent no token",
                )
            })?;
        // Kept within a day: the endpoint's figure is not trusted to be sane (a huge
        // one overflowed the refresh time), and a token is refetched once a day at
        // least anyway.
        // And at least two seconds: a token said to expire at once (`0`) would
        // otherwise be fetched again, one caller at a time, for every request.
        let expires_in = v["expires_in"]
            .as_u64()
            .unwrap_or(300)
            .clamp(MIN_TOKEN_LIFETIME_S, MAX_TOKEN_LIFETIME_S);
        let lifetime = Duration::from_secs(expires_in);
        // Refresh `margin` before expiry, but never sooner than half the lifetime
        // (a short-lived token with a large margin would be refetched on every call).
        let early = (*margin).min(lifetime / 2);
        let mut hv = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            unavailable(
                "credentials_unavailable",
                "the upstream's token is not usable",
            )
        })?;
        hv.set_sensitive(true);
        *cached.write().unwrap_or_else(|e| e.into_inner()) = Some(CachedToken {
            value: hv.clone(),
            refresh_at: Instant::now() + lifetime - early,
        });
        count("ok");
        Ok(hv)
    }
}

/// A session obtained by logging in, for counterparts that want it inside the payload rather
/// than in a header — DVCQG's `{"session": …}` envelope (brief §4.1): `POST path` with
/// `{"username", "password"}` answers `{"session": "<token>", "error_code": 0}`. Adapter
/// mappings read it as a context value (`context = { session = { login = {…} } }`). Fetched
/// single-flight, cached for `ttl` (DVCQG documents no lifetime), and dropped when the
/// counterpart refuses a call made with it, so the next call logs in again.
pub struct SessionLogin {
    pub upstream: String,
    pub path: String,
    pub username: String,
    pub password: SecretValue,
    /// Member of the login answer holding the session (default `session`).
    pub field: String,
    pub ttl: Duration,
    /// Extra request headers (DVCQG wants `dstcode`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    cached: RwLock<Option<(String, Instant)>>,
    /// Held while logging in; the time of the last failed login.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

/// After a failed login, callers fail fast for this long: a wrong or rotated password
/// must not be tried again by every queued request (counterparts lock accounts after a
/// few failures), nor each of them wait out the login's timeout in turn.
const LOGIN_BACKOFF: Duration = Duration::from_secs(10);

impl std::fmt::Debug for SessionLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<session login at {}{}>", self.upstream, self.path)
    }
}

impl PartialEq for SessionLogin {
    fn eq(&self, o: &Self) -> bool {
        self.upstream == o.upstream
            && self.path == o.path
            && self.username == o.username
            && self.password == o.password
            && self.field == o.field
            && self.ttl == o.ttl
            && self.headers == o.headers
    }
}

impl serde::Serialize for SessionLogin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({"login": {"upstream": self.upstream, "path": self.path,
            "username": self.username, "password": self.password}})
        .serialize(s)
    }
}

impl SessionLogin {
    pub fn new(
        upstream: String,
        path: String,
        username: String,
        password: SecretValue,
        field: String,
        ttl: Duration,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> SessionLogin {
        SessionLogin {
            upstream,
            path,
            username,
            password,
            field,
            ttl,
            headers,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    fn fresh(&self) -> Option<String> {
        let g = self.cached.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(s, _)| s.clone())
    }

    /// The current session, logging in first when there is none (one login serves every
    /// concurrent caller).
    pub async fn session(
        &self,
        pools: &std::collections::BTreeMap<String, Arc<Pool>>,
    ) -> Result<String, GatewayError> {
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        let mut failed_at = self.refresh.lock().await;
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        if failed_at.is_some_and(|t| t.elapsed() < LOGIN_BACKOFF) {
            return Err(unavailable(
                "credentials_unavailable",
                "logging in to the upstream failed just now",
            ));
        }
        let r = self.login(pools).await;
        *failed_at = r.is_err().then(Instant::now);
        r
    }

    async fn login(
        &self,
        pools: &std::collections::BTreeMap<String, Arc<Pool>>,
    ) -> Result<String, GatewayError> {
        let pool = pools.get(&self.upstream).ok_or_else(|| {
            GatewayError::internal(format!(
                "login upstream {} is not configured",
                self.upstream
            ))
        })?;
        let body = serde_json::json!({
            "username": self.username,
            "password": String::from_utf8_lossy(self.password.expose()),
        });
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &self.headers {
            headers.insert(k.clone(), v.clone());
        }
        let req = OutboundRequest {
            method: http::Method::POST,
            path_and_query: self.path.parse().map_err(GatewayError::internal)?,
            headers,
            body: Body::full(serde_json::to_vec(&body).unwrap_or_default()),
            idempotent: false,
            timeout: Duration::from_secs(10),
            host_from_endpoint: true,
        };
        let failed = || {
            unavailable(
                "credentials_unavailable",
                "logging in to the upstream failed",
            )
        };
        let answer = Box::pin(pool.send(req)).await?;
        let ok = answer.response.status().is_success();
        let bytes = collect_capped(answer.response.into_body(), 64 * 1024)
            .await
            .map_err(|_| failed())?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| failed())?;
        let session = match &v[self.field.as_str()] {
            serde_json::Value::String(s) if ok && !s.is_empty() => s.clone(),
            _ => {
                metrics::counter!("lienthong_upstream_logins_total", "upstream" => self.upstream.clone(), "result" => "refused").increment(1);
                return Err(failed());
            }
        };
        metrics::counter!("lienthong_upstream_logins_total", "upstream" => self.upstream.clone(), "result" => "ok").increment(1);
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) =
            Some((session.clone(), Instant::now() + self.ttl));
        Ok(session)
    }

    /// The counterpart refused a call made with `used`: forget it (unless a newer one
    /// already replaced it).
    pub fn invalidate(&self, used: &str) {
        let mut g = self.cached.write().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_some_and(|(s, _)| s == used) {
            *g = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A static credential goes upstream marked sensitive: HTTP/2's header compression
    /// never indexes it, and `Debug` never shows it.
    #[tokio::test]
    async fn a_static_header_credential_is_sent_as_sensitive() {
        let cfg = CredentialsConfig::Header {
            name: "x-api-key".into(),
            value: crate::config::SecretValue::from_bytes("test", b"s3cret".to_vec()),
        };
        let c = Credentials::build("u", &cfg, &Default::default(), None).unwrap();
        let mut h = http::HeaderMap::new();
        c.apply(&mut h).await.unwrap();
        let v = h.get("x-api-key").unwrap();
        assert_eq!(v.as_bytes(), b"s3cret");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("s3cret"));
    }
}
