//! Missed-delivery recovery (`crcr_core::redeliver`) through the real
//! adapter (`GitHubAppClient`, App JWT) against the GitHub stand-in's
//! delivery log.
//!
//! Run: `cargo test -p crcr-core --test redeliver`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crcr_clients::github::GitHubAppConfig;
use crcr_core::config::{github_app_from_env, redeliver_interval, Env};
use crcr_core::ports::{InMemoryStateStore, StateStore};
use crcr_core::progress::{ProgressEvent, ProgressLog};
use crcr_core::redeliver::{
    run_periodic, GuidOutcome, RedeliverError, RedeliverReport, RedeliverSettings, Redeliverer, RunOptions,
    MAX_PENDING, STATE_KEY,
};
use crcr_standin::{Fault, HookDeliverySeed, StandIn, StandInOptions};
use serde_json::Value;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

async fn start() -> StandIn {
    StandIn::start(StandInOptions::default()).await.expect("stand-in starts")
}

/// A redeliverer on the stand-in with 5 deliveries a page, no pause, and its
/// state store (in memory).
fn redeliverer(s: &StandIn) -> (Redeliverer, Arc<InMemoryStateStore>) {
    let cfg = GitHubAppConfig::new(s.app_id(), s.private_key_pem(), s.base_url());
    let state = Arc::new(InMemoryStateStore::default());
    let mut r = crcr_clients::compose::redeliverer(&cfg, state.clone()).expect("client builds");
    r.settings = RedeliverSettings { per_page: 5, request_interval: Duration::ZERO, ..Default::default() };
    (r, state)
}

/// Puts a delivery of `guid` made `age` ago in the log; returns its id.
fn seed(s: &StandIn, guid: &str, status_code: u16, age: Duration) -> u64 {
    s.add_hook_delivery(
        HookDeliverySeed::new(guid, "pull_request", status_code, SystemTime::now() - age).action("opened"),
    )
}

/// GUIDs of the redelivery requests GitHub accepted, in order.
fn accepted(s: &StandIn) -> Vec<String> {
    s.redelivery_requests().into_iter().filter(|r| r.status == 202).filter_map(|r| r.guid).collect()
}

fn outcomes(report: &RedeliverReport) -> HashMap<String, GuidOutcome> {
    report.rows.iter().map(|r| (r.guid.clone(), r.outcome.clone())).collect()
}

async fn run(r: &Redeliverer, since: Option<Duration>, dry_run: bool) -> RedeliverReport {
    r.run(&RunOptions { since, dry_run }).await.expect("state store works")
}

/// The log of the main scenario (newest first; 5 a page):
///
/// | page | GUID | attempts |
/// |---|---|---|
/// | 1 | ok-1 | 200 (10 min) |
/// | 1 | a | 502 (1 h) |
/// | 1 | b | 502 (2 h), then a redelivery 200 (1.5 h) |
/// | 1-2 | d | 502 (3 h), then a redelivery 502 (2.5 h) |
/// | 2 | fill-1..3 | 200 (3.5 h .. 4.5 h) |
/// | 2 | e | 0, failed to connect (5 h) |
/// | 3 | fill-4 | 200 (5.5 h) |
/// | 3 | f, h | 502 (7 h, 8 h): older than the default 6 h |
/// | 3 | ok-2 | 200 (9 h) |
/// | 3 | j | 502 (2 days) |
/// | 4 | k | 502 (2.5 days) |
/// | 4 | edge | 502 (3 days - 5 min): listed, but too close to GitHub's 3 days |
/// | - | ancient | 502 (3 days + 1 h): no longer listed |
struct Scenario {
    ids: HashMap<&'static str, u64>,
}

fn scenario(s: &StandIn) -> Scenario {
    let mut ids = HashMap::new();
    for (guid, status, age) in [
        ("ok-1", 200, 10 * MIN),
        ("a", 502, HOUR),
        ("b", 502, 2 * HOUR),
        ("d", 502, 3 * HOUR),
        ("fill-1", 200, 210 * MIN),
        ("fill-2", 200, 4 * HOUR),
        ("fill-3", 200, 270 * MIN),
        ("e", 0, 5 * HOUR),
        ("fill-4", 200, 330 * MIN),
        ("f", 502, 7 * HOUR),
        ("h", 502, 8 * HOUR),
        ("ok-2", 200, 9 * HOUR),
        ("j", 502, 2 * DAY),
        ("k", 502, 60 * HOUR),
        ("edge", 502, 3 * DAY - 5 * MIN),
        ("ancient", 502, 3 * DAY + HOUR),
    ] {
        ids.insert(guid, seed(s, guid, status, age));
    }
    // Redeliveries (same GUID, newer attempts).
    let b_ok = s.add_hook_delivery(HookDeliverySeed {
        redelivery: true,
        ..HookDeliverySeed::new("b", "pull_request", 200, SystemTime::now() - 90 * MIN).action("opened")
    });
    ids.insert("b-redelivered", b_ok);
    let d_again = s.add_hook_delivery(HookDeliverySeed {
        redelivery: true,
        ..HookDeliverySeed::new("d", "pull_request", 502, SystemTime::now() - 150 * MIN).action("opened")
    });
    ids.insert("d-redelivered", d_again);
    Scenario { ids }
}

#[tokio::test]
async fn reads_pages_to_six_hours_and_asks_once_per_failed_guid_for_its_newest_attempt() {
    let s = start().await;
    let sc = scenario(&s);
    let (r, state) = redeliverer(&s);

    let report = run(&r, None, false).await;

    // Pages 1-3 reach past 6 h; page 4 is never read.
    assert_eq!((report.pages, report.deliveries), (3, 15), "{report:#?}");
    assert_eq!(s.count("GET", "/app/hook/deliveries"), 3);
    // Oldest first, each once, the newest attempt of each (d: its redelivery).
    assert_eq!(accepted(&s), ["e", "d", "a"]);
    let asked: Vec<u64> = s.redelivery_requests().iter().map(|r| r.delivery_id).collect();
    assert_eq!(asked, [sc.ids["e"], sc.ids["d-redelivered"], sc.ids["a"]]);
    assert_eq!(report.failed, 3);
    assert_eq!(report.redelivered, 3);
    assert_eq!(report.skipped_ok, 1, "b failed, then was redelivered OK");
    assert_eq!(report.skipped_too_old, 3, "f, h and j are older than 6 h");
    assert_eq!(report.guids, 9);
    assert!(report.complete && report.errors.is_empty(), "{report:#?}");
    let o = outcomes(&report);
    assert_eq!(o["a"], GuidOutcome::Requested { attempt: 1 });
    assert_eq!(o["f"], GuidOutcome::TooOld);
    assert!(!o.contains_key("b") && !o.contains_key("ok-1"));
    let d_row = report.rows.iter().find(|r| r.guid == "d").unwrap();
    assert_eq!((d_row.attempts, d_row.delivery_id), (2, sc.ids["d-redelivered"]));

    // The stored value: versioned JSON with the cursor and the GUIDs asked for.
    let stored: Value = serde_json::from_str(&state.get(STATE_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["version"], 2);
    assert_eq!(stored["requested"]["a"]["n"], 1);
    assert_eq!(stored["requested"]["d"]["id"], sc.ids["d-redelivered"]);
    assert!(stored["requested"].get("b").is_none());
    assert_eq!(Some(stored["scanned_to_ms"].as_i64().unwrap()), report.cursor_ms);

    let text = crcr_oncall::redeliver::render(&report, chrono::Utc::now().timestamp_millis());
    assert!(text.contains("read 3 page(s), 15 deliveries"), "{text}");
    assert!(text.contains("redelivery requested (attempt 1)") && text.contains("too old"), "{text}");
}

/// `crcr redeliver`'s progress: one step per page read (total unknown),
/// then one per failed GUID (total known), with the tallies.
#[tokio::test]
async fn reports_progress_per_page_then_per_failed_guid() {
    let s = start().await;
    scenario(&s);
    let (r, _state) = redeliverer(&s);
    let mut log = ProgressLog::default();
    let report = r.run_with_progress(&RunOptions::default(), &mut log).await.unwrap();
    assert_eq!((report.pages, report.redelivered), (3, 3));
    use ProgressEvent::{Finish, Inc, Message, Start};
    let msg = |m: &str| Message(m.to_owned());
    assert_eq!(
        log.events,
        [
            Start(None),
            Inc(1),
            msg("read 1 page(s), 5 deliveries"),
            Inc(1),
            msg("read 2 page(s), 10 deliveries"),
            Inc(1),
            msg("read 3 page(s), 15 deliveries"),
            Start(Some(3)),
            Inc(1),
            msg("requested 1, skipped 0, errors 0"),
            Inc(1),
            msg("requested 2, skipped 0, errors 0"),
            Inc(1),
            msg("requested 3, skipped 0, errors 0"),
            Finish,
        ]
    );

    // Nothing left to ask for (GitHub redelivered them): an empty second phase.
    let mut again = ProgressLog::default();
    r.run_with_progress(&RunOptions::default(), &mut again).await.unwrap();
    assert_eq!((again.starts(), again.position()), (vec![None, Some(0)], 0));
    assert!(again.finished_once());
}

/// A GUID decided without a request (here: given up after 3 failed
/// redeliveries) is a step too, counted as skipped.
#[tokio::test]
async fn progress_counts_skipped_guids() {
    let s = start().await;
    seed(&s, "stubborn", 502, HOUR);
    s.queue_redelivery_outcomes([502, 502, 502]);
    let (r, _state) = redeliverer(&s);
    for _ in 1..=3 {
        run(&r, None, false).await;
    }
    let mut log = ProgressLog::default();
    let report = r.run_with_progress(&RunOptions::default(), &mut log).await.unwrap();
    assert_eq!(report.skipped_gave_up, 1);
    assert_eq!((log.starts(), log.position()), (vec![None, Some(1)], 1));
    assert_eq!(log.last_message(), Some("requested 0, skipped 1, errors 0"));
    assert!(log.finished_once());
}

#[tokio::test]
async fn since_reaches_further_back_but_never_past_githubs_three_days() {
    let s = start().await;
    let sc = scenario(&s);
    let (r, _state) = redeliverer(&s);

    let report = run(&r, Some(5 * DAY), false).await;

    // Everything listed is read (4 pages); "ancient" is not listed at all.
    assert_eq!((report.pages, report.deliveries), (4, 17), "{report:#?}");
    assert_eq!(accepted(&s), ["k", "j", "h", "f", "e", "d", "a"]);
    let o = outcomes(&report);
    assert_eq!(o["edge"], GuidOutcome::TooOld, "5 min inside GitHub's 3 days is too close to ask");
    assert!(!o.contains_key("ancient"));
    assert!(!s
        .redelivery_requests()
        .iter()
        .any(|r| r.delivery_id == sc.ids["edge"] || r.delivery_id == sc.ids["ancient"]));
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // A narrower --since: only the last 90 minutes (a was already asked for: nothing new).
    let narrow = run(&r, Some(90 * MIN), false).await;
    assert_eq!(accepted(&s).len(), 7, "nothing asked twice");
    assert_eq!(narrow.skipped_ok, 7, "all seven were redelivered OK");
    assert!(!narrow.from_cursor);
}

#[tokio::test]
async fn a_dry_run_asks_for_nothing_and_stores_nothing() {
    let s = start().await;
    scenario(&s);
    let (r, state) = redeliverer(&s);

    let dry = run(&r, None, true).await;
    assert!(dry.dry_run);
    assert_eq!(dry.redelivered, 3);
    assert!(s.redelivery_requests().is_empty());
    assert_eq!(state.get(STATE_KEY).await.unwrap(), None);
    assert_eq!(outcomes(&dry)["a"], GuidOutcome::WouldRequest { attempt: 1 });
    assert!(crcr_oncall::redeliver::render(&dry, 0).starts_with("dry run: "));

    // The real run then asks for the same three.
    run(&r, None, false).await;
    assert_eq!(accepted(&s), ["e", "d", "a"]);
}

#[tokio::test]
async fn a_second_run_asks_for_nothing_new_and_starts_from_the_cursor() {
    let s = start().await;
    scenario(&s);
    let (r, _state) = redeliverer(&s);
    let first = run(&r, None, false).await;
    assert_eq!(first.redelivered, 3);
    // GitHub redelivered them (the stand-in answers 200 by default).

    let second = run(&r, None, false).await;
    assert_eq!(accepted(&s).len(), 3, "nothing asked again");
    assert!(second.from_cursor);
    assert_eq!(second.pages, 1, "only what is newer than the cursor (minus the overlap) is read");
    assert_eq!(second.skipped_ok, 3, "e, d and a now have an OK redelivery");
    assert_eq!(second.redelivered, 0);
    assert!(second.cursor_ms >= first.cursor_ms);

    // A new failure after the cursor is found by the next run.
    seed(&s, "late", 503, Duration::from_secs(1));
    let third = run(&r, None, false).await;
    assert_eq!(third.redelivered, 1);
    assert_eq!(accepted(&s).last().map(String::as_str), Some("late"));
}

#[tokio::test]
async fn a_guid_whose_redelivery_fails_again_is_retried_up_to_the_cap() {
    let s = start().await;
    let first_id = seed(&s, "stubborn", 502, HOUR);
    s.queue_redelivery_outcomes([502, 502, 502, 502]);
    let (r, _state) = redeliverer(&s);

    for attempt in 1..=3 {
        let report = run(&r, None, false).await;
        assert_eq!(outcomes(&report)["stubborn"], GuidOutcome::Requested { attempt }, "{report:#?}");
    }
    let fourth = run(&r, None, false).await;
    assert_eq!(outcomes(&fourth)["stubborn"], GuidOutcome::GaveUp { attempts: 3 });
    assert_eq!(fourth.skipped_gave_up, 1);
    let fifth = run(&r, None, false).await;
    assert_eq!(fifth.skipped_gave_up, 1);

    let asked: Vec<u64> = s.redelivery_requests().iter().map(|r| r.delivery_id).collect();
    assert_eq!(asked.len(), 3, "three requests in all");
    assert_eq!(asked[0], first_id);
    assert!(asked[1] > asked[0] && asked[2] > asked[1], "each time the newest (redelivered) attempt: {asked:?}");
}

#[tokio::test]
async fn a_redelivery_not_listed_yet_is_not_asked_for_again() {
    let s = start().await;
    // The App's webhook answers only when told to, so GitHub's redelivery
    // (and the new log entry) stays pending meanwhile.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let receiver = {
        let release = release.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let release = release.clone();
                async move {
                    let _ = release.acquire().await.map(|p| p.forget());
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    s.set_app_webhook(&url, "secret");
    s.add_hook_delivery(
        HookDeliverySeed::new("slow", "push", 502, SystemTime::now() - MIN).payload(br#"{"ref":"refs/heads/main"}"#),
    );
    let (r, _state) = redeliverer(&s);

    assert_eq!(run(&r, None, false).await.redelivered, 1);
    let waiting = run(&r, None, false).await;
    assert_eq!(outcomes(&waiting)["slow"], GuidOutcome::AlreadyRequested);
    assert_eq!(waiting.skipped_requested, 1);
    assert_eq!(s.redelivery_requests().len(), 1);

    release.add_permits(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.hook_deliveries().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "redelivery never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = run(&r, None, false).await;
    assert_eq!((done.skipped_ok, done.failed), (1, 0));
    assert_eq!(s.redelivery_requests().len(), 1);
}

#[tokio::test]
async fn a_5xx_on_a_page_is_reported_and_the_cursor_stays_before_the_unread_pages() {
    let s = start().await;
    seed(&s, "old-fail", 502, 30 * MIN);
    let (r, state) = redeliverer(&s);
    // A first complete run leaves a cursor (and gets old-fail redelivered, now).
    let first = run(&r, None, false).await;
    let cursor = first.cursor_ms.expect("a cursor");

    // Newer than the cursor, older than that redelivery: 12 deliveries, every
    // 4th failed (new-0, new-4, new-8). Pages: [r, new-0..3] [new-4..8] [new-9..11, old-fail].
    for i in 0..12u32 {
        seed(&s, &format!("new-{i}"), if i % 4 == 0 { 502 } else { 200 }, (2 + i) * MIN);
    }
    s.inject_hook_list_fault(1, Fault::ServerError(502));
    let failed = run(&r, None, false).await;
    assert!(!failed.complete);
    assert_eq!(failed.pages, 1);
    assert_eq!(failed.errors.len(), 1, "{:?}", failed.errors);
    assert!(failed.errors[0].contains("page 2") && failed.errors[0].contains("502"), "{}", failed.errors[0]);
    assert_eq!(failed.cursor_ms, Some(cursor), "not advanced past the unread pages");
    let stored: Value = serde_json::from_str(&state.get(STATE_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["scanned_to_ms"].as_i64(), Some(cursor));
    // What page 1 showed was still asked for.
    assert_eq!(failed.redelivered, 1, "{failed:#?}");

    // The next run reads the rest again from the old cursor and asks only for what it had not.
    let next = run(&r, None, false).await;
    assert!(next.complete && next.errors.is_empty(), "{next:#?}");
    assert!(next.pages >= 3);
    let new_asked: Vec<String> = accepted(&s).into_iter().filter(|g| g.starts_with("new-")).collect();
    assert_eq!(new_asked, ["new-0", "new-8", "new-4"]);
    assert!(next.cursor_ms > Some(cursor));
}

#[tokio::test]
async fn a_rate_limited_request_stops_the_run_and_the_rest_waits() {
    let s = start().await;
    scenario(&s);
    s.inject_redelivery_fault(Fault::SecondaryRateLimit { retry_after_s: 60 });
    let (r, _state) = redeliverer(&s);

    let limited = run(&r, None, false).await;
    assert_eq!(s.redelivery_requests().len(), 1, "no request after the rate limit");
    assert!(!limited.complete);
    let o = outcomes(&limited);
    assert!(matches!(o["e"], GuidOutcome::Error { .. }), "{o:?}");
    assert_eq!((&o["d"], &o["a"]), (&GuidOutcome::Deferred, &GuidOutcome::Deferred));
    // The log was read to its bound; what was not asked for waits in the state.
    assert!(limited.cursor_ms.is_some() && limited.unscanned.is_none(), "{limited:#?}");
    assert_eq!(limited.pending, 3, "e (rate limited), d and a");
    assert!(
        crcr_oncall::redeliver::render(&limited, 0).contains("3 failed GUID(s) wait to be asked for"),
        "{}",
        crcr_oncall::redeliver::render(&limited, 0)
    );

    // The next run asks for them first, without reading their pages again.
    let later = run(&r, None, false).await;
    assert!(later.complete, "{later:#?}");
    assert_eq!(later.pending, 0);
    assert_eq!(later.pages, 1, "only the newest page, down to the cursor");
    assert_eq!(accepted(&s), ["e", "d", "a"]);
}

#[tokio::test]
async fn requests_are_spaced_by_the_request_interval() {
    let s = start().await;
    for i in 0..3 {
        seed(&s, &format!("g{i}"), 502, (i + 1) * MIN);
    }
    let (mut r, _state) = redeliverer(&s);
    r.settings.request_interval = Duration::from_millis(150);
    run(&r, None, false).await;
    let at: Vec<u64> = s.redelivery_requests().iter().map(|r| r.at_ms).collect();
    assert_eq!(at.len(), 3);
    assert!(at.windows(2).all(|w| w[1] - w[0] >= 140), "{at:?}");
}

#[tokio::test]
async fn refused_credentials_are_reported_with_what_the_app_needs() {
    let s = start().await;
    seed(&s, "g", 502, MIN);
    let other = start().await; // another App's key
    let cfg = GitHubAppConfig::new(s.app_id(), other.private_key_pem(), s.base_url());
    let r = crcr_clients::compose::redeliverer(&cfg, Arc::new(InMemoryStateStore::default())).unwrap();

    let report = run(&r, None, false).await;
    assert!(!report.complete);
    assert_eq!(report.errors.len(), 1);
    let e = &report.errors[0];
    assert!(e.contains("401") && e.contains("CRCR_GITHUB_APP_ID"), "{e}");
    assert!(e.contains("installation tokens do not work"), "{e}");
    assert!(s.redelivery_requests().is_empty());
}

#[tokio::test]
async fn a_state_of_a_newer_version_is_refused_untouched_and_a_corrupt_one_restarts() {
    let s = start().await;
    seed(&s, "g", 502, MIN);
    let (r, state) = redeliverer(&s);

    let newer = r#"{"version":3,"whatever":true}"#;
    state.put(STATE_KEY, newer).await.unwrap();
    let e = r.run(&RunOptions::default()).await.unwrap_err();
    assert!(matches!(e, RedeliverError::StateVersion { found: 3 }), "{e}");
    assert_eq!(state.get(STATE_KEY).await.unwrap().as_deref(), Some(newer));
    assert!(s.redelivery_requests().is_empty());

    state.put(STATE_KEY, "{not json").await.unwrap();
    let report = run(&r, None, false).await;
    assert_eq!(report.redelivered, 1);
    let stored: Value = serde_json::from_str(&state.get(STATE_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["version"], 2);
}

#[tokio::test]
async fn the_periodic_task_runs_at_once_then_every_interval_until_stopped() {
    let s = start().await;
    seed(&s, "g", 502, MIN);
    let r = Arc::new(redeliverer(&s).0);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_periodic(r.clone(), Duration::from_millis(200), stopped));

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.count("GET", "/app/hook/deliveries") < 3 {
        assert!(std::time::Instant::now() < deadline, "the task does not run every interval");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted(&s), ["g"], "asked for once, over several runs");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
    // The task has returned: nothing of it can run any more, and it
    // returned without starting another run.
    assert_eq!(accepted(&s), ["g"]);

    // Zero disables it.
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::time::timeout(Duration::from_secs(1), run_periodic(r, Duration::ZERO, stopped))
        .await
        .expect("returns at once");
}

#[test]
fn settings_are_read_from_the_environment() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Env::new(move |k| map.get(k).map(|v| v.to_string()))
    };
    assert_eq!(redeliver_interval(&vars(&[])).unwrap(), Duration::from_secs(600));
    assert_eq!(redeliver_interval(&vars(&[("CRCR_REDELIVER_INTERVAL_SECS", "0")])).unwrap(), Duration::ZERO);
    let e = redeliver_interval(&vars(&[("CRCR_REDELIVER_INTERVAL_SECS", "soon")])).unwrap_err();
    assert_eq!(e.key, "CRCR_REDELIVER_INTERVAL_SECS");

    let key = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----";
    let app = github_app_from_env(&Env::new(move |k| match k {
        "CRCR_GITHUB_APP_ID" => Some("42".into()),
        "CRCR_GITHUB_APP_PRIVATE_KEY" => Some(key.into()),
        _ => None,
    }))
    .unwrap();
    assert_eq!((app.app_id, app.api_url.as_str()), (42, "https://api.github.com"));
    let e = github_app_from_env(&vars(&[("CRCR_GITHUB_APP_ID", "42")])).unwrap_err();
    assert_eq!(e.key, "CRCR_GITHUB_APP_PRIVATE_KEY");
}

/// The starvation the resume fixes: a run stopped by its page limit, then a
/// busy log (new deliveries on top, more than a run's pages). Each next run
/// reads on from the page where the last one stopped, so the old failures
/// are asked for (oldest first, once each) before the new pages are read.
#[tokio::test]
async fn a_run_stopped_by_its_page_limit_goes_on_where_it_stopped_not_from_the_newest_page() {
    let s = start().await;
    // 30 deliveries, 1 to 30 minutes old, every 5th failed: old-0 (oldest
    // failure) .. old-25; pages of 5.
    for i in 0..30u32 {
        let age = (60 - 2 * i) * MIN;
        seed(&s, &format!("old-{i}"), if i % 5 == 0 { 502 } else { 200 }, age);
    }
    let (mut r, state) = redeliverer(&s);
    r.settings.max_pages = 2;

    let first = run(&r, None, false).await;
    assert!(!first.complete && !first.resumed);
    assert_eq!(first.pages, 2);
    let unscanned = first.unscanned.expect("what was not read is reported");
    assert!(unscanned.from_ms < unscanned.to_ms);
    assert!(
        crcr_oncall::redeliver::render(&first, 0).contains("not read yet: deliveries from"),
        "{}",
        crcr_oncall::redeliver::render(&first, 0)
    );
    assert_eq!(accepted(&s), ["old-20", "old-25"], "the newest two pages");
    let stored: Value = serde_json::from_str(&state.get(STATE_KEY).await.unwrap().unwrap()).unwrap();
    assert!(stored["resume"]["cursor"].is_string(), "{stored}");

    // Busy log: 15 new deliveries (3 pages) arrive, all delivered but one.
    for i in 0..15u32 {
        seed(&s, &format!("new-{i}"), if i == 7 { 503 } else { 200 }, Duration::from_secs(u64::from(30 - i)));
    }
    let second = run(&r, None, false).await;
    assert!(second.resumed, "{second:#?}");
    assert_eq!(accepted(&s)[2..], ["old-10", "old-15"], "the next older pages, not the new ones");

    let mut runs = 2;
    loop {
        let report = run(&r, None, false).await;
        runs += 1;
        if report.complete {
            assert!(report.unscanned.is_none());
            break;
        }
        assert!(runs < 10, "never finished: {report:#?}");
    }
    // Every failure asked for exactly once; the old ones before the new one.
    assert_eq!(accepted(&s), ["old-20", "old-25", "old-10", "old-15", "old-0", "old-5", "new-7"]);
    let done = run(&r, None, false).await;
    assert!(done.complete && !done.resumed && done.redelivered == 0, "{done:#?}");
}

/// A page that fails mid-scan: the next run goes on from that page.
#[tokio::test]
async fn a_page_error_mid_scan_is_read_again_from_that_page() {
    let s = start().await;
    // 10 minutes apart: the next run's newest page reaches the first scan's
    // newest delivery minus the 10-minute overlap in one page.
    for i in 0..15u32 {
        seed(&s, &format!("g-{i}"), if i % 5 == 0 { 502 } else { 200 }, (150 - 10 * i) * MIN);
    }
    let (r, _state) = redeliverer(&s);
    s.inject_hook_list_fault(1, Fault::ServerError(502));
    let failed = run(&r, None, false).await;
    assert_eq!((failed.pages, failed.complete), (1, false));
    assert!(failed.unscanned.is_some());
    let next = run(&r, None, false).await;
    assert!(next.resumed && next.complete, "{next:#?}");
    // Pages 2 and 3 from the stored cursor, then the newest page down to where the first scan began.
    assert_eq!(next.pages, 3, "{next:#?}");
    assert_eq!(accepted(&s), ["g-10", "g-0", "g-5"]);
}

/// GitHub refuses a stored cursor (422, e.g. a format it no longer takes):
/// the run reads that part again from the newest page instead of stalling.
#[tokio::test]
async fn a_stored_cursor_github_refuses_is_replaced_by_a_scan_from_the_newest_page() {
    let s = start().await;
    for i in 0..10u32 {
        seed(&s, &format!("g-{i}"), if i % 3 == 0 { 502 } else { 200 }, (30 - 2 * i) * MIN);
    }
    let (mut r, state) = redeliverer(&s);
    r.settings.max_pages = 1;
    let first = run(&r, None, false).await;
    assert!(!first.complete);
    let mut stored: Value = serde_json::from_str(&state.get(STATE_KEY).await.unwrap().unwrap()).unwrap();
    stored["resume"]["cursor"] = "not-a-cursor".into();
    state.put(STATE_KEY, &stored.to_string()).await.unwrap();

    r.settings.max_pages = 300;
    let next = run(&r, None, false).await;
    assert!(next.complete, "{next:#?}");
    let mut asked = accepted(&s);
    asked.sort();
    assert_eq!(asked, ["g-0", "g-3", "g-6", "g-9"]);
}

/// Ingest answers events it does not act on 200 ignored
/// (`dispatch::is_acted_on`): a failed delivery of one is not redelivered.
#[tokio::test]
async fn failed_deliveries_of_events_the_relay_does_not_act_on_are_not_asked_for() {
    let s = start().await;
    let add = |guid: &str, event: &str, action: Option<&str>| {
        let mut seed = HookDeliverySeed::new(guid, event, 502, SystemTime::now() - MIN);
        if let Some(a) = action {
            seed = seed.action(a);
        }
        s.add_hook_delivery(seed);
    };
    add("check-run-completed", "check_run", Some("completed"));
    add("workflow-run", "workflow_run", Some("completed"));
    add("installation", "installation", Some("created"));
    add("pr-edited", "pull_request", Some("edited"));
    add("pr-labeled", "pull_request", Some("labeled"));
    add("suite-rerequested", "check_suite", Some("rerequested"));
    add("push", "push", None);
    let (r, _state) = redeliverer(&s);
    let report = run(&r, None, false).await;
    assert_eq!(report.skipped_ignored, 4, "{report:#?}");
    assert!(report.complete);
    let mut asked = accepted(&s);
    asked.sort();
    assert_eq!(asked, ["pr-labeled", "push", "suite-rerequested"]);
    assert!(
        crcr_oncall::redeliver::render(&report, 0).contains("4 of events the relay does not act on"),
        "{}",
        crcr_oncall::redeliver::render(&report, 0)
    );
}

/// More failures than the state keeps ([`MAX_PENDING`]): the scan stops
/// before it could find more than it can store, and later runs go on;
/// every failure is asked for once, and the stored value stays bounded.
#[tokio::test]
async fn a_flood_of_failures_is_worked_through_over_runs_with_the_waiting_list_bounded() {
    let s = start().await;
    let n = MAX_PENDING + 300;
    for i in 0..n {
        s.add_hook_delivery(HookDeliverySeed::new(
            &format!("f-{i:05}"),
            "push",
            502,
            SystemTime::now() - Duration::from_secs(n as u64 - i as u64),
        ));
    }
    let (mut r, state) = redeliverer(&s);
    r.settings.per_page = 100;
    r.settings.max_redeliveries = 200;
    let mut runs = 0;
    loop {
        let report = run(&r, None, false).await;
        runs += 1;
        assert!(report.pending <= MAX_PENDING, "{}", report.pending);
        let stored = state.get(STATE_KEY).await.unwrap().unwrap();
        assert!(stored.len() < 350_000, "{} bytes", stored.len());
        if report.complete {
            break;
        }
        assert!(runs < 20, "never finished");
    }
    let asked = accepted(&s);
    assert_eq!(asked.len(), n, "each once");
    let unique: std::collections::HashSet<&String> = asked.iter().collect();
    assert_eq!(unique.len(), n);
}

/// The scheduled run sets `RedeliverIncomplete` (the alarm's metric) and
/// `RedeliverPending`.
#[tokio::test(flavor = "current_thread")]
async fn a_scheduled_run_that_could_not_finish_sets_the_incomplete_gauge() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let gauge = |name: &str| {
        let text = handle.render();
        text.lines().find(|l| l.starts_with(&format!("{name} "))).and_then(|l| l.rsplit(' ').next()).map(str::to_owned)
    };
    let s = start().await;
    for i in 0..12u32 {
        seed(&s, &format!("g-{i}"), 502, (i + 1) * MIN);
    }
    let (mut r, _state) = redeliverer(&s);
    r.settings.max_pages = 1;
    r.settings.max_redeliveries = 2;
    let first = r.run_scheduled().await.unwrap();
    assert!(!first.complete);
    assert_eq!(gauge("RedeliverIncomplete").as_deref(), Some("1"));
    assert_eq!(gauge("RedeliverPending").as_deref(), Some("3"), "5 found on the page, 2 asked for");

    r.settings.max_pages = 300;
    r.settings.max_redeliveries = 200;
    let second = r.run_scheduled().await.unwrap();
    assert!(second.complete, "{second:#?}");
    assert_eq!(gauge("RedeliverIncomplete").as_deref(), Some("0"));
    assert_eq!(gauge("RedeliverPending").as_deref(), Some("0"));
}

/// GUIDs left waiting by one run stay stored while the next run works
/// through them: a run cut off after its first request (a stop of
/// `crcr serve`, a Lambda timeout) loses none of the others.
#[tokio::test]
async fn a_run_cut_off_halfway_keeps_the_waiting_guids_it_had_not_asked_for() {
    let s = start().await;
    for i in 0..4u32 {
        seed(&s, &format!("w-{i}"), 502, (10 - i) * MIN);
    }
    let (mut r, state) = redeliverer(&s);
    r.settings.max_redeliveries = 0;
    let first = run(&r, None, false).await;
    assert_eq!((first.pending, first.redelivered), (4, 0));

    r.settings.max_redeliveries = 200;
    r.settings.request_interval = Duration::from_secs(3600);
    {
        let cut_off = run(&r, None, false);
        tokio::pin!(cut_off);
        // Poll the run until it has saved its first request (the state
        // names w-0 as requested), then drop it: it is waiting out the
        // request interval.
        loop {
            tokio::select! {
                _ = &mut cut_off => panic!("the run should still be waiting between requests"),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            let saved = state.get(STATE_KEY).await.unwrap().unwrap_or_default();
            let saved: Value = serde_json::from_str(&saved).unwrap_or_default();
            if saved["requested"]["w-0"].is_object() {
                break;
            }
        }
    }
    assert_eq!(accepted(&s), ["w-0"]);
    let stored: Value = serde_json::from_str(&state.get(STATE_KEY).await.unwrap().unwrap()).unwrap();
    let mut waiting: Vec<&String> = stored["pending"].as_object().expect("pending stored").keys().collect();
    waiting.sort();
    assert_eq!(waiting, ["w-1", "w-2", "w-3"], "{stored}");

    r.settings.request_interval = Duration::ZERO;
    let done = run(&r, None, false).await;
    assert!(done.complete, "{done:#?}");
    assert_eq!(accepted(&s), ["w-0", "w-1", "w-2", "w-3"]);
}

/// A stored cursor GitHub refuses, on a log longer than a run reads: the
/// scan from the newest page must read down to the old scan's bound before
/// it counts as done (nothing between is skipped).
#[tokio::test]
async fn a_refused_cursor_on_a_long_log_still_reads_everything_over_several_runs() {
    let s = start().await;
    for i in 0..30u32 {
        seed(&s, &format!("g-{i:02}"), if i % 4 == 0 { 502 } else { 200 }, (60 - 2 * i) * MIN);
    }
    let (mut r, state) = redeliverer(&s);
    r.settings.max_pages = 2;
    assert!(!run(&r, None, false).await.complete);
    let mut stored: Value = serde_json::from_str(&state.get(STATE_KEY).await.unwrap().unwrap()).unwrap();
    stored["resume"]["cursor"] = "not-a-cursor".into();
    state.put(STATE_KEY, &stored.to_string()).await.unwrap();

    for _ in 0..10 {
        if run(&r, None, false).await.complete {
            break;
        }
    }
    let mut asked = accepted(&s);
    asked.sort();
    let want: Vec<String> = (0..30).filter(|i| i % 4 == 0).map(|i| format!("g-{i:02}")).collect();
    assert_eq!(asked, want);
}

/// `--since 1h` after a stored cursor older than that: the stretch between
/// the cursor and one hour ago is still unread, so the cursor stays.
#[tokio::test]
async fn a_since_run_that_does_not_reach_the_cursor_leaves_it() {
    let s = start().await;
    seed(&s, "early", 200, 5 * HOUR);
    let (r, state) = redeliverer(&s);
    let first = run(&r, None, false).await;
    let cursor = first.cursor_ms.expect("a cursor");
    // Failures after the cursor: one 3 h ago (outside --since 1h), one 10 min ago.
    seed(&s, "mid", 502, 3 * HOUR);
    seed(&s, "recent", 502, 10 * MIN);
    let since = run(&r, Some(HOUR), false).await;
    assert_eq!(accepted(&s), ["recent"]);
    assert_eq!(since.cursor_ms, Some(cursor), "not moved past the unread stretch");
    let stored: Value = serde_json::from_str(&state.get(STATE_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["scanned_to_ms"].as_i64(), Some(cursor));

    run(&r, None, false).await;
    assert_eq!(accepted(&s), ["recent", "mid"]);
}

/// The stored state at its bound ([`MAX_PENDING`] waiting GUIDs of real
/// length) fits where it is kept: the SQLite `kv` table of `crcr serve` and
/// the DynamoDB `kv` table on moto, whose items GitHub-sized states must
/// keep under DynamoDB's 400 KB item limit ("Service, account, and table
/// quotas in Amazon DynamoDB").
#[tokio::test]
async fn the_waiting_list_at_its_bound_is_stored_in_sqlite_and_in_dynamodb() {
    let s = start().await;
    for i in 0..(MAX_PENDING + 300) {
        let guid = uuid::Uuid::new_v4().to_string(); // GitHub's GUIDs: 36 characters
        let at = SystemTime::now() - Duration::from_secs(3600 + i as u64);
        s.add_hook_delivery(HookDeliverySeed::new(&guid, "pull_request", 502, at).action("synchronize"));
    }
    let cfg = GitHubAppConfig::new(s.app_id(), s.private_key_pem(), s.base_url());
    let clock: Arc<dyn crcr_core::ports::Clock> = Arc::new(crcr_core::ports::SystemClock);
    let path = std::env::temp_dir().join(format!("crcr-redeliver-{}.db", uuid::Uuid::new_v4().simple()));
    let sqlite: Arc<dyn StateStore> =
        Arc::new(crcr_embedded::sqlite::SqliteKv::new(crcr_embedded::sqlite::Db::open(&path).unwrap(), clock.clone()));
    let sdk = crcr_standin::moto::sdk().await;
    let table = format!("kv-{}", uuid::Uuid::new_v4().simple());
    crcr_standin::moto::relay_table(&sdk, "kv", &table).await;
    let dynamo: Arc<dyn StateStore> =
        Arc::new(crcr_aws::DynamoKv::new(aws_sdk_dynamodb::Client::new(&sdk), table, clock));

    for (name, store) in [("sqlite", sqlite), ("dynamodb", dynamo)] {
        let mut r = crcr_clients::compose::redeliverer(&cfg, store.clone()).expect("client builds");
        r.settings = RedeliverSettings { per_page: 100, max_redeliveries: 0, ..Default::default() };
        let first = run(&r, None, false).await;
        assert!(!first.complete && first.pending > MAX_PENDING - 100, "{name}: {}", first.pending);
        let stored = store.get(STATE_KEY).await.unwrap().expect("state stored");
        // Close to its largest (moto refuses items over 400 KB, as DynamoDB does).
        assert!(stored.len() > 100_000, "{name}: {} bytes", stored.len());
        // Read back by the next run, which goes on from there.
        let second = run(&r, None, false).await;
        assert!(second.resumed, "{name}");
        assert!(second.pending >= first.pending && second.pending <= MAX_PENDING, "{name}: {}", second.pending);
    }
    assert!(s.redelivery_requests().is_empty());
    let _ = std::fs::remove_file(&path);
}
