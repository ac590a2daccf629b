//! The allowlist: which downstream repositories get events, at which level
//! (CONTRACTS.md "Allowlist"). Parses both real shapes (PyTorch's
//! `.github/allowlist.yml`, RFC-0050's example): per level either a list of
//! `owner/repo` / `owner/repo: oncalls` items, or a map (L3: `device ->
//! {repo: [oncalls]}`). Repositories compare case-insensitively and appear
//! at most once across levels. [`AllowlistProvider`] loads it from a local
//! file or a GitHub file URL, caches it for a TTL and keeps serving the last
//! good one when a refresh fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

use crate::domain::{Level, RepoFullName};
use crate::ports::{GitHubApp, GitHubError};

/// Why an allowlist was refused. Every variant names the entry at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllowlistError {
    #[error("allowlist is not valid YAML: {0}")]
    Yaml(String),
    #[error("allowlist must be a mapping of levels (L1..L4) at the top")]
    NotAMapping,
    #[error("allowlist key {0:?} is not a level (expected L1, L2, L3 or L4)")]
    UnknownLevel(String),
    #[error("allowlist entry {path}: {problem}")]
    BadEntry { path: String, problem: String },
    #[error("allowlist lists {repo} twice: at {first} and at {second}")]
    Duplicate { repo: String, first: String, second: String },
    #[error("allowlist URL {0:?} is not https://github.com/<owner>/<repo>/blob/<ref>/<path>")]
    BadUrl(String),
    #[error("cannot read allowlist file {path}: {error}")]
    Io { path: String, error: String },
    #[error("cannot fetch allowlist from GitHub: {0}")]
    Fetch(GitHubError),
    /// A loaded allowlist was refused: `origin` is the file path or the
    /// GitHub file URL it came from ([`AllowlistSource`]'s `Display`),
    /// `error` names the line (YAML syntax) or the entry at fault.
    #[error("{origin}: {error}")]
    In { origin: String, error: Box<AllowlistError> },
}

impl AllowlistError {
    /// Whether the failure may go away by itself: GitHub could not be
    /// asked for the file (5xx, rate limit, unreachable). A file that does
    /// not parse, cannot be read, or is not there (404) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            AllowlistError::Fetch(e) => e.is_transient(),
            AllowlistError::In { error, .. } => error.is_transient(),
            _ => false,
        }
    }
}

/// One allowlisted downstream repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowlistEntry {
    pub repo: RepoFullName,
    pub level: Level,
    /// L3 device label (`ciflow/crcr/<device>`), when the file gives one.
    pub device: Option<String>,
    /// GitHub logins of the on-call people, without `@`.
    pub oncalls: Vec<String>,
}

/// A parsed, validated allowlist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<AllowlistEntry>,
    index: HashMap<RepoFullName, usize>,
    /// First 12 hex digits of the SHA-256 of the source bytes.
    version: String,
}

impl Allowlist {
    /// Parses YAML text (either shape; see the module docs).
    pub fn parse(text: &str) -> Result<Self, AllowlistError> {
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| AllowlistError::Yaml(e.to_string()))?;
        let version = hex::encode(&Sha256::digest(text.as_bytes())[..6]);
        let map = match doc {
            Value::Mapping(m) => m,
            Value::Null => Default::default(),
            _ => return Err(AllowlistError::NotAMapping),
        };
        let mut entries = Vec::new();
        let mut where_seen: HashMap<RepoFullName, String> = HashMap::new();
        for (k, v) in map {
            let key = scalar(&k).unwrap_or_else(|| format!("{k:?}"));
            let level = Level::parse(&key).ok_or_else(|| AllowlistError::UnknownLevel(key.clone()))?;
            let mut found = Vec::new();
            parse_level(level, &key, v, &mut found)?;
            for (entry, path) in found {
                if let Some(first) = where_seen.get(&entry.repo) {
                    return Err(AllowlistError::Duplicate {
                        repo: entry.repo.to_string(),
                        first: first.clone(),
                        second: path,
                    });
                }
                where_seen.insert(entry.repo.clone(), path);
                entries.push(entry);
            }
        }
        let index = entries.iter().enumerate().map(|(i, e)| (e.repo.clone(), i)).collect();
        Ok(Self { entries, index, version })
    }

    /// All entries, in file order.
    pub fn entries(&self) -> &[AllowlistEntry] {
        &self.entries
    }
    pub fn get(&self, repo: &RepoFullName) -> Option<&AllowlistEntry> {
        self.index.get(repo).map(|&i| &self.entries[i])
    }
    /// Content hash identifying this allowlist in logs and `crcr status`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn bad(path: &str, problem: impl Into<String>) -> AllowlistError {
    AllowlistError::BadEntry { path: path.to_owned(), problem: problem.into() }
}

fn parse_level(
    level: Level,
    path: &str,
    v: Value,
    out: &mut Vec<(AllowlistEntry, String)>,
) -> Result<(), AllowlistError> {
    match v {
        Value::Null => Ok(()),
        Value::Sequence(items) => {
            for (i, item) in items.into_iter().enumerate() {
                parse_item(level, None, &format!("{path}[{i}]"), item, out)?;
            }
            Ok(())
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = scalar(&k).ok_or_else(|| bad(path, "keys must be strings"))?;
                if key.contains('/') {
                    // `owner/repo: oncalls` directly under the level.
                    let p = format!("{path}.{key}");
                    out.push((entry(level, None, &key, &v, &p)?, p));
                } else {
                    // `device: {repo: oncalls}` or `device: [repo, ...]`.
                    if level != Level::L3 && level != Level::L4 {
                        return Err(bad(&format!("{path}.{key}"), "device groups are only allowed under L3 and L4"));
                    }
                    let device = key.clone();
                    if device.is_empty() || !device.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                        return Err(bad(
                            &format!("{path}.{key}"),
                            "device names may only use letters, digits, '-', '_', '.'",
                        ));
                    }
                    let p = format!("{path}.{key}");
                    match v {
                        Value::Mapping(repos) => {
                            for (rk, rv) in repos {
                                let repo = scalar(&rk).ok_or_else(|| bad(&p, "repository keys must be strings"))?;
                                let ep = format!("{p}.{repo}");
                                out.push((entry(level, Some(device.clone()), &repo, &rv, &ep)?, ep));
                            }
                        }
                        Value::Sequence(items) => {
                            for (i, item) in items.into_iter().enumerate() {
                                parse_item(level, Some(device.clone()), &format!("{p}[{i}]"), item, out)?;
                            }
                        }
                        _ => return Err(bad(&p, "a device must map repositories to oncalls")),
                    }
                }
            }
            Ok(())
        }
        _ => Err(bad(path, "a level must be a list of repositories or a mapping")),
    }
}

fn parse_item(
    level: Level,
    device: Option<String>,
    path: &str,
    item: Value,
    out: &mut Vec<(AllowlistEntry, String)>,
) -> Result<(), AllowlistError> {
    match item {
        Value::String(repo) => out.push((entry(level, device, &repo, &Value::Null, path)?, path.to_owned())),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, v) = m.into_iter().next().expect("len is 1");
            let repo = scalar(&k).ok_or_else(|| bad(path, "repository must be a string"))?;
            out.push((entry(level, device, &repo, &v, path)?, path.to_owned()));
        }
        _ => return Err(bad(path, "expected `owner/repo` or `owner/repo: oncalls`")),
    }
    Ok(())
}

fn entry(
    level: Level,
    device: Option<String>,
    repo: &str,
    oncalls: &Value,
    path: &str,
) -> Result<AllowlistEntry, AllowlistError> {
    let repo = RepoFullName::parse(repo).map_err(|e| bad(path, e.to_string()))?;
    let raw: Vec<String> = match oncalls {
        Value::Null => vec![],
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(|| bad(path, "oncalls must be names")))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad(path, "oncalls must be a list or a comma-separated string")),
    };
    let mut names = Vec::new();
    for o in raw {
        let n = o.trim().trim_start_matches('@');
        if n.is_empty() {
            continue;
        }
        if !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad(path, format!("oncall {o:?} is not a GitHub login")));
        }
        names.push(n.to_owned());
    }
    Ok(AllowlistEntry { repo, level, device, oncalls: names })
}

// ---------------------------------------------------------------- loading

/// Where the allowlist comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowlistSource {
    File(PathBuf),
    /// A file in a GitHub repository, read through the API with the App's
    /// installation token.
    GitHub {
        repo: RepoFullName,
        git_ref: String,
        path: String,
    },
}

/// The file path, or `https://github.com/<owner>/<repo>/blob/<ref>/<path>`.
impl std::fmt::Display for AllowlistSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowlistSource::File(path) => write!(f, "{}", path.display()),
            AllowlistSource::GitHub { repo, git_ref, path } => {
                write!(f, "https://github.com/{repo}/blob/{git_ref}/{path}")
            }
        }
    }
}

impl AllowlistSource {
    /// Parses `https://github.com/<owner>/<repo>/blob/<ref>/<path>`.
    pub fn from_url(url: &str) -> Result<Self, AllowlistError> {
        let err = || AllowlistError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("https://github.com/").ok_or_else(err)?;
        let mut parts = rest.splitn(5, '/');
        let (Some(owner), Some(name), Some("blob"), Some(git_ref), Some(path)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        if git_ref.is_empty() || path.is_empty() {
            return Err(err());
        }
        let repo = RepoFullName::parse(&format!("{owner}/{name}")).map_err(|_| err())?;
        Ok(Self::GitHub { repo, git_ref: git_ref.to_owned(), path: path.to_owned() })
    }
}

/// How long [`AllowlistProvider::check_at_start`] waits for the allowlist
/// before starting anyway (as when GitHub is unavailable): well inside the
/// 10 s a Lambda function's Init phase may take ("Understand the Lambda
/// execution environment lifecycle" → "Init phase": "The Init phase is
/// limited to 10 seconds").
pub const ALLOWLIST_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the current allowlist: reloads it after `ttl`; when a reload fails,
/// keeps the last good one, logs the error and counts it in
/// [`AllowlistProvider::refresh_failures`].
pub struct AllowlistProvider {
    source: AllowlistSource,
    ttl: Duration,
    github: Option<Arc<dyn GitHubApp>>,
    state: RwLock<Option<(Arc<Allowlist>, Instant)>>,
    refresh: tokio::sync::Mutex<()>,
    failures: AtomicU64,
}

impl AllowlistProvider {
    /// `github` is needed for [`AllowlistSource::GitHub`].
    pub fn new(source: AllowlistSource, ttl: Duration, github: Option<Arc<dyn GitHubApp>>) -> Self {
        Self {
            source,
            ttl,
            github,
            state: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            failures: AtomicU64::new(0),
        }
    }

    /// A provider that always serves `list` (tests, `allowlist check`).
    pub fn fixed(list: Allowlist) -> Self {
        let p = Self::new(AllowlistSource::File(PathBuf::new()), Duration::MAX, None);
        *p.state.write().expect("fresh lock") = Some((Arc::new(list), Instant::now()));
        p
    }

    /// Number of failed reloads since start.
    pub fn refresh_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The current allowlist. Errors only when no allowlist was ever loaded.
    pub async fn current(&self) -> Result<Arc<Allowlist>, AllowlistError> {
        if let Some((list, at)) = self.state.read().expect("allowlist lock").as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(list.clone());
            }
        }
        let _one_refresh = self.refresh.lock().await;
        let last = self.state.read().expect("allowlist lock").clone();
        if let Some((list, at)) = &last {
            if at.elapsed() < self.ttl {
                return Ok(list.clone());
            }
        }
        match self.load().await {
            Ok(list) => {
                let list = Arc::new(list);
                if last.as_ref().map(|(l, _)| l.version() != list.version()).unwrap_or(true) {
                    tracing::info!(version = list.version(), repos = list.entries().len(), "allowlist loaded");
                    crate::metrics::allowlist_loaded(list.version());
                }
                *self.state.write().expect("allowlist lock") = Some((list.clone(), Instant::now()));
                Ok(list)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                match last {
                    Some((list, _)) => {
                        tracing::error!(error = %e, version = list.version(), metric = "allowlist_refresh_failed",
                            "allowlist reload failed; serving the last good allowlist");
                        // Try again after another TTL rather than on every call.
                        *self.state.write().expect("allowlist lock") = Some((list.clone(), Instant::now()));
                        Ok(list)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// The start-up check of the relay (`crcr serve`, and each Lambda
    /// function that reads the allowlist, at init): loads the allowlist now
    /// and returns the error when it is broken (does not parse, cannot be
    /// read, not found), naming the file or URL and the line or entry
    /// ([`AllowlistError::In`]), so the process refuses to start instead of
    /// answering healthy with no allowlist. An AWS Lambda function whose
    /// init fails reports it (`INIT_REPORT` with the error) and Lambda
    /// tries the init again on the next invoke (AWS Lambda developer guide,
    /// "Understand the Lambda execution environment lifecycle" → "Failures
    /// during the Init phase",
    /// <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html>).
    /// GitHub being unavailable ([`AllowlistError::is_transient`]), or not
    /// answering within [`ALLOWLIST_START_TIMEOUT`], is not a broken
    /// allowlist: it is logged and start-up goes on (ingest must keep
    /// taking webhooks: GitHub does not retry a failed delivery,
    /// CONTRACTS.md "Webhook input"); the allowlist is fetched on first use.
    /// Later reload failures keep the last good allowlist ([`Self::current`]).
    pub async fn check_at_start(&self) -> Result<(), AllowlistError> {
        let Ok(loaded) = tokio::time::timeout(ALLOWLIST_START_TIMEOUT, self.current()).await else {
            tracing::error!(timeout_s = ALLOWLIST_START_TIMEOUT.as_secs(), source = %self.source,
                metric = "allowlist_refresh_failed",
                "allowlist not loaded at start-up in time (GitHub slow); starting anyway, it is fetched again on first use");
            return Ok(());
        };
        match loaded {
            Ok(_) => Ok(()),
            Err(e) if e.is_transient() => {
                tracing::error!(error = %e, metric = "allowlist_refresh_failed",
                    "allowlist not loaded at start-up (GitHub unavailable); starting anyway, it is fetched again on first use");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn load(&self) -> Result<Allowlist, AllowlistError> {
        let within =
            |error: AllowlistError| AllowlistError::In { origin: self.source.to_string(), error: Box::new(error) };
        let text = match &self.source {
            AllowlistSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| AllowlistError::Io { path: path.display().to_string(), error: e.to_string() })?,
            AllowlistSource::GitHub { repo, git_ref, path } => {
                let gh = self.github.as_ref().ok_or_else(|| {
                    AllowlistError::Fetch(GitHubError::Permanent {
                        status: 0,
                        reason: "no GitHub App configured".into(),
                    })
                })?;
                let bytes =
                    gh.file_contents(repo, path, git_ref).await.map_err(|e| within(AllowlistError::Fetch(e)))?;
                String::from_utf8(bytes).map_err(|_| within(AllowlistError::Yaml("file is not UTF-8".into())))?
            }
        };
        Allowlist::parse(&text).map_err(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTORCH: &str = include_str!("../../../fixtures/allowlist/pytorch-allowlist.yml");
    const RFC: &str = include_str!("../../../fixtures/allowlist/rfc-example-allowlist.yml");

    fn level_of(list: &Allowlist, repo: &str) -> Option<Level> {
        list.get(&RepoFullName::parse(repo).unwrap()).map(|e| e.level)
    }

    #[test]
    fn pytorch_shape() {
        let list = Allowlist::parse(PYTORCH).unwrap();
        assert_eq!(list.entries().len(), 10);
        assert_eq!(level_of(&list, "riseproject-dev/pytorch-ci"), Some(Level::L1));
        assert_eq!(level_of(&list, "nvidia/PYTORCH-windows-ci"), Some(Level::L1));
        assert_eq!(level_of(&list, "vllm-project/vllm"), Some(Level::L2));
        let l3 = list.get(&RepoFullName::parse("pytorch/crcr-test").unwrap()).unwrap();
        assert_eq!(l3.level, Level::L3);
        assert_eq!(l3.device.as_deref(), Some("crcr-test"));
        assert_eq!(l3.oncalls, ["atalman", "can-gaa-hou", "fffrog", "jewelkm89", "KarhouTam", "subinz1"]);
        assert_eq!(level_of(&list, "pytorch/pytorch"), None);
    }

    #[test]
    fn rfc_shape() {
        let list = Allowlist::parse(RFC).unwrap();
        let got: Vec<_> = list.entries().iter().map(|e| (e.repo.to_string(), e.level)).collect();
        assert_eq!(
            got,
            [
                ("org1/repo1".into(), Level::L1),
                ("org2/repo2".into(), Level::L1),
                ("org3/repo3".into(), Level::L2),
                ("org4/repo4".into(), Level::L3),
                ("org5/repo5".into(), Level::L4),
            ]
        );
        assert_eq!(list.entries()[4].oncalls, ["oncall1", "oncall2"]);
        assert_eq!(list.entries()[3].device, None);
    }

    fn check_err(text: &str, expected: &str) {
        let err = Allowlist::parse(text).unwrap_err().to_string();
        assert!(err.contains(expected), "error {err:?} should contain {expected:?}");
    }

    #[test]
    fn invalid_files_name_the_entry() {
        check_err("L1: [org/a, org/a]", "lists org/a twice: at L1[0] and at L1[1]");
        check_err("L1: [Org/A]\nL4:\n  - org/a: x", "twice: at L1[0] and at L4[0]");
        check_err("L1: [not-a-repo]", "L1[0]: repository \"not-a-repo\" is not of the form owner/repo");
        check_err("L5: [org/a]", "\"L5\" is not a level");
        check_err("L3:\n  dev:\n    org/x y: [a]", "L3.dev.org/x y");
        check_err("L2:\n  gpu:\n    org/a: [a]", "L2.gpu: device groups are only allowed under L3 and L4");
        check_err("L4:\n  - org/e: {a: 1}", "L4[0]: oncalls must be a list");
        check_err("L1: [org/a", "not valid YAML");
        check_err("- org/a", "mapping of levels");
        check_err("L4:\n  - org/e: \"al ice\"", "oncall \"al ice\" is not a GitHub login");
    }

    #[test]
    fn urls() {
        assert_eq!(
            AllowlistSource::from_url("https://github.com/pytorch/pytorch/blob/main/.github/allowlist.yml").unwrap(),
            AllowlistSource::GitHub {
                repo: RepoFullName::parse("pytorch/pytorch").unwrap(),
                git_ref: "main".into(),
                path: ".github/allowlist.yml".into()
            }
        );
        for bad in [
            "http://github.com/a/b/blob/main/x",
            "https://github.com/a/b/tree/main/x",
            "https://github.com/a/b/blob/main/",
        ] {
            assert!(AllowlistSource::from_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn keeps_last_good_allowlist_when_reload_fails() {
        let path = std::env::temp_dir().join(format!("crcr-allowlist-{}.yml", uuid::Uuid::new_v4()));
        std::fs::write(&path, "L1: [org/a]").unwrap();
        let p = AllowlistProvider::new(AllowlistSource::File(path.clone()), Duration::ZERO, None);
        let first = p.current().await.unwrap();
        std::fs::write(&path, "L1: [org/a, org/a]").unwrap();
        let second = p.current().await.unwrap();
        assert_eq!(second.version(), first.version());
        assert_eq!(p.refresh_failures(), 1);
        std::fs::write(&path, "L2: [org/b]").unwrap();
        let third = p.current().await.unwrap();
        assert_eq!(third.entries()[0].repo.as_str(), "org/b");
        std::fs::remove_file(&path).unwrap();
        let never = AllowlistProvider::new(AllowlistSource::File(path), Duration::ZERO, None);
        assert!(matches!(never.current().await, Err(AllowlistError::Io { .. })));
    }
}
