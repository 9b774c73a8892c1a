//! # lienthong — interoperability gateway for Vietnamese e-government
//!
//! ## Codemap (one line per module)
//! - [`cli`]       — the `lienthong` command: `serve`, `check`, `token`, `audit …`.
//! - [`config`]    — the TOML file as written ([`config::raw`]) → validated [`config::Config`]; every problem with its key path.
//! - [`runtime`]   — a config compiled for serving ([`runtime::Runtime`]) and the [`runtime::Gateway`] that swaps it on reload.
//! - [`server`]    — listeners, TLS (rotation, mTLS), HTTP/1.1 + HTTP/2, limits, idle/slow-client timeouts, graceful drain.
//! - [`pipeline`]  — the request path as stages in one function ([`pipeline::handle`]); normalisation, routing, headers, `respond`;
//!   [`pipeline::fast`], the HTTP/1 proxy and lookup path on bytes (httparse), which takes only requests whose every stage is the identity, the proxy rewrite, the token check or a lookup's answer, and hands the rest to `handle`.
//! - [`upstream`]  — pools: balancing, health (active + passive), breaker, retry budget, keep-alive, upstream TLS.
//! - [`body`]      — the one body type (streamed with a cap, buffered, empty) and the one capped-collect helper.
//! - [`error`]     — the one error type; kinds say whose fault it is.
//! - [`admin`]     — the admin listener: health, readiness, metrics, config, upstreams, reload; refuses browsers' requests (`Origin`, foreign `Host`).
//! - [`auth`]      — JWT verification (RFC 8725), key sets and JWKS rotation, callers, access rules.
//! - [`translate`] — the streaming XML↔JSON engine and SOAP envelopes; knows nothing about HTTP.
//! - [`adapter`]   — per-system adapters as data (`adapters/<system>/`): operations = format → mapping → format, fixtures run at load.
//! - [`cache`]     — lookup data in moka (coalescing, refresh-ahead, serve-stale) and the GET response cache.
//! - [`exchange`]  — dossier model and validation, the intake channel, outbox delivery engine.
//! - [`audit`]     — the tamper-evident audit log: Merkle tree, signed checkpoints, framed records, writer, verifier.
//! - [`store`]     — persistence of exchange and audit behind one module: SQLite (WAL, `synchronous=FULL`, versioned schemas), one writer thread per store.
//! - [`sandbox`]   — simulated counterparts (DVCQG-like portal, SOAP agency) switchable ok/slow/failing/down.
//! - [`demo`]      — `lienthong demo`: gateway + sandbox in one process, a scripted dossier exchange with an outage, a readable trace.
//! - [`observe`]   — metrics recorder and logging; one access-log line per request.
//! - [`alloc`]     — the global allocator (mimalloc, asked for plain `mi_malloc` where the alignment allows); the crate's only `unsafe`.
//! - [`clock`]     — the one injectable clock (monotonic + wall) behind every expiry, freshness and retry policy; `mono_ms`, the request path's coarse millisecond clock.
//!
//! ## A second shape beside the one in the architecture sketch
//! The sketch has one request path. lienthong has one *decision* path and two ways to run
//! it: [`pipeline::handle`] over hyper for everything, and [`pipeline::fast`] over bytes
//! for the plain proxy requests that are most of a gateway's traffic. hyper's HTTP/1 server
//! and client, with `http::HeaderMap`s built, rewritten and written out four times per
//! exchange, cost about as much CPU as nginx's whole proxy before any stage ran (callgrind:
//! 19.2k instructions per request for a bare hyper proxy, 35.1k for lienthong); the fast
//! path parses the head once, decides, and writes the upstream head once (14.9k). It
//! stays honest by construction: it accepts a request only when each stage of `handle`
//! would be the identity or the rewrite it repeats, and anything else — every refusal
//! before the auth stage included — goes to `handle` with the connection before any of it
//! has been acted on. The auth stage itself is shared, not repeated: a route that checks
//! tokens calls the same `AuthRuntime::check_rule` (or its verified-token cache) on both
//! paths. Errors still go through `respond::finish`, upstream accounting through the
//! pool's shared helpers (`upstream::raw`).
//!
//! ## Invariants that hold across modules
//! - Only `pipeline::respond` maps errors to status codes and builds error bodies, on the
//!   public listeners and the admin listener alike; every error body is JSON
//!   `{"code","message","request_id"}` and never carries internals.
//! - Routing sees only the normalised path, and the upstream receives exactly that path
//!   (after the route's strip/rewrite): no other spelling of a path reaches a route.
//! - Upstream addresses come only from config; redirects are never followed.
//! - A request runs on the config snapshot it started with; reloads swap atomically and
//!   an invalid new config leaves the running one in place.
//! - Hop-by-hop fields never cross the gateway; forwarding fields are the gateway's own.
//! - `Content-Length` on the wire is derived from the body actually sent.
//! - `observe::record` runs for every request, refused ones included, and with `[audit]`
//!   every request leaves exactly one audit record (`pipeline::audit_stage`), a request
//!   whose future is dropped before its answer too (`interrupted`, 499: `pipeline::handle`).
//! - The gateway owns every `X-Lienthong-*` request header: client-sent copies are dropped.
//! - Routes deny by default: only `auth = { anonymous = true }` lets a request through unverified.
//! - Secrets come from files or environment variables, live in `config::SecretValue` (which
//!   never prints its value) and never reach logs, errors or audit records.
//! - Whole-body buffering happens only in `body::collect_capped`, always under a cap.
//! - Shutdown order: listeners stop, connections drain (those left at the drain timeout are
//!   closed), deliveries in progress finish, then the audit log closes, so every
//!   exchange's record is submitted before it does.
//! - Intake data is its callers': an `Idempotency-Key` is scoped to its caller, and a
//!   dossier's timeline is shown, and its events accepted, only from those with a part in
//!   it (submitter, receiving unit) or a role configured for it.

pub mod adapter;
pub mod admin;
pub mod alloc;
pub mod audit;
pub mod auth;
pub mod body;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod exchange;
pub mod observe;
pub mod pipeline;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod translate;
pub mod upstream;
