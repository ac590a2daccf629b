//! App endpoints (App JWT required): the installation of a repository and
//! installation access tokens.
//!
//! - `GET /repos/{owner}/{repo}/installation` → 200 installation, 404.
//! - `POST /app/installations/{id}/access_tokens` → 201 token; 404 unknown
//!   installation; 400 unparsable JSON; 422 a repository outside the
//!   installation or a permission beyond what it was granted.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::server::{gh_error, require_app, Auth};
use super::state::{self, Installation, Repo, Shared, Token, APP_EVENTS, APP_PERMISSIONS};
use super::util;

const DOC_REPO_INSTALLATION: &str =
    "https://docs.github.com/rest/apps/apps#get-a-repository-installation-for-the-authenticated-app";
const DOC_CREATE_TOKEN: &str = "https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app";
const REPOS_NOT_ACCESSIBLE: &str =
    "There is at least one repository that does not exist or is not accessible to the parent installation.";
const PERMISSIONS_NOT_GRANTED: &str = "The permissions requested are not granted to this installation.";

pub(crate) async fn repo_installation(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Path((owner, repo)): Path<(String, String)>,
) -> Response {
    if let Err(resp) = require_app(&auth) {
        return resp;
    }
    let world = shared.world();
    let full = format!("{owner}/{repo}");
    if let Some(id) = world.moved_id(&full) {
        return moved(&shared, 301, &format!("/repositories/{id}/installation"));
    }
    match world.installation_of(&full) {
        Some(inst) => Json(installation_json(&shared, inst)).into_response(),
        None => gh_error(404, "Not Found", DOC_REPO_INSTALLATION),
    }
}

/// `GET /repositories/{id}/installation`: where GitHub's redirect for a
/// renamed or transferred repository leads; answers as
/// `GET /repos/{owner}/{repo}/installation` of the repository's current name.
pub(crate) async fn repo_installation_by_id(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Response {
    if let Err(resp) = require_app(&auth) {
        return resp;
    }
    let world = shared.world();
    match id.parse::<u64>().ok().and_then(|id| world.installation_of_id(id)) {
        Some(inst) => Json(installation_json(&shared, inst)).into_response(),
        None => gh_error(404, "Not Found", DOC_REPO_INSTALLATION),
    }
}

/// GitHub's answer to a request naming a renamed or transferred repository:
/// `status` (301 for `GET`, 307 for other methods: GitHub developer
/// changelog, "Preview repository redirects", 2015-04-17) with `Location`
/// the same request under `/repositories/{id}` and GitHub's JSON body
/// ("Best practices for using the REST API" → "Follow redirects").
pub(crate) fn moved(shared: &Shared, status: u16, path: &str) -> Response {
    let location = format!("{}{path}", shared.base_url);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let message = if status == 301 { "Moved Permanently" } else { "Temporary Redirect" };
    let body = json!({"message": message, "url": location,
        "documentation_url": "https://docs.github.com/rest/guides/best-practices-for-using-the-rest-api#follow-redirects"});
    let mut resp = (code, Json(body)).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    resp
}

fn app_permissions() -> Map<String, Value> {
    APP_PERMISSIONS.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect()
}

fn account_json(shared: &Shared, login: &str, id: u64) -> Value {
    let api = &shared.base_url;
    json!({
        "login": login, "id": id, "node_id": format!("O_kgDO{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"), "gravatar_id": "",
        "url": format!("{api}/users/{login}"), "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{api}/users/{login}/followers"),
        "following_url": format!("{api}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{api}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/users/{login}/subscriptions"),
        "organizations_url": format!("{api}/users/{login}/orgs"),
        "repos_url": format!("{api}/users/{login}/repos"),
        "events_url": format!("{api}/users/{login}/events{{/privacy}}"),
        "received_events_url": format!("{api}/users/{login}/received_events"),
        "type": "Organization", "user_view_type": "public", "site_admin": false,
    })
}

fn installation_json(shared: &Shared, inst: &Installation) -> Value {
    let api = &shared.base_url;
    let created = util::rfc3339(inst.created_at);
    json!({
        "id": inst.id,
        "client_id": shared.client_id,
        "account": account_json(shared, &inst.account_login, inst.account_id),
        "repository_selection": "selected",
        "access_tokens_url": format!("{api}/app/installations/{}/access_tokens", inst.id),
        "repositories_url": format!("{api}/installation/repositories"),
        "html_url": format!("https://github.com/organizations/{}/settings/installations/{}", inst.account_login, inst.id),
        "app_id": shared.app_id,
        "app_slug": "crcr-stand-in",
        "target_id": inst.account_id,
        "target_type": "Organization",
        "permissions": app_permissions(),
        "events": APP_EVENTS,
        "created_at": created,
        "updated_at": created,
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_by": if inst.suspended_at.is_some() { account_json(shared, &inst.account_login, inst.account_id) } else { Value::Null },
        "suspended_at": inst.suspended_at.map(util::rfc3339),
    })
}

fn repository_json(shared: &Shared, inst: &Installation, repo: &Repo, private: bool) -> Value {
    let api = &shared.base_url;
    let full = &repo.full_name;
    json!({
        "id": repo.id, "node_id": format!("R_kgDO{}", repo.id), "name": repo.name(), "full_name": full,
        "private": private, "owner": account_json(shared, &inst.account_login, inst.account_id),
        "html_url": format!("https://github.com/{full}"), "description": null, "fork": false,
        "url": format!("{api}/repos/{full}"), "default_branch": state::DEFAULT_BRANCH,
        "visibility": if private { "private" } else { "public" },
    })
}

fn invalid(property: &str, value: &Value, expected: &str) -> Response {
    let message =
        format!("Invalid request.\n\nFor 'properties/{property}', {} is not {expected}.", util::ruby_inspect(value));
    gh_error(422, &message, DOC_CREATE_TOKEN)
}

/// GitHub's answer for a suspended installation.
pub(crate) const SUSPENDED: &str = "This installation has been suspended";

pub(crate) async fn create_token(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(resp) = require_app(&auth) {
        return resp;
    }
    let not_found = || gh_error(404, "Not Found", DOC_CREATE_TOKEN);
    let Ok(id) = id.parse::<u64>() else {
        return not_found();
    };
    match shared.world().installation(id) {
        None => return not_found(),
        // A suspended installation gets no token (GitHub: 403 "This
        // installation has been suspended", as octokit.rb#1307 and
        // ossf/allstar#314 quote it; "Suspending a GitHub App installation":
        // a suspended App cannot access the account's resources).
        Some(inst) if inst.suspended_at.is_some() => return gh_error(403, SUSPENDED, DOC_CREATE_TOKEN),
        Some(_) => {}
    }

    let request: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => map,
            _ => return gh_error(400, "Problems parsing JSON", DOC_CREATE_TOKEN),
        }
    };

    // Shapes first, as GitHub's schema does.
    let mut names = Vec::new();
    match request.get("repositories") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                match item.as_str() {
                    Some(s) => names.push(s.to_owned()),
                    None => return invalid("repositories/items", item, "a string"),
                }
            }
        }
        Some(other) => return invalid("repositories", other, "an array"),
    }
    let mut ids = Vec::new();
    match request.get("repository_ids") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                match item.as_u64() {
                    Some(n) => ids.push(n),
                    None => return invalid("repository_ids/items", item, "an integer"),
                }
            }
        }
        Some(other) => return invalid("repository_ids", other, "an array"),
    }
    let mut asked = BTreeMap::new();
    match request.get("permissions") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(s) => {
                        asked.insert(k.clone(), s.to_owned());
                    }
                    None => return invalid(&format!("permissions/{k}"), v, "a string"),
                }
            }
        }
        Some(other) => return invalid("permissions", other, "an object"),
    }

    let mut world = shared.world();
    let Some(inst) = world.installation(id) else {
        return not_found();
    };

    // Repositories: each must be one the installation was granted.
    let narrowed = !names.is_empty() || !ids.is_empty();
    let mut chosen: Vec<Repo> = Vec::new();
    for name in &names {
        match inst.repos.iter().find(|r| r.name().eq_ignore_ascii_case(name)) {
            Some(r) => chosen.push(r.clone()),
            None => return gh_error(422, REPOS_NOT_ACCESSIBLE, DOC_CREATE_TOKEN),
        }
    }
    for rid in &ids {
        match inst.repos.iter().find(|r| r.id == *rid) {
            Some(r) => chosen.push(r.clone()),
            None => return gh_error(422, REPOS_NOT_ACCESSIBLE, DOC_CREATE_TOKEN),
        }
    }
    chosen.sort_by_key(|r| r.id);
    chosen.dedup_by_key(|r| r.id);

    // Permissions: never more than the installation has.
    let granted: BTreeMap<String, String> =
        APP_PERMISSIONS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let permissions = if asked.is_empty() {
        granted
    } else {
        for (k, v) in &asked {
            let ok = match (state::level(v), granted.get(k).and_then(|g| state::level(g))) {
                (Some(want), Some(have)) => want <= have,
                _ => false,
            };
            if !ok {
                return gh_error(422, PERMISSIONS_NOT_GRANTED, DOC_CREATE_TOKEN);
            }
        }
        asked
    };

    let repos_json: Vec<Value> = chosen
        .iter()
        .map(|r| repository_json(&shared, inst, r, world.private.contains(&r.full_name.to_ascii_lowercase())))
        .collect();
    let token = format!("ghs_{}", util::random_alnum(36));
    let expires_at = util::rfc3339(util::epoch_now() + shared.token_ttl.as_secs());
    let mut answer = json!({
        "token": token,
        "expires_at": expires_at,
        "permissions": permissions,
        "repository_selection": "selected",
    });
    if narrowed {
        answer["repositories"] = Value::Array(repos_json);
    }
    let covered: Option<HashSet<String>> =
        narrowed.then(|| chosen.iter().map(|r| r.full_name.to_ascii_lowercase()).collect());
    world.tokens.insert(
        token,
        Token { installation_id: id, repos: covered, permissions, expires: Instant::now() + shared.token_ttl },
    );
    (StatusCode::CREATED, Json(answer)).into_response()
}
