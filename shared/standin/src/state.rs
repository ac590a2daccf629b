//! The stand-in's world: installations and their repositories, minted
//! installation tokens, files, queued faults, per-identity rate-limit
//! windows, and the records of what was asked and answered.
//!
//! One `std::sync::Mutex` guards it all; no lock is held across an await.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::jwt::AppKey;
use super::util;
use super::{Fault, RecordedCheckRun, RecordedDispatch, RecordedRequest, RecordedRunRequest, WorkflowRunState};

/// What the App may do; installations get exactly this.
pub(crate) const APP_PERMISSIONS: &[(&str, &str)] = &[
    ("actions", "write"),
    ("checks", "write"),
    ("contents", "write"),
    ("metadata", "read"),
    ("pull_requests", "read"),
];

/// Webhook events the App subscribes to.
pub(crate) const APP_EVENTS: &[&str] = &["check_run", "check_suite", "pull_request", "push"];

/// The branch a contents request without `ref` reads.
pub(crate) const DEFAULT_BRANCH: &str = "main";

/// Everything the server tasks and the handle share.
pub(crate) struct Shared {
    pub app_id: u64,
    pub client_id: String,
    pub key: AppKey,
    pub base_url: String,
    pub started: Instant,
    pub token_ttl: Duration,
    inner: Mutex<World>,
}

pub(crate) struct World {
    pub latency: Duration,
    pub rate_limit: u64,
    pub installations: Vec<Installation>,
    pub tokens: HashMap<String, Token>,
    /// (lower-case repo, path, ref) -> contents
    pub files: HashMap<(String, String, String), Vec<u8>>,
    /// (lower-case repo, lower-case commit SHA) of the commits that exist
    pub commits: HashSet<(String, String)>,
    /// lower-case repo -> faults still to answer with
    pub faults: HashMap<String, VecDeque<Fault>>,
    /// lower-case names of repositories answered as private (404 instead of 403)
    pub private: HashSet<String>,
    /// lower-case names of archived (read-only) repositories
    pub archived: HashSet<String>,
    /// lower-case names of repositories that exist (installed once, given a file, ...)
    pub known: HashSet<String>,
    /// lower-case former names of renamed or transferred repositories -> their id
    pub moved: HashMap<String, u64>,
    pub requests: Vec<RecordedRequest>,
    /// The App's webhook delivery log (`/app/hook/deliveries`)
    pub hooks: super::hooks::HookLog,
    pub dispatches: Vec<RecordedDispatch>,
    /// Check runs created (and updated in place), oldest first
    pub check_runs: Vec<RecordedCheckRun>,
    /// (lower-case repo, lower-case head SHA) -> id of the App's check suite there
    pub check_suites: HashMap<(String, String), u64>,
    /// (lower-case repo, run id) -> workflow run
    pub workflow_runs: HashMap<(String, u64), WorkflowRunState>,
    /// Re-run and cancel requests that passed the token checks, oldest first
    pub run_requests: Vec<RecordedRunRequest>,
    /// identity -> (window start, Unix s; calls in the window)
    pub rate: HashMap<String, (u64, u64)>,
    /// Length of a primary rate-limit window (GitHub: an hour).
    pub rate_window_s: u64,
    /// Whether a call past `rate_limit` in its window is refused.
    pub enforce_primary: bool,
    /// Calls refused by the primary limit, by identity.
    pub primary_refused: HashMap<String, u64>,
    /// GitHub's secondary rate limits, when enforced.
    pub secondary: super::secondary::SecondaryState,
    next_installation: u64,
    next_account: u64,
    next_repo: u64,
    next_request: u64,
    next_check_suite: u64,
}

pub(crate) struct Installation {
    pub id: u64,
    pub account_login: String,
    pub account_id: u64,
    pub created_at: u64,
    pub repos: Vec<Repo>,
    /// When the installation was suspended (Unix s), while it is.
    pub suspended_at: Option<u64>,
}

#[derive(Clone)]
pub(crate) struct Repo {
    pub id: u64,
    /// `owner/name` as first installed
    pub full_name: String,
}

impl Repo {
    pub(crate) fn name(&self) -> &str {
        self.full_name.split_once('/').map_or(&*self.full_name, |(_, n)| n)
    }
}

pub(crate) struct Token {
    pub installation_id: u64,
    /// lower-case full names the token is narrowed to; `None` = every
    /// repository of the installation, now and later
    pub repos: Option<HashSet<String>>,
    pub permissions: BTreeMap<String, String>,
    pub expires: Instant,
}

/// Ordinal of a permission level (`read` < `write` < `admin`).
pub(crate) fn level(s: &str) -> Option<u8> {
    match s {
        "read" => Some(1),
        "write" => Some(2),
        "admin" => Some(3),
        _ => None,
    }
}

impl Shared {
    pub(crate) fn new(app_id: u64, key: AppKey, base_url: String, token_ttl: Duration, latency: Duration) -> Shared {
        Shared {
            app_id,
            client_id: format!("Iv23li{}", util::random_alnum(14)),
            key,
            base_url,
            started: Instant::now(),
            token_ttl,
            inner: Mutex::new(World {
                latency,
                rate_limit: 5000,
                installations: Vec::new(),
                tokens: HashMap::new(),
                files: HashMap::new(),
                commits: HashSet::new(),
                faults: HashMap::new(),
                private: HashSet::new(),
                archived: HashSet::new(),
                known: HashSet::new(),
                moved: HashMap::new(),
                requests: Vec::new(),
                hooks: Default::default(),
                dispatches: Vec::new(),
                check_runs: Vec::new(),
                check_suites: HashMap::new(),
                workflow_runs: HashMap::new(),
                run_requests: Vec::new(),
                rate: HashMap::new(),
                rate_window_s: 3600,
                enforce_primary: false,
                primary_refused: HashMap::new(),
                secondary: Default::default(),
                next_installation: 40_000_001,
                next_account: 90_000_001,
                next_repo: 700_000_001,
                next_request: 1,
                next_check_suite: 3_000_000_001,
            }),
        }
    }

    /// The world, locked. A panic while locked (a bug) does not poison the
    /// stand-in for the rest of a test run.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn ms_since_start(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }
}

impl World {
    /// Installs the App on `repo` (`owner/name`): one installation per
    /// owner, the repository added to it. Returns the installation id.
    pub(crate) fn install(&mut self, repo: &str) -> u64 {
        let (owner, _) = split_repo(repo);
        let lower = repo.to_ascii_lowercase();
        self.known.insert(lower.clone());
        let idx = match self.installations.iter().position(|i| i.account_login.eq_ignore_ascii_case(owner)) {
            Some(idx) => idx,
            None => {
                let inst = Installation {
                    id: self.next_installation,
                    account_login: owner.to_owned(),
                    account_id: self.next_account,
                    created_at: util::epoch_now(),
                    repos: Vec::new(),
                    suspended_at: None,
                };
                self.next_installation += 1;
                self.next_account += 1;
                self.installations.push(inst);
                self.installations.len() - 1
            }
        };
        let next_repo = &mut self.next_repo;
        let inst = &mut self.installations[idx];
        if !inst.repos.iter().any(|r| r.full_name.eq_ignore_ascii_case(repo)) {
            inst.repos.push(Repo { id: *next_repo, full_name: repo.to_owned() });
            *next_repo += 1;
        }
        inst.id
    }

    /// Renames `old` to `new` (same id, same installation): later requests
    /// naming `old` are redirected ([`World::moved_id`]); tokens that
    /// reached `old` reach `new` (GitHub narrows tokens by repository, not
    /// by name). Returns the repository's id, `None` when `old` is not
    /// installed.
    pub(crate) fn rename(&mut self, old: &str, new: &str) -> Option<u64> {
        let (old_lower, new_lower) = (old.to_ascii_lowercase(), new.to_ascii_lowercase());
        let repo = self
            .installations
            .iter_mut()
            .flat_map(|i| i.repos.iter_mut())
            .find(|r| r.full_name.to_ascii_lowercase() == old_lower)?;
        repo.full_name = new.to_owned();
        let id = repo.id;
        self.moved.remove(&new_lower);
        self.moved.insert(old_lower.clone(), id);
        self.known.insert(new_lower.clone());
        for token in self.tokens.values_mut() {
            if let Some(set) = token.repos.as_mut() {
                if set.remove(&old_lower) {
                    set.insert(new_lower.clone());
                }
            }
        }
        Some(id)
    }

    /// The id of the repository formerly named `repo`, when it was renamed
    /// or transferred and no repository has that name now.
    pub(crate) fn moved_id(&self, repo: &str) -> Option<u64> {
        if self.installation_of(repo).is_some() {
            return None;
        }
        self.moved.get(&repo.to_ascii_lowercase()).copied()
    }

    /// The installation holding the repository with id `id`.
    pub(crate) fn installation_of_id(&self, id: u64) -> Option<&Installation> {
        self.installations.iter().find(|i| i.repos.iter().any(|r| r.id == id))
    }

    /// Suspends (or, with `false`, unsuspends) the installation `repo` is in.
    pub(crate) fn suspend(&mut self, repo: &str, suspended: bool) {
        let now = util::epoch_now();
        for inst in &mut self.installations {
            if inst.repos.iter().any(|r| r.full_name.eq_ignore_ascii_case(repo)) {
                inst.suspended_at = suspended.then_some(now);
            }
        }
    }

    /// Removes `repo` from its installation (the owner unchecked it).
    pub(crate) fn uninstall(&mut self, repo: &str) {
        for inst in &mut self.installations {
            inst.repos.retain(|r| !r.full_name.eq_ignore_ascii_case(repo));
        }
    }

    pub(crate) fn installation_of(&self, repo: &str) -> Option<&Installation> {
        self.installations.iter().find(|i| i.repos.iter().any(|r| r.full_name.eq_ignore_ascii_case(repo)))
    }

    pub(crate) fn installation(&self, id: u64) -> Option<&Installation> {
        self.installations.iter().find(|i| i.id == id)
    }

    /// A live token, or `None` when unknown or expired.
    pub(crate) fn live_token(&self, token: &str, now: Instant) -> Option<&Token> {
        self.tokens.get(token).filter(|t| t.expires > now)
    }

    /// Whether `token` reaches `repo` now (the repository is still in the
    /// token's installation and inside the token's narrowing).
    pub(crate) fn token_covers(&self, token: &Token, repo: &str) -> bool {
        let lower = repo.to_ascii_lowercase();
        let in_installation = self
            .installation(token.installation_id)
            .is_some_and(|i| i.repos.iter().any(|r| r.full_name.to_ascii_lowercase() == lower));
        in_installation && token.repos.as_ref().is_none_or(|set| set.contains(&lower))
    }

    /// The id of the App's check suite on `repo` for `head_sha`, created
    /// (with the next id) on first use: GitHub puts every check run an App
    /// creates on a commit into that App's one suite for the commit.
    pub(crate) fn check_suite_for(&mut self, repo: &str, head_sha: &str) -> u64 {
        let key = (repo.to_ascii_lowercase(), head_sha.to_ascii_lowercase());
        if let Some(id) = self.check_suites.get(&key) {
            return *id;
        }
        let id = self.next_check_suite;
        self.next_check_suite += 1;
        self.check_suites.insert(key, id);
        id
    }

    /// The level (see [`level`]) of permission `name` of the installation
    /// token `token`, `None` when the token does not have it.
    pub(crate) fn token_level(&self, token: &str, name: &str) -> Option<u8> {
        self.tokens.get(token).and_then(|t| t.permissions.get(name)).and_then(|p| level(p))
    }

    pub(crate) fn next_request_id(&mut self) -> String {
        let n = self.next_request;
        self.next_request += 1;
        let salt = uuid::Uuid::new_v4().as_u128();
        format!(
            "{:04X}:{:04X}:{:X}:{:X}:{:08X}",
            (salt >> 112) as u16,
            (salt >> 96) as u16,
            n,
            (salt >> 64) as u32,
            util::epoch_now() as u32
        )
    }

    /// Counts a call against `identity`'s hourly window and returns
    /// (limit, remaining, used, reset as Unix seconds).
    pub(crate) fn count_call(&mut self, identity: &str, now_s: u64) -> (u64, u64, u64, u64) {
        let span = self.rate_window_s;
        let window = self.rate.entry(identity.to_owned()).or_insert((now_s, 0));
        if now_s >= window.0 + span {
            *window = (now_s, 0);
        }
        window.1 += 1;
        let used = window.1;
        (self.rate_limit, self.rate_limit.saturating_sub(used), used, window.0 + span)
    }

    /// When `identity` has used its whole primary limit in the current
    /// window and the limit is enforced: `Some((limit, used, reset))`, the
    /// call refused (and counted in `primary_refused`, not in the window).
    pub(crate) fn primary_exhausted(&mut self, identity: &str, now_s: u64) -> Option<(u64, u64, u64)> {
        let (start, used) = *self.rate.get(identity)?;
        let reset = start + self.rate_window_s;
        if !self.enforce_primary || now_s >= reset || used < self.rate_limit {
            return None;
        }
        *self.primary_refused.entry(identity.to_owned()).or_default() += 1;
        Some((self.rate_limit, used, reset))
    }
}

/// `("owner", "name")` of `owner/name` (the whole text as owner when there is no slash).
pub(crate) fn split_repo(repo: &str) -> (&str, &str) {
    repo.split_once('/').unwrap_or((repo, ""))
}

/// A contents path without leading or trailing slashes.
pub(crate) fn normalize_path(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

/// A ref as stored: `refs/heads/x` and `refs/tags/x` are `x`; none is the default branch.
pub(crate) fn normalize_ref(git_ref: Option<&str>) -> String {
    let r = git_ref.map(str::trim).filter(|r| !r.is_empty() && *r != "HEAD");
    let r = r.unwrap_or(DEFAULT_BRANCH);
    r.strip_prefix("refs/heads/").or_else(|| r.strip_prefix("refs/tags/")).unwrap_or(r).to_owned()
}
