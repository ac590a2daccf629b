//! `crcr target list|pause|resume` on the SQLite file of `crcr serve`
//! (issue 15): a breaker the relay opened shows as `open` with its reason
//! in `crcr target list` and `crcr status`; on-call pauses another target
//! and resumes the first, and the relay's own breakers see both at once.

use std::process::{Command, Output};
use std::sync::Arc;

use crcr_core::breaker::{Admission, BreakerSettings, Breakers};
use crcr_core::domain::RepoFullName;
use crcr_core::ports::SystemClock;
use crcr_embedded::sqlite::{Db, SqliteKv};
use serde_json::Value;

fn crcr(args: &[&str], allowlist: &std::path::Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_crcr"))
        .args(args)
        .env_remove("CRCR_LOG")
        .env_remove("CRCR_DATABASE")
        .env_remove("CRCR_ALLOWLIST_URL")
        .env("CRCR_ALLOWLIST_FILE", allowlist)
        .output()
        .expect("crcr runs");
    assert!(out.status.success(), "crcr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

#[tokio::test]
async fn on_call_lists_pauses_and_resumes_targets_the_relay_sees() {
    let dir = std::env::temp_dir().join(format!("crcr-target-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (db_path, allowlist) = (dir.join("crcr.sqlite"), dir.join("allowlist.yml"));
    std::fs::write(&allowlist, "L1: [vendor-a/backend]\nL4: [vendor-b/backend]\n").unwrap();
    let database = db_path.to_str().unwrap();
    // The relay's breakers on that file: vendor-a fails for good 5 times.
    let relay = Breakers::new(
        Arc::new(SqliteKv::new(Db::open(&db_path).unwrap(), Arc::new(SystemClock))),
        BreakerSettings { cache_for: std::time::Duration::ZERO, ..Default::default() },
        Arc::new(SystemClock),
    );
    let (a, b) = (RepoFullName::parse("vendor-a/backend").unwrap(), RepoFullName::parse("vendor-b/backend").unwrap());
    for _ in 0..5 {
        relay.refused(&a, "404 Not Found").await.unwrap();
    }

    let list = json_of(&crcr(&["target", "list", "--json", "--database", database], &allowlist));
    let states: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|l| (l["repo"].as_str().unwrap(), l["state"].as_str().unwrap())).collect();
    assert_eq!(states, [("vendor-a/backend", "open"), ("vendor-b/backend", "sending")]);
    assert_eq!(list[0]["breaker"]["failures"], 5);
    let text = String::from_utf8(crcr(&["target", "list", "--database", database], &allowlist).stdout).unwrap();
    assert!(text.contains("5 dispatches in a row failed for good"), "{text}");
    assert!(text.contains("1 of 2 targets paused"), "{text}");
    let status = json_of(&crcr(&["status", "--json", "--no-peek", "--database", database], &allowlist));
    assert_eq!(status["paused_targets"]["targets"][0]["repo"], "vendor-a/backend", "{status}");

    // On-call pauses vendor-b: the relay stops dispatching there, with no probe.
    let paused = json_of(&crcr(
        &[
            "target",
            "pause",
            "vendor-b/backend",
            "--reason",
            "vendor migrating CI",
            "--by",
            "alice",
            "--json",
            "--database",
            database,
        ],
        &allowlist,
    ));
    assert_eq!(paused["state"], "paused");
    assert_eq!(
        relay.admit(&b).await.unwrap(),
        Admission::Paused { reason: "paused by alice: vendor migrating CI".into(), probe_at_ms: None }
    );
    // ... and resumes vendor-a: the relay sends there again.
    let resumed =
        String::from_utf8(crcr(&["target", "resume", "vendor-a/backend", "--database", database], &allowlist).stdout)
            .unwrap();
    assert!(resumed.contains("vendor-a/backend: sending again (was open)"), "{resumed}");
    assert_eq!(relay.admit(&a).await.unwrap(), Admission::Send);
    let status = crcr(&["status", "--no-peek", "--database", database], &allowlist);
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(
        text.contains("targets: 1 paused") && text.contains("vendor-b/backend (paused): paused by alice"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
