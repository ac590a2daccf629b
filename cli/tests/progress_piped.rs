//! The long on-call commands draw a progress bar only for people: run as
//! scripts run them (stdout and stderr piped), `crcr dlq replay` and `crcr
//! redeliver` print the result on stdout and nothing on stderr, with and
//! without `--json` (issue 11). The bar itself is tested in
//! `cli/src/progress.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use crcr_core::ports::{Clock, QueueReceive, QueueSend, QueueSettle, QueueSide, SystemClock};
use crcr_embedded::sqlite::{Db, SqliteQueue};
use crcr_standin::{HookDeliverySeed, StandIn, StandInOptions};

/// `crcr <args>` with stdout and stderr piped (what `Command::output` does).
fn crcr(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crcr"));
    c.args(args).env_remove("CRCR_LOG").env_remove("CRCR_DATABASE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("crcr runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_db(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("crcr-cli-{tag}-{}.sqlite", uuid::Uuid::new_v4().simple()))
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// `n` dead-lettered pushes in a new database file; returns their delivery ids.
async fn dead_lettered(path: &Path, n: usize) -> Vec<String> {
    let q = SqliteQueue::new(Db::open(path).unwrap(), "dispatch", 5);
    let mut ids = Vec::new();
    for _ in 0..n {
        let delivery = uuid::Uuid::new_v4().to_string();
        let body = format!(
            r#"{{"type":"dispatch_v1","delivery_id":"{delivery}","event":"push","action":null,"received_at_ms":{},"payload":{{"inline":{{"ref":"refs/heads/main"}}}}}}"#,
            SystemClock.now_ms()
        );
        q.send(&body).await.unwrap();
        let m = q.receive(QueueSide::Source, 1, Duration::from_secs(30), Duration::ZERO).await.unwrap();
        q.dead_letter(&m[0], "still failing after 5 receives: org/a: 503 Service Unavailable").await.unwrap();
        ids.push(delivery);
    }
    ids
}

#[tokio::test]
async fn dlq_replay_piped_prints_only_the_result() {
    let db = temp_db("replay-piped");
    let ids = dead_lettered(&db, 3).await;
    let database = db.to_str().unwrap();

    // --json: the report, parseable, and nothing else.
    let out = crcr(&["dlq", "replay", "--json", "--rate", "0", "--id", &ids[0], "--database", database], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "no progress on stderr");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON report alone");
    assert_eq!(report["done"][0]["delivery_id"], ids[0].as_str());
    assert_eq!(report["done"].as_array().unwrap().len(), 1);

    // For people, but piped: the table, no progress either.
    let out = crcr(&["dlq", "replay", "--rate", "0", "--database", database], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "no progress on stderr");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("2 moved, 0 skipped, 0 failed") && stdout.contains(&ids[2]), "{stdout}");
    assert!(!stdout.contains('\r'), "no bar on stdout either: {stdout:?}");
    remove_db(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_piped_prints_only_the_result() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let ago = SystemTime::now() - Duration::from_secs(600);
    for guid in ["guid-1", "guid-2"] {
        gh.add_hook_delivery(HookDeliverySeed::new(guid, "pull_request", 502, ago).action("opened"));
    }
    let env = [
        ("CRCR_GITHUB_APP_ID", gh.app_id().to_string()),
        ("CRCR_GITHUB_APP_PRIVATE_KEY", gh.private_key_pem()),
        ("CRCR_GITHUB_API_URL", gh.base_url()),
    ];
    let db = temp_db("redeliver-piped");
    Db::open(&db).unwrap();
    let database = db.to_str().unwrap().to_owned();

    let (env2, database2) = (env.clone(), database.clone());
    let out = tokio::task::spawn_blocking(move || crcr(&["redeliver", "--json", "--database", &database2], &env2))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "no progress on stderr");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON report alone");
    assert_eq!(report["redelivered"], 2);

    let out = tokio::task::spawn_blocking(move || crcr(&["redeliver", "--since", "1h", "--database", &database], &env))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "no progress on stderr");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("redelivered 0") && stdout.contains("2 already OK"), "{stdout}");
    assert_eq!(gh.redelivery_requests().len(), 2, "each asked for once");
    remove_db(&db);
}
