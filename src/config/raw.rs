//! The configuration file as written: plain serde types, unknown keys rejected.
//!
//! Nothing here is trusted yet. Durations, addresses and paths stay strings so that
//! `validate` can report every bad value with its key path instead of stopping at the
//! first one. Every field is documented here and in `config/README.md`.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file. Sections are kept as raw TOML values at this level so that each
/// section (and each element of an array) is decoded on its own and a mistake in one
/// does not hide the mistakes in the others.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub server: Option<toml::Value>,
    pub log: Option<toml::Value>,
    pub admin: Option<toml::Value>,
    #[serde(default)]
    pub listeners: Vec<toml::Value>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub routes: Vec<toml::Value>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Tokio worker threads; 0 or absent = one per core (or `TOKIO_WORKER_THREADS`).
    pub worker_threads: Option<usize>,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits.
    pub drain_timeout: Option<String>,
    /// Name sent in `Via` headers (default `lienthong`).
    pub via_name: Option<String>,
}

/// `[log]`: structured logging.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// A `tracing` filter such as `info` or `lienthong=debug` (overridden by `RUST_LOG`).
    pub level: Option<String>,
    /// One line per request under the `access` target (default true).
    pub access_log: Option<bool>,
}

/// `[admin]`: the operations listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bind address; loopback by default (`127.0.0.1:9090`). Use port 0 for an ephemeral port.
    pub listen: Option<String>,
    /// Set false to run without an admin listener.
    pub enabled: Option<bool>,
}

/// `[[listeners]]`: one entry per bound socket.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub listen: Option<String>,
    /// Accept HTTP/2 with prior knowledge on a plaintext listener (default true).
    pub h2c: Option<bool>,
    /// Offer HTTP/2 over TLS via ALPN (default true).
    pub http2: Option<bool>,
    pub max_connections: Option<usize>,
    /// Time a client has to send a complete request head (also the TLS handshake bound).
    pub header_read_timeout: Option<String>,
    /// Close keep-alive connections idle for longer than this.
    pub idle_timeout: Option<String>,
    /// Largest request head in bytes (request line + headers) before 431.
    pub max_header_bytes: Option<usize>,
    /// Most header fields in one request before 431.
    pub max_headers: Option<usize>,
    /// Longest request target in bytes before 414.
    pub max_uri_bytes: Option<usize>,
    /// Default request body cap for routes that do not set one (bytes).
    pub max_body_bytes: Option<u64>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub h2_max_header_list_bytes: Option<u32>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<String>,
    /// PEM bundle of CAs that sign agency client certificates; enables mTLS.
    pub client_ca: Option<String>,
    /// `required` (default when `client_ca` is set) or `optional`.
    pub client_auth: Option<String>,
    /// How often the files are checked for rotation (default 30s).
    pub reload_interval: Option<String>,
}

/// `[upstreams.NAME]`: a named pool of endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub endpoints: Option<Vec<String>>,
    /// `round_robin` (default) or `least_outstanding`.
    pub balance: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    /// Keep-alive connections idle longer than this are closed.
    pub idle_timeout: Option<String>,
    pub max_idle_per_endpoint: Option<usize>,
    /// Speak HTTP/2 to the endpoints (prior knowledge for http, ALPN for https).
    pub http2: Option<bool>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    pub retry: Option<RawRetry>,
    pub circuit_breaker: Option<RawBreaker>,
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<u32>,
    pub ejection_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total tries including the first (default 2).
    pub attempts: Option<u32>,
    /// Retries may add at most this share of the requests (default 20).
    pub budget_percent: Option<u32>,
    /// Retries always allowed per second regardless of the ratio (default 10).
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub consecutive_failures: Option<u32>,
    pub open_for: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle that signs the upstream's certificate (default: system roots).
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Name checked against the certificate (default: the endpoint's host).
    pub server_name: Option<String>,
}

/// `[[routes]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    /// Listener names this route is served on (default: all).
    pub listeners: Option<Vec<String>>,
    /// Exact host (`api.tinh.gov.vn`) or a wildcard (`*.tinh.gov.vn`); absent = any.
    pub host: Option<String>,
    /// Segment-aware prefix: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub path_prefix: Option<String>,
    /// Allowed methods; absent = any.
    pub methods: Option<Vec<String>>,
    pub upstream: Option<String>,
    /// Remove the matched prefix before forwarding.
    pub strip_prefix: Option<bool>,
    /// Replace the matched prefix with this one before forwarding.
    pub rewrite_prefix: Option<String>,
    /// `preserve` (default), `upstream`, or a literal host name.
    pub host_header: Option<String>,
    /// Total time for the upstream exchange (response head), overriding the pool's.
    pub timeout: Option<String>,
    pub max_body_bytes: Option<u64>,
    /// Allow retries of non-idempotent methods on this route.
    pub retry_non_idempotent: Option<bool>,
    /// Allow `Upgrade` (e.g. WebSocket) tunnels through this route.
    pub allow_upgrade: Option<bool>,
    /// Accept absolute-form request targets (`GET http://host/path`).
    pub allow_absolute_form: Option<bool>,
}
