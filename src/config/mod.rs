//! Configuration in two layers: [`raw`] is the TOML file as written (unknown keys
//! rejected); this module turns it into the validated types the rest of the program
//! relies on. Every problem is collected with its key path so that `lienthong check`
//! prints all of them at once, e.g. `routes[4].upstream: unknown upstream "tax" (known: demo)`.
//!
//! Relative file paths in the config are resolved against the config file's folder.

pub mod raw;

use raw::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One thing wrong with a config, with the key path it was found at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one load; never empty when returned as an error.
#[derive(Debug, Clone, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The validated configuration. Cheap to share behind an `Arc`; a reload builds a new one.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub auth: AuthConfig,
    pub lookups: Vec<LookupConfig>,
    pub audit: Option<AuditCfg>,
    pub exchange: Option<ExchangeCfg>,
    /// Adapters loaded from `[adapters] dir` (empty without that section).
    pub adapters: crate::adapter::Adapters,
    /// Where the file was read from (for reloads).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub worker_threads: Option<usize>,
    #[serde(with = "dur")]
    pub drain_timeout: Duration,
    pub via_name: ViaName,
}

/// The pseudonym this gateway adds to `Via` (`server.via_name`), with the field values
/// it produces precomputed: most messages arrive without a `Via`, and then the gateway's
/// own value is inserted as a shared, already validated header value.
#[derive(Debug, Clone)]
pub struct ViaName {
    name: String,
    http10: http::HeaderValue,
    http11: http::HeaderValue,
    http2: http::HeaderValue,
}

impl ViaName {
    /// `None` unless `name` is a non-empty HTTP token.
    pub fn new(name: String) -> Option<Self> {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return None;
        }
        let value = |proto: &str| {
            http::HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("{proto} {name}"))).ok()
        };
        Some(Self {
            http10: value("1.0")?,
            http11: value("1.1")?,
            http2: value("2")?,
            name,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The whole `Via` value for a message of `version` that had none, when precomputed.
    pub fn value(&self, version: http::Version) -> Option<&http::HeaderValue> {
        match version {
            http::Version::HTTP_10 => Some(&self.http10),
            http::Version::HTTP_11 => Some(&self.http11),
            http::Version::HTTP_2 => Some(&self.http2),
            _ => None,
        }
    }
}

impl Serialize for ViaName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// Host names the admin API answers to besides IP literals and `localhost`.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub h2c: bool,
    pub http2: bool,
    pub max_connections: usize,
    #[serde(with = "dur")]
    pub header_read_timeout: Duration,
    #[serde(with = "dur")]
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_bytes: u32,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    #[serde(with = "dur")]
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastOutstanding,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<EndpointAddr>,
    pub balance: Balance,
    #[serde(with = "dur")]
    pub connect_timeout: Duration,
    #[serde(with = "dur")]
    pub request_timeout: Duration,
    #[serde(with = "dur")]
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub http2: bool,
    pub health: Option<HealthConfig>,
    pub passive: PassiveConfig,
    pub retry: RetryConfig,
    pub circuit_breaker: BreakerConfig,
    pub tls: Option<UpstreamTlsConfig>,
    pub credentials: Option<CredentialsConfig>,
    /// Secrets may go to non-loopback endpoints over plain http.
    pub plaintext_credentials: bool,
}

/// One endpoint as `scheme://host:port`, from config only (never from a request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointAddr {
    pub https: bool,
    /// `host:port`, port always explicit.
    pub authority: String,
    pub host: String,
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthConfig {
    pub path: String,
    #[serde(with = "dur")]
    pub interval: Duration,
    #[serde(with = "dur")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassiveConfig {
    /// 0 disables passive ejection.
    pub consecutive_failures: u32,
    #[serde(with = "dur")]
    pub ejection_time: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryConfig {
    pub attempts: u32,
    pub budget_percent: u32,
    pub min_per_second: u32,
    /// Bound on one attempt (up to its response head); a try that exceeds it counts as
    /// its endpoint's failure and is retried where retries are allowed. None: only the
    /// route's timeout bounds the whole exchange.
    #[serde(with = "opt_dur")]
    pub per_try_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerConfig {
    /// 0 disables the breaker.
    pub consecutive_failures: u32,
    #[serde(with = "dur")]
    pub open_for: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamTlsConfig {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHeader {
    Preserve,
    Upstream,
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    Exact(String),
    /// `*.suffix`: stored as `.suffix`, matches any host ending with it (not the bare suffix).
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    pub name: String,
    pub listeners: Option<Vec<String>>,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    pub strip_prefix: bool,
    pub rewrite_prefix: Option<String>,
    pub host_header: HostHeader,
    #[serde(with = "opt_dur")]
    pub timeout: Option<Duration>,
    pub max_body_bytes: Option<u64>,
    pub retry_non_idempotent: bool,
    pub allow_upgrade: bool,
    /// Lower-cased protocol names an `Upgrade` may offer (every one it offers must be
    /// here); `h2c` never is.
    pub upgrade_protocols: Vec<String>,
    pub allow_absolute_form: bool,
    /// None: the route denies every request (deny by default).
    pub auth: Option<RouteAuth>,
    pub cache: Option<RouteCacheCfg>,
    pub audit: AuditPolicy,
    pub audit_bodies: bool,
    pub translate: Option<TranslateCfg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TranslateOp {
    JsonToXml,
    XmlToJson,
    SoapWrap,
    SoapUnwrap,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TranslateCfg {
    pub request: Option<TranslateOp>,
    pub response: Option<TranslateOp>,
    pub soap_12: bool,
    pub soap_action: Option<String>,
    pub root: Option<String>,
    pub arrays: Vec<String>,
    pub namespaces: BTreeMap<String, String>,
    pub max_bytes: u64,
    /// Set when the route translates with an adapter operation.
    pub adapter: Option<AdapterRoute>,
}

/// `routes[].translate` with `adapter` and `operation`.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterRoute {
    pub system: String,
    pub version: String,
    /// The adapter's content digest (equality means the same mappings).
    pub digest: String,
    pub operation: String,
    #[serde(skip)]
    pub op: std::sync::Arc<crate::adapter::Operation>,
    pub context: BTreeMap<String, ContextValue>,
}

impl PartialEq for AdapterRoute {
    fn eq(&self, o: &Self) -> bool {
        self.system == o.system
            && self.digest == o.digest
            && self.operation == o.operation
            && self.context == o.context
    }
}

/// `[exchange.deliveries.NAME]` with an adapter: dossiers go through the request step of
/// `dossier`, events (of the listed kinds) through that of `event`.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryAdapter {
    pub system: String,
    pub version: String,
    pub digest: String,
    pub dossier_operation: String,
    #[serde(skip)]
    pub dossier: std::sync::Arc<crate::adapter::Operation>,
    pub event_operation: Option<String>,
    #[serde(skip)]
    pub event: Option<std::sync::Arc<crate::adapter::Operation>>,
    pub events: Option<Vec<String>>,
    pub context: BTreeMap<String, ContextValue>,
}

impl PartialEq for DeliveryAdapter {
    fn eq(&self, o: &Self) -> bool {
        self.system == o.system
            && self.digest == o.digest
            && self.dossier_operation == o.dossier_operation
            && self.event_operation == o.event_operation
            && self.events == o.events
            && self.context == o.context
    }
}

/// `[exchange] formats`: a format the intake reads through an adapter operation.
#[derive(Debug, Clone, Serialize)]
pub struct IntakeFormat {
    pub system: String,
    pub version: String,
    pub digest: String,
    pub operation: String,
    #[serde(skip)]
    pub op: std::sync::Arc<crate::adapter::Operation>,
}

impl PartialEq for IntakeFormat {
    fn eq(&self, o: &Self) -> bool {
        self.system == o.system && self.digest == o.digest && self.operation == o.operation
    }
}

/// A context value of an adapter route; secrets are shown redacted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ContextValue {
    Plain(String),
    Secret(SecretValue),
    /// A session lienthong logs in for (state: the cached session).
    Login(std::sync::Arc<crate::auth::credentials::SessionLogin>),
}

/// The `$ctx` values of an adapter route or delivery, as the mapping reads them; sessions are
/// obtained (or taken from their cache) first. Returns the sessions used, so that a refusal
/// can drop them.
pub async fn adapter_context(
    values: &BTreeMap<String, ContextValue>,
    pools: &BTreeMap<String, std::sync::Arc<crate::upstream::Pool>>,
) -> Result<(crate::adapter::Context, Vec<SessionUse>), crate::error::GatewayError> {
    let mut ctx = crate::adapter::Context::new();
    let mut used = Vec::new();
    for (k, v) in values {
        let text = match v {
            ContextValue::Plain(s) => s.clone(),
            ContextValue::Secret(s) => String::from_utf8_lossy(s.expose()).into_owned(),
            ContextValue::Login(l) => {
                let s = l.session(pools).await?;
                used.push((l.clone(), s.clone()));
                s
            }
        };
        ctx.insert(k.clone(), text);
    }
    Ok((ctx, used))
}

/// A session a call used: `(login, session)`.
pub type SessionUse = (
    std::sync::Arc<crate::auth::credentials::SessionLogin>,
    String,
);

impl ExchangeCfg {
    /// The destinations a dossier goes to: every configured one whose procedure and field
    /// filters (if any) match it. Events follow their dossier's destinations.
    pub fn destinations_for(&self, d: &crate::exchange::dossier::Dossier) -> Vec<String> {
        fn hit(patterns: &[String], v: Option<&str>) -> bool {
            patterns.is_empty()
                || v.is_some_and(|v| {
                    patterns.iter().any(|p| match p.strip_suffix('*') {
                        Some(prefix) => v.starts_with(prefix),
                        None => p == v,
                    })
                })
        }
        self.destinations
            .iter()
            .filter(|name| match self.routing.get(*name) {
                None => true,
                Some((procs, fields)) => {
                    hit(procs, Some(&d.procedure_code)) && hit(fields, d.field_code.as_deref())
                }
            })
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExchangeCfg {
    pub db: PathBuf,
    pub spool_capacity: u64,
    #[serde(with = "dur")]
    pub retry_after: Duration,
    pub destinations: Vec<String>,
    pub auth: Option<RouteAuth>,
    /// Roles whose holders see every dossier's timeline.
    pub read_all_roles: Vec<String>,
    /// Roles whose holders may post events (processing steps) to every dossier.
    pub event_roles: Vec<String>,
    /// Destination name → (upstream pool, path).
    pub deliveries: BTreeMap<String, (String, String)>,
    /// Destinations whose payloads an adapter renders.
    pub delivery_adapters: BTreeMap<String, DeliveryAdapter>,
    /// Intake formats (`?format=NAME`) → the adapter operation that reads them.
    pub formats: BTreeMap<String, IntakeFormat>,
    /// Lookup that must know a dossier's procedure code (MaTTHC).
    pub catalogue: Option<String>,
    /// Destinations that take only some dossiers: name → (procedure patterns, field patterns).
    pub routing: BTreeMap<String, (Vec<String>, Vec<String>)>,
    pub max_attempts: u32,
    pub max_in_flight_per_destination: usize,
    #[serde(with = "dur")]
    pub delivery_timeout: Duration,
    #[serde(with = "dur")]
    pub backoff_base: Duration,
    #[serde(with = "dur")]
    pub backoff_cap: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditCfg {
    pub db: PathBuf,
    pub origin: String,
    pub key: PathBuf,
    pub batch_max: usize,
    #[serde(with = "dur")]
    pub batch_linger: Duration,
    #[serde(with = "dur")]
    pub batch_linger_fail_open: Duration,
    pub checkpoint_every_records: u64,
    #[serde(with = "dur")]
    pub checkpoint_every: Duration,
    pub queue_capacity: usize,
    #[serde(with = "opt_dur")]
    pub retention: Option<Duration>,
    pub timestamp: Option<AuditTimestampCfg>,
}

/// `[audit.timestamp]`: where checkpoints are timestamped (RFC 3161).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditTimestampCfg {
    pub upstream: String,
    pub path: String,
    pub cert: PathBuf,
    #[serde(with = "dur")]
    pub timeout: Duration,
    #[serde(with = "dur")]
    pub min_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditPolicy {
    FailOpen,
    FailClosed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteCacheCfg {
    pub public: bool,
    pub max_entry_bytes: usize,
    pub capacity_bytes: u64,
    #[serde(with = "opt_dur")]
    pub default_ttl: Option<Duration>,
    #[serde(with = "dur")]
    pub max_ttl: Duration,
}

/// A secret read from an environment variable or a file. Only its source is ever
/// shown (`Debug`, the admin config view); the value never leaves this type except
/// through [`SecretValue::expose`].
#[derive(Clone, PartialEq)]
pub struct SecretValue {
    pub source: String,
    value: std::sync::Arc<Vec<u8>>,
}

impl SecretValue {
    pub fn expose(&self) -> &[u8] {
        &self.value
    }

    pub fn from_bytes(source: &str, value: Vec<u8>) -> SecretValue {
        SecretValue {
            source: source.to_string(),
            value: std::sync::Arc::new(value),
        }
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret from {}>", self.source)
    }
}

impl Serialize for SecretValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("<redacted: from {}>", self.source))
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthConfig {
    pub issuers: Vec<IssuerCfg>,
    pub cache_capacity: u64,
    #[serde(with = "dur")]
    pub cache_max_ttl: Duration,
    pub signing: Option<SigningCfg>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssuerKeysCfg {
    PublicKey {
        path: PathBuf,
        kid: Option<String>,
    },
    Jwk(PathBuf),
    JwksFile(PathBuf),
    Jwks {
        upstream: String,
        path: String,
        #[serde(with = "dur")]
        refresh_interval: Duration,
        #[serde(with = "dur")]
        min_refetch_interval: Duration,
        #[serde(with = "dur")]
        max_stale: Duration,
    },
    Secret(SecretValue),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssuerCfg {
    pub name: String,
    pub iss: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub keys: IssuerKeysCfg,
    #[serde(with = "dur")]
    pub leeway: Duration,
    #[serde(with = "dur")]
    pub max_lifetime: Duration,
    pub typ: Option<String>,
    pub max_token_bytes: usize,
    pub agency_claims: Option<Vec<String>>,
    /// Agency patterns the issuer may vouch for; empty: any.
    pub agencies: Vec<String>,
    pub roles_claim: Option<String>,
    pub scope_claim: Option<String>,
    pub dev_signing_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SigningCfg {
    pub key: PathBuf,
    pub kid: String,
    pub issuer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteAuth {
    pub anonymous: bool,
    pub agencies: Vec<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub forward_token: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum CredentialsConfig {
    Oauth2 {
        token_upstream: String,
        token_path: String,
        client_id: String,
        client_secret: SecretValue,
        basic_auth: bool,
        scope: Option<String>,
        #[serde(with = "dur")]
        refresh_margin: Duration,
    },
    Jwt {
        audience: String,
        #[serde(with = "dur")]
        ttl: Duration,
    },
    Header {
        name: String,
        value: SecretValue,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupSourceCfg {
    File { path: PathBuf, key: String },
    Table { path: PathBuf, table: String },
    Upstream { upstream: String, path: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LookupConfig {
    pub name: String,
    pub source: LookupSourceCfg,
    #[serde(with = "dur")]
    pub ttl: Duration,
    #[serde(with = "opt_dur")]
    pub refresh_ahead: Option<Duration>,
    #[serde(with = "dur")]
    pub max_stale: Duration,
    #[serde(with = "opt_dur")]
    pub negative_ttl: Option<Duration>,
    pub capacity_bytes: u64,
    pub auth: Option<RouteAuth>,
}

mod dur {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

mod opt_dur {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// Formats a duration the way the config spells it (`1500ms`, `30s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`. A unit is required so that `30` is never
/// silently read as seconds by one reader and milliseconds by another.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a whole number"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    // Beyond any sensible setting, and far enough below what `Instant` arithmetic
    // overflows on that deadlines built from it never panic.
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is longer than 100 years"));
    }
    Ok(d)
}

/// The longest duration a setting may have (100 years).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
];

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let mut p = Problems::default();
            p.push(
                path.display().to_string(),
                format!("cannot read config: {e}"),
            );
            p
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut cfg = Config::parse(&text, &base)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Validates config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Problems> {
        let mut v = Validator {
            problems: Problems::default(),
            base: base.to_path_buf(),
            adapters: Default::default(),
            logins: Vec::new(),
        };
        let file: RawFile = match toml::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                v.problems.push("(file)", toml_message(&e, text));
                return Err(v.problems);
            }
        };
        let cfg = v.file(file);
        if v.problems.0.is_empty() {
            Ok(cfg)
        } else {
            Err(v.problems)
        }
    }

    /// The running config as JSON for the admin API. This config holds no secret
    /// values (only file paths and environment variable names), so nothing is redacted
    /// here; secret-bearing sections added later must use redacting types.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

struct Validator {
    problems: Problems,
    base: PathBuf,
    adapters: crate::adapter::Adapters,
    /// Login upstreams named by adapter context values: (key path, upstream), checked once
    /// every pool is known.
    logins: Vec<(String, String)>,
}

impl Validator {
    /// Decodes one section; on a type or unknown-key error records it and returns
    /// the default so that validation of the other sections goes on.
    fn section<T: DeserializeOwned + Default>(&mut self, path: &str, v: Option<toml::Value>) -> T {
        self.element(path, v).unwrap_or_default()
    }

    /// Like `section`, but None when the element did not decode, so that its
    /// missing fields are not reported a second time as "required".
    fn element<T: DeserializeOwned>(&mut self, path: &str, v: Option<toml::Value>) -> Option<T> {
        match T::deserialize(v?) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problems.push(path, e.message().to_string());
                None
            }
        }
    }

    fn duration(&mut self, path: &str, v: Option<&String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    self.problems.push(path, "must be greater than zero");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.problems.push(path, e);
                    default
                }
            },
        }
    }

    fn file_path(&mut self, path: &str, v: &str) -> PathBuf {
        let p = Path::new(v);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        if !full.is_file() {
            self.problems.push(
                path,
                format!("file {} does not exist or is not a file", full.display()),
            );
        }
        full
    }

    fn secret(&mut self, path: &str, v: &RawSecret) -> SecretValue {
        let empty = || SecretValue::from_bytes("nothing", Vec::new());
        match (&v.env, &v.file) {
            (Some(name), None) => match std::env::var(name) {
                Ok(val) if !val.is_empty() => {
                    SecretValue::from_bytes(&format!("env {name}"), val.into_bytes())
                }
                _ => {
                    self.problems.push(
                        path,
                        format!("environment variable {name} is not set or empty"),
                    );
                    empty()
                }
            },
            (None, Some(file)) => {
                let full = self.file_path(path, file);
                match std::fs::read(&full) {
                    Ok(mut bytes) => {
                        // A trailing newline from an editor is not part of the secret.
                        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            bytes.pop();
                        }
                        if bytes.is_empty() {
                            self.problems
                                .push(path, format!("file {} is empty", full.display()));
                        }
                        SecretValue::from_bytes(&format!("file {}", full.display()), bytes)
                    }
                    // A missing file is already reported (`file_path`); one that is
                    // there but cannot be read (permissions) is a problem too, never
                    // an empty secret.
                    Err(e) => {
                        if full.is_file() {
                            self.problems.push(
                                path,
                                format!("cannot read {}: {}", full.display(), e.kind()),
                            );
                        }
                        empty()
                    }
                }
            }
            _ => {
                self.problems.push(
                    path,
                    "a secret is { env = \"NAME\" } or { file = \"path\" }",
                );
                empty()
            }
        }
    }

    fn auth(&mut self, raw: RawAuth, upstreams: &BTreeMap<String, UpstreamConfig>) -> AuthConfig {
        let mut issuers = Vec::new();
        for (i, v) in raw.issuers.into_iter().enumerate() {
            let path = format!("auth.issuers[{i}]");
            let Some(r) = self.element::<RawIssuer>(&path, Some(v)) else {
                continue;
            };
            let name = r.name.clone().unwrap_or_else(|| format!("issuer{i}"));
            let iss = r.iss.clone().unwrap_or_else(|| {
                self.problems.push(format!("{path}.iss"), "required");
                String::new()
            });
            let audiences = r.audiences.clone().unwrap_or_default();
            if audiences.is_empty() {
                self.problems.push(
                    format!("{path}.audiences"),
                    "at least one audience is required",
                );
            }
            let algorithms = r.algorithms.clone().unwrap_or_default();
            if algorithms.is_empty() {
                self.problems.push(
                    format!("{path}.algorithms"),
                    "list the accepted algorithms, e.g. [\"ES256\"]",
                );
            }
            for (j, a) in algorithms.iter().enumerate() {
                if ![
                    "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256",
                ]
                .contains(&a.as_str())
                {
                    self.problems.push(
                        format!("{path}.algorithms[{j}]"),
                        format!(
                            "{a:?} is not accepted (RS256/384/512, PS256, ES256/384, EdDSA, HS256)"
                        ),
                    );
                }
            }
            let sources = [
                r.public_key.is_some(),
                r.jwk.is_some(),
                r.jwks_file.is_some(),
                r.jwks.is_some(),
                r.secret.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if sources != 1 {
                self.problems.push(
                    path.clone(),
                    "give exactly one of public_key, jwk, jwks_file, jwks, secret",
                );
            }
            let keys = if let Some(p) = &r.public_key {
                IssuerKeysCfg::PublicKey {
                    path: self.file_path(&format!("{path}.public_key"), p),
                    kid: r.kid.clone(),
                }
            } else if let Some(p) = &r.jwk {
                IssuerKeysCfg::Jwk(self.file_path(&format!("{path}.jwk"), p))
            } else if let Some(p) = &r.jwks_file {
                IssuerKeysCfg::JwksFile(self.file_path(&format!("{path}.jwks_file"), p))
            } else if let Some(j) = &r.jwks {
                let up = j.upstream.clone().unwrap_or_default();
                if !upstreams.contains_key(&up) {
                    self.problems.push(
                        format!("{path}.jwks.upstream"),
                        format!("unknown upstream {up:?}"),
                    );
                }
                let jp = j
                    .path
                    .clone()
                    .unwrap_or_else(|| "/.well-known/jwks.json".into());
                if !jp.starts_with('/') {
                    self.problems
                        .push(format!("{path}.jwks.path"), "must start with '/'");
                }
                IssuerKeysCfg::Jwks {
                    upstream: up,
                    path: jp,
                    refresh_interval: self.duration(
                        &format!("{path}.jwks.refresh_interval"),
                        j.refresh_interval.as_ref(),
                        Duration::from_secs(300),
                    ),
                    min_refetch_interval: self.duration(
                        &format!("{path}.jwks.min_refetch_interval"),
                        j.min_refetch_interval.as_ref(),
                        Duration::from_secs(30),
                    ),
                    max_stale: self.duration(
                        &format!("{path}.jwks.max_stale"),
                        j.max_stale.as_ref(),
                        Duration::from_secs(6 * 3600),
                    ),
                }
            } else if let Some(sec) = &r.secret {
                let v = self.secret(&format!("{path}.secret"), sec);
                if v.expose().len() < 32 {
                    self.problems.push(
                        format!("{path}.secret"),
                        "an HS256 secret must be at least 32 bytes",
                    );
                }
                IssuerKeysCfg::Secret(v)
            } else {
                IssuerKeysCfg::Jwk(PathBuf::new())
            };
            issuers.push(IssuerCfg {
                name,
                iss,
                audiences,
                algorithms,
                keys,
                leeway: self.duration(
                    &format!("{path}.leeway"),
                    r.leeway.as_ref(),
                    Duration::from_secs(60),
                ),
                max_lifetime: self.duration(
                    &format!("{path}.max_lifetime"),
                    r.max_lifetime.as_ref(),
                    Duration::from_secs(3600),
                ),
                typ: r.typ.clone(),
                max_token_bytes: r.max_token_bytes.unwrap_or(8192),
                agency_claims: r.agency_claims.clone(),
                agencies: {
                    let list = r.agencies.clone().unwrap_or_default();
                    for (j, a) in list.iter().enumerate() {
                        if let Err(e) = crate::auth::rules::AgencyPattern::parse(a) {
                            self.problems
                                .push(format!("{path}.agencies[{j}]"), e.to_string());
                        }
                    }
                    if r.agencies.as_ref().is_some_and(Vec::is_empty) {
                        self.problems.push(
                            format!("{path}.agencies"),
                            "an empty list would refuse every token naming an agency; leave it out to allow any",
                        );
                    }
                    list
                },
                roles_claim: r.roles_claim.clone(),
                scope_claim: r.scope_claim.clone(),
                dev_signing_key: r
                    .dev_signing_key
                    .as_ref()
                    .map(|k| self.file_path(&format!("{path}.dev_signing_key"), k)),
            });
        }
        let signing = raw.signing.map(|sg| SigningCfg {
            key: match &sg.key {
                Some(k) => self.file_path("auth.signing.key", k),
                None => {
                    self.problems.push("auth.signing.key", "required");
                    PathBuf::new()
                }
            },
            kid: sg.kid.unwrap_or_else(|| "lienthong-1".into()),
            issuer: sg.issuer.unwrap_or_else(|| "lienthong".into()),
        });
        AuthConfig {
            issuers,
            cache_capacity: raw.cache_capacity.unwrap_or(10_000),
            cache_max_ttl: self.duration(
                "auth.cache_max_ttl",
                raw.cache_max_ttl.as_ref(),
                Duration::from_secs(300),
            ),
            signing,
        }
    }

    fn audit(&mut self, a: RawAudit) -> AuditCfg {
        let db = match &a.db {
            Some(d) => {
                let p = Path::new(d);
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    self.base.join(p)
                }
            }
            None => {
                self.problems
                    .push("audit.db", "required: the audit database file");
                PathBuf::new()
            }
        };
        let key = match &a.key {
            Some(k) => self.file_path("audit.key", k),
            None => {
                self.problems.push(
                    "audit.key",
                    "required: the Ed25519 key that signs checkpoints",
                );
                PathBuf::new()
            }
        };
        let timestamp = a.timestamp.map(|t| {
            let path = t.path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                self.problems
                    .push("audit.timestamp.path", "must be a path starting with '/'");
            }
            let cert = match &t.cert {
                Some(c) => {
                    let full = self.file_path("audit.timestamp.cert", c);
                    if full.is_file() {
                        let checked =
                            std::fs::read(&full)
                                .map_err(|e| e.to_string())
                                .and_then(|pem| {
                                    crate::audit::timestamp::TsaCerts::from_pem(&pem)
                                        .map_err(|e| e.to_string())
                                });
                        if let Err(e) = checked {
                            self.problems.push("audit.timestamp.cert", e);
                        }
                    }
                    full
                }
                None => {
                    self.problems.push(
                        "audit.timestamp.cert",
                        "required: the TSA certificate (PEM) that verifies its tokens",
                    );
                    PathBuf::new()
                }
            };
            AuditTimestampCfg {
                upstream: t.upstream.unwrap_or_default(),
                path,
                cert,
                timeout: self.duration(
                    "audit.timestamp.timeout",
                    t.timeout.as_ref(),
                    Duration::from_secs(10),
                ),
                min_interval: self.duration(
                    "audit.timestamp.min_interval",
                    t.min_interval.as_ref(),
                    Duration::from_secs(60),
                ),
            }
        });
        let origin = a.origin.unwrap_or_else(|| "lienthong/audit".into());
        // The origin is the signing key's name in every checkpoint (a signed note):
        // no whitespace, no '+'. The key itself is loaded as `serve` will load it.
        let origin_ok = crate::audit::checkpoint::check_key_name(&origin).is_ok();
        if !origin_ok {
            self.problems.push(
                "audit.origin",
                "must be a non-empty name without spaces, control characters or '+' \
                 (it names the key in every signed checkpoint)",
            );
        }
        if key.is_file() {
            let name = if origin_ok {
                origin.as_str()
            } else {
                "lienthong/audit"
            };
            if let Err(e) = crate::audit::load_signing_key(&key, name) {
                self.problems.push("audit.key", e);
            }
        }
        AuditCfg {
            timestamp,
            db,
            origin,
            key,
            batch_max: a.batch_max.unwrap_or(4096).max(1),
            batch_linger: match &a.batch_linger {
                Some(d) => parse_duration(d).unwrap_or_else(|e| {
                    self.problems.push("audit.batch_linger", e);
                    Duration::ZERO
                }),
                None => Duration::ZERO,
            },
            batch_linger_fail_open: match &a.batch_linger_fail_open {
                Some(d) => parse_duration(d).unwrap_or_else(|e| {
                    self.problems.push("audit.batch_linger_fail_open", e);
                    Duration::from_millis(100)
                }),
                None => Duration::from_millis(100),
            },
            checkpoint_every_records: a.checkpoint_every_records.unwrap_or(10_000).max(1),
            checkpoint_every: self.duration(
                "audit.checkpoint_every",
                a.checkpoint_every.as_ref(),
                Duration::from_secs(60),
            ),
            queue_capacity: a.queue_capacity.unwrap_or(65_536).max(1),
            retention: a.retention.as_ref().map(|r| {
                self.duration("audit.retention", Some(r), Duration::from_secs(365 * 86400))
            }),
        }
    }

    /// The protocols a route's `Upgrade` may name. `h2c` is refused outright: once
    /// upgraded, the client's later requests travel inside the tunnel as HTTP/2, past
    /// the gateway's routing, rules and audit.
    fn upgrade_protocols(&mut self, path: &str, r: &RawRoute) -> Vec<String> {
        let Some(list) = &r.upgrade_protocols else {
            return vec!["websocket".to_string()];
        };
        if r.allow_upgrade != Some(true) {
            self.problems.push(
                format!("{path}.upgrade_protocols"),
                "has no effect unless allow_upgrade = true",
            );
        }
        if list.is_empty() {
            self.problems.push(
                format!("{path}.upgrade_protocols"),
                "must name at least one protocol",
            );
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, p) in list.iter().enumerate() {
            let key = format!("{path}.upgrade_protocols[{i}]");
            if p.is_empty() || !p.bytes().all(crate::pipeline::headers::is_tchar) {
                self.problems.push(
                    key,
                    "a protocol name is an HTTP token (no '/', spaces or commas)",
                );
            } else if p.eq_ignore_ascii_case("h2c") {
                self.problems.push(
                    key,
                    "h2c cannot be tunnelled: the client's later requests would pass inside it, \
                     past routing, access rules and the audit log",
                );
            } else {
                out.push(p.to_ascii_lowercase());
            }
        }
        out
    }

    fn route_auth(&mut self, path: &str, a: RawRouteAuth) -> RouteAuth {
        let ra = RouteAuth {
            anonymous: a.anonymous.unwrap_or(false),
            agencies: a.agencies.unwrap_or_default(),
            roles: a.roles.unwrap_or_default(),
            scopes: a.scopes.unwrap_or_default(),
            forward_token: a.forward_token.unwrap_or(false),
        };
        if let Err(e) = crate::auth::rules::AccessRule::from_config(
            ra.anonymous,
            &ra.agencies,
            &ra.roles,
            &ra.scopes,
        ) {
            self.problems.push(format!("{path}.auth"), e.to_string());
        }
        // An anonymous route does not verify tokens: forwarding one would hand the
        // upstream a token it may take for one the gateway checked.
        if ra.anonymous && ra.forward_token {
            self.problems.push(
                format!("{path}.auth.forward_token"),
                "an anonymous route verifies no token, so it cannot forward one",
            );
        }
        ra
    }

    fn lookup(
        &mut self,
        path: &str,
        l: RawLookup,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Option<LookupConfig> {
        let name = l.name.clone().unwrap_or_default();
        if !is_name(&name) {
            self.problems.push(
                format!("{path}.name"),
                "required: letters, digits, '-' and '_' only",
            );
        }
        let Some(src) = l.source else {
            self.problems.push(format!("{path}.source"), "required");
            return None;
        };
        let source = match (&src.file, &src.upstream) {
            (Some(f), None) => {
                let p = self.file_path(&format!("{path}.source.file"), f);
                match (&src.table, &src.key) {
                    (Some(t), None) => {
                        if ![
                            "provinces",
                            "communes",
                            "communes-old-to-new",
                            "communes-new-to-old",
                        ]
                        .contains(&t.as_str())
                        {
                            self.problems.push(
                                format!("{path}.source.table"),
                                format!("unknown table {t:?} (provinces, communes, communes-old-to-new, communes-new-to-old)"),
                            );
                        }
                        LookupSourceCfg::Table {
                            path: p,
                            table: t.clone(),
                        }
                    }
                    (None, Some(k)) => LookupSourceCfg::File {
                        path: p,
                        key: k.clone(),
                    },
                    _ => {
                        self.problems.push(
                            format!("{path}.source"),
                            "a file source names either its key column (key) or a preset table",
                        );
                        return None;
                    }
                }
            }
            (None, Some(u)) => {
                if !upstreams.contains_key(u) {
                    self.problems.push(
                        format!("{path}.source.upstream"),
                        format!("unknown upstream {u:?}"),
                    );
                }
                let p = src.path.clone().unwrap_or_else(|| "/{key}".into());
                if !p.starts_with('/') {
                    self.problems
                        .push(format!("{path}.source.path"), "must start with '/'");
                }
                LookupSourceCfg::Upstream {
                    upstream: u.clone(),
                    path: p,
                }
            }
            _ => {
                self.problems
                    .push(format!("{path}.source"), "give either file or upstream");
                return None;
            }
        };
        let auth = l.auth.map(|a| self.route_auth(path, a));
        Some(LookupConfig {
            name,
            source,
            ttl: self.duration(
                &format!("{path}.ttl"),
                l.ttl.as_ref(),
                Duration::from_secs(3600),
            ),
            refresh_ahead: l.refresh_ahead.as_ref().map(|d| {
                self.duration(
                    &format!("{path}.refresh_ahead"),
                    Some(d),
                    Duration::from_secs(60),
                )
            }),
            max_stale: match &l.max_stale {
                Some(d) => parse_duration(d).unwrap_or_else(|e| {
                    self.problems.push(format!("{path}.max_stale"), e);
                    Duration::ZERO
                }),
                None => Duration::ZERO,
            },
            negative_ttl: l.negative_ttl.as_ref().map(|d| {
                self.duration(
                    &format!("{path}.negative_ttl"),
                    Some(d),
                    Duration::from_secs(60),
                )
            }),
            capacity_bytes: l.capacity_bytes.unwrap_or(64 * 1024 * 1024),
            auth,
        })
    }

    fn credentials(&mut self, path: &str, c: RawCredentials) -> Option<CredentialsConfig> {
        match c.kind.as_deref() {
            Some("oauth2") => {
                let client_secret = match &c.client_secret {
                    Some(sec) => self.secret(&format!("{path}.client_secret"), sec),
                    None => {
                        self.problems
                            .push(format!("{path}.client_secret"), "required");
                        SecretValue::from_bytes("nothing", Vec::new())
                    }
                };
                let basic_auth = match c.client_auth.as_deref() {
                    None | Some("basic") => true,
                    Some("form") => false,
                    Some(o) => {
                        self.problems.push(
                            format!("{path}.client_auth"),
                            format!("unknown value {o:?} (use basic or form)"),
                        );
                        true
                    }
                };
                Some(CredentialsConfig::Oauth2 {
                    token_upstream: c.token_upstream.clone().unwrap_or_else(|| {
                        self.problems
                            .push(format!("{path}.token_upstream"), "required");
                        String::new()
                    }),
                    token_path: c.token_path.clone().unwrap_or_else(|| "/token".into()),
                    client_id: c.client_id.clone().unwrap_or_else(|| {
                        self.problems.push(format!("{path}.client_id"), "required");
                        String::new()
                    }),
                    client_secret,
                    basic_auth,
                    scope: c.scope.clone(),
                    refresh_margin: self.duration(
                        &format!("{path}.refresh_margin"),
                        c.refresh_margin.as_ref(),
                        Duration::from_secs(60),
                    ),
                })
            }
            Some("jwt") => Some(CredentialsConfig::Jwt {
                audience: c.audience.clone().unwrap_or_else(|| {
                    self.problems.push(format!("{path}.audience"), "required");
                    String::new()
                }),
                ttl: self.duration(
                    &format!("{path}.ttl"),
                    c.ttl.as_ref(),
                    Duration::from_secs(300),
                ),
            }),
            Some("header") => {
                let name = c.header.clone().unwrap_or_default();
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.problems
                        .push(format!("{path}.header"), "required: a valid header name");
                }
                let value = match &c.value {
                    Some(v) => self.secret(&format!("{path}.value"), v),
                    None => {
                        self.problems.push(format!("{path}.value"), "required");
                        SecretValue::from_bytes("nothing", Vec::new())
                    }
                };
                Some(CredentialsConfig::Header { name, value })
            }
            Some("lgsp") => {
                // The LGSP credential header (brief §7.2): base64 of a JSON object of
                // connection fields; field values may be literal or secrets.
                use base64::Engine;
                let mut obj = serde_json::Map::new();
                for (k, v) in c.fields.clone().unwrap_or_default() {
                    let val = match v {
                        toml::Value::String(s) => s,
                        toml::Value::Table(t) => {
                            let raw = RawSecret {
                                env: t.get("env").and_then(|x| x.as_str()).map(str::to_string),
                                file: t.get("file").and_then(|x| x.as_str()).map(str::to_string),
                            };
                            String::from_utf8_lossy(
                                self.secret(&format!("{path}.fields.{k}"), &raw).expose(),
                            )
                            .into_owned()
                        }
                        _ => {
                            self.problems
                                .push(format!("{path}.fields.{k}"), "a string or a secret");
                            String::new()
                        }
                    };
                    obj.insert(k, serde_json::Value::String(val));
                }
                let json = serde_json::to_vec(&obj).unwrap_or_default();
                let b64 = base64::engine::general_purpose::STANDARD.encode(json);
                Some(CredentialsConfig::Header {
                    name: c.header.clone().unwrap_or_else(|| "lgspaccesstoken".into()),
                    value: SecretValue::from_bytes("lgsp fields", b64.into_bytes()),
                })
            }
            Some(o) => {
                self.problems.push(
                    format!("{path}.type"),
                    format!("unknown credentials type {o:?} (use oauth2, jwt, header or lgsp)"),
                );
                None
            }
            None => {
                self.problems.push(format!("{path}.type"), "required");
                None
            }
        }
    }

    fn addr(&mut self, path: &str, v: Option<&String>, default: &str) -> SocketAddr {
        let s = v.map(String::as_str).unwrap_or(default);
        match s.parse() {
            Ok(a) => a,
            Err(_) => {
                self.problems.push(
                    path,
                    format!("{s:?} is not an IP address with a port (e.g. 127.0.0.1:8080)"),
                );
                default.parse().expect("default address parses")
            }
        }
    }

    fn file(&mut self, f: RawFile) -> Config {
        if let Some(raw) = f.adapters {
            let a: RawAdapters = self.section("adapters", Some(raw));
            match a.dir {
                None => self
                    .problems
                    .push("adapters.dir", "required: the folder of adapters"),
                Some(d) => {
                    let (loaded, problems) = crate::adapter::load_dir(&self.base.join(d));
                    for (k, m) in problems {
                        self.problems.push(format!("adapters: {k}"), m);
                    }
                    self.adapters = loaded;
                }
            }
        }
        let raw_auth: RawAuth = self.section("auth", f.auth);
        let exchange = match f.exchange {
            None => None,
            Some(v) => self
                .element::<RawExchange>("exchange", Some(v))
                .map(|x| ExchangeCfg {
                    max_in_flight_per_destination: match x.max_in_flight_per_destination {
                        Some(0) => {
                            self.problems.push(
                                "exchange.max_in_flight_per_destination",
                                "must be at least 1",
                            );
                            1
                        }
                        Some(n) => n,
                        // Half the worker's 32 slots, where another destination could
                        // use the rest.
                        None if x.deliveries.len() > 1 => 16,
                        None => 32,
                    },
                    db: match &x.db {
                        Some(d) => self.base.join(d),
                        None => {
                            self.problems
                                .push("exchange.db", "required: the exchange database file");
                            PathBuf::new()
                        }
                    },
                    spool_capacity: x.spool_capacity.unwrap_or(200_000).max(1),
                    retry_after: self.duration(
                        "exchange.retry_after",
                        x.retry_after.as_ref(),
                        Duration::from_secs(30),
                    ),
                    destinations: x.destinations.clone().unwrap_or_default(),
                    auth: x.auth.map(|a| self.route_auth("exchange", a)),
                    read_all_roles: x.read_all_roles.unwrap_or_default(),
                    event_roles: x.event_roles.unwrap_or_default(),
                    catalogue: x.catalogue.clone(),
                    routing: x
                        .deliveries
                        .iter()
                        .filter(|(_, d)| d.procedures.is_some() || d.fields.is_some())
                        .map(|(k, d)| {
                            (
                                k.clone(),
                                (
                                    d.procedures.clone().unwrap_or_default(),
                                    d.fields.clone().unwrap_or_default(),
                                ),
                            )
                        })
                        .collect(),
                    formats: x
                        .formats
                        .iter()
                        .flatten()
                        .filter_map(|(k, v)| Some((k.clone(), self.intake_format(k, v)?)))
                        .collect(),
                    delivery_adapters: x
                        .deliveries
                        .iter()
                        .filter_map(|(k, d)| Some((k.clone(), self.delivery_adapter(k, d)?)))
                        .collect(),
                    deliveries: x
                        .deliveries
                        .into_iter()
                        .map(|(k, d)| {
                            let up = d.upstream.unwrap_or_else(|| {
                                self.problems
                                    .push(format!("exchange.deliveries.{k}.upstream"), "required");
                                String::new()
                            });
                            (k, (up, d.path.unwrap_or_else(|| "/".into())))
                        })
                        .collect(),
                    // About a day of retries before the dead letter (as `BackoffPolicy::default`):
                    // an hour's maintenance of a national system must not dead-letter
                    // what was queued meanwhile.
                    max_attempts: x.max_attempts.unwrap_or(48).max(1),
                    delivery_timeout: self.duration(
                        "exchange.delivery_timeout",
                        x.delivery_timeout.as_ref(),
                        Duration::from_secs(30),
                    ),
                    backoff_base: self.duration(
                        "exchange.backoff_base",
                        x.backoff_base.as_ref(),
                        Duration::from_secs(2),
                    ),
                    backoff_cap: self.duration(
                        "exchange.backoff_cap",
                        x.backoff_cap.as_ref(),
                        Duration::from_secs(3600),
                    ),
                }),
        };
        if let Some(x) = &exchange {
            for (i, d) in x.destinations.iter().enumerate() {
                if !x.deliveries.contains_key(d) {
                    self.problems.push(
                        format!("exchange.destinations[{i}]"),
                        format!("no [exchange.deliveries.{d}] says where to deliver it"),
                    );
                }
            }
        }
        let audit = match f.audit {
            None => None,
            Some(v) => self
                .element::<RawAudit>("audit", Some(v))
                .map(|a| self.audit(a)),
        };
        let server: RawServer = self.section("server", f.server);
        let log: RawLog = self.section("log", f.log);
        let admin: RawAdmin = self.section("admin", f.admin);

        let server = ServerConfig {
            worker_threads: server.worker_threads.filter(|n| *n > 0),
            drain_timeout: self.duration(
                "server.drain_timeout",
                server.drain_timeout.as_ref(),
                Duration::from_secs(30),
            ),
            via_name: {
                let default = || ViaName::new("lienthong".into()).expect("a valid token");
                match server.via_name {
                    Some(n) => ViaName::new(n.clone()).unwrap_or_else(|| {
                        self.problems
                            .push("server.via_name", format!("{n:?} is not an HTTP token"));
                        default()
                    }),
                    None => default(),
                }
            },
        };
        let format = match log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(o) => {
                self.problems.push(
                    "log.format",
                    format!("unknown format {o:?} (use text or json)"),
                );
                LogFormat::Text
            }
        };
        let log = LogConfig {
            format,
            level: log.level.unwrap_or_else(|| "info".into()),
            access_log: log.access_log.unwrap_or(true),
        };
        let admin = AdminConfig {
            listen: if admin.enabled == Some(false) {
                None
            } else {
                Some(self.addr("admin.listen", admin.listen.as_ref(), "127.0.0.1:9090"))
            },
            hosts: admin.hosts.unwrap_or_default(),
        };

        let mut listeners = Vec::new();
        for (i, l) in f.listeners.into_iter().enumerate() {
            let path = format!("listeners[{i}]");
            if let Some(raw) = self.element::<RawListener>(&path, Some(l)) {
                listeners.push(self.listener(&path, raw));
            }
        }
        if listeners.is_empty() {
            self.problems
                .push("listeners", "at least one [[listeners]] entry is needed");
        }
        let mut seen = BTreeMap::new();
        let mut bound: BTreeMap<SocketAddr, String> = BTreeMap::new();
        if let Some(a) = admin.listen.filter(|a| a.port() != 0) {
            bound.insert(a, "admin.listen".into());
        }
        for (i, l) in listeners.iter().enumerate() {
            if let Some(j) = seen.insert(l.name.clone(), i) {
                self.problems.push(
                    format!("listeners[{i}].name"),
                    format!("duplicate listener name {:?} (also listeners[{j}])", l.name),
                );
            }
            // Two sockets on one address: the second bind would fail at start.
            if l.listen.port() != 0 {
                if let Some(other) = bound.insert(l.listen, format!("listeners[{i}]")) {
                    self.problems.push(
                        format!("listeners[{i}].listen"),
                        format!("{} is also {other}'s address", l.listen),
                    );
                }
            }
        }

        let mut upstreams = BTreeMap::new();
        for (name, u) in f.upstreams {
            let path = format!("upstreams.{name}");
            if !is_name(&name) {
                self.problems
                    .push(&path, "names use letters, digits, '-' and '_' only");
            }
            if let Some(raw) = self.element::<RawUpstream>(&path, Some(u)) {
                let u = self.upstream(&path, &name, raw);
                upstreams.insert(name, u);
            }
        }

        let auth = self.auth(raw_auth, &upstreams);
        if let Some(t) = audit.as_ref().and_then(|a| a.timestamp.as_ref()) {
            if !upstreams.contains_key(&t.upstream) {
                self.problems.push(
                    "audit.timestamp.upstream",
                    format!("unknown upstream {:?}", t.upstream),
                );
            }
        }
        if let Some(x) = &exchange {
            for (name, (up, path)) in &x.deliveries {
                if !upstreams.contains_key(up) {
                    self.problems.push(
                        format!("exchange.deliveries.{name}.upstream"),
                        format!("unknown upstream {up:?}"),
                    );
                }
                if !path.starts_with('/') {
                    self.problems.push(
                        format!("exchange.deliveries.{name}.path"),
                        "must start with '/'",
                    );
                }
            }
        }
        // A pool that is sent secrets must not carry them in the clear past this host:
        // https, or plain http to a loopback address, unless the pool says its network
        // is trusted (`plaintext_credentials`).
        let cleartext = |u: &UpstreamConfig| -> Option<String> {
            if u.plaintext_credentials {
                return None;
            }
            u.endpoints
                .iter()
                .find(|e| !e.https && !crate::auth::jwt::is_loopback_host(&e.host))
                .map(|e| {
                    format!(
                        "endpoint {e} of upstream {:?} would carry it in the clear: use https:// \
                         (plain http only to loopback), or set plaintext_credentials = true on \
                         that upstream for a trusted private network",
                        u.name
                    )
                })
        };
        for (key, up) in std::mem::take(&mut self.logins) {
            match upstreams.get(&up) {
                None => self.problems.push(key, format!("unknown upstream {up:?}")),
                Some(u) => {
                    if let Some(m) = cleartext(u) {
                        self.problems
                            .push(key, format!("the login sends a password: {m}"));
                    }
                }
            }
        }
        for (name, u) in &upstreams {
            if u.credentials.is_some() {
                if let Some(m) = cleartext(u) {
                    self.problems.push(
                        format!("upstreams.{name}.credentials"),
                        format!("credentials are secrets: {m}"),
                    );
                }
            }
            if let Some(CredentialsConfig::Oauth2 { token_upstream, .. }) = &u.credentials {
                if let Some(m) = upstreams.get(token_upstream).and_then(cleartext) {
                    self.problems.push(
                        format!("upstreams.{name}.credentials.token_upstream"),
                        format!("the token request sends the client secret: {m}"),
                    );
                }
            }
        }
        // Credentials may name token upstreams; check them now that all pools are known.
        for (name, u) in &upstreams {
            if let Some(CredentialsConfig::Oauth2 { token_upstream, .. }) = &u.credentials {
                match upstreams.get(token_upstream) {
                    None => self.problems.push(
                        format!("upstreams.{name}.credentials.token_upstream"),
                        format!("unknown upstream {token_upstream:?}"),
                    ),
                    Some(t) if t.credentials.is_some() => self.problems.push(
                        format!("upstreams.{name}.credentials.token_upstream"),
                        "a token endpoint's pool cannot itself need credentials",
                    ),
                    Some(_) => {}
                }
            }
            if matches!(u.credentials, Some(CredentialsConfig::Jwt { .. }))
                && auth.signing.is_none()
            {
                self.problems.push(
                    format!("upstreams.{name}.credentials"),
                    "type = \"jwt\" needs [auth.signing]",
                );
            }
        }
        let mut lookups = Vec::new();
        for (i, v) in f.lookups.into_iter().enumerate() {
            let path = format!("lookups[{i}]");
            if let Some(raw) = self.element::<RawLookup>(&path, Some(v)) {
                if let Some(l) = self.lookup(&path, raw, &upstreams) {
                    if lookups.iter().any(|x: &LookupConfig| x.name == l.name) {
                        self.problems.push(
                            format!("{path}.name"),
                            format!("duplicate lookup name {:?}", l.name),
                        );
                    }
                    lookups.push(l);
                }
            }
        }
        if let Some(c) = exchange.as_ref().and_then(|x| x.catalogue.as_ref()) {
            if !lookups.iter().any(|l| &l.name == c) {
                self.problems.push(
                    "exchange.catalogue",
                    format!("no [[lookups]] entry named {c:?}"),
                );
            }
        }
        let mut routes = Vec::new();
        for (i, r) in f.routes.into_iter().enumerate() {
            let path = format!("routes[{i}]");
            if let Some(raw) = self.element::<RawRoute>(&path, Some(r)) {
                routes.push(self.route(&path, i, raw, &upstreams, &listeners));
            }
        }
        // Each durable store has its own writer thread; on one file their group commits
        // would queue behind each other's write lock (see `store`).
        if let (Some(a), Some(x)) = (&audit, &exchange) {
            if !a.db.as_os_str().is_empty() && normal_path(&a.db) == normal_path(&x.db) {
                self.problems.push(
                    "exchange.db",
                    format!(
                        "same file as audit.db ({}): the exchange and the audit log need separate databases",
                        a.db.display()
                    ),
                );
            }
        }
        let mut seen = BTreeMap::new();
        for (i, r) in routes.iter().enumerate() {
            if let Some(j) = seen.insert(r.name.clone(), i) {
                self.problems.push(
                    format!("routes[{i}].name"),
                    format!("duplicate route name {:?} (also routes[{j}])", r.name),
                );
            }
        }
        // Secrets also travel in requests: a forwarded caller token, and the adapter
        // context values (secrets, login sessions) a mapping writes into the payload.
        let carries_secrets = |c: &BTreeMap<String, ContextValue>| {
            c.values()
                .any(|v| matches!(v, ContextValue::Secret(_) | ContextValue::Login(_)))
        };
        for (i, r) in routes.iter().enumerate() {
            let forwards = r.auth.as_ref().is_some_and(|a| a.forward_token);
            let context = r
                .translate
                .as_ref()
                .and_then(|t| t.adapter.as_ref())
                .is_some_and(|a| carries_secrets(&a.context));
            if !(forwards || context) {
                continue;
            }
            if let Some(m) = upstreams.get(&r.upstream).and_then(cleartext) {
                let what = if forwards {
                    "the route forwards the caller's token"
                } else {
                    "the route's adapter context holds secrets or a login session"
                };
                self.problems
                    .push(format!("routes[{i}].upstream"), format!("{what}: {m}"));
            }
        }
        if let Some(x) = &exchange {
            for (dest, a) in &x.delivery_adapters {
                let pool = x.deliveries.get(dest).and_then(|(u, _)| upstreams.get(u));
                if let (true, Some(m)) = (carries_secrets(&a.context), pool.and_then(cleartext)) {
                    self.problems.push(
                        format!("exchange.deliveries.{dest}.upstream"),
                        format!(
                            "the delivery's adapter context holds secrets or a login session: {m}"
                        ),
                    );
                }
            }
        }

        Config {
            server,
            log,
            admin,
            listeners,
            upstreams,
            routes,
            auth,
            lookups,
            audit,
            exchange,
            adapters: self.adapters.clone(),
            source: None,
        }
    }

    fn listener(&mut self, path: &str, l: RawListener) -> ListenerConfig {
        let name = l.name.clone().unwrap_or_else(|| "default".into());
        if !is_name(&name) {
            self.problems.push(
                format!("{path}.name"),
                "names use letters, digits, '-' and '_' only",
            );
        }
        if l.listen.is_none() {
            self.problems.push(
                format!("{path}.listen"),
                "required (e.g. \"127.0.0.1:8080\")",
            );
        }
        let listen = self.addr(
            &format!("{path}.listen"),
            l.listen.as_ref(),
            "127.0.0.1:8080",
        );
        let tls = l.tls.map(|t| self.tls(&format!("{path}.tls"), t));
        let max_header_bytes = l.max_header_bytes.unwrap_or(16 * 1024);
        if max_header_bytes < 1024 {
            self.problems
                .push(format!("{path}.max_header_bytes"), "must be at least 1024");
        }
        let max_uri_bytes = l.max_uri_bytes.unwrap_or(8 * 1024);
        if max_uri_bytes < 64 {
            self.problems
                .push(format!("{path}.max_uri_bytes"), "must be at least 64");
        }
        let max_headers = l.max_headers.unwrap_or(99);
        if max_headers == 0 {
            self.problems
                .push(format!("{path}.max_headers"), "must be at least 1");
        }
        ListenerConfig {
            name,
            listen,
            h2c: l.h2c.unwrap_or(true),
            http2: l.http2.unwrap_or(true),
            max_connections: l.max_connections.unwrap_or(10_000).max(1),
            header_read_timeout: self.duration(
                &format!("{path}.header_read_timeout"),
                l.header_read_timeout.as_ref(),
                Duration::from_secs(10),
            ),
            idle_timeout: self.duration(
                &format!("{path}.idle_timeout"),
                l.idle_timeout.as_ref(),
                Duration::from_secs(60),
            ),
            max_header_bytes,
            max_headers,
            max_uri_bytes,
            max_body_bytes: l.max_body_bytes.unwrap_or(10 * 1024 * 1024),
            h2_max_concurrent_streams: l.h2_max_concurrent_streams.unwrap_or(256).max(1),
            h2_max_header_list_bytes: l
                .h2_max_header_list_bytes
                .unwrap_or(max_header_bytes as u32),
            tls,
        }
    }

    fn tls(&mut self, path: &str, t: RawTls) -> TlsConfig {
        let cert = match &t.cert {
            Some(c) => self.file_path(&format!("{path}.cert"), c),
            None => {
                self.problems.push(format!("{path}.cert"), "required");
                PathBuf::new()
            }
        };
        let key = match &t.key {
            Some(c) => self.file_path(&format!("{path}.key"), c),
            None => {
                self.problems.push(format!("{path}.key"), "required");
                PathBuf::new()
            }
        };
        let client_ca = t
            .client_ca
            .as_ref()
            .map(|c| self.file_path(&format!("{path}.client_ca"), c));
        let client_auth = match (t.client_auth.as_deref(), &client_ca) {
            (None, Some(_)) | (Some("required"), Some(_)) => ClientAuth::Required,
            (Some("optional"), Some(_)) => ClientAuth::Optional,
            (None, None) => ClientAuth::None,
            (Some("required" | "optional"), None) => {
                self.problems.push(
                    format!("{path}.client_auth"),
                    "needs client_ca (the CA bundle that signs client certificates)",
                );
                ClientAuth::None
            }
            (Some(o), _) => {
                self.problems.push(
                    format!("{path}.client_auth"),
                    format!("unknown value {o:?} (use required or optional)"),
                );
                ClientAuth::None
            }
        };
        TlsConfig {
            cert,
            key,
            client_ca,
            client_auth,
            reload_interval: self.duration(
                &format!("{path}.reload_interval"),
                t.reload_interval.as_ref(),
                Duration::from_secs(30),
            ),
        }
    }

    fn upstream(&mut self, path: &str, name: &str, u: RawUpstream) -> UpstreamConfig {
        let mut endpoints = Vec::new();
        match &u.endpoints {
            None => self.problems.push(
                format!("{path}.endpoints"),
                "required: at least one endpoint URL",
            ),
            Some(list) if list.is_empty() => self.problems.push(
                format!("{path}.endpoints"),
                "at least one endpoint URL is needed",
            ),
            Some(list) => {
                for (i, e) in list.iter().enumerate() {
                    match parse_endpoint(e) {
                        Ok(ep) => endpoints.push(ep),
                        Err(m) => self.problems.push(format!("{path}.endpoints[{i}]"), m),
                    }
                }
            }
        }
        let balance = match u.balance.as_deref() {
            None | Some("round_robin") => Balance::RoundRobin,
            Some("least_outstanding") => Balance::LeastOutstanding,
            Some(o) => {
                self.problems.push(
                    format!("{path}.balance"),
                    format!("unknown policy {o:?} (use round_robin or least_outstanding)"),
                );
                Balance::RoundRobin
            }
        };
        let health = u.health.map(|h| {
            let hp = format!("{path}.health");
            let p = h.path.unwrap_or_else(|| "/health".into());
            if !p.starts_with('/') {
                self.problems
                    .push(format!("{hp}.path"), "must start with '/'");
            }
            HealthConfig {
                path: p,
                interval: self.duration(
                    &format!("{hp}.interval"),
                    h.interval.as_ref(),
                    Duration::from_secs(5),
                ),
                timeout: self.duration(
                    &format!("{hp}.timeout"),
                    h.timeout.as_ref(),
                    Duration::from_secs(2),
                ),
                healthy_threshold: h.healthy_threshold.unwrap_or(1).max(1),
                unhealthy_threshold: h.unhealthy_threshold.unwrap_or(2).max(1),
            }
        });
        let passive = match u.passive {
            Some(p) => PassiveConfig {
                consecutive_failures: p.consecutive_failures.unwrap_or(5),
                ejection_time: self.duration(
                    &format!("{path}.passive.ejection_time"),
                    p.ejection_time.as_ref(),
                    Duration::from_secs(30),
                ),
            },
            None => PassiveConfig {
                consecutive_failures: 5,
                ejection_time: Duration::from_secs(30),
            },
        };
        let retry = match u.retry {
            Some(r) => {
                let attempts = r.attempts.unwrap_or(2);
                if attempts == 0 || attempts > 10 {
                    self.problems.push(
                        format!("{path}.retry.attempts"),
                        "must be between 1 (no retry) and 10",
                    );
                }
                let per_try_timeout = r.per_try_timeout.as_ref().map(|d| {
                    self.duration(
                        &format!("{path}.retry.per_try_timeout"),
                        Some(d),
                        Duration::from_secs(30),
                    )
                });
                RetryConfig {
                    attempts: attempts.clamp(1, 10),
                    budget_percent: r.budget_percent.unwrap_or(20),
                    min_per_second: r.min_per_second.unwrap_or(10),
                    per_try_timeout,
                }
            }
            None => RetryConfig {
                attempts: 2,
                budget_percent: 20,
                min_per_second: 10,
                per_try_timeout: None,
            },
        };
        let circuit_breaker = match u.circuit_breaker {
            Some(b) => BreakerConfig {
                consecutive_failures: b.consecutive_failures.unwrap_or(20),
                open_for: self.duration(
                    &format!("{path}.circuit_breaker.open_for"),
                    b.open_for.as_ref(),
                    Duration::from_secs(10),
                ),
            },
            None => BreakerConfig {
                consecutive_failures: 20,
                open_for: Duration::from_secs(10),
            },
        };
        let tls = u.tls.map(|t| {
            let tp = format!("{path}.tls");
            if t.client_cert.is_some() != t.client_key.is_some() {
                self.problems.push(
                    tp.clone(),
                    "client_cert and client_key must be given together",
                );
            }
            UpstreamTlsConfig {
                ca: t
                    .ca
                    .as_ref()
                    .map(|c| self.file_path(&format!("{tp}.ca"), c)),
                client_cert: t
                    .client_cert
                    .as_ref()
                    .map(|c| self.file_path(&format!("{tp}.client_cert"), c)),
                client_key: t
                    .client_key
                    .as_ref()
                    .map(|c| self.file_path(&format!("{tp}.client_key"), c)),
                server_name: t.server_name,
            }
        });
        let credentials = u
            .credentials
            .and_then(|c| self.credentials(&format!("{path}.credentials"), c));
        UpstreamConfig {
            credentials,
            name: name.to_string(),
            endpoints,
            balance,
            connect_timeout: self.duration(
                &format!("{path}.connect_timeout"),
                u.connect_timeout.as_ref(),
                Duration::from_secs(2),
            ),
            request_timeout: self.duration(
                &format!("{path}.request_timeout"),
                u.request_timeout.as_ref(),
                Duration::from_secs(30),
            ),
            idle_timeout: self.duration(
                &format!("{path}.idle_timeout"),
                u.idle_timeout.as_ref(),
                Duration::from_secs(60),
            ),
            max_idle_per_endpoint: u.max_idle_per_endpoint.unwrap_or(256),
            http2: u.http2.unwrap_or(false),
            health,
            passive,
            retry,
            circuit_breaker,
            tls,
            plaintext_credentials: u.plaintext_credentials.unwrap_or(false),
        }
    }

    /// Context values for adapter operations: secrets resolved, and every name the
    /// operations' mappings read must be supplied.
    fn adapter_context(
        &mut self,
        at: &str,
        raw: Option<BTreeMap<String, RawContextValue>>,
        ops: &[&crate::adapter::Operation],
        system: &str,
    ) -> BTreeMap<String, ContextValue> {
        let mut context = BTreeMap::new();
        for (k, v) in raw.unwrap_or_default() {
            let key = format!("{at}.context.{k}");
            let v = match v {
                RawContextValue::Plain(s) => ContextValue::Plain(s),
                RawContextValue::Secret(s) => ContextValue::Secret(self.secret(&key, &s)),
                RawContextValue::Login { login } => {
                    let mut headers = Vec::new();
                    for (h, v) in login.headers.iter().flatten() {
                        match (
                            http::HeaderName::from_bytes(h.as_bytes()),
                            http::HeaderValue::from_str(v),
                        ) {
                            (Ok(h), Ok(v)) => headers.push((h, v)),
                            _ => self
                                .problems
                                .push(format!("{key}.login.headers.{h}"), "not a valid header"),
                        }
                    }
                    if !login.path.starts_with('/') {
                        self.problems
                            .push(format!("{key}.login.path"), "must start with '/'");
                    }
                    let ttl = self.duration(
                        &format!("{key}.login.ttl"),
                        login.ttl.as_ref(),
                        Duration::from_secs(1800),
                    );
                    self.logins
                        .push((format!("{key}.login.upstream"), login.upstream.clone()));
                    ContextValue::Login(std::sync::Arc::new(
                        crate::auth::credentials::SessionLogin::new(
                            login.upstream,
                            login.path,
                            login.username,
                            self.secret(&format!("{key}.login.password"), &login.password),
                            login.field.unwrap_or_else(|| "session".into()),
                            ttl,
                            headers,
                        ),
                    ))
                }
            };
            context.insert(k, v);
        }
        for need in ops.iter().flat_map(|o| o.context.iter()) {
            if !context.contains_key(need) {
                self.problems.push(
                    format!("{at}.context.{need}"),
                    format!("required by the {system} adapter's mappings"),
                );
            }
        }
        context
    }

    fn adapter_op(
        &mut self,
        key: &str,
        system: &str,
        operation: &str,
    ) -> Option<std::sync::Arc<crate::adapter::Operation>> {
        let op = self.adapters.operation(system, operation);
        if op.is_none() {
            let msg = if self.adapters.systems.contains_key(system) {
                format!("adapter {system:?} has no operation {operation:?}")
            } else {
                format!("no loaded adapter {system:?} (see [adapters] dir)")
            };
            self.problems.push(key, msg);
        }
        op
    }

    fn intake_format(&mut self, name: &str, v: &str) -> Option<IntakeFormat> {
        let key = format!("exchange.formats.{name}");
        let Some((system, operation)) = v.split_once('/') else {
            self.problems
                .push(key, "use \"system/operation\" (an adapter operation)");
            return None;
        };
        let op = self.adapter_op(&key, system, operation)?;
        match &op.request {
            None => {
                self.problems.push(key, format!("{v} has no request step"));
                return None;
            }
            Some(step) if step.output != crate::adapter::Format::Json => {
                self.problems.push(
                    key,
                    format!("{v} must produce JSON: {{\"dossiers\": [...]}}"),
                );
                return None;
            }
            Some(_) => {}
        }
        if !op.context.is_empty() {
            self.problems.push(
                key,
                format!(
                    "{v} reads context values ({}) the intake does not supply",
                    op.context.join(", ")
                ),
            );
        }
        Some(IntakeFormat {
            version: self.adapters.systems[system].version.clone(),
            digest: self.adapters.systems[system].digest.clone(),
            system: system.to_string(),
            operation: operation.to_string(),
            op,
        })
    }

    fn delivery_adapter(&mut self, name: &str, d: &RawDelivery) -> Option<DeliveryAdapter> {
        let at = format!("exchange.deliveries.{name}");
        let Some(system) = d.adapter.clone() else {
            if d.dossier_operation.is_some() || d.event_operation.is_some() || d.context.is_some() {
                self.problems
                    .push(at, "operations and context need an adapter");
            }
            return None;
        };
        let Some(dossier_operation) = d.dossier_operation.clone() else {
            self.problems.push(
                format!("{at}.dossier_operation"),
                "required with adapter: the operation that renders a dossier",
            );
            return None;
        };
        // A delivery renders with the operation's request step.
        let op = |me: &mut Self, key: &str, operation: &str| {
            let o = me.adapter_op(&format!("{at}.{key}"), &system, operation)?;
            if o.request.is_none() {
                me.problems.push(
                    format!("{at}.{key}"),
                    format!("{system}/{operation} has no request step"),
                );
                return None;
            }
            Some(o)
        };
        let dossier = op(self, "dossier_operation", &dossier_operation);
        let event = match &d.event_operation {
            Some(o) => op(self, "event_operation", o),
            None => None,
        };
        for (i, k) in d.events.iter().flatten().enumerate() {
            if !["status", "step", "evaluation"].contains(&k.as_str()) {
                self.problems.push(
                    format!("{at}.events[{i}]"),
                    format!("unknown event kind {k:?} (status, step, evaluation)"),
                );
            }
        }
        let dossier = dossier?;
        let ops: Vec<&crate::adapter::Operation> =
            std::iter::once(&*dossier).chain(event.as_deref()).collect();
        let context = self.adapter_context(&at, d.context.clone(), &ops, &system);
        Some(DeliveryAdapter {
            version: self.adapters.systems[&system].version.clone(),
            digest: self.adapters.systems[&system].digest.clone(),
            system,
            dossier_operation,
            dossier,
            event_operation: d.event_operation.clone(),
            event,
            events: d.events.clone(),
            context,
        })
    }

    /// `translate.adapter` + `translate.operation`: the operation must exist and the route
    /// must supply every context value its mappings read.
    fn adapter_route(&mut self, path: &str, t: &RawTranslate) -> Option<AdapterRoute> {
        let at = format!("{path}.translate");
        let (system, operation) = match (&t.adapter, &t.operation) {
            (None, None) => {
                if t.context.is_some() {
                    self.problems.push(
                        format!("{at}.context"),
                        "only used with adapter and operation",
                    );
                }
                return None;
            }
            (Some(s), Some(o)) => (s.clone(), o.clone()),
            _ => {
                self.problems.push(at, "adapter and operation go together");
                return None;
            }
        };
        if t.request.is_some() || t.response.is_some() {
            self.problems.push(
                at.clone(),
                "use either adapter/operation or request/response, not both",
            );
        }
        let op = self.adapter_op(&format!("{at}.operation"), &system, &operation)?;
        let context = self.adapter_context(&at, t.context.clone(), &[&op], &system);
        let version = self.adapters.systems[&system].version.clone();
        let digest = self.adapters.systems[&system].digest.clone();
        Some(AdapterRoute {
            system,
            version,
            digest,
            operation,
            op,
            context,
        })
    }

    fn route(
        &mut self,
        path: &str,
        index: usize,
        r: RawRoute,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        listeners: &[ListenerConfig],
    ) -> RouteConfig {
        let name = r.name.clone().unwrap_or_else(|| format!("route{index}"));
        let upgrade_protocols = self.upgrade_protocols(path, &r);
        if !is_name(&name) {
            self.problems.push(
                format!("{path}.name"),
                "names use letters, digits, '-' and '_' only",
            );
        }
        let upstream = match r.upstream {
            None => {
                self.problems.push(format!("{path}.upstream"), "required");
                String::new()
            }
            Some(u) => {
                if !upstreams.contains_key(&u) {
                    let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                    self.problems.push(
                        format!("{path}.upstream"),
                        format!("unknown upstream {u:?} (known: {})", known.join(", ")),
                    );
                }
                u
            }
        };
        if let Some(ls) = &r.listeners {
            for (i, l) in ls.iter().enumerate() {
                if !listeners.iter().any(|x| &x.name == l) {
                    let known: Vec<&str> = listeners.iter().map(|x| x.name.as_str()).collect();
                    self.problems.push(
                        format!("{path}.listeners[{i}]"),
                        format!("unknown listener {l:?} (known: {})", known.join(", ")),
                    );
                }
            }
        }
        let prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        let path_prefix = match crate::pipeline::normalize::normalize_path(&prefix) {
            Ok(p) if p == prefix => {
                // A trailing slash would make the prefix match only below it; store
                // without it so `/api/` and `/api` mean the same segment-aware prefix.
                if p.len() > 1 {
                    p.trim_end_matches('/').to_string()
                } else {
                    p
                }
            }
            Ok(p) => {
                self.problems.push(
                    format!("{path}.path_prefix"),
                    format!("{prefix:?} is not in normal form (write {p:?})"),
                );
                p
            }
            Err(e) => {
                self.problems
                    .push(format!("{path}.path_prefix"), format!("{prefix:?}: {e}"));
                "/".into()
            }
        };
        let methods = r.methods.map(|ms| {
            ms.into_iter()
                .enumerate()
                .map(|(i, m)| {
                    let up = m.to_ascii_uppercase();
                    if !METHODS.contains(&up.as_str()) {
                        self.problems.push(
                            format!("{path}.methods[{i}]"),
                            format!("unknown or unsupported method {m:?}"),
                        );
                    }
                    up
                })
                .collect::<Vec<_>>()
        });
        let host = r.host.as_deref().map(|h| {
            let h = h.to_ascii_lowercase();
            if let Some(s) = h.strip_prefix("*.") {
                if s.is_empty() || !is_hostname(s) {
                    self.problems.push(
                        format!("{path}.host"),
                        format!("{h:?} is not a host pattern"),
                    );
                }
                HostMatch::Suffix(format!(".{s}"))
            } else {
                if !is_hostname(&h) {
                    self.problems
                        .push(format!("{path}.host"), format!("{h:?} is not a host name"));
                }
                HostMatch::Exact(h)
            }
        });
        let strip_prefix = r.strip_prefix.unwrap_or(false);
        if strip_prefix && r.rewrite_prefix.is_some() {
            self.problems.push(
                format!("{path}.rewrite_prefix"),
                "use either strip_prefix or rewrite_prefix, not both",
            );
        }
        if let Some(rp) = &r.rewrite_prefix {
            if !rp.starts_with('/') {
                self.problems
                    .push(format!("{path}.rewrite_prefix"), "must start with '/'");
            }
        }
        let host_header = match r.host_header.as_deref() {
            None | Some("preserve") => HostHeader::Preserve,
            Some("upstream") => HostHeader::Upstream,
            Some(h) if is_hostname(h.split(':').next().unwrap_or("")) => {
                HostHeader::Literal(h.to_string())
            }
            Some(h) => {
                self.problems.push(
                    format!("{path}.host_header"),
                    format!("{h:?} is neither preserve, upstream nor a host name"),
                );
                HostHeader::Preserve
            }
        };
        let timeout = r
            .timeout
            .as_ref()
            .map(|t| self.duration(&format!("{path}.timeout"), Some(t), Duration::from_secs(30)));
        let auth = r.auth.map(|a| self.route_auth(path, a));
        let cache = r.cache.map(|c| RouteCacheCfg {
            public: c.public.unwrap_or(false),
            max_entry_bytes: c.max_entry_bytes.unwrap_or(1024 * 1024),
            capacity_bytes: c.capacity_bytes.unwrap_or(32 * 1024 * 1024),
            default_ttl: c.default_ttl.as_ref().map(|d| {
                self.duration(
                    &format!("{path}.cache.default_ttl"),
                    Some(d),
                    Duration::from_secs(60),
                )
            }),
            max_ttl: self.duration(
                &format!("{path}.cache.max_ttl"),
                c.max_ttl.as_ref(),
                Duration::from_secs(300),
            ),
        });
        let audit = match r.audit.as_deref() {
            None | Some("fail_open") => AuditPolicy::FailOpen,
            Some("fail_closed") => AuditPolicy::FailClosed,
            Some(o) => {
                self.problems.push(
                    format!("{path}.audit"),
                    format!("unknown policy {o:?} (use fail_open or fail_closed)"),
                );
                AuditPolicy::FailOpen
            }
        };
        let translate = r.translate.map(|t| {
            let op = |me: &mut Self,
                      key: &str,
                      v: Option<&String>,
                      allowed: &[TranslateOp]|
             -> Option<TranslateOp> {
                let o = match v.map(String::as_str) {
                    None => return None,
                    Some("json_to_xml") => TranslateOp::JsonToXml,
                    Some("xml_to_json") => TranslateOp::XmlToJson,
                    Some("soap_wrap") => TranslateOp::SoapWrap,
                    Some("soap_unwrap") => TranslateOp::SoapUnwrap,
                    Some(o) => {
                        me.problems.push(
                            format!("{path}.translate.{key}"),
                            format!("unknown translation {o:?}"),
                        );
                        return None;
                    }
                };
                if !allowed.contains(&o) {
                    me.problems.push(
                        format!("{path}.translate.{key}"),
                        format!("{o:?} cannot be used on the {key}"),
                    );
                }
                Some(o)
            };
            let request = op(
                self,
                "request",
                t.request.as_ref(),
                &[
                    TranslateOp::JsonToXml,
                    TranslateOp::XmlToJson,
                    TranslateOp::SoapWrap,
                ],
            );
            let response = op(
                self,
                "response",
                t.response.as_ref(),
                &[
                    TranslateOp::JsonToXml,
                    TranslateOp::XmlToJson,
                    TranslateOp::SoapUnwrap,
                ],
            );
            let adapter = self.adapter_route(path, &t);
            let soap_12 = match t.soap_version.as_deref() {
                None | Some("1.1") => false,
                Some("1.2") => true,
                Some(o) => {
                    self.problems.push(
                        format!("{path}.translate.soap_version"),
                        format!("{o:?} (use 1.1 or 1.2)"),
                    );
                    false
                }
            };
            TranslateCfg {
                request,
                response,
                soap_12,
                soap_action: t.soap_action,
                root: t.root,
                arrays: t.arrays.unwrap_or_default(),
                namespaces: t.namespaces.unwrap_or_default(),
                max_bytes: t.max_bytes.unwrap_or(16 << 20),
                adapter,
            }
        });
        RouteConfig {
            translate,
            audit,
            audit_bodies: r.audit_bodies.unwrap_or(false),
            auth,
            cache,
            name,
            listeners: r.listeners,
            host,
            path_prefix,
            methods,
            upstream,
            strip_prefix,
            rewrite_prefix: r.rewrite_prefix,
            host_header,
            timeout,
            max_body_bytes: r.max_body_bytes,
            retry_non_idempotent: r.retry_non_idempotent.unwrap_or(false),
            allow_upgrade: r.allow_upgrade.unwrap_or(false),
            upgrade_protocols,
            allow_absolute_form: r.allow_absolute_form.unwrap_or(false),
        }
    }
}

fn parse_endpoint(s: &str) -> Result<EndpointAddr, String> {
    let (https, rest) = if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("{s:?} must start with http:// or https://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{s:?} must be scheme://host[:port] with no path, query or credentials"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h.to_string(), p),
            Err(_) => return Err(format!("{s:?} has an invalid port")),
        },
        _ => (rest.to_string(), if https { 443 } else { 80 }),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_err() && !is_hostname(bare) {
        return Err(format!("{s:?} has an invalid host"));
    }
    Ok(EndpointAddr {
        https,
        authority: format!("{host}:{port}"),
        host: bare.to_string(),
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// RFC 9110 `tchar`.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A path with `.` and `..` components resolved lexically (files need not exist yet).
fn normal_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_and_audit_need_separate_databases() {
        let text = r#"
[audit]
db = "data/./gw.db"
origin = "t/audit"
key = "k.pem"
[exchange]
db = "data/x/../gw.db"
"#;
        let err = Config::parse(text, Path::new("/tmp")).unwrap_err();
        let msg = err
            .0
            .iter()
            .find(|p| p.path == "exchange.db")
            .map(|p| p.message.clone());
        assert!(
            msg.as_deref()
                .is_some_and(|m| m.contains("same file as audit.db")),
            "{:?}",
            err.0
        );
    }

    #[test]
    fn secrets_do_not_travel_in_the_clear_past_this_host() {
        std::env::set_var("LIENTHONG_TEST_CFG_CLEAR_SECRET", "x");
        let cfg = |token_ep: &str, api_ep: &str, extra: &str| {
            format!(
                "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n\
                 [upstreams.t]\nendpoints = [\"{token_ep}\"]\n{extra}\n\
                 [upstreams.u]\nendpoints = [\"{api_ep}\"]\n\
                 [upstreams.u.credentials]\ntype = \"oauth2\"\ntoken_upstream = \"t\"\n\
                 token_path = \"/token\"\nclient_id = \"gw\"\n\
                 client_secret = {{ env = \"LIENTHONG_TEST_CFG_CLEAR_SECRET\" }}\n"
            )
        };
        let problems = |text: String| -> Vec<String> {
            match Config::parse(&text, Path::new("/tmp")) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(|p| p.path.clone()).collect(),
            }
        };
        // Loopback and https are fine.
        assert!(problems(cfg("http://127.0.0.1:9", "http://[::1]:9", "")).is_empty());
        assert!(problems(cfg("https://idp.tinh.gov.vn", "https://api.gov.vn", "")).is_empty());
        // Plain http elsewhere: the API's credentials and the token request are named.
        assert_eq!(
            problems(cfg("http://10.0.0.5:80", "http://10.0.0.6:80", "")),
            [
                "upstreams.u.credentials",
                "upstreams.u.credentials.token_upstream"
            ]
        );
        // Unless the receiving pool says its network is trusted.
        assert_eq!(
            problems(cfg(
                "http://10.0.0.5:80",
                "https://api.gov.vn",
                "plaintext_credentials = true"
            )),
            Vec::<String>::new()
        );
        // A route that forwards the caller's token sends a secret too.
        let route = |ep: &str| {
            format!(
                "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n\
                 [[auth.issuers]]\nname = \"i\"\niss = \"https://idp\"\naudiences = [\"a\"]\n\
                 algorithms = [\"HS256\"]\nsecret = {{ env = \"LIENTHONG_TEST_CFG_HS_SECRET\" }}\n\
                 [upstreams.u]\nendpoints = [\"{ep}\"]\n\
                 [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n\
                 auth = {{ forward_token = true }}\n"
            )
        };
        std::env::set_var(
            "LIENTHONG_TEST_CFG_HS_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        assert_eq!(
            problems(route("http://10.0.0.6:80")),
            ["routes[0].upstream"]
        );
        assert!(problems(route("https://api.gov.vn")).is_empty());
    }

    #[test]
    fn a_secret_written_in_place_is_refused_without_being_echoed() {
        for value in ["\"s3cr3t-in-place\"", "735129"] {
            let text = format!(
                "[upstreams.t]\nendpoints = [\"http://127.0.0.1:9\"]\n\
                 [upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n\
                 [upstreams.u.credentials]\ntype = \"oauth2\"\ntoken_upstream = \"t\"\n\
                 token_path = \"/token\"\nclient_id = \"gw\"\nclient_secret = {value}\n"
            );
            let err = Config::parse(&text, Path::new("/tmp")).unwrap_err();
            let all = format!("{:?}", err.0);
            assert!(
                all.contains("a secret is not written in the config"),
                "{all}"
            );
            assert!(!all.contains("s3cr3t") && !all.contains("735129"), "{all}");
        }
    }

    /// What `serve` would refuse at start is a `check` problem: two sockets on one
    /// address, an origin the signed checkpoints cannot name, a key that is not Ed25519.
    #[test]
    fn start_time_refusals_are_config_problems() {
        let dir = std::env::temp_dir().join(format!("lienthong-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("not-ed25519.pem"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let text = "[admin]\nlisten = \"127.0.0.1:9191\"\n\
                    [[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:9191\"\n\
                    [[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:9192\"\n\
                    [[listeners]]\nname = \"c\"\nlisten = \"127.0.0.1:9192\"\n\
                    [audit]\ndb = \"audit.db\"\norigin = \"So TTTT audit\"\nkey = \"not-ed25519.pem\"\n";
        let err = Config::parse(text, &dir).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "listeners[0].listen",
            "listeners[2].listen",
            "audit.origin",
            "audit.key",
        ] {
            assert!(paths.contains(&want), "{want}: {:?}", err.0);
        }
        assert!(!paths.contains(&"listeners[1].listen"), "{:?}", err.0);
        // The shipped development key and default origin pass.
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/dev/audit-signing.key.pem"
        );
        let ok = format!(
            "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
                          [[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\n\
                          [audit]\ndb = \"audit.db\"\nkey = \"{key}\"\n"
        );
        Config::parse(&ok, &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_anonymous_route_cannot_forward_tokens() {
        let text = "[upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n\
                    [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n\
                    auth = { anonymous = true, forward_token = true }\n";
        let err = Config::parse(text, Path::new("/tmp")).unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|p| p.path == "routes[0].auth.forward_token"),
            "{:?}",
            err.0
        );
    }

    #[test]
    fn upgrade_protocols_are_tokens_and_never_h2c() {
        let route = |extra: &str| {
            format!(
                "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n\
                 [upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n\
                 [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n\
                 auth = {{ anonymous = true }}\n{extra}\n"
            )
        };
        let ok = Config::parse(
            &route("allow_upgrade = true\nupgrade_protocols = [\"WebSocket\", \"x-feed\"]"),
            Path::new("/tmp"),
        )
        .unwrap();
        assert_eq!(ok.routes[0].upgrade_protocols, ["websocket", "x-feed"]);
        let default = Config::parse(&route("allow_upgrade = true"), Path::new("/tmp")).unwrap();
        assert_eq!(default.routes[0].upgrade_protocols, ["websocket"]);
        let err = Config::parse(
            &route("allow_upgrade = true\nupgrade_protocols = [\"h2c\", \"a b\", \"ws/13\"]"),
            Path::new("/tmp"),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].upgrade_protocols[0]",
                "routes[0].upgrade_protocols[1]",
                "routes[0].upgrade_protocols[2]"
            ]
        );
        let err = Config::parse(
            &route("upgrade_protocols = [\"websocket\"]"),
            Path::new("/tmp"),
        )
        .unwrap_err();
        assert_eq!(err.0[0].path, "routes[0].upgrade_protocols");
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_duration("876000h").unwrap(), MAX_DURATION);
        assert!(parse_duration("876001h").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
    }

    #[test]
    fn endpoints_are_strict() {
        let e = parse_endpoint("http://127.0.0.1:8080").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(
            parse_endpoint("https://x.gov.vn").unwrap().authority,
            "x.gov.vn:443"
        );
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_endpoint("http://x/path").is_err());
        assert!(parse_endpoint("http://user@x").is_err());
        assert!(parse_endpoint("http://x:99999").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
[server]
drain_timeout = "30"
[[listeners]]
name = "public"
listen = "not-an-address"
[upstreams.demo]
endpoints = ["ftp://x"]
balance = "random"
[[routes]]
path_prefix = "/a/../b"
upstream = "nope"
methods = ["GETT"]
[[routes]]
pth = "/typo"
"#;
        let err = Config::parse(text, Path::new(".")).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "server.drain_timeout",
            "listeners[0].listen",
            "upstreams.demo.endpoints[0]",
            "upstreams.demo.balance",
            "routes[0].path_prefix",
            "routes[0].upstream",
            "routes[0].methods[0]",
            "routes[1]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {err}");
        }
    }
}
