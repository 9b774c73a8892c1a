//! `lienthong demo` in-process: the default config with the sandbox upstream moved to an
//! ephemeral port; five dossiers accepted, an outage of DVCQG, everything delivered after.

use crate::support::*;

#[tokio::test]
async fn demo_delivers_every_dossier_after_the_outage() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(here.join("config/lienthong.toml")).unwrap();
    let default_sandbox = "\"http://127.0.0.1:9100\"";
    assert!(
        text.contains(default_sandbox),
        "the default config's sandbox endpoint moved"
    );
    let port = dead_addr().await;
    let text = text.replace(default_sandbox, &format!("\"http://{port}\""));
    let cfg = lienthong::config::Config::parse(&text, &here.join("config"))
        .unwrap_or_else(|p| panic!("default config invalid:\n{p}"));

    let mut out = Vec::new();
    let s = lienthong::demo::run_with(cfg, &mut out)
        .await
        .unwrap_or_else(|e| panic!("the demo did not run: {e}"));
    let trace = String::from_utf8(out).unwrap();

    assert!(s.ok(), "{:?}\n{trace}", s.problems);
    assert_eq!(s.accepted.len(), 5, "{trace}");
    assert_eq!(s.filed_during_outage.len(), 2, "{trace}");
    assert_eq!(s.filed_during_outage, s.accepted[3..], "{trace}");
    // 5 dossiers + step, status and evaluation of the first; all delivered.
    assert_eq!(s.outbox_items, 8, "{trace}");
    assert_eq!(s.delivered, 8, "{trace}");
    // The evaluation is not a kind DVCQG takes: 5 DongBoHoSoMC + 2 CapNhatTienDoHoSoMC.
    assert!(s.sandbox_received >= 7, "{trace}");
    assert!(s.failed_attempts_during_outage >= 2, "{trace}");
    assert!(trace.contains("dvcqg → down"), "{trace}");
    assert!(trace.contains("dvcqg → ok"), "{trace}");
    assert!(trace.contains("failed, will retry"), "{trace}");
    assert!(trace.contains("Result: OK"), "{trace}");
    for code in &s.accepted {
        assert!(
            trace.contains(&format!("POST /v1/dossiers → 202 {code}")),
            "{trace}"
        );
    }
    assert!(!trace.contains(":9100"), "no fixed port: {trace}");
}
