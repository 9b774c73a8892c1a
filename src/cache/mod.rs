//! Lookup data served from one cache (issue #5): catalogues, agency and
//! administrative-unit codes, status maps. `lookup` is the moka-backed cache with
//! coalescing, refresh-ahead and serve-stale, plus the optional response cache for
//! GET proxy routes; `table` loads local CSV/JSON tables (the shipped
//! administrative-unit table among them).

pub mod lookup;
pub mod serve;
pub mod table;
