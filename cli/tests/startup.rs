//! `crcr serve` with a broken `CRCR_ALLOWLIST_FILE` exits non-zero at
//! start-up, naming the file and the entry at fault (issue 12, item 4),
//! instead of answering healthy with no allowlist.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crcr_standin::{StandIn, StandInOptions};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn serve_with_a_broken_allowlist_exits_non_zero_naming_the_file_and_entry() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("crcr-startup-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let allowlist = dir.join("allowlist.yml");
    std::fs::write(&allowlist, "L1:\n  - org/a\n  - not-a-repo\n").unwrap();
    let db: &Path = &dir.join("crcr.sqlite");
    let mut child = Command::new(env!("CARGO_BIN_EXE_crcr"))
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
        .env("CRCR_ALLOWLIST_FILE", &allowlist)
        .env("CRCR_REDELIVER_INTERVAL_SECS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crcr serve starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("crcr serve with a broken allowlist was still running after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "crcr serve exited with {status}; stderr:\n{stderr}");
    assert!(stderr.contains(&allowlist.display().to_string()), "stderr names the file:\n{stderr}");
    assert!(
        stderr.contains("L1[1]: repository \"not-a-repo\" is not of the form owner/repo"),
        "stderr names the entry:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
