//! The running state: the validated config compiled into what the request path uses
//! (route order, pools), swapped atomically on reload.

use crate::config::{Config, ListenerConfig, Problems};
use crate::upstream::Pool;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// One config generation, ready to serve. Requests hold an `Arc<Runtime>` for their
/// whole life, so a reload never changes a request midway.
pub struct Runtime {
    pub config: Arc<Config>,
    pub route_order: Vec<usize>,
    /// Indexed like `config.routes`.
    pub route_pools: Vec<Arc<Pool>>,
    pub route_names: Vec<Arc<str>>,
    pub pool_names: Vec<Arc<str>>,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub generation: u64,
    pub auth: crate::auth::AuthRuntime,
    pub lookups: BTreeMap<String, Arc<crate::cache::serve::ServedLookup>>,
    /// The audit log (process-wide; the same writer across reloads).
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// The intake channel (process-wide; the same store across reloads).
    pub exchange: Option<Arc<crate::exchange::Exchange>>,
    /// Indexed like `config.routes`: the response cache of routes that enable one.
    pub route_caches: Vec<Option<Arc<crate::cache::lookup::response::ResponseCache>>>,
    /// Indexed like `config.routes`.
    pub route_metrics: Vec<crate::observe::RouteMetrics>,
    /// For requests that matched no route.
    pub unrouted_metrics: crate::observe::RouteMetrics,
}

impl Runtime {
    /// Compiles a config, reusing the pools of `previous` whose config is unchanged
    /// (so health state and warm connections survive a reload).
    pub fn build(
        config: Config,
        previous: Option<&Runtime>,
        generation: u64,
    ) -> Result<Runtime, Problems> {
        let mut problems = Problems::default();
        let mut pools = BTreeMap::new();
        let reusable = reusable_pools(&config, previous);
        for (name, ucfg) in &config.upstreams {
            let reuse = previous
                .and_then(|p| p.pools.get(name))
                .filter(|_| reusable.contains(name.as_str()))
                .cloned();
            match reuse {
                Some(p) => {
                    pools.insert(name.clone(), p);
                }
                None => match Pool::new(ucfg.clone()) {
                    Ok(p) => {
                        pools.insert(name.clone(), p);
                    }
                    Err(e) => problems.0.push(crate::config::Problem {
                        path: format!("upstreams.{name}"),
                        message: e,
                    }),
                },
            }
        }
        if !problems.0.is_empty() {
            return Err(problems);
        }
        let auth = crate::auth::AuthRuntime::build(&config, &pools).map_err(Problems)?;
        if let Some(p) = previous {
            auth.adopt_key_sets(&p.auth);
        }
        // A pool that signs its own JWTs keeps the key it was given: when lienthong's
        // signing key changed, such pools are built anew so they sign with the new one
        // (the key set published at /.well-known/jwks.json already has only that).
        let own_key =
            |a: &crate::auth::AuthRuntime| a.own_key.as_ref().map(|k| k.public_jwk.clone());
        if previous.is_some_and(|p| own_key(&p.auth) != own_key(&auth)) {
            for (name, pool) in pools.iter_mut() {
                let signs = matches!(
                    pool.cfg.credentials,
                    Some(crate::config::CredentialsConfig::Jwt { .. })
                );
                if signs && pool.credentials().is_some() {
                    match Pool::new(pool.cfg.clone()) {
                        Ok(p) => *pool = p,
                        Err(e) => problems.0.push(crate::config::Problem {
                            path: format!("upstreams.{name}"),
                            message: e,
                        }),
                    }
                }
            }
        }
        for (name, pool) in &pools {
            if let Some(c) = &pool.cfg.credentials {
                if pool.credentials().is_none() {
                    match crate::auth::credentials::Credentials::build(
                        name,
                        c,
                        &pools,
                        auth.own_key.as_ref(),
                    ) {
                        Ok(cr) => pool.set_credentials(cr),
                        Err(e) => problems.0.push(crate::config::Problem {
                            path: format!("upstreams.{name}.credentials"),
                            message: e,
                        }),
                    }
                }
            }
        }
        if !problems.0.is_empty() {
            return Err(problems);
        }
        let lookups = crate::cache::serve::build(
            &config,
            &pools,
            previous.map(|p| &p.lookups),
            previous.map(|p| &p.pools),
        )
        .map_err(Problems)?;
        let route_pools = config
            .routes
            .iter()
            .map(|r| pools[&r.upstream].clone())
            .collect();
        Ok(Runtime {
            route_order: crate::pipeline::route::match_order(&config.routes),
            route_names: config
                .routes
                .iter()
                .map(|r| Arc::from(r.name.as_str()))
                .collect(),
            pool_names: config
                .routes
                .iter()
                .map(|r| Arc::from(r.upstream.as_str()))
                .collect(),
            route_pools,
            auth,
            lookups,
            audit: previous.and_then(|p| p.audit.clone()),
            exchange: previous.and_then(|p| p.exchange.clone()),
            route_caches: config
                .routes
                .iter()
                .map(|r| {
                    r.cache.as_ref().map(|c| {
                        use crate::cache::lookup::response::{ResponseCache, ResponseCachePolicy};
                        let mut p = ResponseCachePolicy::new(c.public);
                        p.max_entry_bytes = c.max_entry_bytes;
                        p.capacity_bytes = c.capacity_bytes;
                        p.default_ttl = c.default_ttl;
                        p.max_ttl = c.max_ttl;
                        Arc::new(ResponseCache::new(p))
                    })
                })
                .collect(),
            route_metrics: config
                .routes
                .iter()
                .map(|r| crate::observe::RouteMetrics::new(&r.name, &r.upstream))
                .collect(),
            unrouted_metrics: crate::observe::RouteMetrics::new("", ""),
            pools,
            config: Arc::new(config),
            generation,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.config.listeners.iter().find(|l| l.name == name)
    }

    /// Starts health checks of pools that are new in this generation, and the
    /// generation's key-set warm-up.
    pub fn start_background_tasks(&self, previous: Option<&Runtime>) {
        self.auth.start_warm_up();
        for (name, p) in &self.pools {
            let reused = previous
                .and_then(|prev| prev.pools.get(name))
                .is_some_and(|old| Arc::ptr_eq(old, p));
            if !reused {
                p.start_health_checks();
            }
        }
    }
}

/// The upstreams of `config` whose pools `previous` may lend to the new runtime: same
/// config, and, for OAuth2 credentials, a token upstream that is reused too (a reused
/// pool keeps its credentials, which hold the token upstream's pool: a changed token
/// endpoint would otherwise go on being asked with the client secret).
fn reusable_pools<'a>(
    config: &'a Config,
    previous: Option<&Runtime>,
) -> std::collections::BTreeSet<&'a str> {
    let Some(prev) = previous else {
        return Default::default();
    };
    let mut keep: std::collections::BTreeSet<&str> = config
        .upstreams
        .iter()
        .filter(|(name, c)| prev.pools.get(name.as_str()).is_some_and(|p| p.cfg == **c))
        .map(|(name, _)| name.as_str())
        .collect();
    // Dependencies may chain: drop until nothing changes.
    loop {
        let drop: Vec<&str> = keep
            .iter()
            .copied()
            .filter(|name| match &config.upstreams[*name].credentials {
                Some(crate::config::CredentialsConfig::Oauth2 { token_upstream, .. }) => {
                    !keep.contains(token_upstream.as_str())
                }
                _ => false,
            })
            .collect();
        if drop.is_empty() {
            return keep;
        }
        for d in drop {
            keep.remove(d);
        }
    }
}

/// The gateway: the current runtime plus process-wide state.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub shutting_down: AtomicBool,
    /// HTTP/2 streams in progress: hyper runs each in a task of its own, outside the
    /// connection's, and shutdown waits for them (`server::StreamExecutor`).
    pub(crate) h2_streams: Arc<crate::server::StreamTasks>,
    /// Requests served by the HTTP/1 fast path (`pipeline::fast`), in `/metrics` as
    /// `lienthong_fast_path_requests_total`.
    pub fast_path_requests: AtomicU64,
}

impl Gateway {
    /// Builds the first runtime. Call inside a Tokio runtime (pools start tasks).
    pub fn new(config: Config) -> Result<Arc<Gateway>, Problems> {
        let metrics = crate::observe::metrics_handle();
        let audit = match &config.audit {
            Some(a) => {
                let auditor = crate::audit::Auditor::start(a).map_err(|e| {
                    Problems(vec![crate::config::Problem {
                        path: "audit".into(),
                        message: e,
                    }])
                })?;
                auditor.start_retention();
                Some(auditor)
            }
            None => None,
        };
        let exchange = match &config.exchange {
            Some(x) => Some(crate::exchange::Exchange::open(x).map_err(|e| {
                Problems(vec![crate::config::Problem {
                    path: "exchange".into(),
                    message: e,
                }])
            })?),
            None => None,
        };
        let mut rt = Runtime::build(config, None, 1)?;
        rt.audit = audit;
        rt.exchange = exchange.clone();
        rt.start_background_tasks(None);
        let gw = Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(rt),
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
            metrics,
            shutting_down: AtomicBool::new(false),
            h2_streams: Default::default(),
            fast_path_requests: AtomicU64::new(0),
        });
        if let Some(x) = exchange {
            x.start_delivery(Arc::downgrade(&gw));
        }
        if let Some(a) = &gw.runtime().audit {
            a.start_timestamping(Arc::downgrade(&gw));
        }
        Ok(gw)
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Reloads from the file the config came from (SIGHUP and `POST /admin/reload`):
    /// validate first, swap atomically, keep the old config when the new one is invalid,
    /// and count that (`lienthong_config_reloads_total{result="invalid"}`).
    pub async fn reload(&self) -> Result<u64, Problems> {
        let res = self.reload_from_file().await;
        if res.is_err() {
            metrics::counter!("lienthong_config_reloads_total", "result" => "invalid").increment(1);
        }
        res
    }

    async fn reload_from_file(&self) -> Result<u64, Problems> {
        let _guard = self.reload_lock.lock().await;
        let current = self.runtime();
        let Some(path) = current.config.source.clone() else {
            let mut p = Problems::default();
            p.0.push(crate::config::Problem {
                path: "(config)".into(),
                message: "this gateway was not started from a file; nothing to reload".into(),
            });
            return Err(p);
        };
        let path2 = path.clone();
        let cfg = tokio::task::spawn_blocking(move || Config::load(&path2))
            .await
            .map_err(|e| {
                let mut p = Problems::default();
                p.0.push(crate::config::Problem {
                    path: "(config)".into(),
                    message: e.to_string(),
                });
                p
            })??;
        self.apply(cfg, &current)
    }

    /// Swaps in a validated config (used by reload and by tests).
    pub fn apply(&self, cfg: Config, current: &Runtime) -> Result<u64, Problems> {
        let mut problems = Problems::default();
        // Sockets, their TLS settings (certificate files, client authentication, ALPN)
        // and their connection limits are set up once, when the socket is bound;
        // changing them needs a restart, and saying so beats a reload that reports
        // success and goes on serving the old way (mTLS turned on by a reload would not
        // be enforced).
        let bound = |c: &Config| -> Vec<_> {
            c.listeners
                .iter()
                .map(|l| {
                    (
                        l.name.clone(),
                        l.listen,
                        l.tls.clone(),
                        l.http2,
                        l.max_connections,
                    )
                })
                .collect()
        };
        if bound(&current.config) != bound(&cfg) {
            problems.0.push(crate::config::Problem {
                path: "listeners".into(),
                message: "listener names, addresses, TLS settings, http2 and max_connections \
                          cannot change on reload; restart instead"
                    .into(),
            });
        }
        if current.config.exchange != cfg.exchange {
            problems.0.push(crate::config::Problem {
                path: "exchange".into(),
                message: "the exchange settings cannot change on reload; restart instead".into(),
            });
        }
        if current.config.audit != cfg.audit {
            problems.0.push(crate::config::Problem {
                path: "audit".into(),
                message: "the audit log settings cannot change on reload; restart instead".into(),
            });
        }
        // The log filter and format, and the worker threads, are set up once at start.
        // (`log.access_log` is read per request and does change on reload.)
        let started = |c: &Config| (c.log.level.clone(), c.log.format, c.server.worker_threads);
        if started(&current.config) != started(&cfg) {
            problems.0.push(crate::config::Problem {
                path: "log".into(),
                message: "log.level, log.format and server.worker_threads cannot change on \
                          reload; restart instead"
                    .into(),
            });
        }
        if current.config.admin.listen != cfg.admin.listen {
            problems.0.push(crate::config::Problem {
                path: "admin.listen".into(),
                message: "the admin address cannot change on reload; restart instead".into(),
            });
        }
        if !problems.0.is_empty() {
            return Err(problems);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let rt = Runtime::build(cfg, Some(current), generation)?;
        rt.start_background_tasks(Some(current));
        self.runtime.store(Arc::new(rt));
        metrics::counter!("lienthong_config_reloads_total", "result" => "ok").increment(1);
        tracing::info!(generation, "config reloaded");
        Ok(generation)
    }

    /// Ready once the config is loaded, every pool's health is known and every remote
    /// key set has been fetched or tried.
    pub fn ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed) && {
            let rt = self.runtime();
            rt.pools.values().all(|p| p.health_known()) && rt.auth.key_sets_known()
        }
    }
}
