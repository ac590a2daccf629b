//! Tests of the GitHub stand-in (`crcr_standin`).
//!
//! Run: `cargo test -p crcr-standin --test standin`
//!
//! Two clients: octocrab itself, where a real client is the point (App JWT
//! creation, installation lookup, token minting and dispatch), and a tiny
//! hand-written HTTP/1.1 client over a `TcpStream`, where a test needs full
//! control of headers and bodies (forged JWTs, exact limits, keep-alive).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use crcr_standin::{AuthKind, Fault, SecondaryLimit, SecondaryLimits, StandIn, StandInOptions};
use octocrab::jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use octocrab::models::AppId;
use octocrab::Octocrab;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------- helpers

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn message(&self) -> String {
        self.json()["message"].as_str().unwrap_or_default().to_owned()
    }
}

/// GitHub refuses requests without a User-Agent; these name the tests.
const UA_LINE: &str = "User-Agent: crcr-standin-tests\r\n";

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{UA_LINE}Content-Length: {}\r\n", body.len());
    if close {
        out.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads from `stream` until `buf` holds at least `want` bytes.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, want: usize) {
    while buf.len() < want {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed inside a body");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads exactly one response (Content-Length or chunked) from `stream`.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Resp {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().unwrap();
        fill(stream, buf, len).await;
        buf.drain(..len).collect()
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let have = buf.len() + 1;
                fill(stream, buf, have).await;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16).unwrap();
            buf.drain(..line_end + 2);
            fill(stream, buf, size + 2).await;
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break body;
            }
        }
    } else {
        Vec::new()
    };
    Resp { status, headers, body }
}

/// One request on a fresh connection.
async fn call(s: &StandIn, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(s.local_addr()).await.expect("connect");
    stream.write_all(&request_bytes(method, path, headers, body, true)).await.unwrap();
    read_response(&mut stream, &mut Vec::new()).await
}

async fn post_json(s: &StandIn, path: &str, auth: &str, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap();
    call(s, "POST", path, &[("Authorization", auth), ("Content-Type", "application/json")], &bytes).await
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn jwt_with(pem: &str, claims: Value) -> String {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("the stand-in key is an RSA PEM");
    encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

/// An App JWT as octocrab makes it (iat = now - 60, exp = now + 9 min).
fn app_jwt(s: &StandIn) -> String {
    jwt_with(&s.private_key_pem(), json!({"iss": s.app_id(), "iat": now() - 60, "exp": now() + 540}))
}

async fn start() -> StandIn {
    StandIn::start(StandInOptions::default()).await.expect("stand-in starts")
}

/// Mints an installation token through the HTTP API; panics unless 201.
async fn mint(s: &StandIn, installation: u64, body: Value) -> String {
    let path = format!("/app/installations/{installation}/access_tokens");
    let r = post_json(s, &path, &format!("Bearer {}", app_jwt(s)), &body).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn dispatch(s: &StandIn, repo: &str, token: &str, body: &Value) -> Resp {
    post_json(s, &format!("/repos/{repo}/dispatches"), &format!("token {token}"), body).await
}

/// octocrab as the App (the workspace builds octocrab without its `retry`
/// feature, so it never re-sends on its own).
fn octocrab_app(s: &StandIn) -> Octocrab {
    let key = EncodingKey::from_rsa_pem(s.private_key_pem().as_bytes()).unwrap();
    Octocrab::builder().base_uri(s.base_url()).unwrap().app(AppId(s.app_id()), key).build().unwrap()
}

fn github_error(e: octocrab::Error) -> (u16, String) {
    match e {
        octocrab::Error::GitHub { source, .. } => (source.status_code.as_u16(), source.message),
        other => panic!("expected a GitHub error, got {other:?}"),
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn octocrab_app_jwt_is_accepted_and_installation_lookup_answers_200_or_404() {
    let s = start().await;
    let id = s.install("Org/Alpha");
    assert_eq!(s.install("org/beta"), id, "one installation per owner");
    assert_ne!(s.install("other/gamma"), id);
    let app = octocrab_app(&s);

    let inst = app.apps().get_repository_installation("org", "ALPHA").await.expect("installed");
    assert_eq!(inst.id.0, id);
    assert_eq!(inst.app_id.map(|a| a.0), Some(s.app_id()));
    assert_eq!(inst.account.login, "Org");
    assert_eq!(inst.repository_selection.as_deref(), Some("selected"));
    assert_eq!(inst.permissions.contents.as_deref(), Some("write"));

    let (status, message) = github_error(app.apps().get_repository_installation("org", "missing").await.unwrap_err());
    assert_eq!((status, message.as_str()), (404, "Not Found"));

    let raw = call(
        &s,
        "GET",
        "/repos/org/missing/installation",
        &[("Authorization", &format!("Bearer {}", app_jwt(&s)))],
        b"",
    )
    .await;
    assert_eq!(
        raw.json(),
        json!({"message": "Not Found", "status": "404",
               "documentation_url": "https://docs.github.com/rest/apps/apps#get-a-repository-installation-for-the-authenticated-app"})
    );
    let reqs = s.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.auth == AuthKind::AppJwt), "{reqs:?}");
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200, 404, 404]);
    assert_eq!(reqs[0].repo.as_deref(), Some("org/ALPHA"));
    assert_eq!(s.count("get", "/repos/org/missing/"), 2);
}

#[tokio::test]
async fn refused_app_jwts_get_githubs_401_messages() {
    let s = start().await;
    s.install("org/a");
    let pem = s.private_key_pem();
    let other = start().await; // same App ID, another key
    let t = now();
    let cases = [
        (jwt_with(&pem, json!({"iss": s.app_id(), "iat": t - 1200, "exp": t - 600})), 401,
         "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"),
        (jwt_with(&pem, json!({"iss": s.app_id(), "iat": t - 60, "exp": t + 3600})), 401,
         "'Expiration time' claim ('exp') is too far in the future"),
        (jwt_with(&pem, json!({"iss": s.app_id(), "iat": t - 60, "exp": t + 545})), 401,
         "'Expiration time' claim ('exp') is too far in the future"),
        (jwt_with(&pem, json!({"iss": s.app_id(), "iat": t + 300, "exp": t + 600})), 401,
         "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"),
        (jwt_with(&other.private_key_pem(), json!({"iss": s.app_id(), "iat": t - 60, "exp": t + 540})), 401,
         "A JSON web token could not be decoded"),
        (jwt_with(&pem, json!({"iss": s.app_id() + 1, "iat": t - 60, "exp": t + 540})), 404, "Integration not found"),
        (jwt_with(&pem, json!({"iat": t - 60, "exp": t + 540})), 401, "Missing 'issuer' claim ('iss') in assertion"),
        ("not-a-jwt".to_owned(), 401, "A JSON web token could not be decoded"),
    ];
    for (token, status, message) in &cases {
        let r =
            call(&s, "GET", "/repos/org/a/installation", &[("Authorization", &format!("Bearer {token}"))], b"").await;
        assert_eq!((r.status, r.message().as_str()), (*status, *message), "token {token}");
        assert_eq!(r.json()["documentation_url"], "https://docs.github.com/rest");
    }
    // The same JWT rules guard token minting; a valid one passes there too.
    let r =
        post_json(&s, "/app/installations/40000001/access_tokens", &format!("Bearer {}", cases[0].0), &json!({})).await;
    assert_eq!(r.status, 401);
    let ok =
        call(&s, "GET", "/repos/org/a/installation", &[("Authorization", &format!("Bearer {}", app_jwt(&s)))], b"")
            .await;
    assert_eq!(ok.status, 200);
    // The App ID as a string and the client ID are valid issuers.
    for iss in [json!(s.app_id().to_string()), json!(s.client_id())] {
        let token = jwt_with(&pem, json!({"iss": iss, "iat": t - 60, "exp": t + 540}));
        let r =
            call(&s, "GET", "/repos/org/a/installation", &[("Authorization", &format!("Bearer {token}"))], b"").await;
        assert_eq!(r.status, 200, "iss {iss}");
    }
    let no_auth = call(&s, "GET", "/repos/org/a/installation", &[], b"").await;
    assert_eq!(no_auth.status, 401);
    let kinds: Vec<AuthKind> = s.requests().iter().map(|r| r.auth).collect();
    assert_eq!(kinds.iter().filter(|k| **k == AuthKind::Invalid).count(), cases.len() + 1);
    assert_eq!(kinds.last(), Some(&AuthKind::None));
}

#[tokio::test]
async fn token_minting_follows_githubs_rules() {
    let s = start().await;
    let id = s.install("org/a");
    s.install("org/b");
    s.install("elsewhere/c");
    let jwt = format!("Bearer {}", app_jwt(&s));
    let path = format!("/app/installations/{id}/access_tokens");

    let r = post_json(&s, &path, &jwt, &json!({"repositories": ["a"], "permissions": {"contents": "write"}})).await;
    assert_eq!(r.status, 201);
    let body = r.json();
    assert!(body["token"].as_str().unwrap().starts_with("ghs_"));
    assert_eq!(body["token"].as_str().unwrap().len(), 40);
    assert_eq!(body["permissions"], json!({"contents": "write"}));
    assert_eq!(body["repositories"][0]["full_name"], "org/a");
    let expires = body["expires_at"].as_str().unwrap();
    assert!(expires.ends_with('Z') && expires.len() == 20, "{expires}");

    let cases = [
        (
            json!({"repositories": ["c"]}),
            422,
            "There is at least one repository that does not exist or is not accessible to the parent installation.",
        ),
        (
            json!({"repository_ids": [1]}),
            422,
            "There is at least one repository that does not exist or is not accessible to the parent installation.",
        ),
        (
            json!({"permissions": {"contents": "admin"}}),
            422,
            "The permissions requested are not granted to this installation.",
        ),
        (
            json!({"permissions": {"issues": "write"}}),
            422,
            "The permissions requested are not granted to this installation.",
        ),
        (
            json!({"repositories": "a"}),
            422,
            "Invalid request.\n\nFor 'properties/repositories', \"a\" is not an array.",
        ),
    ];
    for (req, status, message) in &cases {
        let r = post_json(&s, &path, &jwt, req).await;
        assert_eq!((r.status, r.message().as_str()), (*status, *message), "{req}");
    }
    let r = call(&s, "POST", &path, &[("Authorization", &jwt)], b"{oops").await;
    assert_eq!((r.status, r.message().as_str()), (400, "Problems parsing JSON"));
    let r = post_json(&s, "/app/installations/999/access_tokens", &jwt, &json!({})).await;
    assert_eq!((r.status, r.message().as_str()), (404, "Not Found"));
    // An installation token cannot mint tokens.
    let token = mint(&s, id, json!({})).await;
    let r = post_json(&s, &path, &format!("token {token}"), &json!({})).await;
    assert_eq!((r.status, r.message().as_str()), (401, "A JSON web token could not be decoded"));
}

#[tokio::test]
async fn a_token_narrowed_to_repo_a_cannot_dispatch_to_repo_b() {
    let s = start().await;
    let id = s.install("org/a");
    s.install("org/b");
    let only_a = mint(&s, id, json!({"repositories": ["a"], "permissions": {"contents": "write"}})).await;
    let body = json!({"event_type": "pull_request", "client_payload": {"n": 1}});

    assert_eq!(dispatch(&s, "org/a", &only_a, &body).await.status, 204);
    let r = dispatch(&s, "org/b", &only_a, &body).await;
    assert_eq!((r.status, r.message().as_str()), (403, "Resource not accessible by integration"));
    s.set_private("org/b", true);
    let r = dispatch(&s, "org/b", &only_a, &body).await;
    assert_eq!((r.status, r.message().as_str()), (404, "Not Found"));
    let r = dispatch(&s, "nobody/nothing", &only_a, &body).await;
    assert_eq!(r.status, 404);

    // The whole installation's token reaches b; a token without contents: write reaches nothing.
    let all = mint(&s, id, json!({})).await;
    assert_eq!(dispatch(&s, "org/b", &all, &body).await.status, 204);
    let read_only = mint(&s, id, json!({"permissions": {"contents": "read"}})).await;
    let r = dispatch(&s, "org/a", &read_only, &body).await;
    assert_eq!((r.status, r.message().as_str()), (403, "Resource not accessible by integration"));
    // Unknown tokens and JWTs are refused too.
    let r = dispatch(&s, "org/a", "ghs_000000000000000000000000000000000000", &body).await;
    assert_eq!((r.status, r.message().as_str()), (401, "Bad credentials"));
    let r = post_json(&s, "/repos/org/a/dispatches", &format!("Bearer {}", app_jwt(&s)), &body).await;
    assert_eq!(r.status, 403);
    // Uninstalling cuts even an existing token off.
    s.uninstall("org/a");
    assert_eq!(dispatch(&s, "org/a", &all, &body).await.status, 403);

    let ds = s.dispatches();
    assert_eq!(ds.iter().map(|d| d.repo.as_str()).collect::<Vec<_>>(), vec!["org/a", "org/b"]);
    assert!(ds.iter().all(|d| d.installation_id == id && d.event_type == "pull_request"));
    assert_eq!(ds[0].body, body);
}

/// A suspended installation mints no token and its live tokens are
/// refused; an archived repository refuses dispatches; both as GitHub
/// answers them (403 with its message), until lifted.
#[tokio::test]
async fn suspended_installations_and_archived_repositories_refuse_dispatches_with_githubs_403() {
    let s = start().await;
    let id = s.install("org/a");
    s.install("org/b");
    let body = json!({"event_type": "pull_request", "client_payload": {"n": 1}});
    let token = mint(&s, id, json!({})).await;
    s.suspend("org/a");
    let r = dispatch(&s, "org/b", &token, &body).await;
    assert_eq!((r.status, r.message().as_str()), (403, "This installation has been suspended"));
    let r = post_json(
        &s,
        &format!("/app/installations/{id}/access_tokens"),
        &format!("Bearer {}", app_jwt(&s)),
        &json!({}),
    )
    .await;
    assert_eq!((r.status, r.message().as_str()), (403, "This installation has been suspended"));
    s.unsuspend("org/a");
    assert_eq!(dispatch(&s, "org/b", &token, &body).await.status, 204);

    s.set_archived("org/a", true);
    let r = dispatch(&s, "org/a", &token, &body).await;
    assert_eq!((r.status, r.message().as_str()), (403, "Repository was archived so is read-only."));
    assert_eq!(dispatch(&s, "org/b", &token, &body).await.status, 204, "only that repository");
    s.set_archived("org/a", false);
    assert_eq!(dispatch(&s, "org/a", &token, &body).await.status, 204);
    assert_eq!(s.dispatches().len(), 3);
}

#[tokio::test]
async fn an_expired_installation_token_gets_401_bad_credentials() {
    let s = StandIn::start(StandInOptions { token_ttl: Duration::from_secs(1), ..Default::default() }).await.unwrap();
    let id = s.install("org/a");
    let token = mint(&s, id, json!({"repositories": ["a"]})).await;
    let body = json!({"event_type": "push"});
    assert_eq!(dispatch(&s, "org/a", &token, &body).await.status, 204);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = dispatch(&s, "org/a", &token, &body).await;
    assert_eq!(
        r.json(),
        json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"})
    );
    let reqs = s.requests();
    let auths: Vec<AuthKind> = reqs.iter().filter(|r| r.path.ends_with("/dispatches")).map(|r| r.auth).collect();
    assert_eq!(auths, vec![AuthKind::InstallationToken, AuthKind::Invalid]);
    assert_eq!(s.dispatches().len(), 1);
}

#[tokio::test]
async fn dispatch_limits_answer_422_with_githubs_messages() {
    let s = start().await;
    let id = s.install("org/a");
    let token = mint(&s, id, json!({})).await;
    let keys =
        |n: usize| -> Value { (0..n).map(|i| (format!("k{i}"), json!(i))).collect::<serde_json::Map<_, _>>().into() };
    // A payload whose compact JSON is exactly `len` characters.
    let sized = |len: usize| json!({"p": "x".repeat(len - "{\"p\":\"\"}".len())});
    assert_eq!(serde_json::to_string(&sized(65_535)).unwrap().len(), 65_535);

    let refused = [
        (
            json!({"event_type": "e".repeat(101)}),
            "Invalid request.\n\nOnly 100 characters are allowed; 101 were supplied.",
        ),
        (
            json!({"event_type": "e", "client_payload": keys(11)}),
            "Invalid request.\n\nNo more than 10 properties are allowed; 11 were supplied.",
        ),
        (json!({"event_type": "e", "client_payload": sized(65_536)}), "client_payload is too large."),
        (json!({"event_type": "e", "client_payload": {"p": "<".repeat(11_000)}}), "client_payload is too large."),
        (json!({"client_payload": {}}), "Invalid request.\n\n\"event_type\" wasn't supplied."),
        (
            json!({"event_type": "e", "client_payload": "text"}),
            "Invalid request.\n\nFor 'properties/client_payload', \"text\" is not an object.",
        ),
        (json!({"event_type": "e", "ref": "main"}), "Invalid request.\n\n\"ref\" is not a permitted key."),
    ];
    for (body, message) in &refused {
        let r = dispatch(&s, "org/a", &token, body).await;
        assert_eq!((r.status, r.message().as_str()), (422, *message));
        assert_eq!(
            r.json()["documentation_url"],
            "https://docs.github.com/rest/repos/repos#create-a-repository-dispatch-event"
        );
    }
    assert!(s.dispatches().is_empty());
    let accepted = [
        json!({"event_type": "e".repeat(100)}),
        json!({"event_type": "e", "client_payload": keys(10)}),
        json!({"event_type": "e", "client_payload": sized(65_535)}),
    ];
    for body in &accepted {
        assert_eq!(dispatch(&s, "org/a", &token, body).await.status, 204);
    }
    assert_eq!(s.dispatches().len(), 3);
    let r = call(&s, "POST", "/repos/org/a/dispatches", &[("Authorization", &format!("token {token}"))], b"nope").await;
    assert_eq!((r.status, r.message().as_str()), (400, "Problems parsing JSON"));
}

#[tokio::test]
async fn faults_are_consumed_in_order_then_204() {
    let s = start().await;
    let id = s.install("org/a");
    s.install("org/b");
    let token = mint(&s, id, json!({})).await;
    s.inject("Org/A", Fault::ServerError(502));
    s.inject("org/a", Fault::SecondaryRateLimit { retry_after_s: 2 });
    s.inject("org/a", Fault::PrimaryRateLimit { reset_in_s: 60 });
    s.inject("org/a", Fault::PrimaryRateLimitForbidden { reset_in_s: 30 });
    s.inject("org/a", Fault::Unprocessable);
    s.inject("org/a", Fault::Timeout(Duration::from_millis(300)));
    assert_eq!(s.pending_faults("ORG/a"), 6);
    let body = json!({"event_type": "push"});

    // Another repository is not affected, and an invalid request consumes nothing.
    assert_eq!(dispatch(&s, "org/b", &token, &body).await.status, 204);
    assert_eq!(dispatch(&s, "org/a", &token, &json!({})).await.status, 422);
    assert_eq!(s.pending_faults("org/a"), 6);

    let r = dispatch(&s, "org/a", &token, &body).await;
    assert_eq!((r.status, r.message().as_str()), (502, "Server Error"));
    let r = dispatch(&s, "org/a", &token, &body).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert!(r.message().starts_with("You have exceeded a secondary rate limit."), "{}", r.message());
    assert!(r.message().contains(r.header("x-github-request-id").unwrap()));
    assert_ne!(r.header("x-ratelimit-remaining"), Some("0"));
    for (status, reset_in) in [(429, 60), (403, 30)] {
        let r = dispatch(&s, "org/a", &token, &body).await;
        assert_eq!(r.status, status);
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        let reset: i64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((reset - now() - reset_in).abs() <= 2, "reset {reset}");
        assert_eq!(r.message(), format!("API rate limit exceeded for installation ID {id}."));
    }
    assert_eq!(dispatch(&s, "org/a", &token, &body).await.status, 422);
    let started = Instant::now();
    let r = dispatch(&s, "org/a", &token, &body).await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.pending_faults("org/a"), 0);
    assert_eq!(dispatch(&s, "org/a", &token, &body).await.status, 204);

    let statuses: Vec<u16> =
        s.requests().iter().filter(|r| r.repo.as_deref() == Some("org/a")).map(|r| r.status).collect();
    assert_eq!(statuses, vec![422, 502, 403, 429, 403, 422, 504, 204]);
    assert_eq!(s.dispatches().iter().filter(|d| d.repo == "org/a").count(), 1);
}

/// REST docs, "Getting started with the REST API" → "User agent":
/// "Requests with no User-Agent header will be rejected": 403, whatever the
/// route or credential; an empty one too (the docs' own example).
#[tokio::test]
async fn a_request_without_a_user_agent_is_refused_with_githubs_403() {
    let s = start().await;
    let jwt = app_jwt(&s);
    let auth = format!("Bearer {jwt}");
    for (path, ua) in [("/app/installations/1/access_tokens", ""), ("/nowhere", ""), ("/nowhere", "User-Agent: \r\n")] {
        let mut stream = TcpStream::connect(s.local_addr()).await.expect("connect");
        let bytes = request_bytes("POST", path, &[("Authorization", &auth)], b"{}", true);
        let without = String::from_utf8(bytes).unwrap().replace(UA_LINE, ua);
        stream.write_all(without.as_bytes()).await.unwrap();
        let resp = read_response(&mut stream, &mut Vec::new()).await;
        assert_eq!(resp.status, 403, "{path} {ua:?}");
        assert!(String::from_utf8_lossy(&resp.body).contains("make sure your request has a User-Agent header"));
    }
    assert_eq!(call(&s, "GET", "/nowhere", &[], b"").await.status, 404, "with one, the route answers");
}

#[tokio::test]
async fn latency_is_added_to_every_answer() {
    let s = StandIn::start(StandInOptions { latency: Duration::from_millis(200), ..Default::default() }).await.unwrap();
    let started = Instant::now();
    assert_eq!(call(&s, "GET", "/nowhere", &[], b"").await.status, 404);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Without latency the server answers at once (measured server-side, so a
    // busy test machine's connect time does not count).
    s.set_latency(Duration::ZERO);
    call(&s, "GET", "/nowhere", &[], b"").await;
    s.set_latency(Duration::from_millis(120));
    let started = Instant::now();
    call(&s, "GET", "/nowhere", &[], b"").await;
    assert!(started.elapsed() >= Duration::from_millis(120));
    let d: Vec<Duration> = s.requests().iter().map(|r| r.duration).collect();
    assert!(
        d[0] >= Duration::from_millis(200) && d[1] < Duration::from_millis(100) && d[2] >= Duration::from_millis(120),
        "{d:?}"
    );
}

#[tokio::test]
async fn contents_are_served_raw_and_as_json() {
    let s = start().await;
    let id = s.install("pytorch/pytorch");
    let yaml = b"L1:\n  - org/a\n";
    s.put_file("pytorch/pytorch", ".github/allowlist.yml", "main", yaml);
    s.put_file("pytorch/pytorch", ".github/allowlist.yml", "refs/heads/next", b"L2: []\n");
    let token = mint(&s, id, json!({"repositories": ["pytorch"], "permissions": {"contents": "read"}})).await;
    let auth = format!("Bearer {token}");
    let path = "/repos/pytorch/pytorch/contents/.github/allowlist.yml";

    let raw = call(
        &s,
        "GET",
        &format!("{path}?ref=main"),
        &[("Authorization", &auth), ("Accept", "application/vnd.github.raw+json")],
        b"",
    )
    .await;
    assert_eq!((raw.status, raw.body.as_slice()), (200, &yaml[..]));
    let raw = call(&s, "GET", path, &[("Authorization", &auth), ("Accept", "application/vnd.github.raw")], b"").await;
    assert_eq!(raw.body, yaml, "no ref reads main");
    let next = call(
        &s,
        "GET",
        &format!("{path}?ref=next"),
        &[("Authorization", &auth), ("Accept", "application/vnd.github.raw")],
        b"",
    )
    .await;
    assert_eq!(next.body, b"L2: []\n");

    let j = call(
        &s,
        "GET",
        &format!("{path}?ref=main"),
        &[("Authorization", &auth), ("Accept", "application/vnd.github+json")],
        b"",
    )
    .await;
    assert_eq!(j.status, 200);
    let v = j.json();
    assert_eq!((v["type"].as_str(), v["encoding"].as_str()), (Some("file"), Some("base64")));
    assert_eq!((v["name"].as_str(), v["path"].as_str()), (Some("allowlist.yml"), Some(".github/allowlist.yml")));
    assert_eq!(v["size"], yaml.len());
    let b64: String = v["content"].as_str().unwrap().split('\n').collect();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64).unwrap(), yaml);
    assert_eq!(v["sha"].as_str().unwrap().len(), 40);

    let missing = call(&s, "GET", &format!("{path}?ref=gone"), &[("Authorization", &auth)], b"").await;
    assert_eq!(
        missing.json()["documentation_url"],
        "https://docs.github.com/rest/repos/contents#get-repository-content"
    );
    assert_eq!(missing.status, 404);
    let anonymous = call(&s, "GET", path, &[], b"").await;
    assert_eq!(anonymous.status, 401);
    let narrowed = mint(&s, s.install("org/a"), json!({})).await;
    let other_owner = call(&s, "GET", path, &[("Authorization", &format!("token {narrowed}"))], b"").await;
    assert_eq!(other_owner.status, 403);
}

#[tokio::test]
async fn every_answer_has_githubs_headers_and_unknown_routes_are_404_json() {
    let s = start().await;
    s.set_rate_limit(3);
    let jwt = format!("Bearer {}", app_jwt(&s));
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = call(&s, "GET", "/repos/o/r/installation", &[("Authorization", &jwt)], b"").await;
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some((2u64.saturating_sub(i)).to_string().as_str()));
        let reset: i64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!(reset > now() + 3500 && reset <= now() + 3600);
        ids.push(r.header("x-github-request-id").unwrap().to_owned());
    }
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 4, "request ids are unique: {ids:?}");
    for (method, path) in [("GET", "/nope"), ("DELETE", "/repos/o/r/dispatches"), ("GET", "/repos/o/r/contents")] {
        let r = call(&s, method, path, &[], b"").await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(
            r.json(),
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"})
        );
        assert!(r.header("x-github-request-id").is_some());
    }
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_recorded_by_peer_port() {
    let s = start().await;
    let mut conn = TcpStream::connect(s.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..3 {
        conn.write_all(&request_bytes("GET", "/keep", &[], b"", false)).await.unwrap();
        assert_eq!(read_response(&mut conn, &mut buf).await.status, 404);
    }
    call(&s, "GET", "/fresh", &[], b"").await;
    let reqs = s.requests();
    let port = conn.local_addr().unwrap().port();
    assert_eq!(reqs.iter().filter(|r| r.peer_port == port).count(), 3);
    assert_ne!(reqs[3].peer_port, port);
}

#[tokio::test]
async fn octocrab_end_to_end_mints_a_narrowed_token_and_dispatches_over_one_connection() {
    let s = start().await;
    let id = s.install("downstream/npu");
    s.install("downstream/other");
    let app = octocrab_app(&s);
    let inst = app.apps().get_repository_installation("downstream", "npu").await.unwrap();
    let crab = app.installation_builder(inst.id).repositories(vec!["npu".to_owned()]).build().unwrap();
    for n in 0..3 {
        crab.repos("downstream", "npu")
            .dispatches()
            .create("pull_request")
            .client_payload(json!({"n": n}))
            .send()
            .await
            .expect("dispatch accepted");
    }
    let (status, message) =
        github_error(crab.repos("downstream", "other").dispatches().create("push").send().await.unwrap_err());
    assert_eq!((status, message.as_str()), (403, "Resource not accessible by integration"));

    assert_eq!(s.count("POST", "/app/installations/"), 1, "one token, reused");
    let ds = s.dispatches();
    assert_eq!(ds.len(), 3);
    assert!(ds.iter().all(|d| d.installation_id == id && d.repo == "downstream/npu"));
    assert_eq!(ds[2].body, json!({"event_type": "pull_request", "client_payload": {"n": 2}}));
    let ports: std::collections::HashSet<u16> = s.requests().iter().map(|r| r.peer_port).collect();
    assert_eq!(ports.len(), 1, "octocrab kept one connection alive: {:?}", s.requests());
}

#[tokio::test]
async fn the_server_stops_on_shutdown_and_when_the_last_handle_is_dropped() {
    let s = start().await;
    let addr = s.local_addr();
    s.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err(), "closed after shutdown()");

    let s = start().await;
    let addr = s.local_addr();
    let clone = s.clone();
    drop(s);
    assert_eq!(call(&clone, "GET", "/x", &[], b"").await.status, 404, "a clone keeps it running");
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after the last handle was dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scaled-down secondary limits: the rules of [`SecondaryLimits::github`]
/// with small numbers, so a test reaches each in a few requests.
fn small_limits(window: Duration) -> SecondaryLimits {
    SecondaryLimits {
        concurrent: 100,
        points_per_window: 10_000,
        content_per_window: 10_000,
        content_per_60_windows: 10_000,
        ..SecondaryLimits::scaled(window)
    }
}

fn is_secondary_refusal(r: &Resp) -> bool {
    r.status == 403 && r.message().starts_with("You have exceeded a secondary rate limit.")
}

#[tokio::test]
async fn mutation_points_are_limited_per_endpoint_and_identity_with_githubs_403() {
    let s = start().await;
    let (one, other) = (s.install("org/one"), s.install("other/two"));
    let (t1, t2) = (mint(&s, one, json!({})).await, mint(&s, other, json!({})).await);
    // 20 points a window: four dispatches (5 points each), not five.
    s.enforce_secondary_limits(Some(SecondaryLimits {
        points_per_window: 20,
        ..small_limits(Duration::from_secs(60))
    }));
    let body = json!({"event_type": "e"});
    for _ in 0..4 {
        assert_eq!(dispatch(&s, "org/one", &t1, &body).await.status, 204);
    }
    let refused = dispatch(&s, "org/one", &t1, &body).await;
    assert!(is_secondary_refusal(&refused), "{} {}", refused.status, refused.message());
    assert!(refused.message().contains(refused.header("x-github-request-id").unwrap()), "{}", refused.message());
    let retry_after: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(s.secondary_refusals().get(&SecondaryLimit::Points), Some(&1));
    // Another endpoint of the same identity, and another identity on the same endpoint, have their own points.
    let get =
        call(&s, "GET", "/repos/org/one/installation", &[("Authorization", &format!("Bearer {}", app_jwt(&s)))], b"")
            .await;
    assert_eq!(get.status, 200);
    assert_eq!(dispatch(&s, "other/two", &t2, &body).await.status, 204);
    // The refused request did nothing.
    assert_eq!(s.dispatches().iter().filter(|d| d.repo == "org/one").count(), 4);
    // Without Retry-After, as GitHub also answers.
    s.enforce_secondary_limits(Some(SecondaryLimits {
        points_per_window: 20,
        retry_after: false,
        ..small_limits(Duration::from_secs(60))
    }));
    let refused = dispatch(&s, "org/one", &t1, &body).await;
    assert!(is_secondary_refusal(&refused) && refused.header("retry-after").is_none());
    s.enforce_secondary_limits(None);
    assert_eq!(dispatch(&s, "org/one", &t1, &body).await.status, 204);
}

#[tokio::test]
async fn content_creation_is_limited_per_window_and_per_sixty_windows() {
    let s = start().await;
    let token = mint(&s, s.install("org/one"), json!({})).await;
    let window = Duration::from_millis(400);
    s.enforce_secondary_limits(Some(SecondaryLimits {
        content_per_window: 3,
        content_per_60_windows: 5,
        ..small_limits(window)
    }));
    let body = json!({"event_type": "e"});
    let first = Instant::now();
    for _ in 0..3 {
        assert_eq!(dispatch(&s, "org/one", &token, &body).await.status, 204);
    }
    assert!(is_secondary_refusal(&dispatch(&s, "org/one", &token, &body).await));
    assert_eq!(s.secondary_refusals().get(&SecondaryLimit::ContentPerMinute), Some(&1));
    // The window slides: the next one goes through once the first three are a window old.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = dispatch(&s, "org/one", &token, &body).await;
        if r.status == 204 {
            break;
        }
        assert!(is_secondary_refusal(&r), "{} {}", r.status, r.message());
        assert!(Instant::now() < deadline, "the window never slid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first.elapsed() >= window, "accepted {:?} after the first, within the window", first.elapsed());
    assert_eq!(dispatch(&s, "org/one", &token, &body).await.status, 204);
    // Five in sixty windows: the sixth is refused by the hourly limit, whatever the minute says.
    let r = dispatch(&s, "org/one", &token, &body).await;
    assert!(is_secondary_refusal(&r));
    assert!(
        s.secondary_refusals().get(&SecondaryLimit::ContentPerHour).is_some_and(|n| *n >= 1),
        "{:?}",
        s.secondary_refusals()
    );
    assert_eq!(s.dispatches().len(), 5);
}

#[tokio::test]
async fn requests_in_flight_past_the_concurrency_limit_are_refused_at_once() {
    let s = start().await;
    s.install("org/one");
    s.enforce_secondary_limits(Some(SecondaryLimits { concurrent: 2, ..small_limits(Duration::from_secs(60)) }));
    s.set_latency(Duration::from_millis(500));
    let auth = format!("Bearer {}", app_jwt(&s));
    let headers = [("Authorization", auth.as_str())];
    let get = || call(&s, "GET", "/repos/org/one/installation", &headers, b"");
    let (a, b, c, d, e) = tokio::join!(get(), get(), get(), get(), get());
    let answers = [a, b, c, d, e];
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 403, 403, 403]);
    assert!(answers.iter().filter(|r| r.status == 403).all(is_secondary_refusal));
    // Refused at arrival, not after the latency; the two admitted waited it.
    let durations: Vec<(u16, Duration)> = s.requests().iter().map(|r| (r.status, r.duration)).collect();
    assert!(durations.iter().all(|(st, d)| (*st == 403) == (*d < Duration::from_millis(500))), "{durations:?}");
    assert_eq!(s.secondary_refusals().get(&SecondaryLimit::Concurrency), Some(&3));
    // Once answered they no longer count.
    assert_eq!(get().await.status, 200);
}
