//! The only place that maps errors to status codes and builds error responses.
//! Every error response is JSON `{"code","message","request_id"}` with the headers
//! the RFCs ask for (`Allow` on 405, `WWW-Authenticate` on 401, `Retry-After` on 503).

use super::{headers, RequestCtx};
use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::runtime::Runtime;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NoRoute | ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
        ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
        ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Builds the JSON error response for `e`.
pub fn error_response(e: &GatewayError, request_id: &str) -> Response<Body> {
    let status = status_of(e.kind);
    let body = serde_json::json!({
        "code": e.code,
        "message": e.message,
        "request_id": request_id,
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut rsp = Response::new(Body::full(bytes));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(headers::X_REQUEST_ID.clone(), v);
    }
    if let Some(allow) = &e.allow {
        if let Ok(v) = HeaderValue::from_str(allow) {
            h.insert(header::ALLOW, v);
        }
    }
    if e.kind == ErrorKind::Unauthorized {
        // RFC 6750 §3.1: a request without a bearer token is told only the scheme.
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(if e.token_missing {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            }),
        );
    }
    if let Some(s) = e.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if matches!(e.kind, ErrorKind::PayloadTooLarge | ErrorKind::BadRequest) {
        // The rest of the request may still be on the wire; don't reuse the connection.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    rsp
}

/// Turns the pipeline's result into the response, logging internals of errors.
pub fn finish(
    _rt: &Runtime,
    ctx: &mut RequestCtx,
    result: Result<Response<Body>, GatewayError>,
) -> Response<Body> {
    match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(d) = &e.detail {
                tracing::debug!(request_id = ctx.request_id_str(), code = e.code, detail = %d, "request failed");
            }
            if e.kind == ErrorKind::Internal {
                tracing::error!(request_id = ctx.request_id_str(), detail = ?e.detail, "internal error");
            }
            let rsp = error_response(&e, ctx.request_id_str());
            ctx.error = Some((e.code, e.detail));
            rsp
        }
    }
}

/// Prepares an upstream response for the client.
pub fn upstream(
    rt: &Runtime,
    ctx: &RequestCtx,
    mut rsp: Response<Body>,
    upgrade: bool,
) -> Response<Body> {
    let switching = upgrade && rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let version = rsp.version();
    let keep_length = ctx.method == http::Method::HEAD || rsp.status() == StatusCode::NOT_MODIFIED;
    let h = rsp.headers_mut();
    let present = headers::Present::survey(h);
    if present.hop_by_hop {
        headers::strip_hop_by_hop(h, switching);
    }
    // Keep the upstream's length only where there is no body to derive it from
    // (HEAD, 304); otherwise the server derives it from the body it streams.
    if present.content_length && !keep_length {
        h.remove(header::CONTENT_LENGTH);
    }
    headers::append_via(h, version, &rt.config.server.via_name, present.via);
    h.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    rsp
}
