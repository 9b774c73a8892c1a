//! The `lienthong` command line.

use crate::config::Config;
use crate::runtime::Gateway;
use crate::server::Server;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "lienthong",
    version,
    about = "Interoperability gateway for Vietnamese e-government",
    long_about = "lienthong is a reverse-proxy gateway between a province's systems, its agencies \
and the national systems: it routes and proxies calls, translates payloads, authenticates \
callers, caches lookup data, exchanges dossiers durably and audits all traffic."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Config file.
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
    },
    /// Validate a config file: print every problem with its key path; exit 1 on any.
    Check {
        /// Config file.
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => serve(&config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            // Building pools also loads upstream TLS files; report those too.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let built = match rt {
                Ok(rt) => rt.block_on(async {
                    crate::runtime::Runtime::build(cfg.clone(), None, 1).map(|_| ())
                }),
                Err(e) => {
                    eprintln!("{}: cannot start a runtime: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            let mut problems = match built {
                Ok(()) => Vec::new(),
                Err(p) => p.0,
            };
            for l in &cfg.listeners {
                if let Some(t) = &l.tls {
                    if let Err(e) = crate::server::tls::build(t, l.http2) {
                        problems.push(crate::config::Problem {
                            path: format!("listeners[{}].tls", l.name),
                            message: e,
                        });
                    }
                }
            }
            if problems.is_empty() {
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes)",
                    path.display(),
                    cfg.listeners.len(),
                    cfg.upstreams.len(),
                    cfg.routes.len()
                );
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    println!("{p}");
                }
                eprintln!("{}: {} problem(s)", path.display(), problems.len());
                ExitCode::FAILURE
            }
        }
        Err(problems) => {
            for p in &problems.0 {
                println!("{p}");
            }
            eprintln!("{}: {} problem(s)", path.display(), problems.0.len());
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!(
                "{}: {} problem(s); not starting",
                path.display(),
                problems.0.len()
            );
            return ExitCode::FAILURE;
        }
    };
    crate::observe::init_logging(&cfg.log);
    let threads = cfg.server.worker_threads.or_else(|| {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    // One worker: a current-thread runtime does the same work without the
    // multi-thread scheduler's cross-thread bookkeeping.
    let mut builder = if threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = threads {
            b.worker_threads(n);
        }
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let gw = match Gateway::new(cfg) {
            Ok(g) => g,
            Err(p) => {
                eprintln!("{p}");
                return ExitCode::FAILURE;
            }
        };
        let server = match Server::bind(gw.clone()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        for (name, addr) in &server.addrs {
            tracing::info!(listener = %name, %addr, "listening");
        }
        if let Some(a) = server.admin_addr {
            tracing::info!(%a, "admin listening");
        }
        let tls = server.tls_handles();
        let reload_gw = gw.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                for t in &tls {
                    t.refresh(true);
                }
                match reload_gw.reload().await {
                    Ok(g) => tracing::info!(generation = g, "SIGHUP: config reloaded"),
                    Err(p) => tracing::error!(problems = %p, "SIGHUP: new config is invalid; keeping the running one"),
                }
            }
        });
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
