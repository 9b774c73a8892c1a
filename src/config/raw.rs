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
    pub auth: Option<toml::Value>,
    #[serde(default)]
    pub lookups: Vec<toml::Value>,
    pub audit: Option<toml::Value>,
    pub exchange: Option<toml::Value>,
    pub adapters: Option<toml::Value>,
}

/// `[adapters]`: per-system translation kept as data (adapters/README.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdapters {
    /// Folder holding one sub-folder per system, each with an `adapter.toml`.
    pub dir: Option<String>,
}

/// A value an adapter mapping reads as `$ctx.NAME`: plain text or a secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawContextValue {
    Plain(String),
    Secret(RawSecret),
    Login { login: RawLogin },
}

/// `{ login = { … } }`: a session obtained by logging in to an upstream (DVCQG style).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    /// The `[upstreams.NAME]` pool serving the login endpoint.
    pub upstream: String,
    pub path: String,
    pub username: String,
    pub password: RawSecret,
    /// Member of the answer holding the session (default `session`).
    pub field: Option<String>,
    /// How long a session is reused (default 30m; refused calls drop it sooner).
    pub ttl: Option<String>,
    /// Extra headers of the login request, e.g. `{ dstcode = "VN:GOV:…" }`.
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// `[exchange]`: the one intake channel for dossiers (absent = no intake API).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    /// SQLite database file (created if missing).
    pub db: Option<String>,
    /// Undelivered deliveries allowed before intake answers 503 with Retry-After.
    pub spool_capacity: Option<u64>,
    pub retry_after: Option<String>,
    /// Destinations every dossier and event is queued for (e.g. ["dvcqg", "emc"]).
    pub destinations: Option<Vec<String>>,
    /// Who may file dossiers and events (same rules as routes; absent = deny).
    pub auth: Option<RawRouteAuth>,
    /// Callers with any of these roles see every dossier's timeline (others see the
    /// dossiers they filed and those filed with their agency).
    pub read_all_roles: Option<Vec<String>>,
    /// Callers with any of these roles may post events to every dossier (others only
    /// to the dossiers they filed and those filed with their agency).
    pub event_roles: Option<Vec<String>>,
    /// A `[[lookups]]` entry (keyed by procedure code) that must know a dossier's procedure.
    pub catalogue: Option<String>,
    /// Formats the intake accepts besides the canonical JSON, by name (`?format=NAME`):
    /// `NAME = "system/operation"`, an adapter operation whose request step yields
    /// `{"dossiers": [canonical dossier, …]}`.
    pub formats: Option<std::collections::BTreeMap<String, String>>,
    /// Where each destination is delivered: `NAME = { upstream = "pool", path = "/hoso" }`.
    #[serde(default)]
    pub deliveries: std::collections::BTreeMap<String, RawDelivery>,
    /// Give up after this many attempts (dead letter; default 48).
    pub max_attempts: Option<u32>,
    /// Deliveries one worker has in flight to one destination at most (default 16 of its
    /// 32 slots when several destinations are configured, else 32).
    pub max_in_flight_per_destination: Option<usize>,
    /// Longest a delivery may take (default 30s). A worker's claim on an item lasts twice
    /// this, so items held by a crashed process are retried after that long.
    pub delivery_timeout: Option<String>,
    /// First retry delay ceiling (default 2s), doubled per attempt up to `backoff_cap` (default 1h).
    pub backoff_base: Option<String>,
    pub backoff_cap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub upstream: Option<String>,
    pub path: Option<String>,
    /// Render deliveries with this adapter (absent: the canonical JSON is sent).
    pub adapter: Option<String>,
    /// The adapter operation whose request step renders a dossier (required with `adapter`).
    pub dossier_operation: Option<String>,
    /// The operation that renders events; absent: events are not sent to this destination.
    pub event_operation: Option<String>,
    /// Event kinds sent (`status`, `step`, `evaluation`; default all).
    pub events: Option<Vec<String>>,
    /// Only dossiers of these procedure codes (exact, or a prefix ending in `*`).
    pub procedures: Option<Vec<String>>,
    /// Only dossiers of these fields (MaLinhVuc; exact or `prefix*`).
    pub fields: Option<Vec<String>>,
    /// Values the mappings read as `$ctx.NAME` (text or `{ env | file }` secrets).
    pub context: Option<std::collections::BTreeMap<String, RawContextValue>>,
}

/// `[audit]`: the tamper-evident log of every call (absent = no audit log).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// SQLite database file (created if missing).
    pub db: Option<String>,
    /// The log's name in its signed checkpoints, e.g. `lienthong.tinh.gov.vn/audit`.
    pub origin: Option<String>,
    /// Ed25519 private key (PKCS#8 PEM) that signs checkpoints.
    pub key: Option<String>,
    /// Most records in one commit (default 4096). Under load a batch of fail-open records
    /// fills within its linger; bigger batches mean fewer commits, each with its fsyncs.
    pub batch_max: Option<usize>,
    /// When a fail-closed record is waiting, wait this long for more records before
    /// committing (default 0: commit at once; under load records queue up during the
    /// previous commit anyway, so batches still form, and a closed-loop client is not
    /// held for the linger).
    pub batch_linger: Option<String>,
    /// How long a batch holding only fail-open records may wait for more (default 100ms):
    /// nobody waits on those, and bigger batches rewrite fewer pages and fsync less (a
    /// crash loses at most this much of fail-open traffic's records, which fail-open
    /// accepts). A fail-closed record arriving meanwhile brings the commit forward to
    /// `batch_linger`.
    pub batch_linger_fail_open: Option<String>,
    /// Sign a checkpoint after this many records (default 10000) ...
    pub checkpoint_every_records: Option<u64>,
    /// ... or after this long with new records (default 60s).
    pub checkpoint_every: Option<String>,
    /// Records that may wait for the writer before fail-closed routes answer 503 (default 65536).
    pub queue_capacity: Option<usize>,
    /// Delete records older than this (the deletion is itself recorded and checkpointed).
    pub retention: Option<String>,
    /// Have every checkpoint timestamped by an RFC 3161 Time-Stamp Authority.
    pub timestamp: Option<RawAuditTimestamp>,
}

/// `[audit.timestamp]`: the TSA is reached through a configured upstream pool
/// (`POST path`, `application/timestamp-query`); its certificate verifies the tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuditTimestamp {
    pub upstream: Option<String>,
    pub path: Option<String>,
    /// The TSA's certificate (PEM; several for a TSA that renewed its certificate);
    /// the extended key usage must be timeStamping, critical.
    pub cert: Option<String>,
    /// One exchange with the TSA, connection to last byte (default 10s).
    pub timeout: Option<String>,
    /// At most one call per this interval after a success (default 60s); each call
    /// timestamps the latest checkpoint.
    pub min_interval: Option<String>,
}

/// `[[lookups]]`: reference data served at `/lookups/NAME[/KEY]` from one cache.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLookup {
    pub name: Option<String>,
    pub source: Option<RawLookupSource>,
    /// Fresh for this long after a fetch (default 1h).
    pub ttl: Option<String>,
    /// Refresh in the background this long before `ttl` runs out.
    pub refresh_ahead: Option<String>,
    /// When the source fails, serve the last good value (marked stale) up to this long past `ttl`.
    pub max_stale: Option<String>,
    /// Remember "not found" for this long.
    pub negative_ttl: Option<String>,
    /// Cache size bound in bytes (default 64 MiB).
    pub capacity_bytes: Option<u64>,
    /// Who may read it (same rules as routes; absent = deny).
    pub auth: Option<RawRouteAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLookupSource {
    /// A local CSV or JSON file.
    pub file: Option<String>,
    /// For `file`: the key column (or a preset `table` of the administrative-unit file).
    pub key: Option<String>,
    /// Administrative-unit presets: provinces, communes, communes-old-to-new, communes-new-to-old.
    pub table: Option<String>,
    /// An upstream pool; `path` may contain `{key}`.
    pub upstream: Option<String>,
    pub path: Option<String>,
}

/// A secret is never written in the config itself: it names an environment variable
/// or a file. Either form is read at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSecret {
    pub env: Option<String>,
    pub file: Option<String>,
}

/// Decoded by hand so that a secret written in place (`client_secret = "..."`) is
/// refused without its value: serde's own message quotes what it found ("invalid
/// type: string \"...\""), and problems are printed by `lienthong check`, returned by
/// the admin reload and logged.
impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            env: Option<String>,
            file: Option<String>,
        }
        const IN_PLACE: &str =
            "a secret is not written in the config: use { env = \"NAME\" } or { file = \"path\" }";
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{ env = \"NAME\" } or { file = \"path\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawSecret, E> {
                Err(E::custom(IN_PLACE))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(IN_PLACE))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(E::custom(IN_PLACE))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom(IN_PLACE))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom(IN_PLACE))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSecret, A::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawSecret {
                    env: t.env,
                    file: t.file,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[auth]`: token issuers, the verified-token cache and lienthong's own signing key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub issuers: Vec<toml::Value>,
    /// Entries in the verified-token cache (default 10000).
    pub cache_capacity: Option<u64>,
    /// Longest a verified token is served from the cache (default 5m; never past `exp`).
    pub cache_max_ttl: Option<String>,
    pub signing: Option<RawSigning>,
}

/// `[[auth.issuers]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub name: Option<String>,
    /// Exact `iss` value.
    pub iss: Option<String>,
    pub audiences: Option<Vec<String>>,
    /// Accepted algorithms: RS256/384/512, PS256, ES256/384, EdDSA, HS256.
    pub algorithms: Option<Vec<String>>,
    /// PEM public key file.
    pub public_key: Option<String>,
    /// `kid` of `public_key` (optional).
    pub kid: Option<String>,
    /// JWK or JWKS file.
    pub jwk: Option<String>,
    pub jwks_file: Option<String>,
    /// Remote JWKS fetched through an upstream pool.
    pub jwks: Option<RawJwks>,
    /// HS256 secret (at least 32 bytes).
    pub secret: Option<RawSecret>,
    pub leeway: Option<String>,
    pub max_lifetime: Option<String>,
    pub typ: Option<String>,
    pub max_token_bytes: Option<usize>,
    /// Claims that carry the agency code (first present wins; default agency, madonvi).
    pub agency_claims: Option<Vec<String>>,
    /// Agency patterns this issuer may vouch for (`*.H22`, exact codes); absent: any.
    pub agencies: Option<Vec<String>>,
    pub roles_claim: Option<String>,
    pub scope_claim: Option<String>,
    /// Private key used only by `lienthong token` to mint development tokens.
    pub dev_signing_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    pub upstream: Option<String>,
    pub path: Option<String>,
    pub refresh_interval: Option<String>,
    pub min_refetch_interval: Option<String>,
    pub max_stale: Option<String>,
}

/// `[auth.signing]`: lienthong's own key (Ed25519 or P-256, PKCS#8 PEM) for the JWTs it
/// presents to upstreams; its public half is served at `/.well-known/jwks.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    pub key: Option<String>,
    pub kid: Option<String>,
    /// `iss` of the tokens lienthong mints (default `lienthong`).
    pub issuer: Option<String>,
}

/// `routes[].auth`: who may call the route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteAuth {
    /// The route needs no token. Must be said explicitly; routes without `auth` deny all.
    pub anonymous: Option<bool>,
    /// Agency codes or patterns (`000.00.01.H22`, `*.H22`).
    pub agencies: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    /// Pass the caller's `Authorization` header upstream (default false).
    pub forward_token: Option<bool>,
}

/// `upstreams.NAME.credentials`: what lienthong presents to this upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    /// `oauth2`, `jwt`, `header` or `lgsp`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    // oauth2 (client_credentials)
    pub token_upstream: Option<String>,
    pub token_path: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<RawSecret>,
    /// `basic` (default) or `form`.
    pub client_auth: Option<String>,
    pub scope: Option<String>,
    /// Refresh this long before `expires_in` runs out (default 60s).
    pub refresh_margin: Option<String>,
    // jwt
    pub audience: Option<String>,
    pub ttl: Option<String>,
    // header / lgsp
    pub header: Option<String>,
    pub value: Option<RawSecret>,
    /// lgsp: the fields of the base64 JSON credential (values may be secrets).
    pub fields: Option<std::collections::BTreeMap<String, toml::Value>>,
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
    /// Host names the admin API answers to besides IP literals and `localhost` (a
    /// request addressed to any other name is refused: DNS rebinding).
    pub hosts: Option<Vec<String>>,
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
    pub credentials: Option<RawCredentials>,
    /// Allow secrets (credentials, a token request, a login) to this pool's non-loopback
    /// endpoints over plain http (a trusted private network); default false.
    pub plaintext_credentials: Option<bool>,
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
    /// Bound on one attempt (default none: the route's timeout bounds them all).
    pub per_try_timeout: Option<String>,
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
    /// The protocols an `Upgrade` may name (default `["websocket"]`).
    pub upgrade_protocols: Option<Vec<String>>,
    /// Accept absolute-form request targets (`GET http://host/path`).
    pub allow_absolute_form: Option<bool>,
    pub auth: Option<RawRouteAuth>,
    /// Optional response cache for GET (off when absent).
    pub cache: Option<RawRouteCache>,
    /// `fail_open` (default: serve and count a lost record) or `fail_closed` (answer 503
    /// unless the record is durable first).
    pub audit: Option<String>,
    /// Keep request and response bodies (text) in this route's audit records.
    pub audit_bodies: Option<bool>,
    /// Translate payloads on this route (absent: bodies pass through untouched).
    pub translate: Option<RawTranslate>,
}

/// `routes[].translate`: XML ↔ JSON and SOAP on the request and/or the response, with the
/// convention of adapters/README.md.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTranslate {
    /// `json_to_xml`, `xml_to_json`, `soap_wrap` (JSON → SOAP envelope).
    pub request: Option<String>,
    /// `xml_to_json`, `json_to_xml`, `soap_unwrap` (SOAP envelope → JSON; faults → errors).
    pub response: Option<String>,
    /// `1.1` (default) or `1.2`.
    pub soap_version: Option<String>,
    pub soap_action: Option<String>,
    /// Root element for JSON → XML when the JSON is not a one-member object.
    pub root: Option<String>,
    /// Element paths that are always JSON arrays (`/Resp/Item`, `//Item`).
    pub arrays: Option<Vec<String>>,
    /// Namespace URI → prefix (JSON keys and XML output).
    pub namespaces: Option<std::collections::BTreeMap<String, String>>,
    /// Largest body translated (default 16 MiB).
    pub max_bytes: Option<u64>,
    /// Translate with an adapter operation instead of `request`/`response`: the adapter's
    /// system id (folder under `[adapters] dir`).
    pub adapter: Option<String>,
    /// The adapter operation (`adapter.toml` `[operations.NAME]`).
    pub operation: Option<String>,
    /// Values the operation's mappings read as `$ctx.NAME` (text or `{ env | file }` secrets).
    pub context: Option<std::collections::BTreeMap<String, RawContextValue>>,
}

/// `routes[].cache`: cache upstream GET responses (RFC 9111 rules; see config/README.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// The data is the same for every caller: share entries. Default false: keyed by caller.
    pub public: Option<bool>,
    pub max_entry_bytes: Option<usize>,
    pub capacity_bytes: Option<u64>,
    /// Freshness for responses that state none (default: store only those that do).
    pub default_ttl: Option<String>,
    pub max_ttl: Option<String>,
}
