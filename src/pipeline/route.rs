//! Route selection: host, segment-aware path prefix and method, most specific first.
//!
//! Routes are sorted once when a config is compiled (exact host before wildcard host
//! before any host; then longer prefix first; then routes that name methods before
//! routes that take any method), so selection is the first match of a linear scan.

use crate::config::{HostMatch, RouteConfig};
use crate::error::{ErrorKind, GatewayError};

/// Sort key: higher is more specific.
fn specificity(r: &RouteConfig) -> (u8, usize, usize, u8) {
    let (host_rank, host_len) = match &r.host {
        Some(HostMatch::Exact(h)) => (2, h.len()),
        Some(HostMatch::Suffix(s)) => (1, s.len()),
        None => (0, 0),
    };
    (
        host_rank,
        host_len,
        r.path_prefix.len(),
        u8::from(r.methods.is_some()),
    )
}

/// Indices of `routes` in match order.
pub fn match_order(routes: &[RouteConfig]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..routes.len()).collect();
    // Stable sort keeps config order among equally specific routes.
    idx.sort_by_key(|&i| std::cmp::Reverse(specificity(&routes[i])));
    idx
}

/// Segment-aware prefix test: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

pub fn host_matches(m: &Option<HostMatch>, host: &str) -> bool {
    match m {
        None => true,
        Some(HostMatch::Exact(h)) => h == host,
        Some(HostMatch::Suffix(s)) => host.len() > s.len() && host.ends_with(s.as_str()),
    }
}

/// Picks the route for a request. `host` is lower-case without port; `path` is normalised.
///
/// A path whose segments carry parameters (`/admin;x/users`) must pick the route its
/// parameter-less spelling picks: servlet containers (Tomcat, Spring) drop `;...` from
/// each segment before they route, so where the two spellings part, the upstream would
/// serve `/admin/users` under another route's rules. Such a request is refused (400).
pub fn select<'a>(
    routes: &'a [RouteConfig],
    order: &[usize],
    listener: &str,
    host: &str,
    path: &str,
    method: &str,
) -> Result<(usize, &'a RouteConfig), GatewayError> {
    let picked = select_exact(routes, order, listener, host, path, method)?;
    if path.contains(';') {
        let bare = without_parameters(path);
        if let Ok((other, _)) = select_exact(routes, order, listener, host, &bare, method) {
            if other != picked.0 {
                return Err(GatewayError::bad_request(
                    "ambiguous_path",
                    "path parameters (';') would take this path to another route",
                ));
            }
        }
    }
    Ok(picked)
}

/// The path with each segment's parameters (from its first `;`) removed, and the empty
/// segments that leaves merged as such servers merge them (`/;x/admin` is `/admin`).
fn without_parameters(path: &str) -> String {
    let bare = path
        .split('/')
        .map(|seg| seg.split_once(';').map_or(seg, |(name, _)| name))
        .collect::<Vec<_>>()
        .join("/");
    let mut merged = String::with_capacity(bare.len());
    for c in bare.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    merged
}

fn select_exact<'a>(
    routes: &'a [RouteConfig],
    order: &[usize],
    listener: &str,
    host: &str,
    path: &str,
    method: &str,
) -> Result<(usize, &'a RouteConfig), GatewayError> {
    let mut allowed: Vec<&str> = Vec::new();
    for &i in order {
        let r = &routes[i];
        if let Some(ls) = &r.listeners {
            if !ls.iter().any(|l| l == listener) {
                continue;
            }
        }
        if !host_matches(&r.host, host) || !prefix_matches(&r.path_prefix, path) {
            continue;
        }
        match &r.methods {
            None => return Ok((i, r)),
            Some(ms) if ms.iter().any(|m| m == method) => return Ok((i, r)),
            Some(ms) => {
                for m in ms {
                    if !allowed.contains(&m.as_str()) {
                        allowed.push(m);
                    }
                }
            }
        }
    }
    if allowed.is_empty() {
        Err(GatewayError::new(
            ErrorKind::NoRoute,
            "no_route",
            "no route matches this request",
        ))
    } else {
        Err(GatewayError::method_not_allowed(
            "method_not_allowed",
            format!("method {method} is not allowed here"),
            allowed.join(", "),
        ))
    }
}

/// Whether the route sends the matched path upstream unchanged.
pub fn keeps_path(r: &RouteConfig) -> bool {
    r.path_prefix == "/" && r.rewrite_prefix.is_none()
}

/// The path the upstream receives: the matched prefix stripped or rewritten.
pub fn upstream_path(r: &RouteConfig, path: &str) -> String {
    if keeps_path(r) {
        return path.to_string();
    }
    let rest = if r.path_prefix == "/" {
        path
    } else {
        &path[r.path_prefix.len()..]
    };
    if r.strip_prefix {
        if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        }
    } else if let Some(rp) = &r.rewrite_prefix {
        let base = rp.trim_end_matches('/');
        let rest = rest.trim_start_matches('/');
        if rest.is_empty() {
            if base.is_empty() {
                "/".into()
            } else {
                base.to_string()
            }
        } else {
            format!("{base}/{rest}")
        }
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostHeader;

    fn r(
        name: &str,
        host: Option<HostMatch>,
        prefix: &str,
        methods: Option<&[&str]>,
    ) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            listeners: None,
            host,
            path_prefix: prefix.into(),
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            upstream: "u".into(),
            strip_prefix: false,
            rewrite_prefix: None,
            host_header: HostHeader::Preserve,
            timeout: None,
            max_body_bytes: None,
            retry_non_idempotent: false,
            allow_upgrade: false,
            upgrade_protocols: Vec::new(),
            allow_absolute_form: false,
            auth: None,
            cache: None,
            audit: crate::config::AuditPolicy::FailOpen,
            audit_bodies: false,
            translate: None,
        }
    }

    #[test]
    fn most_specific_wins() {
        let routes = vec![
            r("any", None, "/", None),
            r("api", None, "/api", None),
            r("api-get", None, "/api", Some(&["GET"])),
            r("host", Some(HostMatch::Exact("a.gov.vn".into())), "/", None),
            r(
                "wild",
                Some(HostMatch::Suffix(".gov.vn".into())),
                "/api",
                None,
            ),
        ];
        let o = match_order(&routes);
        let pick =
            |h: &str, p: &str, m: &str| select(&routes, &o, "l", h, p, m).unwrap().1.name.clone();
        assert_eq!(pick("x", "/api/v1", "GET"), "api-get");
        assert_eq!(pick("x", "/api/v1", "POST"), "api");
        assert_eq!(pick("x", "/apix", "GET"), "any");
        assert_eq!(pick("a.gov.vn", "/api", "GET"), "host");
        assert_eq!(pick("b.gov.vn", "/api", "GET"), "wild");
        assert_eq!(pick("gov.vn", "/api", "GET"), "api-get");
    }

    #[test]
    fn path_parameters_cannot_move_a_path_to_another_route() {
        let routes = vec![r("any", None, "/", None), r("admin", None, "/admin", None)];
        let o = match_order(&routes);
        let pick = |p: &str| select(&routes, &o, "l", "h", p, "GET").map(|r| r.1.name.clone());
        // A servlet upstream would serve /admin/users for this, under `any`'s rules.
        let e = pick("/admin;x/users").unwrap_err();
        assert_eq!((e.kind, e.code), (ErrorKind::BadRequest, "ambiguous_path"));
        assert_eq!(
            pick("/admin;jsessionid=1").unwrap_err().code,
            "ambiguous_path"
        );
        // Parameters that keep the path on its route are fine.
        assert_eq!(pick("/admin/users;v=2").unwrap(), "admin");
        assert_eq!(pick("/admin/a;b/c").unwrap(), "admin");
        assert_eq!(pick("/other;x/y").unwrap(), "any");
        assert_eq!(without_parameters("/a;1/b;2;3/c"), "/a/b/c");
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let routes = vec![r("a", None, "/a", Some(&["GET", "HEAD"]))];
        let o = match_order(&routes);
        let e = select(&routes, &o, "l", "h", "/a/b", "POST").unwrap_err();
        assert_eq!(e.kind, ErrorKind::MethodNotAllowed);
        assert_eq!(e.allow.as_deref(), Some("GET, HEAD"));
        let e = select(&routes, &o, "l", "h", "/b", "GET").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoRoute);
    }

    #[test]
    fn strip_and_rewrite() {
        let mut a = r("a", None, "/api", None);
        a.strip_prefix = true;
        assert_eq!(upstream_path(&a, "/api/x/y"), "/x/y");
        assert_eq!(upstream_path(&a, "/api"), "/");
        a.strip_prefix = false;
        a.rewrite_prefix = Some("/v2/".into());
        assert_eq!(upstream_path(&a, "/api/x"), "/v2/x");
        assert_eq!(upstream_path(&a, "/api"), "/v2");
        a.rewrite_prefix = None;
        assert_eq!(upstream_path(&a, "/api/x"), "/api/x");
    }
}
