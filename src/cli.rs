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
    /// Mint a development token with an issuer's `dev_signing_key` (local testing only).
    Token {
        /// Config file.
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
        /// Issuer name (default: the first issuer with a dev_signing_key).
        #[arg(long)]
        issuer: Option<String>,
        /// Subject (officer or system).
        #[arg(long, default_value = "dev-officer")]
        sub: String,
        /// Agency code (mã định danh), e.g. 000.00.01.H22.
        #[arg(long, default_value = "000.00.01.H22")]
        agency: String,
        /// Roles, comma-separated.
        #[arg(long, default_value = "")]
        roles: String,
        /// Scopes, space-separated.
        #[arg(long, default_value = "")]
        scope: String,
        /// Audience (default: the issuer's first).
        #[arg(long)]
        aud: Option<String>,
        /// Lifetime, e.g. 15m (at most the issuer's max_lifetime).
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
    /// The audit log: verify it offline, prove a record's inclusion, export, query.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run simulated counterparts (DVCQG-like portal, SOAP agency) on loopback.
    Sandbox {
        /// Address to listen on (the default config's `sandbox` upstream).
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: std::net::SocketAddr,
    },
    /// Run one adapter step on a file and print the output (to try a mapping or write a fixture).
    Adapter {
        /// The adapter's folder, e.g. adapters/dvcqg.
        dir: PathBuf,
        /// `Operation.request` or `Operation.response`.
        step: String,
        /// Input file.
        input: PathBuf,
        /// Context values the mappings read as `$ctx.NAME`: `--context name=value`.
        #[arg(long = "context", value_name = "NAME=VALUE")]
        context: Vec<String>,
    },
    /// Validate a config file: print every problem with its key path; exit 1 on any.
    Check {
        /// Config file.
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
    },
    /// Run the gateway with the sandbox in one process, file dossiers, take DVCQG down and
    /// back, and print where each dossier went and when (temporary data, ephemeral ports).
    Demo {
        /// Config file.
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every record and checkpoint of the audit database; names the first bad record.
    /// Checkpoints' RFC 3161 time-stamp tokens are checked too, against the TSA certificate.
    Verify {
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
        /// Database file (default: the config's `[audit].db`).
        #[arg(long)]
        db: Option<PathBuf>,
        /// TSA certificate, PEM (default: the config's [audit.timestamp].cert).
        #[arg(long)]
        tsa_cert: Option<PathBuf>,
    },
    /// Print an inclusion proof of record INDEX against a signed checkpoint, as JSON.
    Prove {
        index: u64,
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
        /// Prove against the checkpoint of this size (default: the latest).
        #[arg(long)]
        size: Option<u64>,
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Check a proof printed by `prove` (offline, with the verifier key only).
    CheckProof {
        /// Proof JSON file ("-" for standard input).
        file: PathBuf,
        /// Verifier key (`lienthong audit key`); default: derived from the config.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
    },
    /// Write records as JSON Lines with the checkpoint needed to verify them.
    Export {
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        dossier: Option<String>,
        #[arg(long)]
        agency: Option<String>,
        #[arg(long)]
        route: Option<String>,
    },
    /// Verify an export file offline.
    VerifyExport {
        file: PathBuf,
        #[arg(long)]
        key: Option<String>,
        /// TSA certificate (PEM) to check the export's time-stamp token with.
        #[arg(long)]
        tsa_cert: Option<PathBuf>,
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
    },
    /// Search records (JSON Lines on standard output).
    Query {
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        dossier: Option<String>,
        #[arg(long)]
        agency: Option<String>,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        status: Option<u16>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the verifier key that checks this log's checkpoints (publish it).
    Key {
        #[arg(long, short, default_value = "config/lienthong.toml")]
        config: PathBuf,
    },
}

fn audit_cfg(config: &std::path::Path) -> Result<crate::config::AuditCfg, String> {
    let cfg = Config::load(config).map_err(|p| p.to_string())?;
    cfg.audit
        .ok_or_else(|| "this config has no [audit] section".to_string())
}

/// The TSA certificate: the one named, else the config's `[audit.timestamp].cert`.
fn tsa_cert(
    named: Option<&std::path::Path>,
    a: Option<&crate::config::AuditCfg>,
) -> Result<Option<crate::audit::timestamp::TsaCerts>, String> {
    let path = match named {
        Some(p) => p.to_path_buf(),
        None => match a.and_then(|a| a.timestamp.as_ref()) {
            Some(t) => t.cert.clone(),
            None => return Ok(None),
        },
    };
    let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::audit::timestamp::TsaCerts::from_pem(&pem)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn verifier(
    config: &std::path::Path,
    key: Option<String>,
) -> Result<crate::audit::checkpoint::VerifierKey, String> {
    match key {
        Some(k) => crate::audit::checkpoint::VerifierKey::parse(&k).map_err(|e| e.to_string()),
        None => {
            let a = audit_cfg(config)?;
            Ok(crate::audit::load_signing_key(&a.key, &a.origin)?.verifier_key())
        }
    }
}

fn audit_command(cmd: AuditCommand) -> Result<bool, String> {
    use crate::audit::writer;
    use crate::store::audit::Filter;
    match cmd {
        AuditCommand::Verify {
            config,
            db,
            tsa_cert: named_tsa,
        } => {
            let a = audit_cfg(&config)?;
            let key = verifier(&config, None)?;
            let path = db.unwrap_or(a.db.clone());
            let tsa = tsa_cert(named_tsa.as_deref(), Some(&a))?;
            let report = writer::verify_db(&path, &key, &a.origin).map_err(|e| e.to_string())?;
            match &report.first_bad {
                None => {
                    println!(
                        "ok: {} records, {} checkpoints verified, root {}",
                        report.records,
                        report.checkpoints_ok,
                        crate::audit::merkle::hash_to_base64(&report.root)
                    );
                    match tsa {
                        Some(tsa) => {
                            let t = writer::verify_timestamps(&path, &tsa, &key, &a.origin)
                                .map_err(|e| e.to_string())?;
                            if let Some((size, why)) = &t.first_bad {
                                println!(
                                    "FAILED: time-stamp token of checkpoint {size}: {why} ({} tokens verified before it)",
                                    t.ok.len()
                                );
                                return Ok(false);
                            }
                            match t.ok.last() {
                                Some((size, gen)) => println!(
                                    "ok: {} time-stamp tokens verified for {} checkpoints (TSA {}); records up to {size} existed by {}; {} later records not yet covered by a token",
                                    t.ok.len(),
                                    t.checkpoints,
                                    tsa.fingerprints(),
                                    crate::audit::record::format_epoch_ms(*gen),
                                    t.uncovered
                                ),
                                None => println!(
                                    "no time-stamp tokens stored for the {} checkpoints",
                                    t.checkpoints
                                ),
                            }
                        }
                        None => {
                            let n = crate::store::audit::Store::open_read_only(&path)
                                .and_then(|s| s.timestamp_count())
                                .map_err(|e| e.to_string())?;
                            if n > 0 {
                                println!(
                                    "{n} time-stamp tokens not checked: give --tsa-cert or [audit.timestamp].cert"
                                );
                            }
                        }
                    }
                    Ok(true)
                }
                Some((index, problem)) => {
                    println!(
                        "FAILED at record {index}: {problem:?} ({} records read)",
                        report.records
                    );
                    Ok(false)
                }
            }
        }
        AuditCommand::Prove {
            index,
            config,
            size,
            db,
        } => {
            let a = audit_cfg(&config)?;
            let proof =
                writer::prove(&db.unwrap_or(a.db), index, size).map_err(|e| e.to_string())?;
            let v = serde_json::json!({
                "record": proof.record,
                "proof": proof.proof,
                "checkpoint": proof.checkpoint,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            );
            Ok(true)
        }
        AuditCommand::CheckProof { file, key, config } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| e.to_string())?;
                s
            } else {
                std::fs::read_to_string(&file).map_err(|e| e.to_string())?
            };
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let proof = writer::RecordProof {
                record: v["record"].as_str().unwrap_or_default().to_string(),
                proof: serde_json::from_value(v["proof"].clone()).map_err(|e| e.to_string())?,
                checkpoint: v["checkpoint"].as_str().unwrap_or_default().to_string(),
            };
            let key = verifier(&config, key)?;
            let origin = crate::audit::checkpoint::SignedCheckpoint::parse(&proof.checkpoint)
                .map_err(|e| e.to_string())?
                .checkpoint()
                .origin
                .clone();
            match proof.verify(&key, &origin) {
                Ok(rec) => {
                    println!(
                        "ok: record {} is in the log (request {})",
                        proof.proof.leaf_index, rec.request_id
                    );
                    Ok(true)
                }
                Err(e) => {
                    println!("FAILED: {e}");
                    Ok(false)
                }
            }
        }
        AuditCommand::Export {
            config,
            db,
            dossier,
            agency,
            route,
        } => {
            let a = audit_cfg(&config)?;
            let filter = Filter {
                dossier,
                agency,
                route,
                ..Filter::default()
            };
            let out = std::io::stdout();
            let s = writer::export_jsonl(&db.unwrap_or(a.db), &filter, out.lock())
                .map_err(|e| e.to_string())?;
            eprintln!("{s:?}");
            Ok(true)
        }
        AuditCommand::VerifyExport {
            file,
            key,
            tsa_cert: named_tsa,
            config,
        } => {
            let tsa = match &named_tsa {
                Some(p) => tsa_cert(Some(p), None)?,
                None => audit_cfg(&config)
                    .ok()
                    .and_then(|a| tsa_cert(None, Some(&a)).ok().flatten()),
            };
            let key = verifier(&config, key)?;
            let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let r = writer::verify_export(std::io::BufReader::new(f), &key)
                .map_err(|e| e.to_string())?;
            match &r.first_bad {
                None => {
                    println!(
                        "ok: {} records verified against checkpoint {} of {}",
                        r.records_ok, r.checkpoint_size, r.origin
                    );
                    match (tsa, r.timestamp_token.is_some()) {
                        (None, false) => {}
                        (Some(_), false) if named_tsa.is_some() => {
                            println!("FAILED: the export's checkpoint has no time-stamp token");
                            return Ok(false);
                        }
                        (Some(_), false) => {
                            println!("the export's checkpoint has no time-stamp token")
                        }
                        (None, true) => println!(
                            "the checkpoint's time-stamp token is not checked: give --tsa-cert"
                        ),
                        (Some(tsa), true) => match r.check_timestamp(&tsa) {
                            Some(Ok(t)) => println!(
                                "ok: checkpoint timestamped by the TSA at {}",
                                crate::audit::record::format_epoch_ms(t.gen_time_ms)
                            ),
                            Some(Err(e)) => {
                                println!("FAILED: the checkpoint's time-stamp token: {e}");
                                return Ok(false);
                            }
                            None => {}
                        },
                    }
                    Ok(true)
                }
                Some((line, why)) => {
                    println!("FAILED at line {line}: {why}");
                    Ok(false)
                }
            }
        }
        AuditCommand::Query {
            config,
            db,
            dossier,
            agency,
            route,
            status,
            limit,
        } => {
            let a = audit_cfg(&config)?;
            let filter = Filter {
                dossier,
                agency,
                route,
                status,
                limit: Some(limit),
                ..Filter::default()
            };
            for (i, rec) in
                writer::query(&db.unwrap_or(a.db), &filter).map_err(|e| e.to_string())?
            {
                println!("{}", serde_json::json!({"index": i, "record": rec}));
            }
            Ok(true)
        }
        AuditCommand::Key { config } => {
            println!("{}", verifier(&config, None)?);
            Ok(true)
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Adapter {
            dir,
            step,
            input,
            context,
        } => match adapter_run(&dir, &step, &input, &context) {
            Ok(out) => {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&out);
                println!();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lienthong adapter: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => serve(&config),
        Command::Demo { config } => crate::demo::run(&config),
        Command::Sandbox { listen } => {
            crate::observe::init_logging(&crate::config::LogConfig {
                format: crate::config::LogFormat::Text,
                level: "info".into(),
                access_log: false,
            });
            let rt = match current_thread_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            rt.block_on(async move {
                let l = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("sandbox: cannot bind {listen}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                tracing::info!(%listen, "sandbox counterparts listening (dvcqg, agency); switch with POST /sandbox/mode?system=dvcqg&mode=ok|slow|failing|down");
                tokio::select! {
                    _ = crate::sandbox::serve(l, std::sync::Arc::new(crate::sandbox::Sandbox::default())) => {}
                    _ = shutdown_signal() => {}
                }
                ExitCode::SUCCESS
            })
        }
        Command::Audit { command } => match audit_command(command) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("lienthong audit: {e}");
                ExitCode::from(2)
            }
        },
        Command::Token {
            config,
            issuer,
            sub,
            agency,
            roles,
            scope,
            aud,
            ttl,
        } => match Config::load(&config)
            .map_err(|p| p.to_string())
            .and_then(|cfg| mint_token(&cfg, issuer, &sub, &agency, &roles, &scope, aud, &ttl))
        {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lienthong token: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn adapter_run(
    dir: &std::path::Path,
    step: &str,
    input: &std::path::Path,
    context: &[String],
) -> Result<Vec<u8>, String> {
    let a = crate::adapter::load_unchecked(dir).map_err(|p| {
        p.iter()
            .map(|(k, m)| format!("{k}: {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let (op, side) = step
        .rsplit_once('.')
        .ok_or("the step is Operation.request or Operation.response")?;
    let op = a
        .operations
        .get(op)
        .ok_or_else(|| format!("no operation {op:?} in {}", dir.display()))?;
    let s = match side {
        "request" => op.request.as_ref(),
        "response" => op.response.as_ref(),
        _ => None,
    }
    .ok_or_else(|| format!("no step {step:?}"))?;
    let mut ctx = crate::adapter::Context::new();
    for c in context {
        let (k, v) = c.split_once('=').ok_or("--context takes NAME=VALUE")?;
        ctx.insert(k.to_string(), v.to_string());
    }
    let body = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    s.run(&body, &ctx)
        .map(|o| o.body)
        .map_err(|e| e.to_string())
}

/// Mints a development token with an issuer's `dev_signing_key` (`lienthong token`, `lienthong demo`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mint_token(
    cfg: &Config,
    issuer: Option<String>,
    sub: &str,
    agency: &str,
    roles: &str,
    scope: &str,
    aud: Option<String>,
    ttl: &str,
) -> Result<String, String> {
    let ic = cfg
        .auth
        .issuers
        .iter()
        .find(|i| match &issuer {
            Some(n) => &i.name == n,
            None => i.dev_signing_key.is_some(),
        })
        .ok_or("no issuer with a dev_signing_key in this config")?;
    let key_path = ic
        .dev_signing_key
        .as_ref()
        .ok_or("this issuer has no dev_signing_key")?;
    let key = std::fs::read(key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let alg = ic
        .algorithms
        .iter()
        .find(|a| a.as_str() != "HS256")
        .ok_or("the issuer accepts no asymmetric algorithm")?;
    let alg: jsonwebtoken::Algorithm = alg
        .parse()
        .map_err(|_| format!("unknown algorithm {alg}"))?;
    let ttl = crate::config::parse_duration(ttl)?;
    if ttl > ic.max_lifetime {
        return Err(format!(
            "ttl is longer than the issuer's max_lifetime ({})",
            crate::config::format_duration(ic.max_lifetime)
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "iss": ic.iss,
        "aud": aud.unwrap_or_else(|| ic.audiences[0].clone()),
        "sub": sub,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    if !agency.is_empty() {
        claims["agency"] = agency.into();
    }
    let roles: Vec<&str> = roles.split(',').filter(|r| !r.is_empty()).collect();
    if !roles.is_empty() {
        claims["roles"] = roles.into();
    }
    if !scope.is_empty() {
        claims["scope"] = scope.into();
    }
    let kid = match &ic.keys {
        crate::config::IssuerKeysCfg::PublicKey { kid, .. } => kid.clone(),
        _ => None,
    };
    crate::auth::jwt::mint(&key, alg, claims, kid.as_deref()).map_err(|e| e.to_string())
}

/// A current-thread tokio runtime for the one-shot commands; the error is already reported.
pub(crate) fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
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
                    "{}: ok ({} listeners, {} upstreams, {} routes, {} adapters with {} fixtures passing)",
                    path.display(),
                    cfg.listeners.len(),
                    cfg.upstreams.len(),
                    cfg.routes.len(),
                    cfg.adapters.systems.len(),
                    cfg.adapters.systems.values().map(|a| a.fixtures).sum::<usize>()
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
        // Signals are taken over before anything slow (audit recovery, the startup
        // retention run): until then SIGHUP's default action would kill the process.
        let shutdown = shutdown_signal();
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
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
            let Ok(mut hup) = hup else {
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
        server.run(shutdown).await;
        // Connections are closed; deliveries in progress finish (or are cut off) before
        // the audit log closes, so that every attempt's record is in it.
        if let Some(x) = gw.runtime().exchange.clone() {
            x.stop().await;
        }
        // Drain the audit queue and sign a final checkpoint before exiting. Records that
        // could not be written make the exit a failure, for whoever supervises us.
        if let Some(a) = gw.runtime().audit.clone() {
            if let Err(e) = a.writer.shutdown().await {
                tracing::error!(error = %e, "audit log shutdown failed");
                return ExitCode::FAILURE;
            }
        }
        ExitCode::SUCCESS
    })
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
}
