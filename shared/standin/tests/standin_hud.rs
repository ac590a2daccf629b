//! The HUD stand-in keeps torchci's rules (`torchci/pages/api/crcr/results.ts`,
//! `torchci/lib/crcr/crcrUtils.ts`): what the relay's HUD tests rely on.

use crcr_standin::hud::{Hud, DEFAULT_BOT_KEY};
use serde_json::{json, Value};

async fn post(hud: &Hud, key: &str, body: &Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/crcr/results", hud.url))
        .header("x-hud-internal-bot", key)
        .json(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

fn record(status: &str, conclusion: Option<&str>) -> Value {
    json!({
        "trusted": {"ci_metrics": {"queue_time": if status == "in_progress" { json!(1.5) } else { Value::Null },
                                   "execution_time": if status == "completed" { json!(60.0) } else { Value::Null }},
                    "verified_repo": "Ascend/pytorch", "downstream_repo_level": "L2"},
        "untrusted": {"callback_payload": {"event_type": "pull_request", "delivery_id": "d-1",
            "payload": {"pull_request": {"number": 7, "head": {"sha": "abc"}}, "repository": {"full_name": "pytorch/pytorch"}},
            "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion, "name": "CI",
                "url": "https://github.com/Ascend/pytorch/actions/runs/1", "run_id": "1", "run_attempt": "1",
                "job_name": "build", "check_run_id": "9", "started_at": null, "completed_at": null}}}
    })
}

#[tokio::test]
async fn torchci_rules() {
    let hud = Hud::start().await;
    let get = reqwest::get(format!("{}/crcr/results", hud.url)).await.unwrap();
    assert_eq!(get.status().as_u16(), 405, "only POST");
    assert_eq!(post(&hud, "wrong", &record("in_progress", None)).await.0, 401);
    assert_eq!(post(&hud, "", &record("in_progress", None)).await.0, 401);

    // A body it cannot read: 500, however often it is sent.
    let note =
        json!({"trusted": {"verified_repo": "Ascend/pytorch"}, "untrusted": {"callback_payload": {"relay_note": "x"}}});
    assert_eq!(post(&hud, DEFAULT_BOT_KEY, &note).await.0, 500);
    assert_eq!(post(&hud, DEFAULT_BOT_KEY, &json!({"untrusted": {}})).await.0, 500);
    let mut no_trusted = record("in_progress", None);
    no_trusted.as_object_mut().unwrap().remove("trusted");
    assert_eq!(post(&hud, DEFAULT_BOT_KEY, &no_trusted).await.0, 500);

    for (field, value) in [("job_name", json!("")), ("job_name", Value::Null), ("check_run_id", Value::Null)] {
        let mut r = record("in_progress", None);
        r["untrusted"]["callback_payload"]["workflow"][field] = value;
        let (status, answer) = post(&hud, DEFAULT_BOT_KEY, &r).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(format!("Missing required field: workflow.{field}").as_str()))
        );
    }
    let big = json!({"pad": "x".repeat(2 * 1024 * 1024)});
    assert_eq!(post(&hud, DEFAULT_BOT_KEY, &big).await.0, 413);
    assert!(hud.rows().is_empty(), "nothing stored by refused requests");

    // One row per repo/delivery/workflow/job/check run; UpdateItem keeps what a record does not set.
    let (status, answer) = post(&hud, DEFAULT_BOT_KEY, &record("in_progress", None)).await;
    assert_eq!((status, answer["dynamoKey"].as_str()), (200, Some("Ascend/pytorch/d-1/CI/build/9")));
    post(&hud, DEFAULT_BOT_KEY, &record("completed", Some("success"))).await;
    let row = hud.rows()["Ascend/pytorch/d-1/CI/build/9"].clone();
    assert_eq!((row["status"].as_str(), row["conclusion"].as_str()), (Some("completed"), Some("success")));
    assert_eq!((row["queue_time"].as_f64(), row["execution_time"].as_f64()), (Some(1.5), Some(60.0)));
    assert_eq!((row["pr_number"].as_u64(), row["pytorch_head_sha"].as_str()), (Some(7), Some("abc")));
    // The last record written wins: in_progress after completed leaves a
    // running row with a conclusion (why the relay keeps lifecycle order).
    post(&hud, DEFAULT_BOT_KEY, &record("in_progress", None)).await;
    let row = hud.rows()["Ascend/pytorch/d-1/CI/build/9"].clone();
    assert_eq!((row["status"].as_str(), row["conclusion"].as_str()), (Some("in_progress"), Some("success")));

    // Outage modes answer before the handler and store nothing.
    hud.answer(&[502]);
    assert_eq!(post(&hud, DEFAULT_BOT_KEY, &record("completed", Some("failure"))).await.0, 502);
    hud.set_outage(Some(503));
    assert_eq!(post(&hud, DEFAULT_BOT_KEY, &record("completed", Some("failure"))).await.0, 503);
    hud.set_outage(None);
    assert_eq!(hud.rows()["Ascend/pytorch/d-1/CI/build/9"]["conclusion"], "success");
}
