//! Upstream TLS: a custom CA bundle (or the system roots), an optional client
//! certificate for agencies that require mTLS, and an optional fixed server name.

use crate::config::UpstreamConfig;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key ({e})", path.display()))
}

pub fn roots(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(p) => {
            for c in load_certs(p)? {
                roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

/// The rustls client config of a pool: its CA bundle (or system roots) and optional
/// client certificate. ALPN is set by whoever uses it.
pub fn client_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let uses_tls = cfg.endpoints.iter().any(|e| e.https);
    let tls = cfg.tls.clone().unwrap_or(crate::config::UpstreamTlsConfig {
        ca: None,
        client_cert: None,
        client_key: None,
        server_name: None,
    });
    // Loading system roots costs a file scan; skip it for plain-http pools.
    let roots = if uses_tls || tls.ca.is_some() {
        roots(tls.ca.as_deref())?
    } else {
        RootCertStore::empty()
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    Ok(match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c)?, load_key(k)?)
            .map_err(|e| format!("upstream client certificate: {e}"))?,
        _ => builder.with_no_client_auth(),
    })
}

/// The name checked against an endpoint's certificate (and sent as SNI).
pub fn server_name(cfg: &UpstreamConfig, host: &str) -> Result<ServerName<'static>, String> {
    let n = cfg
        .tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .unwrap_or_else(|| host.to_string());
    ServerName::try_from(n.clone()).map_err(|e| format!("server name {n:?}: {e}"))
}

pub fn connector(
    cfg: &UpstreamConfig,
    http: HttpConnector,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, String> {
    let tls = cfg.tls.clone().unwrap_or(crate::config::UpstreamTlsConfig {
        ca: None,
        client_cert: None,
        client_key: None,
        server_name: None,
    });
    // hyper-rustls sets ALPN itself from enable_http1/enable_http2.
    let config = client_config(cfg)?;
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let b = match &tls.server_name {
        Some(n) => {
            let name =
                ServerName::try_from(n.clone()).map_err(|e| format!("server_name {n:?}: {e}"))?;
            b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => b,
    };
    Ok(if cfg.http2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connector whose every connect (name lookup, TCP, TLS handshake) must finish
/// within a time limit. hyper-util's `HttpConnector` times only the TCP connect, so a
/// server that accepts and then never completes the handshake would otherwise hold the
/// request until its own timeout, and be reported as slow rather than unreachable.
#[derive(Clone)]
pub struct Timed<C> {
    inner: C,
    limit: Duration,
}

impl<C> Timed<C> {
    pub fn new(inner: C, limit: Duration) -> Self {
        Timed { inner, limit }
    }
}

impl<C> tower_service::Service<http::Uri> for Timed<C>
where
    C: tower_service::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let limit = self.limit;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting (name lookup, TCP, TLS) took longer than {limit:?}"),
                )
                .into()),
            }
        })
    }
}
