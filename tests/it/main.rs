//! lienthong integration suite: one binary, modules per area.

mod support;

mod adapters;
mod audit;
mod auth;
mod demo;
mod fast;
mod headers;
mod intake;
mod limits;
mod lookups;
mod process;
mod reload;
mod routing;
mod tls;
mod translate;
mod upstream;
