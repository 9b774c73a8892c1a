//! Proxy header semantics (RFC 9110 §7.6, RFC 9112, RFC 7239).
//!
//! Hop-by-hop fields are removed in both directions, including every field named in
//! `Connection`. Forwarding fields are set by the gateway from what it saw on the
//! socket; client-sent copies are never trusted or passed on.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// base64url SHA-256 of the verified client certificate (RFC 8705 `x5t#S256` form).
pub static X_CLIENT_CERT_S256: HeaderName = HeaderName::from_static("x-lienthong-client-cert-s256");

/// Passes the verified caller upstream in gateway-owned headers (`caller_fields`).
pub fn set_caller(h: &mut HeaderMap, c: &crate::auth::caller::Caller) {
    caller_fields(c, |name, v| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(name), v);
        }
    });
}

/// The gateway-owned fields that tell the upstream who the verified caller is, each
/// given to `put` with its value; one that cannot be a field value (a control
/// character other than tab) is left out rather than altered — the rule of
/// `HeaderValue::from_str`, so UTF-8 text such as a Vietnamese name goes as its bytes.
/// Both request paths write them from here.
pub fn caller_fields(c: &crate::auth::caller::Caller, mut put: impl FnMut(&'static str, &str)) {
    let mut field = |name: &'static str, v: &str| {
        if v.bytes().all(|b| b == b'\t' || (b >= b' ' && b != 0x7f)) {
            put(name, v);
        }
    };
    field("x-lienthong-caller-issuer", &c.issuer);
    field("x-lienthong-caller-subject", &c.subject);
    if let Some(a) = &c.agency {
        field("x-lienthong-caller-agency", a.as_str());
    }
    if !c.roles.is_empty() {
        field("x-lienthong-caller-roles", &c.roles.join(","));
    }
    if !c.scopes.is_empty() {
        field("x-lienthong-caller-scopes", &c.scopes.join(" "));
    }
}

/// The gateway owns every `x-lienthong-*` field: client-sent copies are dropped so
/// an upstream can trust the ones it receives.
pub fn strip_gateway_owned(h: &mut HeaderMap) {
    let owned: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-lienthong-"))
        .cloned()
        .collect();
    for k in owned {
        h.remove(k);
    }
}

/// RFC 9110 `tchar`: the bytes of a token.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The protocol names (lower-cased, without `/version`) that the `Upgrade` fields
/// offer, in order; `None` when a field is not a list of `protocol[/version]` tokens.
pub fn upgrade_offers(h: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in h.get_all(header::UPGRADE) {
        for item in v.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() {
                continue;
            }
            let (name, version) = match item.iter().position(|&b| b == b'/') {
                Some(i) => (&item[..i], Some(&item[i + 1..])),
                None => (item, None),
            };
            let token = |t: &[u8]| !t.is_empty() && t.iter().all(|&b| is_tchar(b));
            if !token(name) || version.is_some_and(|v| !token(v)) {
                return None;
            }
            out.push(String::from_utf8_lossy(name).to_ascii_lowercase());
        }
    }
    Some(out)
}

/// Removes hop-by-hop fields and those named in `Connection`. `Upgrade` is removed
/// too unless `keep_upgrade` (a tunnel the route allows), in which case
/// `Connection: upgrade` is put back.
///
/// Callers run it only where [`Present::survey`] found some (most messages carry
/// none). Without `Connection` no other field can have been named for removal.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Collect names first: `Connection` may list any field, possibly in several lines.
    let mut named: Vec<HeaderName> = Vec::new();
    // Split as bytes: a token that is not text (obs-text) must not keep the valid
    // names beside it from being removed.
    for v in h.get_all(header::CONNECTION) {
        for tok in v.as_bytes().split(|&b| b == b',') {
            let tok = tok.trim_ascii();
            if tok.is_empty() || (keep_upgrade && tok.eq_ignore_ascii_case(b"upgrade")) {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(tok) {
                named.push(n);
            }
        }
    }
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if keep_upgrade && h.contains_key(header::UPGRADE) {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// What the forwarding fields say about one connection, computed once when it is
/// accepted rather than on every request.
#[derive(Debug)]
pub struct Forwarding {
    /// `X-Forwarded-For`: the peer address.
    pub for_value: HeaderValue,
    /// `X-Forwarded-Proto`.
    pub proto: HeaderValue,
    /// `Forwarded` up to the host part: `for=…;proto=…` (RFC 7239).
    pub forwarded: String,
    /// The fields of the `Host` value the last request carried: a client sends the
    /// same one on every request of a connection, and working them out (parse,
    /// lower-case, three header values) cost more than the lookup.
    last_host: std::sync::Mutex<Option<std::sync::Arc<HostFields>>>,
}

/// What one `Host` value (or HTTP/2 `:authority`) means on one connection.
#[derive(Debug)]
pub struct HostFields {
    /// As the client wrote it, port included.
    pub raw: String,
    /// For routing: lower case, without the port and a trailing dot.
    pub host: String,
    /// `raw` as a header value: `X-Forwarded-Host`, and `Host` where a route keeps it.
    pub value: HeaderValue,
    /// The connection's `Forwarded` value with `host=` this host.
    pub forwarded: Option<HeaderValue>,
}

impl Forwarding {
    pub fn new(peer: IpAddr, https: bool) -> Self {
        let proto = if https { "https" } else { "http" };
        let ip = peer.to_string();
        let forwarded = match peer {
            IpAddr::V4(_) => format!("for={ip};proto={proto}"),
            IpAddr::V6(_) => format!("for=\"[{ip}]\";proto={proto}"),
        };
        Self {
            for_value: HeaderValue::from_str(&ip).expect("an IP address is a header value"),
            proto: HeaderValue::from_static(proto),
            forwarded,
            last_host: std::sync::Mutex::new(None),
        }
    }

    /// The fields of the Host value `raw`; None if it is not a valid authority
    /// (userinfo included) or not a valid header value.
    pub fn host(&self, raw: &str) -> Option<std::sync::Arc<HostFields>> {
        let mut last = self
            .last_host
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = last.as_ref().filter(|f| f.raw == raw) {
            return Some(f.clone());
        }
        let a: http::uri::Authority = raw.parse().ok()?;
        if a.as_str().contains('@') {
            return None;
        }
        let fields = std::sync::Arc::new(HostFields {
            raw: raw.to_string(),
            host: a.host().trim_end_matches('.').to_ascii_lowercase(),
            value: HeaderValue::from_str(raw).ok()?,
            forwarded: HeaderValue::from_str(&self.forwarded_with_host(raw)).ok(),
        });
        *last = Some(fields.clone());
        Some(fields)
    }

    /// `Forwarded` for this connection with `host=` (quoted where it is not a token).
    fn forwarded_with_host(&self, host: &str) -> String {
        let mut fwd = self.forwarded.clone();
        if host.bytes().all(crate::config::is_token_byte) {
            fwd.push_str(";host=");
            fwd.push_str(host);
        } else {
            fwd.push_str(";host=\"");
            fwd.push_str(host);
            fwd.push('"');
        }
        fwd
    }
}

/// Client-sent fields that say where a request came from or what it asked for (its
/// method, its original URL), which upstreams behind a proxy may trust: the gateway sets its own forwarding fields and
/// removes every one of these (a forged `X-Original-URL` or `X-Forwarded-Prefix` would
/// make an IIS, Symfony or Spring upstream act on a path the route's rules never saw).
static FORWARDING: [HeaderName; 22] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-forwarded-for"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-host"),
    // What the client asked for: a method override would make Express, Symfony and
    // others run another method than the one the route's rules admitted.
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-method-override"),
];

/// Cleans a trailer section as the head is cleaned: the gateway-owned `x-lienthong-*`
/// fields, credentials (`Authorization`, `Proxy-Authorization`, `Cookie`), forwarding
/// fields, `Host` and framing or hop-by-hop fields are dropped. Upstreams that merge
/// trailers into the head (HTTP/2 ones may) would otherwise read a client's own copy of
/// what the gateway vouches for. Other trailers (`grpc-status`, checksums) pass.
pub fn sanitize_trailers(h: &mut HeaderMap) {
    strip_gateway_owned(h);
    let dropped: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            is_forwarding(k)
                || HOP_BY_HOP.contains(k)
                || [
                    header::AUTHORIZATION,
                    header::PROXY_AUTHORIZATION,
                    header::COOKIE,
                    header::HOST,
                    header::CONTENT_LENGTH,
                    header::UPGRADE,
                ]
                .contains(k)
        })
        .cloned()
        .collect();
    for k in dropped {
        h.remove(k);
    }
}

/// Whether a field name, as written (any case), is hop-by-hop: one of [`HOP_BY_HOP`]
/// or `Upgrade` (fields named in `Connection` aside). The fast path's test on bytes.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"upgrade")
        || HOP_BY_HOP
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
}

/// One of [`FORWARDING`], for a name as the client wrote it (any case).
pub fn is_forwarding_name(name: &[u8]) -> bool {
    FORWARDING
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
}

/// One of [`FORWARDING`]; most names are ruled out by their first bytes.
fn is_forwarding(k: &HeaderName) -> bool {
    if k == header::FORWARDED {
        return true;
    }
    let s = k.as_str();
    (s.starts_with("x-") || s.starts_with("true-")) && FORWARDING.iter().any(|n| n == k)
}

/// Drops client-sent forwarding fields (when `present` says there are some) and
/// sets the gateway's own.
pub fn set_forwarded(
    h: &mut HeaderMap,
    conn: &Forwarding,
    host: Option<&HostFields>,
    present: &Present,
) {
    if present.forwarding {
        for n in &FORWARDING {
            h.remove(n);
        }
    }
    h.insert(X_FORWARDED_FOR.clone(), conn.for_value.clone());
    h.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
    let forwarded = match host {
        Some(f) => {
            h.insert(X_FORWARDED_HOST.clone(), f.value.clone());
            f.forwarded.clone()
        }
        None => HeaderValue::from_str(&conn.forwarded).ok(),
    };
    if let Some(v) = forwarded {
        h.insert(header::FORWARDED, v);
    }
}

/// Which of the fields the gateway removes or replaces a message carries: one
/// pass over its names, so that each removal that follows is made only where
/// there is something to remove (most messages carry none of them).
#[derive(Debug, Default, Clone, Copy)]
pub struct Present {
    /// Hop-by-hop fields, `Upgrade` included.
    pub hop_by_hop: bool,
    /// Client-sent forwarding fields.
    pub forwarding: bool,
    /// `x-lienthong-*` fields.
    pub gateway_owned: bool,
    pub content_length: bool,
    pub authorization: bool,
    pub via: bool,
}

impl Present {
    pub fn survey(h: &HeaderMap) -> Present {
        let mut p = Present::default();
        for k in h.keys() {
            if k == header::CONTENT_LENGTH {
                p.content_length = true;
            } else if k == header::AUTHORIZATION {
                p.authorization = true;
            } else if k == header::VIA {
                p.via = true;
            } else if k == header::UPGRADE || HOP_BY_HOP.contains(k) {
                p.hop_by_hop = true;
            } else if is_forwarding(k) {
                p.forwarding = true;
            } else if k.as_str().starts_with("x-lienthong-") {
                p.gateway_owned = true;
            }
        }
        p
    }
}

/// Appends this gateway to `Via` (RFC 9110 §7.6.3); `has_via` is what
/// [`Present::survey`] found. Earlier hops may come in several field lines: they are
/// kept, in order, joined into the one line this hop is added to.
pub fn append_via(
    h: &mut HeaderMap,
    version: http::Version,
    via: &crate::config::ViaName,
    has_via: bool,
) {
    let mut value: Vec<u8> = Vec::new();
    if has_via {
        for prev in h.get_all(header::VIA) {
            let prev = prev.as_bytes().trim_ascii();
            if !prev.is_empty() {
                value.extend_from_slice(prev);
                value.extend_from_slice(b", ");
            }
        }
    }
    if value.is_empty() {
        if let Some(v) = via.value(version) {
            h.insert(header::VIA, v.clone());
            return;
        }
    }
    let proto: &[u8] = match version {
        http::Version::HTTP_09 => b"0.9",
        http::Version::HTTP_10 => b"1.0",
        http::Version::HTTP_2 => b"2",
        http::Version::HTTP_3 => b"3",
        _ => b"1.1",
    };
    value.extend_from_slice(proto);
    value.push(b' ');
    value.extend_from_slice(via.as_str().as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        h.insert(header::VIA, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_lose_what_the_head_would() {
        let mut t = HeaderMap::new();
        for (k, v) in [
            ("x-lienthong-caller-agency", "000.00.00.G22"),
            ("authorization", "Bearer forged"),
            ("cookie", "s=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("host", "admin.internal"),
            ("transfer-encoding", "chunked"),
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
        ] {
            t.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        sanitize_trailers(&mut t);
        let mut left: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn via_is_added_or_appended_for_every_version() {
        let via = crate::config::ViaName::new("gw-1".into()).unwrap();
        let cases = [
            (http::Version::HTTP_10, None, "1.0 gw-1"),
            (http::Version::HTTP_11, None, "1.1 gw-1"),
            (http::Version::HTTP_2, None, "2 gw-1"),
            (http::Version::HTTP_09, None, "0.9 gw-1"),
            (http::Version::HTTP_3, None, "3 gw-1"),
            (http::Version::HTTP_11, Some(""), "1.1 gw-1"),
            (
                http::Version::HTTP_11,
                Some("1.0 portal"),
                "1.0 portal, 1.1 gw-1",
            ),
            (
                http::Version::HTTP_2,
                Some("1.1 a, 1.1 b"),
                "1.1 a, 1.1 b, 2 gw-1",
            ),
        ];
        for (version, prev, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(p) = prev {
                h.insert(header::VIA, HeaderValue::from_static(p));
            }
            append_via(&mut h, version, &via, prev.is_some());
            assert_eq!(h.get_all(header::VIA).iter().count(), 1);
            assert_eq!(h.get(header::VIA).unwrap(), want, "{version:?} {prev:?}");
        }
        // Earlier hops in two field lines: both kept, in order.
        let mut h = HeaderMap::new();
        h.append(header::VIA, HeaderValue::from_static("1.1 a"));
        h.append(header::VIA, HeaderValue::from_static("1.0 b"));
        append_via(&mut h, http::Version::HTTP_11, &via, true);
        assert_eq!(h.get_all(header::VIA).iter().count(), 1);
        assert_eq!(h.get(header::VIA).unwrap(), "1.1 a, 1.0 b, 1.1 gw-1");
        assert!(crate::config::ViaName::new("bad name".into()).is_none());
        assert!(crate::config::ViaName::new(String::new()).is_none());
    }

    #[test]
    fn connection_names_beside_a_non_text_token_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-hop, caf\xe9").unwrap(),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-hop").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn connection_named_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("X-Foo, close"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-bar"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("x-bar", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(Present::survey(&h).hop_by_hop);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-foo").is_none());
        assert!(h.get("x-bar").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn forwarded_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        let conn = Forwarding::new("::1".parse().unwrap(), true);
        let host = conn.host("a.gov.vn").unwrap();
        let present = Present::survey(&h);
        set_forwarded(&mut h, &conn, Some(&host), &present);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "::1");
        assert_eq!(
            h.get(header::FORWARDED).unwrap(),
            "for=\"[::1]\";proto=https;host=a.gov.vn"
        );
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    }

    #[test]
    fn host_fields_are_worked_out_once_per_value() {
        use std::sync::Arc;
        let conn = Forwarding::new("10.0.0.1".parse().unwrap(), false);
        let a = conn.host("Portal.Gov.VN.:8443").unwrap();
        assert_eq!(a.host, "portal.gov.vn");
        assert_eq!(a.value, "Portal.Gov.VN.:8443");
        assert_eq!(
            a.forwarded.as_ref().unwrap(),
            "for=10.0.0.1;proto=http;host=\"Portal.Gov.VN.:8443\""
        );
        assert!(Arc::ptr_eq(&a, &conn.host("Portal.Gov.VN.:8443").unwrap()));
        let b = conn.host("b.gov.vn").unwrap();
        assert_eq!(b.host, "b.gov.vn");
        assert_eq!(
            b.forwarded.as_ref().unwrap(),
            "for=10.0.0.1;proto=http;host=b.gov.vn"
        );
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(conn.host("user@b.gov.vn").is_none());
        assert!(conn.host("bad host").is_none());
        // The last value is the cached one: the first comes back worked out anew.
        assert!(!Arc::ptr_eq(&a, &conn.host("Portal.Gov.VN.:8443").unwrap()));
    }

    #[test]
    fn the_survey_names_what_is_there() {
        let mut h = HeaderMap::new();
        let p = Present::survey(&h);
        assert!(!(p.hop_by_hop || p.forwarding || p.gateway_owned));
        assert!(!(p.content_length || p.authorization || p.via));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert(
            "x-lienthong-caller-subject",
            HeaderValue::from_static("forged"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 a"));
        let p = Present::survey(&h);
        assert!(p.hop_by_hop && p.forwarding && p.gateway_owned);
        assert!(p.content_length && p.authorization && p.via);
        let mut u = HeaderMap::new();
        u.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(Present::survey(&u).hop_by_hop);
    }
}
