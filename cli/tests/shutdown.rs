//! `crcr serve` stops within a few seconds of SIGTERM whatever it is doing
//! (issue 11): here while a sweep is busy sending HUD records to a HUD that
//! takes 8 s per answer. What it had not sent is sent by the next start,
//! at once (the sweep gave its outbox lease back).

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::lifecycle::{HudOutbox, JobKey, JobLifecycle, JobRecord, JobState, OutboxItem};
use crcr_core::ports::{Clock, SystemClock};
use crcr_embedded::sqlite::{Db, SqliteJobStore};
use crcr_standin::hud::Hud;
use crcr_standin::{StandIn, StandInOptions};
use serde_json::json;

const RECORDS: usize = 40;

fn temp_db() -> PathBuf {
    std::env::temp_dir().join(format!("crcr-shutdown-{}.sqlite", uuid::Uuid::new_v4().simple()))
}

/// `RECORDS` HUD records left pending by an earlier run (in_progress of as
/// many jobs, bodies as the callback action sends them).
async fn pending_records(path: &Path) {
    let jobs = SqliteJobStore::new(Db::open(path).unwrap());
    let now = SystemClock.now_ms();
    for i in 0..RECORDS {
        let key = JobKey {
            delivery_id: DeliveryId::parse(&format!("5d000000-0000-4000-8000-{i:012}")).unwrap(),
            repo: RepoFullName::parse("Ascend/pytorch").unwrap(),
            run_id: 100 + i as u64,
            run_attempt: 1,
            job_name: "build".into(),
        };
        let rec = JobRecord {
            key: key.clone(),
            state: JobState::InProgress,
            level: Level::L2,
            dispatched_at_ms: Some(now - 5_000),
            in_progress_at_ms: Some(now),
            completed_at_ms: None,
            conclusion: None,
            queue_time_s: Some(5.0),
            execution_time_s: None,
            workflow_name: Some("CI".into()),
            url: None,
            updated_at_ms: now,
        };
        let callback = json!({"event_type": "push", "delivery_id": key.delivery_id.as_str(), "payload": {},
            "workflow": {"schema_version": "1", "status": "in_progress", "conclusion": null, "name": "CI",
                "url": format!("https://github.com/Ascend/pytorch/actions/runs/{}", key.run_id),
                "run_id": key.run_id.to_string(), "run_attempt": "1", "job_name": "build",
                "check_run_id": format!("{}-1", key.run_id), "started_at": "2026-12-03T10:00:00Z", "completed_at": null}});
        let body = crcr_core::callback::hud_body(&rec, &callback);
        let item = OutboxItem::pending(&key, JobState::InProgress, body, now);
        assert!(jobs.transition(None, &rec, &item).await.unwrap());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(db: &Path, gh: &StandIn, hud: &Hud) -> Child {
    let allowlist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/allowlist/pytorch-allowlist.yml");
    Command::new(env!("CARGO_BIN_EXE_crcr"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CRCR_LOG", "info")
        .env("CRCR_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CRCR_DATABASE", db)
        .env("CRCR_WEBHOOK_SECRET", "s")
        .env("CRCR_GITHUB_APP_ID", gh.app_id().to_string())
        .env("CRCR_GITHUB_APP_PRIVATE_KEY", gh.private_key_pem())
        .env("CRCR_GITHUB_API_URL", gh.base_url())
        .env("CRCR_ALLOWLIST_FILE", allowlist)
        .env("CRCR_HUD_URL", &hud.url)
        .env("CRCR_HUD_BOT_KEY", crcr_standin::hud::DEFAULT_BOT_KEY)
        .env("CRCR_SWEEP_INTERVAL_SECS", "0.2")
        .env("CRCR_REDELIVER_INTERVAL_SECS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("crcr serve starts")
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then the time until the process exited (successfully).
async fn terminate(child: &mut Child) -> Duration {
    let sent = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "crcr serve exited with {status}");
            return sent.elapsed();
        }
        assert!(sent.elapsed() < Duration::from_secs(60), "crcr serve still running 60 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sigterm_during_a_busy_sweep_exits_in_under_5_s_and_the_next_start_sends_the_rest() {
    let db = temp_db();
    pending_records(&db).await;
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let hud = Hud::start().await;
    hud.set_delay(Duration::from_secs(8));
    let mut first = serve(&db, &gh, &hud);
    wait_for("the sweep's first HUD request", Duration::from_secs(60), || hud.arrived() > 0).await;
    let took = terminate(&mut first).await;
    eprintln!("SIGTERM to exit during a busy sweep: {took:?}");
    assert!(took < Duration::from_secs(5), "crcr serve took {took:?} to exit after SIGTERM during a busy sweep");
    assert!(hud.rows().is_empty(), "HUD stored nothing: every answer was still 8 s away");

    // The next start sends what was left, without waiting for the lease (60 s).
    hud.set_delay(Duration::ZERO);
    let mut second = serve(&db, &gh, &hud);
    wait_for("every record in HUD", Duration::from_secs(30), || hud.rows().len() == RECORDS).await;
    let idle = terminate(&mut second).await;
    assert!(idle < Duration::from_secs(5), "an idle crcr serve took {idle:?} to exit");
    let jobs = SqliteJobStore::new(Db::open(&db).unwrap());
    assert_eq!(jobs.outbox_backlog().await.unwrap().pending, 0, "nothing left pending");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}
