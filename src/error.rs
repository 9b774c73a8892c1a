//! The one gateway error type. Modules report what happened in their own terms; this
//! type says what kind of failure it is and whose side it is on. Only
//! `pipeline::respond` turns a kind into a status code and a client-facing body.
//!
//! `message` is written for the client and must never carry internals (addresses,
//! file paths, upstream error text, secrets). `detail` is for the log only.

use std::fmt;

/// What went wrong, and (in the doc of each variant) who is probably at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client sent something malformed (bad path encoding, bad header). Client's fault.
    BadRequest,
    /// No route matches host and path. Client's (or the route table's) fault.
    NoRoute,
    /// The addressed resource (e.g. a lookup entry) does not exist. Client's fault.
    NotFound,
    /// A route matches the path but not the method. Client's fault.
    MethodNotAllowed,
    /// Request body over the route's cap. Client's fault.
    PayloadTooLarge,
    /// Request target longer than the listener allows. Client's fault.
    UriTooLong,
    /// Request head too large or with too many fields. Client's fault.
    HeadersTooLarge,
    /// The body's media type cannot be handled by this route. Client's fault.
    UnsupportedMediaType,
    /// Well-formed but semantically invalid content. Client's fault.
    Unprocessable,
    /// Missing or invalid credentials. Client's fault.
    Unauthorized,
    /// Valid credentials that do not grant this route. Client's (or policy's) fault.
    Forbidden,
    /// The request conflicts with stored state. Client's fault.
    Conflict,
    /// The request body did not arrive in time. Client's fault.
    RequestTimeout,
    /// The upstream could not be reached or broke the exchange. Upstream's fault.
    BadGateway,
    /// The upstream did not answer in time. Upstream's fault.
    GatewayTimeout,
    /// No endpoint may be tried now (all ejected, breaker open, spool full). Upstream's or capacity's fault.
    Unavailable,
    /// A bug or an environment failure inside lienthong. Our fault.
    Internal,
}

/// A failure on the request path.
#[derive(Debug)]
pub struct GatewayError {
    pub kind: ErrorKind,
    /// Stable machine-readable code for clients, e.g. `no_route`.
    pub code: &'static str,
    /// Client-safe message.
    pub message: String,
    /// Log-only detail (cause chain); never sent to the client.
    pub detail: Option<String>,
    /// For 405: the methods the matched path allows.
    pub allow: Option<String>,
    /// For 503: seconds after which a retry may succeed.
    pub retry_after: Option<u64>,
    /// For 401: the request presented no bearer token (none, or another scheme), so the
    /// challenge carries no error code (RFC 6750 §3.1).
    pub token_missing: bool,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            code,
            message: message.into(),
            detail: None,
            allow: None,
            retry_after: None,
            token_missing: false,
        }
    }

    pub fn with_detail(mut self, detail: impl fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    /// 405: the resource exists but not for this method; `allow` lists the methods that are.
    pub fn method_not_allowed(
        code: &'static str,
        message: impl Into<String>,
        allow: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(ErrorKind::MethodNotAllowed, code, message);
        e.allow = Some(allow.into());
        e
    }

    /// 503: nothing can serve this now; a retry after `retry_after` seconds may succeed.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(ErrorKind::Unavailable, code, message);
        e.retry_after = Some(retry_after);
        e
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Internal, "internal", "internal error").with_detail(detail)
    }

    /// Whether another attempt (at another endpoint) might succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout | ErrorKind::Unavailable
        )
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for GatewayError {}
