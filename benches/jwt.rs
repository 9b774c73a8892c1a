//! Token verification cost per algorithm through lienthong's authenticator:
//! first use, full (uncached) verification and a verified-cache hit. Keys are
//! generated with `openssl` into a scratch folder. Run: `cargo bench --bench jwt`.

use jsonwebtoken::Algorithm;
use lienthong::auth::jwt::{
    bench_verify, mint, AuthOptions, Authenticator, IssuerConfig, KeySource,
};
use lienthong::auth::keys::{CountingFetcher, KeySet, VerifyingKey};
use lienthong::clock::SystemClock;
use std::process::Command;
use std::sync::Arc;

fn openssl(args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "openssl {args:?} failed (is openssl installed?)");
}

fn main() {
    let dir = std::env::temp_dir().join(format!("lienthong-jwtbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p("p256.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        &p("p384.pem"),
    ]);
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", &p("ed.pem")]);
    for k in ["rsa", "p256", "p384", "ed"] {
        openssl(&[
            "pkey",
            "-in",
            &p(&format!("{k}.pem")),
            "-pubout",
            "-out",
            &p(&format!("{k}.pub.pem")),
        ]);
    }
    let secret = b"0123456789abcdef0123456789abcdef-bench".to_vec();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| algorithm | first use µs | uncached verify µs | cached hit µs |");
    println!("|---|---:|---:|---:|");
    let cases: [(Algorithm, &str); 6] = [
        (Algorithm::RS256, "rsa"),
        (Algorithm::PS256, "rsa"),
        (Algorithm::ES256, "p256"),
        (Algorithm::ES384, "p384"),
        (Algorithm::EdDSA, "ed"),
        (Algorithm::HS256, ""),
    ];
    for (alg, file) in cases {
        let (signing, keys) = if alg == Algorithm::HS256 {
            (
                secret.clone(),
                KeySet::new(vec![
                    VerifyingKey::from_hmac_secret(&secret, Some("k")).unwrap()
                ]),
            )
        } else {
            let priv_pem = std::fs::read(dir.join(format!("{file}.pem"))).unwrap();
            let pub_path = dir.join(format!("{file}.pub.pem"));
            (
                priv_pem,
                KeySet::from_pem_file(&pub_path, Some("k")).unwrap(),
            )
        };
        let issuer = IssuerConfig::new(
            "bench",
            "bench-idp",
            vec!["lienthong".into()],
            vec![alg],
            KeySource::Static(keys),
        );
        let auth = Authenticator::new(
            vec![issuer],
            AuthOptions::default(),
            Arc::new(CountingFetcher::new(Vec::new())),
            Arc::new(SystemClock),
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({"iss": "bench-idp", "aud": "lienthong", "sub": "s", "iat": now, "exp": now + 600, "agency": "000.00.01.H22"});
        let token = mint(&signing, alg, claims, Some("k")).unwrap();
        let r = rt.block_on(bench_verify(&auth, &token, 2000)).unwrap();
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {alg:?} | {:.1} | {:.1} | {:.2} |",
            us(r.first_use),
            us(r.uncached_mean),
            us(r.cached_mean)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
