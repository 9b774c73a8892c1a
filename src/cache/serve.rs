//! Lookups as the gateway serves them: built from `[[lookups]]`, answered at
//! `GET /lookups/NAME` (whole table) and `GET /lookups/NAME/KEY` under the same access
//! rules as routes, with `ETag`/`If-None-Match`, `Cache-Control` and `Age`; and the admin
//! operations (stats, purge, forced refresh).

use super::lookup::{KeyMode, Lookup, LookupError, LookupSource, LookupSpec, Served, SourceError};
use super::table::{DvhcSources, DvhcTable, FileSource, TableOptions};
use crate::auth::rules::AccessRule;
use crate::body::{collect_capped, Body};
use crate::config::{Config, LookupConfig, LookupSourceCfg, Problem};
use crate::error::{ErrorKind, GatewayError};
use crate::upstream::{OutboundRequest, Pool};
use http::header::{self, HeaderValue};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One configured lookup: keyed and whole-table views over the same source.
pub struct ServedLookup {
    pub cfg: LookupConfig,
    pub by_key: Lookup,
    pub whole: Lookup,
    pub rule: Option<AccessRule>,
    /// `lookup:{name}`, the route name its requests are logged, counted and audited
    /// under (made once, not per request).
    pub route: Arc<str>,
}

/// Fetches lookup data from an upstream pool: `path` with `{key}` filled in.
struct UpstreamSource {
    pool: Arc<Pool>,
    path: String,
}

fn encode_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    for b in k.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl LookupSource for UpstreamSource {
    fn fetch(
        &self,
        key: Option<&str>,
    ) -> Pin<Box<dyn Future<Output = Result<super::lookup::Fetched, SourceError>> + Send + '_>>
    {
        let path = match key {
            Some(k) => self.path.replace("{key}", &encode_key(k)),
            None => self.path.replace("/{key}", "").replace("{key}", ""),
        };
        Box::pin(async move {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            let req = OutboundRequest {
                method: http::Method::GET,
                path_and_query: path
                    .parse()
                    .map_err(|_| SourceError::BadData("bad lookup path".into()))?,
                headers,
                body: Body::empty(),
                idempotent: true,
                timeout: self.pool.cfg.request_timeout,
                host_from_endpoint: true,
            };
            let answer = self.pool.send(req).await.map_err(|e| match e.kind {
                ErrorKind::GatewayTimeout => SourceError::Timeout,
                _ => SourceError::Unavailable(e.to_string()),
            })?;
            let status = answer.response.status();
            if status == http::StatusCode::NOT_FOUND {
                return Ok(super::lookup::Fetched::NotFound);
            }
            if !status.is_success() {
                return Err(SourceError::Unavailable(format!(
                    "source answered {status}"
                )));
            }
            let body = collect_capped(answer.response.into_body(), 16 * 1024 * 1024)
                .await
                .map_err(|e| SourceError::BadData(e.to_string()))?;
            // Only well-formed JSON is cached; anything else would be served forever.
            serde_json::from_slice::<serde::de::IgnoredAny>(&body)
                .map_err(|e| SourceError::BadData(format!("source sent no JSON: {e}")))?;
            Ok(super::lookup::Fetched::Found(body))
        })
    }
}

fn spec(cfg: &LookupConfig, mode: KeyMode) -> LookupSpec {
    let mut s = LookupSpec::new(cfg.name.clone(), mode, cfg.ttl);
    s.refresh_ahead = cfg.refresh_ahead;
    s.max_stale = cfg.max_stale;
    s.negative_ttl = cfg.negative_ttl;
    s.capacity_bytes = cfg.capacity_bytes;
    s
}

/// Builds the lookups of a config, reusing those of `previous` whose config is
/// unchanged (their cached data survives a reload) and, for one served from an
/// upstream, whose pool is the one it was built with (`previous_pools`): a lookup keeps
/// its source, which holds that pool, and a changed upstream must not go on being asked.
pub fn build(
    cfg: &Config,
    pools: &BTreeMap<String, Arc<Pool>>,
    previous: Option<&BTreeMap<String, Arc<ServedLookup>>>,
    previous_pools: Option<&BTreeMap<String, Arc<Pool>>>,
) -> Result<BTreeMap<String, Arc<ServedLookup>>, Vec<Problem>> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    let mut dvhc: BTreeMap<std::path::PathBuf, DvhcSources> = BTreeMap::new();
    let same_pool = |name: &str| match (pools.get(name), previous_pools.and_then(|p| p.get(name))) {
        (Some(new), Some(old)) => Arc::ptr_eq(new, old),
        _ => false,
    };
    for (i, l) in cfg.lookups.iter().enumerate() {
        let path = format!("lookups[{i}]");
        if let Some(old) = previous
            .and_then(|p| p.get(&l.name))
            .filter(|o| o.cfg == *l)
            .filter(|_| match &l.source {
                LookupSourceCfg::Upstream { upstream, .. } => same_pool(upstream),
                _ => true,
            })
        {
            out.insert(l.name.clone(), old.clone());
            continue;
        }
        let source: Result<Arc<dyn LookupSource>, String> = match &l.source {
            LookupSourceCfg::File { path: p, key } => {
                FileSource::load(p, TableOptions::new(key.clone()))
                    .map(|s| Arc::new(s) as Arc<dyn LookupSource>)
                    .map_err(|e| e.to_string())
            }
            LookupSourceCfg::Table { path: p, table } => {
                let loaded = match dvhc.get(p) {
                    Some(d) => Ok(d),
                    None => DvhcSources::load(p).map(|d| &*dvhc.entry(p.clone()).or_insert(d)),
                };
                match loaded {
                    Ok(d) => match DvhcTable::ALL.iter().find(|t| t.name() == table) {
                        Some(t) => Ok(d.get(*t).clone() as Arc<dyn LookupSource>),
                        None => Err(format!("unknown table {table}")),
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
            LookupSourceCfg::Upstream { upstream, path: p } => match pools.get(upstream) {
                Some(pool) => Ok(Arc::new(UpstreamSource {
                    pool: pool.clone(),
                    path: p.clone(),
                }) as Arc<dyn LookupSource>),
                None => Err(format!("unknown upstream {upstream}")),
            },
        };
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem {
                    path: format!("{path}.source"),
                    message: e,
                });
                continue;
            }
        };
        let rule = match &l.auth {
            None => None,
            Some(a) => AccessRule::from_config(a.anonymous, &a.agencies, &a.roles, &a.scopes).ok(),
        };
        let made = Lookup::new(spec(l, KeyMode::ByKey), source.clone())
            .and_then(|k| Lookup::new(spec(l, KeyMode::WholeTable), source).map(|w| (k, w)));
        match made {
            Ok((by_key, whole)) => {
                out.insert(
                    l.name.clone(),
                    Arc::new(ServedLookup {
                        route: Arc::from(format!("lookup:{}", l.name)),
                        cfg: l.clone(),
                        by_key,
                        whole,
                        rule,
                    }),
                );
            }
            Err(e) => problems.push(Problem {
                path,
                message: e.to_string(),
            }),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Splits `/lookups/NAME[/KEY]`; None when the path is not a lookup path.
pub fn parse_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/lookups/")?;
    let rest = rest.trim_end_matches('/');
    match rest.split_once('/') {
        None if !rest.is_empty() => Some((rest, None)),
        Some((n, k)) if !n.is_empty() && !k.is_empty() && !k.contains('/') => Some((n, Some(k))),
        _ => None,
    }
}

fn lookup_error(e: &LookupError) -> GatewayError {
    match e {
        LookupError::NotFound { .. } => GatewayError::new(
            ErrorKind::NotFound,
            "not_found",
            "no such entry in this lookup",
        ),
        LookupError::BadKey { problem, .. } => GatewayError::bad_request("bad_key", *problem),
        LookupError::Unavailable { .. } | LookupError::TooStale { .. } => {
            GatewayError::unavailable(
                "lookup_unavailable",
                "the lookup's source is unavailable and no usable copy is cached",
                5,
            )
            .with_detail(e)
        }
    }
}

/// Answers a lookup request (after the access check).
pub async fn answer(
    l: &ServedLookup,
    key: Option<&str>,
    if_none_match: Option<&HeaderValue>,
    head: bool,
) -> Result<http::Response<Body>, GatewayError> {
    let served: Served = match key {
        Some(k) => l.by_key.get(Some(k)).await,
        None => l.whole.get(None).await,
    }
    .map_err(|e| lookup_error(&e))?;
    let fresh_left = l.cfg.ttl.saturating_sub(served.age);
    let visibility = if l.rule.as_ref().is_some_and(|r| r.anonymous) {
        "public"
    } else {
        "private"
    };
    // Written out rather than `format!`ed: this runs for every lookup hit.
    let mut cc = String::with_capacity(32);
    cc.push_str(visibility);
    cc.push_str(", max-age=");
    cc.push_str(itoa::Buffer::new().format(if served.stale {
        0
    } else {
        fresh_left.as_secs()
    }));
    let not_modified = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == served.etag || t.trim() == "*")
        });
    let mut rsp = if not_modified {
        let mut r = http::Response::new(Body::empty());
        *r.status_mut() = http::StatusCode::NOT_MODIFIED;
        r
    } else {
        let len = served.value.len();
        let mut r = http::Response::new(if head {
            Body::empty()
        } else {
            Body::full(served.value.clone())
        });
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if head {
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        r
    };
    let h = rsp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&served.etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cc) {
        h.insert(header::CACHE_CONTROL, v);
    }
    h.insert(header::AGE, HeaderValue::from(served.age.as_secs()));
    if served.stale {
        h.insert("x-lienthong-stale", HeaderValue::from_static("true"));
    }
    Ok(rsp)
}
