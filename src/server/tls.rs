//! Listener TLS: certificates from PEM files, picked up again when the files change
//! (checked every `reload_interval`, and on SIGHUP), and optional client-certificate
//! verification against a CA bundle for agencies that use mTLS.
//!
//! A rotation builds a whole new `ServerConfig` and swaps it in; handshakes already
//! under way finish with the old one. A broken new file keeps the old config serving.

use crate::config::{ClientAuth, TlsConfig};
use crate::upstream::tls_util::{load_certs, load_key};
use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

pub struct TlsState {
    cfg: TlsConfig,
    http2: bool,
    current: ArcSwap<ServerConfig>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

fn files(cfg: &TlsConfig) -> Vec<PathBuf> {
    let mut v = vec![cfg.cert.clone(), cfg.key.clone()];
    if let Some(ca) = &cfg.client_ca {
        v.push(ca.clone());
    }
    v
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    files(cfg)
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

pub fn build(cfg: &TlsConfig, http2: bool) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = load_certs(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (&cfg.client_ca, cfg.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("client_ca: {e}"))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut sc = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    sc.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(sc)
}

impl TlsState {
    pub fn new(cfg: &TlsConfig, http2: bool) -> Result<Arc<TlsState>, String> {
        let sc = build(cfg, http2)?;
        let st = Arc::new(TlsState {
            cfg: cfg.clone(),
            http2,
            current: ArcSwap::from_pointee(sc),
            stamps: Mutex::new(stamps(cfg)),
        });
        Ok(st)
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Rebuilds when any file changed since the last look. Returns whether it swapped.
    pub fn refresh(&self, force: bool) -> bool {
        let now = stamps(&self.cfg);
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *seen == now {
                return false;
            }
            *seen = now;
        }
        match build(&self.cfg, self.http2) {
            Ok(sc) => {
                self.current.store(Arc::new(sc));
                tracing::info!(cert = %self.cfg.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but could not be loaded; keeping the previous certificate");
                false
            }
        }
    }

    /// Watches the files until the state is dropped.
    pub fn watch(self: &Arc<Self>) {
        let weak: Weak<TlsState> = Arc::downgrade(self);
        let every = self.cfg.reload_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(s) = weak.upgrade() else { return };
                s.refresh(false);
            }
        });
    }
}
