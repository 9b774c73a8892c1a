//! Who may call what (issue #3): JWT verification per RFC 8725 (`jwt`), key sets with
//! JWKS rotation (`keys`), the verified `Caller` (`caller`) and per-route access rules
//! (`rules`).

pub mod caller;
pub mod jwt;
pub mod keys;
pub mod rules;
