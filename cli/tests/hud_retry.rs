//! `crcr hud retry` on the SQLite file of `crcr serve`: a record parked as
//! failed is listed by `--dry-run` (nothing changes), then put back in the
//! outbox; `crcr status` shows the failed count before and the pending one
//! after. Piped, it prints only the result (issue 11).

use std::process::{Command, Output};

use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::lifecycle::{HudOutbox, HudSync, JobKey, JobLifecycle, JobRecord, JobState, OutboxItem};
use crcr_core::ports::{Clock, SystemClock};
use crcr_embedded::sqlite::{Db, SqliteJobStore};
use serde_json::{json, Value};

fn crcr(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_crcr"))
        .args(args)
        .env_remove("CRCR_LOG")
        .env_remove("CRCR_DATABASE")
        .output()
        .expect("crcr runs");
    assert!(out.status.success(), "crcr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "nothing on stderr when piped");
    out
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

/// One job's in_progress record, parked as failed after HUD answered 500.
async fn parked(path: &std::path::Path) -> OutboxItem {
    let jobs = SqliteJobStore::new(Db::open(path).unwrap());
    let now = SystemClock.now_ms();
    let key = JobKey {
        delivery_id: DeliveryId::parse("f00d0000-0000-4000-8000-000000000001").unwrap(),
        repo: RepoFullName::parse("Ascend/pytorch").unwrap(),
        run_id: 7,
        run_attempt: 1,
        job_name: "build".into(),
    };
    let rec = JobRecord {
        key: key.clone(),
        state: JobState::InProgress,
        level: Level::L2,
        dispatched_at_ms: Some(now),
        in_progress_at_ms: Some(now),
        completed_at_ms: None,
        conclusion: None,
        queue_time_s: Some(0.0),
        execution_time_s: None,
        workflow_name: Some("CI".into()),
        url: None,
        updated_at_ms: now,
    };
    let body = crcr_core::callback::hud_body(&rec, &json!({"workflow": {"job_name": "build"}}));
    let item = OutboxItem::pending(&key, JobState::InProgress, body, now);
    assert!(jobs.transition(None, &rec, &item).await.unwrap());
    jobs.mark_outbox(&item.id, HudSync::Failed, Some("HUD answered 500: Internal error"), None, now).await.unwrap();
    item
}

#[tokio::test]
async fn hud_retry_puts_a_parked_record_back() {
    let db = std::env::temp_dir().join(format!("crcr-hud-retry-{}.sqlite", uuid::Uuid::new_v4().simple()));
    let item = parked(&db).await;
    let database = db.to_str().unwrap();

    let status = json_of(&crcr(&["status", "--json", "--no-peek", "--database", database]));
    assert_eq!((status["hud_outbox"]["failed"].as_u64(), status["hud_outbox"]["pending"].as_u64()), (Some(1), Some(0)));

    let dry = json_of(&crcr(&["hud", "retry", "--dry-run", "--json", "--database", database]));
    assert_eq!((dry["matched"].as_u64(), dry["requeued"].as_u64()), (Some(1), Some(1)), "{dry}");
    assert_eq!(dry["records"][0]["id"], item.id.as_str());
    assert_eq!(dry["records"][0]["last_error"], "HUD answered 500: Internal error");
    let other = json_of(&crcr(&["hud", "retry", "--json", "--repo", "org/other", "--database", database]));
    assert_eq!(other["matched"], 0, "the repository filter holds");

    let text = String::from_utf8(crcr(&["hud", "retry", "--database", database]).stdout).unwrap();
    assert!(text.contains(&item.id) && text.contains("1 parked record(s) read, 1 matched; 1 requeued"), "{text}");
    assert!(!text.contains('\r'), "no progress bar when piped: {text:?}");

    let status = json_of(&crcr(&["status", "--json", "--no-peek", "--database", database]));
    assert_eq!((status["hud_outbox"]["failed"].as_u64(), status["hud_outbox"]["pending"].as_u64()), (Some(0), Some(1)));
    let again = json_of(&crcr(&["hud", "retry", "--json", "--database", database]));
    assert_eq!(again["matched"], 0, "nothing parked any more");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}
