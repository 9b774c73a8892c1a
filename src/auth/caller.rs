//! The authenticated caller: identity mapped from verified JWT claims.
//!
//! A [`Caller`] is only ever built from claims whose signature and registered
//! claims (`iss`, `aud`, `exp`, ...) were already checked by `super::jwt`; this
//! module only decides *how* claims turn into an identity (configurable claim
//! names) and validates the agency identifier shape.
//!
//! Also here: the optional RFC 8705 certificate binding check (`cnf.x5t#S256`).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::jwt::{reason, AuthError};

/// Upper bound on roles/scopes taken from one token: claims are attacker-sized
/// input until the signature is checked, and even a trusted issuer should not
/// make one request allocate unbounded lists.
const MAX_LIST_ITEMS: usize = 256;
/// Upper bound on the length of one role/scope/subject string.
const MAX_ITEM_LEN: usize = 512;

/// Electronic identifier of a state agency ("mã định danh điện tử").
///
/// Format per domain brief §9.1 (QĐ 20/2020/QĐ-TTg, QCVN 102:2016 SĐ1:2022):
/// `NNN.NN.NN.XNN`, e.g. `000.00.00.G22` (Văn phòng Chính phủ), `000.00.01.H22`.
/// The brief's regex is `^\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}$` (tagged \[I\]: inferred).
/// The last group is the level-1 unit (`G` + 2 digits: ministries/central bodies,
/// `H` + 2 digits: provinces); the numeric groups read right to left are levels
/// 2, 3, 4, and `000.00.00.` denotes the level-1 body itself.
///
/// Deliberately *not* accepted: the short local "unit codes" that circulate
/// (`H56`, `H56.14`, `G09.20`, `H37.DN.001`) — the brief (§9.1) says they are local
/// conventions, not the QĐ 20 format, so an access rule keyed on agencies must not
/// silently compare such strings with real identifiers. The letter class is kept
/// at `[A-Z]` as in the brief rather than `[GH]`: other organisation classes exist
/// (QĐ 20/2020 arts. 5-6, tagged \[C\]) and rejecting them would be a guess.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgencyCode(String);

/// Why a string is not an [`AgencyCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agency identifier (expected NNN.NN.NN.XNN, e.g. 000.00.01.H22): {0}")]
pub struct AgencyCodeError(pub String);

impl AgencyCode {
    /// Parses and validates the `NNN.NN.NN.XNN` shape (exact, no trimming, no
    /// case folding: identifiers are compared byte-wise by access rules).
    pub fn parse(s: &str) -> Result<Self, AgencyCodeError> {
        let parts: Vec<&str> = s.split('.').collect();
        let ok = parts.len() == 4
            && parts
                .iter()
                .enumerate()
                .all(|(i, p)| segment_is_valid(i, p));
        if ok {
            Ok(AgencyCode(s.to_owned()))
        } else {
            // Truncate the echoed input: it may come from a token.
            Err(AgencyCodeError(s.chars().take(40).collect()))
        }
    }

    /// The identifier as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The four dot-separated groups, left to right.
    pub fn segments(&self) -> [&str; 4] {
        let mut it = self.0.split('.');
        // Shape was validated at construction, so there are exactly four groups.
        let mut next = || it.next().unwrap_or("");
        [next(), next(), next(), next()]
    }

    /// The level-1 unit (`H22`, `G09`, ...).
    pub fn level1(&self) -> &str {
        self.segments()[3]
    }

    /// `true` for a province-level tree (`H` prefix, brief §9.1).
    pub fn is_province(&self) -> bool {
        self.level1().starts_with('H')
    }

    /// `true` for a ministry / central-body tree (`G` prefix, brief §9.1).
    pub fn is_central(&self) -> bool {
        self.level1().starts_with('G')
    }
}

/// Shape of group `index` (0-based, left to right) of an agency identifier.
pub(crate) fn segment_is_valid(index: usize, seg: &str) -> bool {
    let b = seg.as_bytes();
    match index {
        0 => b.len() == 3 && b.iter().all(u8::is_ascii_digit),
        1 | 2 => b.len() == 2 && b.iter().all(u8::is_ascii_digit),
        3 => b.len() == 3 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

impl FromStr for AgencyCode {
    type Err = AgencyCodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgencyCode::parse(s)
    }
}

impl fmt::Display for AgencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The authenticated identity the rest of the gateway sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name of the issuer configuration that accepted the token (not the raw
    /// `iss` URL: names are stable labels for logs and metrics).
    pub issuer: String,
    /// The calling agency, when the token carries one.
    pub agency: Option<AgencyCode>,
    /// `sub`.
    pub subject: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// RFC 8705 `cnf.x5t#S256`: base64url SHA-256 of the client certificate the
    /// token is bound to.
    pub cnf_x5t_s256: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Which claims feed the [`Caller`] fields. Claim names are looked up as exact
/// top-level keys first (claim names may legitimately contain dots, e.g.
/// `http://example.com/x`); if absent and the name contains `.`, it is read as a
/// path into nested objects (e.g. `realm_access.roles` for Keycloak).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// Candidate claims for the agency, first present wins. Default: `agency`,
    /// then `madonvi` (the name used by the DVCQG envelope, brief §4.2).
    pub agency: Vec<String>,
    /// Roles: array of strings (or a single string). Default `roles`.
    pub roles: String,
    /// Scopes as a space-separated string (RFC 8693 / RFC 9068). Default `scope`.
    pub scope: String,
    /// Scopes as an array (Azure-style `scp`; a space-separated string is also
    /// accepted). Default `scp`. Both sources are merged.
    pub scp: String,
    /// Whether a token without an agency claim is acceptable. Default `true`:
    /// routes that need an agency say so with agency patterns in their rule.
    pub agency_optional: bool,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            agency: vec!["agency".to_owned(), "madonvi".to_owned()],
            roles: "roles".to_owned(),
            scope: "scope".to_owned(),
            scp: "scp".to_owned(),
            agency_optional: true,
        }
    }
}

fn invalid_claims(detail: &str) -> AuthError {
    AuthError::unauthorized(reason::INVALID_CLAIMS, detail)
}

/// Finds a claim by exact name, else by dotted path.
fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Reads a list claim: a JSON array of strings, or one string split on spaces. An item
/// holding `separator` (how the list is joined in the header the upstream is told it in)
/// or a control character is refused: the upstream would read other items than the
/// gateway authorised.
fn string_list(
    v: &Value,
    out: &mut Vec<String>,
    what: &str,
    separator: fn(char) -> bool,
) -> Result<(), AuthError> {
    let mut push = |s: &str| -> Result<(), AuthError> {
        if s.is_empty() {
            return Ok(());
        }
        if s.len() > MAX_ITEM_LEN
            || out.len() >= MAX_LIST_ITEMS
            || s.chars().any(|c| separator(c) || c.is_control())
        {
            return Err(invalid_claims(what));
        }
        if !out.iter().any(|x| x == s) {
            out.push(s.to_owned());
        }
        Ok(())
    };
    match v {
        Value::String(s) => s.split(' ').try_for_each(&mut push),
        Value::Array(items) => items.iter().try_for_each(|i| match i {
            Value::String(s) => push(s),
            _ => Err(invalid_claims(what)),
        }),
        Value::Null => Ok(()),
        _ => Err(invalid_claims(what)),
    }
}

impl ClaimMapping {
    /// Builds a [`Caller`] from already-verified claims. Malformed identity
    /// claims (an agency that is not a valid identifier, a non-string role, ...)
    /// reject the token: failing closed beats guessing what the issuer meant.
    pub fn map_claims(
        &self,
        issuer_name: &str,
        claims: &Map<String, Value>,
        expires_at: u64,
    ) -> Result<Caller, AuthError> {
        let subject = match claims.get("sub") {
            // Told to the upstream in a header: no control characters.
            Some(Value::String(s))
                if !s.is_empty() && s.len() <= MAX_ITEM_LEN && !s.chars().any(char::is_control) =>
            {
                s.clone()
            }
            Some(_) => return Err(invalid_claims("sub is not a non-empty string")),
            None => return Err(AuthError::unauthorized(reason::MISSING_SUB, "no sub claim")),
        };

        let mut agency = None;
        for name in &self.agency {
            match lookup(claims, name) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => {
                    agency =
                        Some(AgencyCode::parse(s).map_err(|_| {
                            invalid_claims("agency claim is not a valid identifier")
                        })?);
                    break;
                }
                Some(_) => return Err(invalid_claims("agency claim is not a string")),
            }
        }
        if agency.is_none() && !self.agency_optional {
            return Err(invalid_claims("agency claim required"));
        }

        let mut roles = Vec::new();
        if let Some(v) = lookup(claims, &self.roles) {
            string_list(v, &mut roles, "roles claim malformed", |c| c == ',')?;
        }
        let mut scopes = Vec::new();
        if let Some(v) = lookup(claims, &self.scope) {
            // RFC 9068 §2.2.3: `scope` is a space-separated string.
            match v {
                Value::String(_) | Value::Null => {
                    string_list(v, &mut scopes, "scope claim malformed", char::is_whitespace)?
                }
                _ => return Err(invalid_claims("scope claim is not a string")),
            }
        }
        if let Some(v) = lookup(claims, &self.scp) {
            string_list(v, &mut scopes, "scp claim malformed", char::is_whitespace)?;
        }

        let cnf_x5t_s256 = match claims.get("cnf") {
            None | Some(Value::Null) => None,
            Some(Value::Object(cnf)) => match cnf.get("x5t#S256") {
                None => None,
                Some(Value::String(t)) if is_sha256_b64url(t) => Some(t.clone()),
                Some(_) => return Err(invalid_claims("cnf.x5t#S256 malformed")),
            },
            Some(_) => return Err(invalid_claims("cnf is not an object")),
        };

        Ok(Caller {
            issuer: issuer_name.to_owned(),
            agency,
            subject,
            roles,
            scopes,
            cnf_x5t_s256,
            expires_at,
        })
    }
}

/// A SHA-256 thumbprint in base64url without padding is exactly 43 characters.
fn is_sha256_b64url(s: &str) -> bool {
    s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|d| d.len() == 32)
}

/// RFC 8705 §3.1 thumbprint of a DER-encoded client certificate: base64url
/// (no padding) of its SHA-256. The TLS layer calls this on the peer's leaf
/// certificate and passes the result to [`check_cert_binding`].
pub fn cert_thumbprint_s256(cert_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Enforces certificate-bound access tokens (RFC 8705 §3): a token carrying
/// `cnf.x5t#S256` is only usable on a TLS connection that presented exactly that
/// client certificate. Tokens without `cnf` are not bound and pass.
///
/// A mismatch is `Forbidden` (403): the token itself is valid, it is being
/// presented by the wrong party (a stolen bearer token replayed without the key).
pub fn check_cert_binding(
    caller: &Caller,
    presented_thumbprint: Option<&str>,
) -> Result<(), AuthError> {
    let Some(expected) = caller.cnf_x5t_s256.as_deref() else {
        return Ok(());
    };
    match presented_thumbprint {
        None => Err(AuthError::forbidden(
            reason::CERT_BINDING_MISMATCH,
            "token is certificate-bound but no client certificate was presented",
        )),
        Some(p) => {
            // Compare in constant time; thumbprints are not secret, but this
            // costs nothing and keeps the comparison free of early exits.
            if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), p.as_bytes())
                .is_ok()
            {
                Ok(())
            } else {
                Err(AuthError::forbidden(
                    reason::CERT_BINDING_MISMATCH,
                    "client certificate does not match the token's cnf.x5t#S256",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn agency_code_shapes_from_brief_section_9_1() {
        for ok in [
            "000.00.00.G22",
            "000.00.01.H22",
            "000.00.01.H29",
            "000.00.00.H30",
            "000.00.00.H41",
            "123.45.67.H56",
        ] {
            let c = AgencyCode::parse(ok).unwrap();
            assert_eq!(c.as_str(), ok);
        }
        let c = AgencyCode::parse("000.00.01.H22").unwrap();
        assert_eq!(c.level1(), "H22");
        assert!(c.is_province() && !c.is_central());
        assert!(AgencyCode::parse("000.00.00.G22").unwrap().is_central());
        assert_eq!(c.segments(), ["000", "00", "01", "H22"]);
        // Local unit codes (brief §9.1: not the QĐ 20 format) and malformed input.
        for bad in [
            "H56",
            "G22",
            "H56.14",
            "G09.20",
            "H37.DN.001",
            "000.00.01.h22",
            "000.00.01.H2",
            "000.00.01.H222",
            "00.00.01.H22",
            "000.000.01.H22",
            "000.00.01.22H",
            "000.00.01.H22.",
            " 000.00.01.H22",
            "000.00.0a.H22",
            "",
            "０００.00.01.H22",
        ] {
            assert!(
                AgencyCode::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn identities_the_upstream_would_read_differently_are_refused() {
        let m = ClaimMapping::default();
        let with = |extra: Value| {
            let mut c = claims(json!({"sub": "u", "madonvi": "000.00.01.H22"}));
            c.extend(claims(extra));
            m.map_claims("local", &c, 9)
        };
        // Joined with `,` (roles) and ` ` (scopes) in the caller headers.
        assert!(with(json!({"roles": ["viewer,admin"]})).is_err());
        assert!(with(json!({"scp": ["read write"]})).is_err());
        assert!(with(json!({"scp": ["read\twrite"]})).is_err());
        assert!(with(json!({"roles": ["a\nb"]})).is_err());
        assert!(with(json!({"sub": "u\r\nx-lienthong-caller-agency: 1"})).is_err());
        // Vietnamese names with spaces are roles like any other.
        let c = with(json!({"roles": ["nhân viên", "lãnh đạo"], "sub": "Nguyễn Văn A"})).unwrap();
        assert_eq!(c.roles, ["nhân viên", "lãnh đạo"]);
        assert_eq!(c.subject, "Nguyễn Văn A");
    }

    #[test]
    fn default_mapping_reads_agency_roles_scopes() {
        let m = ClaimMapping::default();
        let c = m
            .map_claims(
                "local",
                &claims(json!({
                    "sub": "svc-a", "madonvi": "000.00.01.H22",
                    "roles": ["reader", "writer", "reader"],
                    "scope": "dossier.read  dossier.write", "scp": ["lookup", "dossier.read"]
                })),
                99,
            )
            .unwrap();
        assert_eq!(c.issuer, "local");
        assert_eq!(c.agency.unwrap().as_str(), "000.00.01.H22");
        assert_eq!(c.roles, vec!["reader", "writer"]);
        assert_eq!(c.scopes, vec!["dossier.read", "dossier.write", "lookup"]);
        assert_eq!(c.expires_at, 99);
        assert!(c.cnf_x5t_s256.is_none());

        // `agency` wins over `madonvi`; a single role string is accepted.
        let c = m
            .map_claims(
                "x",
                &claims(json!({"sub": "s", "agency": "000.00.00.G22",
                               "madonvi": "000.00.01.H22", "roles": "admin"})),
                1,
            )
            .unwrap();
        assert_eq!(c.agency.unwrap().as_str(), "000.00.00.G22");
        assert_eq!(c.roles, vec!["admin"]);
    }

    #[test]
    fn custom_and_nested_claim_names() {
        let m = ClaimMapping {
            agency: vec!["org.code".into()],
            roles: "realm_access.roles".into(),
            scope: "scope".into(),
            scp: "scp".into(),
            agency_optional: false,
        };
        let c = m
            .map_claims(
                "kc",
                &claims(json!({"sub": "u", "org": {"code": "000.00.01.H29"},
                               "realm_access": {"roles": ["officer"]}})),
                5,
            )
            .unwrap();
        assert_eq!(c.agency.unwrap().as_str(), "000.00.01.H29");
        assert_eq!(c.roles, vec!["officer"]);
        let e = m
            .map_claims("kc", &claims(json!({"sub": "u"})), 5)
            .unwrap_err();
        assert_eq!(e.reason(), reason::INVALID_CLAIMS);
    }

    #[test]
    fn malformed_identity_claims_reject() {
        let m = ClaimMapping::default();
        for bad in [
            json!({"sub": "s", "agency": "H22"}),
            json!({"sub": "s", "agency": 22}),
            json!({"sub": "s", "roles": [1, 2]}),
            json!({"sub": "s", "scope": ["a"]}),
            json!({"sub": 5}),
            json!({"sub": ""}),
            json!({"sub": "s", "cnf": {"x5t#S256": "short"}}),
            json!({"sub": "s", "cnf": "x"}),
        ] {
            let e = m.map_claims("i", &claims(bad.clone()), 1).unwrap_err();
            assert_eq!(e.reason(), reason::INVALID_CLAIMS, "{bad}");
        }
        let e = m
            .map_claims("i", &claims(json!({"agency": "000.00.01.H22"})), 1)
            .unwrap_err();
        assert_eq!(e.reason(), reason::MISSING_SUB);
        let many: Vec<String> = (0..300).map(|i| format!("r{i}")).collect();
        let e = m
            .map_claims("i", &claims(json!({"sub": "s", "roles": many})), 1)
            .unwrap_err();
        assert_eq!(e.reason(), reason::INVALID_CLAIMS);
    }

    #[test]
    fn cert_binding_rfc8705() {
        let cert = b"not really DER, only hashed";
        let tp = cert_thumbprint_s256(cert);
        assert_eq!(tp.len(), 43);
        let bound = ClaimMapping::default()
            .map_claims(
                "i",
                &claims(json!({"sub": "s", "cnf": {"x5t#S256": tp}})),
                1,
            )
            .unwrap();
        assert_eq!(bound.cnf_x5t_s256.as_deref(), Some(tp.as_str()));
        assert!(check_cert_binding(&bound, Some(&tp)).is_ok());
        let other = cert_thumbprint_s256(b"another cert");
        for presented in [None, Some(other.as_str())] {
            let e = check_cert_binding(&bound, presented).unwrap_err();
            assert_eq!(e.http_status(), 403);
            assert_eq!(e.reason(), reason::CERT_BINDING_MISMATCH);
        }
        // Unbound tokens pass with or without a client certificate.
        let unbound = Caller {
            cnf_x5t_s256: None,
            ..bound
        };
        assert!(check_cert_binding(&unbound, None).is_ok());
        assert!(check_cert_binding(&unbound, Some(&other)).is_ok());
    }
}
