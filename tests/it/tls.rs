//! TLS and HTTP/2: HTTPS with ALPN (h1 and h2), h2c with prior knowledge, mTLS with
//! the verified identity passed on, certificate rotation without restart, and
//! upstream TLS with a custom CA and a client certificate.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, sans[0]);
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn client_config(
    ca: &CertificateDer<'static>,
    client: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match client {
        Some(l) => b
            .with_client_auth_cert(
                vec![l.der.clone()],
                PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

/// Opens a TLS connection and returns it with the server's leaf certificate.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
)> {
    let tcp = TcpStream::connect(addr).await?;
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    Ok((s, leaf))
}

async fn h1_get(
    s: tokio_rustls::client::TlsStream<TcpStream>,
    path: &str,
) -> Result<(http::StatusCode, Bytes), hyper::Error> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    let rsp = sender
        .send_request(
            http::Request::get(path)
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await?;
    let status = rsp.status();
    Ok((status, rsp.into_body().collect().await?.to_bytes()))
}

fn tls_gateway_config(
    dir: &Path,
    pki: &Pki,
    server: &Leaf,
    upstream: &str,
    tls_extra: &str,
) -> String {
    write(dir, "cert.pem", &server.cert_pem);
    write(dir, "key.pem", &server.key_pem);
    write(dir, "ca.pem", &pki.ca_pem);
    base_config(&format!(
        r#"
[listeners.tls]
cert = "cert.pem"
key = "key.pem"
{tls_extra}
[upstreams.u]
endpoints = ["{upstream}"]
[[routes]]
auth.anonymous = true
name = "r"
path_prefix = "/"
upstream = "u"
"#
    ))
}

async fn start_in(dir: &Path, cfg: &str) -> TestGateway {
    let path = write(dir, "lienthong.toml", cfg);
    TestGateway::start_file(path).await
}

#[tokio::test]
async fn https_serves_http1_and_http2_by_alpn() {
    let (pki, server) = test_ca_and_localhost();
    let up = MockUpstream::start(echo("up")).await;
    let dir = scratch_dir();
    let gw = start_in(
        &dir,
        &tls_gateway_config(&dir, &pki, &server, &up.url(), ""),
    )
    .await;

    let (s, _) = tls_connect(gw.addr(), client_config(&pki.ca_der, None, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = h1_get(s, "/x").await.unwrap();
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");

    let (s, _) = tls_connect(
        gw.addr(),
        client_config(&pki.ca_der, None, &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let rsp = sender
        .send_request(
            http::Request::get("https://localhost/y")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.version(), http::Version::HTTP_2);
    assert_eq!(rsp.status(), 200);
    assert_eq!(up.last().uri, "/y");
    assert_eq!(up.last().header("via"), Some("2 lienthong"));
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&format!(
        "[upstreams.u]\nendpoints = [\"{}\"]\n[[routes]]\nauth.anonymous = true\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let rsp = sender
            .send_request(
                http::Request::get(format!("http://test.local/h2c/{i}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(rsp.version(), http::Version::HTTP_2);
        assert_eq!(rsp.status(), 200);
        assert!(rsp.headers().get("x-request-id").is_some());
    }
    assert_eq!(up.count(), 3);
    assert_eq!(up.last().header("host"), Some("test.local"));
}

#[tokio::test]
async fn an_http2_connection_without_streams_is_closed_when_idle_despite_pings() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&format!(
        "idle_timeout = \"500ms\"\n[upstreams.u]\nendpoints = [\"{}\"]\n[[routes]]\nauth.anonymous = true\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    // The client pings every 100 ms, idle or not: bytes keep moving.
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true);
    let (conn, rsp) = h2c_get(gw.addr(), &b).await;
    drop(rsp);
    // No stream for the idle timeout: the gateway closes the connection.
    closed_by_gateway(conn, "the idle HTTP/2 connection was closed").await;
}

/// One GET on a fresh h2c connection made by `builder`: the connection's task and the
/// response (200, its body not read).
async fn h2c_get(
    addr: std::net::SocketAddr,
    builder: &hyper::client::conn::http2::Builder<TokioExecutor>,
) -> (
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
    http::Response<hyper::body::Incoming>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = builder.handshake(TokioIo::new(tcp)).await.unwrap();
    let conn = tokio::spawn(conn);
    let rsp = sender
        .send_request(
            http::Request::get("http://test.local/x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    (conn, rsp)
}

/// Waits (10 s at most) for the gateway to close an HTTP/2 connection.
async fn closed_by_gateway(conn: tokio::task::JoinHandle<Result<(), hyper::Error>>, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect(what)
        .unwrap()
        .ok();
}

/// A client that opens a stream and grants no flow-control window for its response (a
/// slow-reading attack over HTTP/2) is cut off after the idle timeout, as an HTTP/1
/// client that stops reading is; before, the stream held its slot and the upstream's
/// response for ever.
#[tokio::test]
async fn an_http2_client_that_grants_no_window_is_cut_off() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&format!(
        "idle_timeout = \"300ms\"\n[upstreams.u]\nendpoints = [\"{}\"]\n[[routes]]\nauth.anonymous = true\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    // A request on a connection whose streams get `window` bytes of flow-control window
    // (and no more: the body is never read).
    let starved = |window: u32| {
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.initial_stream_window_size(window);
        let addr = gw.addr();
        async move { h2c_get(addr, &b).await }
    };

    // No window: the response's body cannot be sent; the gateway closes the connection.
    let (conn, rsp) = starved(0).await;
    closed_by_gateway(conn, "the stalled HTTP/2 connection was closed").await;
    let err = rsp.into_body().collect().await.unwrap_err();
    assert!(!err.to_string().is_empty());

    // One byte of window lets hyper hand h2 the whole (small) body, which h2 holds: the
    // exchange ends, and the connection, idle now but held open by the stream, is closed
    // by the idle close's own deadline.
    let (conn, _rsp) = starved(1).await;
    closed_by_gateway(conn, "the connection held by a starved stream was closed").await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_and_passes_its_identity() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = Pki::new("Agencies CA");
    let server = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let agency = pki.leaf(&["so-tu-phap.h22"], ExtendedKeyUsagePurpose::ClientAuth);
    let outsider_ca = Pki::new("Other CA");
    let outsider = outsider_ca.leaf(&["outsider"], ExtendedKeyUsagePurpose::ClientAuth);
    let up = MockUpstream::start(echo("up")).await;
    let dir = scratch_dir();
    let gw = start_in(
        &dir,
        &tls_gateway_config(
            &dir,
            &pki,
            &server,
            &up.url(),
            "client_ca = \"ca.pem\"\nclient_auth = \"required\"",
        ),
    )
    .await;

    // Without a certificate: refused (TLS 1.3 reports it on first use of the connection).
    let refused =
        match tls_connect(gw.addr(), client_config(&pki.ca_der, None, &[b"http/1.1"])).await {
            Err(_) => true,
            Ok((s, _)) => h1_get(s, "/x").await.is_err(),
        };
    assert!(refused, "a client without a certificate was served");
    // A certificate from another CA: refused.
    let refused = match tls_connect(
        gw.addr(),
        client_config(&pki.ca_der, Some(&outsider), &[b"http/1.1"]),
    )
    .await
    {
        Err(_) => true,
        Ok((s, _)) => h1_get(s, "/x").await.is_err(),
    };
    assert!(refused, "a client with a foreign certificate was served");
    assert_eq!(up.count(), 0);

    let (s, _) = tls_connect(
        gw.addr(),
        client_config(&pki.ca_der, Some(&agency), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (status, _) = h1_get(s, "/x").await.unwrap();
    assert_eq!(status, 200);
    let want = lienthong::server::cert_thumbprint(agency.der.as_ref());
    assert_eq!(
        up.last().header("x-lienthong-client-cert-s256"),
        Some(want.as_str())
    );
}

#[tokio::test]
async fn rotated_certificates_are_picked_up_without_restart() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = Pki::new("Test CA");
    let first = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let second = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let up = MockUpstream::start(echo("up")).await;
    let dir = scratch_dir();
    let gw = start_in(
        &dir,
        &tls_gateway_config(&dir, &pki, &first, &up.url(), "reload_interval = \"50ms\""),
    )
    .await;
    let cfg = client_config(&pki.ca_der, None, &[b"http/1.1"]);
    let (held, leaf) = tls_connect(gw.addr(), cfg.clone()).await.unwrap();
    assert_eq!(leaf, first.der);

    // Key first, then certificate: the watcher may see the pair mismatched for a
    // moment, and must keep serving the old one until the new pair loads.
    write(&dir, "key.pem", &second.key_pem);
    write(&dir, "cert.pem", &second.cert_pem);
    eventually("new certificate served", Duration::from_secs(5), || {
        let cfg = cfg.clone();
        let want = second.der.clone();
        let addr = gw.addr();
        async move { matches!(tls_connect(addr, cfg).await, Ok((_, l)) if l == want) }
    })
    .await;
    // The connection opened before the rotation still works.
    let (status, _) = h1_get(held, "/x").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn upstream_tls_with_custom_ca_and_client_certificate() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = Pki::new("Upstream CA");
    let up_cert = pki.leaf(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let gw_client = pki.leaf(&["lienthong"], ExtendedKeyUsagePurpose::ClientAuth);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    let up = MockUpstream::start_tls(echo("tls-up"), upstream_tls(&up_cert, Some(verifier))).await;
    let dir = scratch_dir();
    write(&dir, "ca.pem", &pki.ca_pem);
    write(&dir, "client.pem", &gw_client.cert_pem);
    write(&dir, "client-key.pem", &gw_client.key_pem);
    let cfg = base_config(&tls_upstream_route(
        up.addr.port(),
        "client_cert = \"client.pem\"\nclient_key = \"client-key.pem\"",
    ));
    let gw = start_in(&dir, &cfg).await;
    let r = raw_get(gw.addr(), "/secure").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["upstream"], "tls-up");
}

#[tokio::test]
async fn http2_concurrent_stream_limit_holds() {
    let up = MockUpstream::start(Arc::new(|_| Action::Hang)).await;
    let cfg = base_config(&format!(
        "h2_max_concurrent_streams = 2\n[upstreams.u]\nendpoints = [\"{}\"]\n[[routes]]\nauth.anonymous = true\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\ntimeout = \"30s\"\n",
        up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(format!("http://test.local/s/{i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let _ = s.send_request(req).await;
        }));
    }
    eventually(
        "two streams reached the upstream",
        Duration::from_secs(5),
        || async { up.count() == 2 },
    )
    .await;
    // The other three wait for a free stream; none gets through while two are open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.count(),
        2,
        "more concurrent streams than the listener allows"
    );
    for t in tasks {
        t.abort();
    }
}

/// The HTTP/1 fast path over TLS on both sides: a body larger than the socket and TLS
/// buffers arrives whole at a slow reader (every answer is flushed), and the upstream
/// connection is used again (an idle TLS connection is checked by one poll of its read
/// side).
#[tokio::test]
async fn the_fast_path_relays_large_bodies_over_tls_both_ways() {
    let (pki, server) = test_ca_and_localhost();
    const SIZE: usize = 16 * 1024 * 1024 + 7;
    let big: Handler = Arc::new(|_| {
        Action::Respond(http::Response::new(Full::new(Bytes::from(vec![
            b'x';
            SIZE
        ]))))
    });
    let up = MockUpstream::start_tls(big, upstream_tls(&server, None)).await;
    let dir = scratch_dir();
    write(&dir, "cert.pem", &server.cert_pem);
    write(&dir, "key.pem", &server.key_pem);
    write(&dir, "ca.pem", &pki.ca_pem);
    let cfg = plain_config(&format!(
        "[listeners.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n{}",
        tls_upstream_route(up.addr.port(), "")
    ));
    let gw = start_in(&dir, &cfg).await;
    let (s, _) = tls_connect(gw.addr(), client_config(&pki.ca_der, None, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in ["/one", "/two"] {
        let rsp = sender.send_request(get(path)).await.unwrap();
        assert_eq!(rsp.status(), 200);
        // A slow reader: the socket's buffers fill while the gateway writes, so its
        // TLS layer is left holding records that only a flush sends.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = tokio::time::timeout(Duration::from_secs(20), rsp.into_body().collect())
            .await
            .expect("the whole body in time")
            .unwrap()
            .to_bytes();
        assert_eq!(body.len(), SIZE);
    }
    assert_eq!(fast_path_requests(&gw), 2);
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A TLS upstream's server config: `leaf`'s certificate, HTTP/1.1, and client
/// certificates checked by `verifier` when given.
fn upstream_tls(
    leaf: &Leaf,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap();
    let b = match verifier {
        Some(v) => b.with_client_cert_verifier(v),
        None => b.with_no_client_auth(),
    };
    let mut sc = b
        .with_single_cert(
            vec![leaf.der.clone()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(sc)
}

/// A pool `u` of one https endpoint on `port` (trusting `ca.pem`, plus `tls_extra`)
/// and an anonymous route to it.
fn tls_upstream_route(port: u16, tls_extra: &str) -> String {
    format!(
        r#"
[upstreams.u]
endpoints = ["https://localhost:{port}"]
[upstreams.u.tls]
ca = "ca.pem"
{tls_extra}
[[routes]]
auth.anonymous = true
name = "r"
path_prefix = "/"
upstream = "u"
"#
    )
}

/// The crypto provider installed, a test CA and a server certificate from it for
/// `localhost` and 127.0.0.1.
fn test_ca_and_localhost() -> (Pki, Leaf) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = Pki::new("Test CA");
    let server = pki.leaf(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    (pki, server)
}
