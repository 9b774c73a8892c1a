//! Who may call what (issue #3): JWT verification per RFC 8725 (`jwt`), key sets with
//! JWKS rotation (`keys`), the verified `Caller` (`caller`), per-route access rules
//! (`rules`) and the credentials lienthong presents upstream (`credentials`).
//!
//! [`AuthRuntime`] is the compiled form of `[auth]` plus every route's `auth` table;
//! the pipeline calls [`AuthRuntime::check_rule`] between route selection and forwarding.

pub mod caller;
pub mod credentials;
pub mod jwt;
pub mod keys;
pub mod rules;

use crate::clock::SystemClock;
use crate::config::{Config, IssuerKeysCfg, Problem};
use crate::error::{ErrorKind, GatewayError};
use crate::upstream::{OutboundRequest, Pool};
use caller::Caller;
use jwt::{AuthError, AuthErrorKind, AuthOptions, Authenticator, IssuerConfig, KeySource};
use keys::{JwksFetcher, JwksPolicy, KeySet, VerifyingKey};
use rules::AccessRule;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Fetches JWKS documents through the upstream layer (endpoints from config only,
/// timeouts, health), bounded in time and size.
struct PoolJwksFetcher {
    targets: HashMap<String, (Arc<Pool>, String)>,
}

impl JwksFetcher for PoolJwksFetcher {
    fn fetch(
        &self,
        url: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        let target = self.targets.get(url).cloned();
        Box::pin(async move {
            let (pool, path) = target.ok_or("no upstream for this JWKS URL")?;
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::ACCEPT,
                http::HeaderValue::from_static("application/json"),
            );
            let req = OutboundRequest {
                method: http::Method::GET,
                path_and_query: path.parse().map_err(|_| "bad JWKS path".to_string())?,
                headers,
                body: crate::body::Body::empty(),
                idempotent: true,
                timeout: Duration::from_secs(5),
                host_from_endpoint: true,
            };
            let answer = pool.send(req).await.map_err(|e| e.to_string())?;
            if !answer.response.status().is_success() {
                return Err(format!(
                    "JWKS endpoint answered {}",
                    answer.response.status()
                ));
            }
            let body = crate::body::collect_capped(
                answer.response.into_body(),
                keys::MAX_JWKS_BYTES as u64,
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(body.to_vec())
        })
    }
}

/// The compiled authentication and authorisation state of one config generation.
pub struct AuthRuntime {
    pub authenticator: Option<Authenticator>,
    /// Indexed like `config.routes`; None = no `auth` table: deny.
    pub rules: Vec<Option<AccessRule>>,
    pub forward_token: Vec<bool>,
    pub own_key: Option<Arc<credentials::OwnKey>>,
    /// The JWKS document of `own_key`, served at `/.well-known/jwks.json`.
    pub own_jwks: Option<bytes::Bytes>,
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        path: path.into(),
        message: message.into(),
    }
}

fn alg(name: &str) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        "HS256" => HS256,
        _ => return None,
    })
}

/// Whether a query carries an RFC 6750 `access_token` parameter, its name read as the
/// upstream's framework will read it (`access%5Ftoken` is `access_token` too).
fn token_in_query(query: &str) -> bool {
    query.split('&').any(|kv| {
        let name = kv.split('=').next().unwrap_or("");
        name == "access_token"
            || crate::pipeline::normalize::percent_decode(name).is_some_and(|n| n == "access_token")
    })
}

impl AuthRuntime {
    pub fn build(
        cfg: &Config,
        pools: &BTreeMap<String, Arc<Pool>>,
    ) -> Result<AuthRuntime, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut issuers = Vec::new();
        let mut targets = HashMap::new();
        for (i, ic) in cfg.auth.issuers.iter().enumerate() {
            let path = format!("auth.issuers[{i}]");
            let keys = match &ic.keys {
                IssuerKeysCfg::PublicKey { path: p, kid } => {
                    KeySet::from_pem_file(p, kid.as_deref()).map(KeySource::Static)
                }
                IssuerKeysCfg::Jwk(p) => KeySet::from_jwk_file(p).map(KeySource::Static),
                IssuerKeysCfg::JwksFile(p) => KeySet::from_jwks_file(p).map(KeySource::Static),
                IssuerKeysCfg::Secret(s) => VerifyingKey::from_hmac_secret(s.expose(), None)
                    .map(|k| KeySource::Static(KeySet::new(vec![k]))),
                IssuerKeysCfg::Jwks {
                    upstream,
                    path: jp,
                    refresh_interval,
                    min_refetch_interval,
                    max_stale,
                } => {
                    let pool = &pools[upstream];
                    // Keys are fetched from any of the pool's endpoints: each must be
                    // https, or plain http to a literal loopback host, or anyone on the
                    // path could hand the gateway keys.
                    if let Some(bad) = pool
                        .cfg
                        .endpoints
                        .iter()
                        .find(|e| !e.https && !jwt::is_loopback_host(&e.host))
                    {
                        problems.push(problem(
                            &path,
                            format!(
                                "JWKS upstream {upstream}: endpoint {bad} must be https:// \
                                 (plain http only on loopback)"
                            ),
                        ));
                        continue;
                    }
                    let ep = &pool.cfg.endpoints[0];
                    let url = format!("{ep}{jp}");
                    targets.insert(url.clone(), (pool.clone(), jp.clone()));
                    Ok(KeySource::Jwks {
                        url,
                        policy: JwksPolicy {
                            refresh_interval: *refresh_interval,
                            min_refetch_interval: *min_refetch_interval,
                            max_stale: *max_stale,
                        },
                    })
                }
            };
            let keys = match keys {
                Ok(k) => k,
                Err(e) => {
                    problems.push(problem(&path, e.to_string()));
                    continue;
                }
            };
            let algorithms = ic.algorithms.iter().filter_map(|a| alg(a)).collect();
            let mut c =
                IssuerConfig::new(&ic.name, &ic.iss, ic.audiences.clone(), algorithms, keys);
            c.leeway = ic.leeway;
            c.max_lifetime = ic.max_lifetime;
            c.required_typ = ic.typ.clone();
            c.max_token_bytes = ic.max_token_bytes;
            if let Some(a) = &ic.agency_claims {
                c.claims.agency = a.clone();
            }
            // Each pattern was checked when the config was validated.
            c.agencies = ic
                .agencies
                .iter()
                .filter_map(|a| rules::AgencyPattern::parse(a).ok())
                .collect();
            if let Some(r) = &ic.roles_claim {
                c.claims.roles = r.clone();
            }
            if let Some(s) = &ic.scope_claim {
                c.claims.scope = s.clone();
            }
            issuers.push(c);
        }
        let authenticator = if issuers.is_empty() {
            None
        } else {
            let options = AuthOptions {
                cache_capacity: cfg.auth.cache_capacity,
                cache_max_ttl: cfg.auth.cache_max_ttl,
            };
            match Authenticator::new(
                issuers,
                options,
                Arc::new(PoolJwksFetcher { targets }),
                Arc::new(SystemClock),
            ) {
                Ok(a) => Some(a),
                Err(e) => {
                    problems.push(problem("auth.issuers", e.to_string()));
                    None
                }
            }
        };
        let mut rules = Vec::new();
        let mut forward_token = Vec::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            forward_token.push(r.auth.as_ref().is_some_and(|a| a.forward_token));
            rules.push(match &r.auth {
                None => None,
                Some(a) => {
                    match AccessRule::from_config(a.anonymous, &a.agencies, &a.roles, &a.scopes) {
                        Ok(rule) => Some(rule),
                        Err(e) => {
                            problems.push(problem(format!("routes[{i}].auth"), e.to_string()));
                            None
                        }
                    }
                }
            });
            if r.auth.as_ref().is_some_and(|a| !a.anonymous) && cfg.auth.issuers.is_empty() {
                problems.push(problem(
                    format!("routes[{i}].auth"),
                    "the route needs a token but no [[auth.issuers]] are configured",
                ));
            }
        }
        let own_key = match &cfg.auth.signing {
            Some(s) => match credentials::OwnKey::load(&s.key, &s.kid, &s.issuer) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    problems.push(problem("auth.signing.key", e));
                    None
                }
            },
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let own_jwks = own_key
            .as_ref()
            .map(|k| bytes::Bytes::from(serde_json::to_vec(&k.jwks()).unwrap_or_default()));
        Ok(AuthRuntime {
            authenticator,
            rules,
            forward_token,
            own_key,
            own_jwks,
        })
    }

    /// authn + authz against one rule (routes, lookups, intake): Ok(None) for an
    /// anonymous rule, Ok(caller) for an allowed caller, or the 401/403/503 to answer.
    /// No rule (`None`) denies everyone.
    pub async fn check_rule(
        &self,
        rule: Option<&AccessRule>,
        headers: &http::HeaderMap,
        query: Option<&str>,
        client_cert_s256: Option<&str>,
    ) -> Result<Option<Arc<Caller>>, GatewayError> {
        if rule.is_some_and(|r| r.anonymous) {
            return Ok(None);
        }
        let result = async {
            let auth = self.authenticator.as_ref().ok_or_else(|| {
                AuthError::unauthorized(jwt::reason::NO_RULE, "no issuers configured")
            })?;
            let values: Vec<&[u8]> = headers
                .get_all(http::header::AUTHORIZATION)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            let in_query = query.is_some_and(token_in_query);
            let caller = auth.authenticate(&values, in_query).await?;
            caller::check_cert_binding(&caller, client_cert_s256)?;
            rules::authorize(rule, Some(&caller))?;
            Ok::<_, AuthError>(caller)
        }
        .await;
        match result {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                metrics::counter!("lienthong_auth_failures_total", "reason" => e.reason())
                    .increment(1);
                Err(to_gateway_error(&e))
            }
        }
    }

    /// [`AuthRuntime::check_rule`] for a caller whose token is already verified and
    /// cached: Some only when `check_rule` would admit the request without verifying
    /// anything or fetching keys (a non-anonymous rule, a cache hit, a matching
    /// certificate binding, the rule satisfied), counted as the cache hit it is. None
    /// counts nothing and leaves the decision, refusals and their metrics included, to
    /// `check_rule`. Synchronous, for the HTTP/1 fast path, which asks last, once
    /// nothing else sends the request to the full path, and asks `check_rule` after
    /// every None.
    pub fn check_rule_cached(
        &self,
        rule: &AccessRule,
        authorization: &[&[u8]],
        query: Option<&str>,
        client_cert_s256: Option<&str>,
    ) -> Option<Arc<Caller>> {
        if rule.anonymous {
            return None;
        }
        let auth = self.authenticator.as_ref()?;
        let caller = auth.cached(authorization, query.is_some_and(token_in_query))?;
        caller::check_cert_binding(&caller, client_cert_s256).ok()?;
        rules::authorize(Some(rule), Some(&caller)).ok()?;
        auth.count_hit();
        Some(caller)
    }

    /// After a reload: key sets fetched by the previous generation from the same place
    /// are taken over (see [`keys::JwksState::adopt`]); the verified-token cache is not
    /// (the issuers' rules may have changed).
    pub fn adopt_key_sets(&self, previous: &AuthRuntime) {
        let (Some(new), Some(old)) = (&self.authenticator, &previous.authenticator) else {
            return;
        };
        let old_states = old.jwks_states();
        for state in new.jwks_states() {
            for o in &old_states {
                if state.adopt(o) {
                    break;
                }
            }
        }
    }

    /// Fetches every remote key set of this generation once, in the background, so
    /// that the first token of each issuer does not wait for it and readiness can
    /// report it. A key set taken over from the previous generation is fetched anew
    /// too (a reload is how an operator drops a withdrawn key); if that fails, the
    /// keys it had go on serving (see [`keys::JwksState::adopt`]).
    pub fn start_warm_up(&self) {
        let Some(a) = &self.authenticator else {
            return;
        };
        for state in a.jwks_states() {
            tokio::spawn(async move {
                if let Err(e) = state.refresh().await {
                    tracing::warn!(issuer = state.issuer(), error = %e, "key set warm-up failed");
                }
            });
        }
    }

    /// Whether every remote key set has been fetched or tried (see [`keys::JwksState::known`]).
    pub fn key_sets_known(&self) -> bool {
        self.authenticator
            .as_ref()
            .is_none_or(|a| a.jwks_states().iter().all(|s| s.known()))
    }

    /// Verified-token cache hit ratio inputs, for `/metrics`.
    pub fn cache_stats(&self) -> Option<jwt::CacheStats> {
        self.authenticator.as_ref().map(|a| a.cache_stats())
    }
}

fn to_gateway_error(e: &AuthError) -> GatewayError {
    match e.kind() {
        AuthErrorKind::Unauthorized(reason) => GatewayError {
            // No bearer token at all: none sent, or another scheme (RFC 6750 §3.1).
            token_missing: reason == jwt::reason::MISSING_TOKEN
                || reason == jwt::reason::BAD_SCHEME,
            ..GatewayError::new(
                ErrorKind::Unauthorized,
                "invalid_token",
                "a valid bearer token is required",
            )
            .with_detail(e)
        },
        AuthErrorKind::Forbidden(_) => GatewayError::new(
            ErrorKind::Forbidden,
            "forbidden",
            "the caller is not allowed to use this route",
        )
        .with_detail(e),
        AuthErrorKind::Unavailable(_) => GatewayError::unavailable(
            "issuer_unavailable",
            "the token issuer's keys cannot be obtained; try again later",
            5,
        )
        .with_detail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_the_query_is_seen_however_its_name_is_spelled() {
        for q in [
            "access_token=x",
            "a=1&access_token=x",
            "access%5Ftoken=x",
            "access%5ftoken",
            "%61ccess_token=x",
        ] {
            assert!(token_in_query(q), "{q}");
        }
        for q in [
            "",
            "a=1",
            "access_tokens=x",
            "x=access_token",
            "my_access_token=1",
        ] {
            assert!(!token_in_query(q), "{q}");
        }
    }
}
