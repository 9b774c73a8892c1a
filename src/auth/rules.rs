//! Per-route access rules.
//!
//! # Semantics
//!
//! * **Deny by default.** A route without a rule admits nobody: no token → 401,
//!   any authenticated caller → 403 (`no_rule`). Forgetting to write a rule must
//!   never open a route.
//! * **Anonymous routes are declared** with `anonymous = true`; such a rule
//!   admits everyone, with or without a token, and must not also list agencies,
//!   roles or scopes (that would be contradictory; rejected at config load).
//!   A token presented on an anonymous route is not looked at: the caller stays
//!   anonymous, and its `Authorization` field is not passed upstream (the upstream
//!   must not take an unverified token for one the gateway checked).
//! * Otherwise a valid caller is required (no token → 401) and is admitted iff
//!   **all three** hold:
//!     - `agencies` is empty, or the caller's agency matches at least one pattern
//!       (a caller without an agency never matches a non-empty list);
//!     - `roles` is empty, or the caller has at least one of the roles;
//!     - `scopes` is empty, or the caller has at least one of the scopes.
//!
//!   i.e. OR within a list, AND across lists. A rule with all three lists empty
//!   admits any authenticated caller.
//! * A valid caller that is not admitted gets 403 (`Forbidden`) with a reason
//!   code naming the first failing list.
//!
//! # Agency patterns
//!
//! Segment-wise over the four dot-separated groups of an [`AgencyCode`]
//! (`NNN.NN.NN.XNN`). Each group is a literal or `*`, which matches exactly one
//! whole group (no partial wildcards like `H2*`). Shorthand: a pattern with fewer
//! than four groups whose first group is `*` has that leading `*` widened to fill
//! the missing groups, so `*.H22` = `*.*.*.H22` (every unit of province H22,
//! including the level-1 body itself) and a lone `*` = any agency. Literals must
//! have the shape of their position (validated at load).

use std::fmt;
use std::str::FromStr;

use super::caller::{segment_is_valid, AgencyCode, Caller};
use super::jwt::{reason, AuthError, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Any,
    Lit(String),
}

/// An agency pattern (see module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgencyPattern {
    segs: [Seg; 4],
    raw: String,
}

impl AgencyPattern {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let err = |m: &str| ConfigError::Rule(format!("agency pattern {s:?}: {m}"));
        let parts: Vec<&str> = s.split('.').collect();
        let expanded: Vec<&str> = if parts.len() == 4 {
            parts
        } else if parts.len() < 4 && parts[0] == "*" {
            let mut v = vec!["*"; 4 - parts.len() + 1];
            v.extend_from_slice(&parts[1..]);
            v
        } else {
            return Err(err(
                "expected four groups NNN.NN.NN.XNN, or a leading `*` shorthand like `*.H22`",
            ));
        };
        let mut segs = [Seg::Any, Seg::Any, Seg::Any, Seg::Any];
        for (i, p) in expanded.iter().enumerate() {
            segs[i] = if *p == "*" {
                Seg::Any
            } else if segment_is_valid(i, p) {
                Seg::Lit((*p).to_owned())
            } else {
                return Err(err(&format!(
                    "group {} ({p:?}) is neither `*` nor a valid literal",
                    i + 1
                )));
            };
        }
        Ok(AgencyPattern {
            segs,
            raw: s.to_owned(),
        })
    }

    pub fn matches(&self, code: &AgencyCode) -> bool {
        self.segs.iter().zip(code.segments()).all(|(p, c)| match p {
            Seg::Any => true,
            Seg::Lit(l) => l == c,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl FromStr for AgencyPattern {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgencyPattern::parse(s)
    }
}

impl fmt::Display for AgencyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Access rule for one route (see module docs for the semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRule {
    pub anonymous: bool,
    pub agencies: Vec<AgencyPattern>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
}

impl AccessRule {
    /// A rule admitting everyone.
    pub fn anonymous() -> Self {
        AccessRule {
            anonymous: true,
            ..Default::default()
        }
    }

    /// A rule admitting any authenticated caller.
    pub fn authenticated() -> Self {
        AccessRule::default()
    }

    /// Builds a rule from config strings, validating patterns and consistency.
    pub fn from_config(
        anonymous: bool,
        agencies: &[String],
        roles: &[String],
        scopes: &[String],
    ) -> Result<Self, ConfigError> {
        let rule = AccessRule {
            anonymous,
            agencies: agencies
                .iter()
                .map(|a| AgencyPattern::parse(a))
                .collect::<Result<_, _>>()?,
            roles: roles.to_vec(),
            scopes: scopes.to_vec(),
        };
        rule.validate()?;
        Ok(rule)
    }

    /// Rejects contradictory or degenerate rules at load time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.anonymous
            && !(self.agencies.is_empty() && self.roles.is_empty() && self.scopes.is_empty())
        {
            return Err(ConfigError::Rule(
                "an anonymous rule cannot also require agencies, roles or scopes".into(),
            ));
        }
        if self.roles.iter().chain(&self.scopes).any(|s| s.is_empty()) {
            return Err(ConfigError::Rule("empty role or scope name".into()));
        }
        Ok(())
    }

    /// Decides access for an (optional) authenticated caller.
    pub fn check(&self, caller: Option<&Caller>) -> Result<(), AuthError> {
        if self.anonymous {
            return Ok(());
        }
        let Some(caller) = caller else {
            return Err(AuthError::unauthorized(
                reason::MISSING_TOKEN,
                "route requires authentication",
            ));
        };
        if !self.agencies.is_empty() {
            let ok = caller
                .agency
                .as_ref()
                .is_some_and(|a| self.agencies.iter().any(|p| p.matches(a)));
            if !ok {
                return Err(AuthError::forbidden(
                    reason::AGENCY_NOT_ALLOWED,
                    "caller agency not allowed on this route",
                ));
            }
        }
        if !self.roles.is_empty() && !self.roles.iter().any(|r| caller.has_role(r)) {
            return Err(AuthError::forbidden(
                reason::ROLE_MISSING,
                "caller lacks a required role",
            ));
        }
        if !self.scopes.is_empty() && !self.scopes.iter().any(|s| caller.has_scope(s)) {
            return Err(AuthError::forbidden(
                reason::SCOPE_MISSING,
                "caller lacks a required scope",
            ));
        }
        Ok(())
    }
}

/// Deny-by-default entry point: `rule` is `None` for a route with no rule.
pub fn authorize(rule: Option<&AccessRule>, caller: Option<&Caller>) -> Result<(), AuthError> {
    match rule {
        Some(r) => r.check(caller),
        None if caller.is_none() => Err(AuthError::unauthorized(
            reason::MISSING_TOKEN,
            "route requires authentication",
        )),
        None => Err(AuthError::forbidden(
            reason::NO_RULE,
            "no access rule for this route",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(agency: Option<&str>, roles: &[&str], scopes: &[&str]) -> Caller {
        Caller {
            issuer: "t".into(),
            agency: agency.map(|a| AgencyCode::parse(a).unwrap()),
            subject: "s".into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            cnf_x5t_s256: None,
            expires_at: 0,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pattern_matching_segment_wise() {
        let code = |s| AgencyCode::parse(s).unwrap();
        let p = AgencyPattern::parse("*.H22").unwrap();
        assert!(p.matches(&code("000.00.01.H22")));
        assert!(p.matches(&code("000.00.00.H22")));
        assert!(!p.matches(&code("000.00.01.H29")));
        let p = AgencyPattern::parse("000.00.*.H22").unwrap();
        assert!(p.matches(&code("000.00.07.H22")));
        assert!(!p.matches(&code("000.01.07.H22")));
        let p = AgencyPattern::parse("000.00.01.H22").unwrap();
        assert!(p.matches(&code("000.00.01.H22")));
        assert!(!p.matches(&code("000.00.02.H22")));
        let p = AgencyPattern::parse("*").unwrap();
        assert!(p.matches(&code("123.45.67.G09")));
        let p = AgencyPattern::parse("*.01.H22").unwrap();
        assert!(p.matches(&code("000.00.01.H22")));
        assert!(p.matches(&code("999.99.01.H22")));
        assert!(!p.matches(&code("000.00.02.H22")));
        for bad in [
            "H22",
            "*.H2*",
            "000.00.01.h22",
            "000.00.01.H22.*",
            "000.*.H22",
            "",
            "*.*.*.*.*",
            "0.00.01.H22",
        ] {
            assert!(AgencyPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deny_by_default_and_anonymous() {
        let c = caller(Some("000.00.01.H22"), &[], &[]);
        let e = authorize(None, None).unwrap_err();
        assert_eq!((e.http_status(), e.reason()), (401, reason::MISSING_TOKEN));
        let e = authorize(None, Some(&c)).unwrap_err();
        assert_eq!((e.http_status(), e.reason()), (403, reason::NO_RULE));
        let anon = AccessRule::anonymous();
        assert!(authorize(Some(&anon), None).is_ok());
        assert!(authorize(Some(&anon), Some(&c)).is_ok());
        let authd = AccessRule::authenticated();
        assert!(authorize(Some(&authd), Some(&c)).is_ok());
        assert_eq!(
            authorize(Some(&authd), None).unwrap_err().http_status(),
            401
        );
        assert!(AccessRule::from_config(true, &strings(&["*.H22"]), &[], &[]).is_err());
        assert!(AccessRule::from_config(false, &[], &strings(&[""]), &[]).is_err());
    }

    #[test]
    fn and_across_lists_or_within() {
        let rule = AccessRule::from_config(
            false,
            &strings(&["*.H22", "000.00.00.G22"]),
            &strings(&["officer", "admin"]),
            &strings(&["dossier.write"]),
        )
        .unwrap();
        let ok = caller(Some("000.00.05.H22"), &["admin"], &["dossier.write", "x"]);
        assert!(rule.check(Some(&ok)).is_ok());
        let ok2 = caller(Some("000.00.00.G22"), &["officer"], &["dossier.write"]);
        assert!(rule.check(Some(&ok2)).is_ok());

        let cases = [
            (
                caller(Some("000.00.05.H29"), &["admin"], &["dossier.write"]),
                reason::AGENCY_NOT_ALLOWED,
            ),
            (
                caller(None, &["admin"], &["dossier.write"]),
                reason::AGENCY_NOT_ALLOWED,
            ),
            (
                caller(Some("000.00.05.H22"), &["reader"], &["dossier.write"]),
                reason::ROLE_MISSING,
            ),
            (
                caller(Some("000.00.05.H22"), &["admin"], &["dossier.read"]),
                reason::SCOPE_MISSING,
            ),
        ];
        for (c, why) in cases {
            let e = rule.check(Some(&c)).unwrap_err();
            assert_eq!((e.http_status(), e.reason()), (403, why));
            assert_eq!(e.client_error(), "insufficient_scope");
        }
        // Only roles required: agency-less callers are fine.
        let roles_only = AccessRule::from_config(false, &[], &strings(&["admin"]), &[]).unwrap();
        assert!(roles_only
            .check(Some(&caller(None, &["admin"], &[])))
            .is_ok());
    }
}
