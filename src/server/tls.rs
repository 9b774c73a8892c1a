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
    /// The files' stamps when the serving config was built from them. Held across a
    /// rebuild, so a watcher's and a SIGHUP's refresh cannot store out of order.
    stamps: Mutex<Vec<Stamp>>,
}

fn files(cfg: &TlsConfig) -> Vec<PathBuf> {
    let mut v = vec![cfg.cert.clone(), cfg.key.clone()];
    if let Some(ca) = &cfg.client_ca {
        v.push(ca.clone());
    }
    v
}

/// What tells a file changed: its modification time and its length (a rewrite within
/// the file system's timestamp granularity usually changes the length).
type Stamp = Option<(SystemTime, u64)>;

fn stamps(cfg: &TlsConfig) -> Vec<Stamp> {
    files(cfg)
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .and_then(|m| Ok((m.modified()?, m.len())))
                .ok()
        })
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
    /// Files that fail to load (a rotation caught half-written) are looked at again
    /// on the next tick: their stamps are kept only once they have loaded.
    pub fn refresh(&self, force: bool) -> bool {
        let mut seen = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamps(&self.cfg);
        if !force && *seen == now {
            return false;
        }
        match build(&self.cfg, self.http2) {
            Ok(sc) => {
                *seen = now;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A rotation caught half-written fails to load; the finished files are picked up on
    /// a later look even when their stamps (time and length) equal the broken ones'.
    #[test]
    fn a_rotation_that_failed_to_load_is_retried() {
        let dir = std::env::temp_dir().join(format!("lienthong-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = |name: &str| {
            let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            (ck.cert.pem(), ck.signing_key.serialize_pem())
        };
        let cfg = TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
            client_auth: ClientAuth::None,
            reload_interval: std::time::Duration::from_secs(60),
        };
        let (cert, key) = pair("first.example");
        std::fs::write(&cfg.cert, &cert).unwrap();
        std::fs::write(&cfg.key, &key).unwrap();
        let st = TlsState::new(&cfg, false).unwrap();
        let first = st.current();
        // The new pair, its certificate caught with a byte missing from the middle of
        // its base64 and padded at the end: the same length, and the same time below.
        let (cert2, key2) = pair("second.example");
        let mid = cert2.len() / 2;
        let broken = format!("{}{}=", &cert2[..mid], &cert2[mid + 1..]);
        assert_eq!(broken.len(), cert2.len());
        let at = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
        let put = |path: &Path, text: &str| {
            std::fs::write(path, text).unwrap();
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        put(&cfg.key, &key2);
        put(&cfg.cert, &broken);
        assert!(!st.refresh(false), "the broken certificate must not load");
        assert!(Arc::ptr_eq(&first, &st.current()));
        put(&cfg.cert, &cert2);
        assert!(st.refresh(false), "the finished files must be picked up");
        assert!(!Arc::ptr_eq(&first, &st.current()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
