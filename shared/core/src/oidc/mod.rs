//! OIDC verification of callback tokens (CONTRACTS.md "Callback input"):
//! `POST /github/callback` carries `Authorization: Bearer <JWT>` minted by the
//! downstream CI (GitHub Actions or Buildkite). [`OidcVerifier::verify`] turns
//! that token into a [`CallerIdentity`] (the `owner/repo` the caller speaks
//! for) or an [`OidcError`] that maps to an HTTP status (401 token problems,
//! 403 identity not allowed, 503 when a dependency is down).
//!
//! Rules, in the order they are applied, with their sources:
//!
//! 1. **Shape**: three base64url parts, at most [`MAX_TOKEN_BYTES`]; a
//!    header with `crit` is refused (RFC 7515 §4.1.11: a recipient that does
//!    not understand a critical extension must reject the JWS).
//! 2. **Algorithm**: header `alg` must be exactly `RS256`, read before any key
//!    is looked at. `none`, every `HS*` (including HMAC keyed with the
//!    issuer's public key, the classic key-confusion attack) and every other
//!    algorithm are refused. Sources: RFC 8725 (JWT Best Current Practices)
//!    §2.1 and §3.1 ("use appropriate algorithms", an allow-list, one
//!    algorithm per key); both issuers sign with RS256 (GitHub's and
//!    Buildkite's discovery documents advertise `RS256`).
//! 3. **Key id**: header `kid` is required; GitHub documents it as the key
//!    the token was signed with ("OpenID Connect reference", JOSE header
//!    parameters) and Buildkite tokens carry it too. Header parameters `jku`,
//!    `jwk`, `x5u` and `x5c` are ignored: keys only ever come from the
//!    configured JWKS URL.
//! 4. **Issuer**: the (still unverified) `iss` must equal a configured trust
//!    anchor *exactly* (no prefix, case or trailing-slash tolerance) before
//!    anything is fetched, so a token can never make the relay fetch keys
//!    from a URL it chose. GitHub: "About security hardening with OpenID
//!    Connect" — the issuer is `https://token.actions.githubusercontent.com`;
//!    Buildkite "OIDC with Buildkite" — `https://agent.buildkite.com`.
//!    An enterprise that customised its issuer gets tokens with `iss`
//!    `https://token.actions.githubusercontent.com/<enterprise slug>` (GitHub
//!    "About security hardening with OpenID Connect" → "Customizing the
//!    issuer value for an enterprise"; REST "Set the GitHub Actions OIDC
//!    custom issuer policy for an enterprise", `include_enterprise_slug`):
//!    such issuers are listed in [`OidcConfig::github_enterprise_issuers`],
//!    each matched exactly and with its own JWKS at `<issuer>/.well-known/jwks`.
//! 5. **Key**: from the issuer's JWKS (`<issuer>/.well-known/jwks` unless
//!    configured otherwise), cached; the JWK must be `kty: RSA`, ≥ 2048 bits,
//!    its `alg` (if given) `RS256` and its `use` (if given) `sig` — a key
//!    published for another algorithm is never used for RS256 (RFC 8725 §3.1).
//!    An unknown `kid` refetches the JWKS once (OpenID Connect Core 1.0
//!    §10.1.1, rotation of asymmetric signing keys), at most once per issuer
//!    per [`OidcConfig::jwks_refetch_interval`] so a flood of bogus `kid`s
//!    cannot hammer the issuer (see [`jwks`]). While the JWKS cannot be
//!    fetched the answer is 503 with `Retry-After` ([`OidcError::retry_after`]),
//!    and it is fetched again on the first request after a back-off of
//!    [`OidcConfig::jwks_backoff`] doubling to [`OidcConfig::jwks_max_backoff`].
//! 6. **Signature** verified by `jsonwebtoken` with `Validation` allowing
//!    RS256 only; the same call checks `iss` again and `aud`: the audience
//!    must be [`OidcConfig::audience`] (default [`DEFAULT_AUDIENCE`]). GitHub
//!    sets a custom audience with `core.getIDToken(audience)`; Buildkite with
//!    `buildkite-agent oidc request-token --audience`. A default audience
//!    (GitHub: the owner's URL; Buildkite: the organization's URL) is refused.
//! 7. **Time** (RFC 7519 §4.1.4–4.1.6), against the injected clock with at
//!    most 60 s leeway ([`MAX_LEEWAY`]): `exp` required and not passed, `nbf`
//!    (when present) reached, `iat` required and not in the future.
//! 8. **Identity**:
//!    - GitHub Actions: claim `repository` (`owner/repo`), bound to claim
//!      `repository_id` on first sight; a later token for the same name with
//!      another id (a renamed, deleted or re-created repository now owned by
//!      someone else) is refused with 403. GitHub: names can be recycled, the
//!      numeric ids are never reused ("OpenID Connect reference", custom
//!      claims; GitHub's immutable subject claims).
//!    - Buildkite: every organization shares one issuer (Buildkite
//!      "Workload identity federation": tokens must be pinned to an
//!      organization), so identity comes only from a configured map
//!      `organization_id/pipeline_id` → `owner/repo`, with optional required
//!      claims, each a list of allowed values (e.g. `build_branch: [main]`),
//!      in PyTorch's `ci_providers.yml` format (see [`buildkite`]). Both ids are optional
//!      claims the job requests with `buildkite-agent oidc request-token
//!      --claim organization_id,pipeline_id` (Buildkite "buildkite-agent
//!      oidc"). Slugs are mutable and never used. Not in the map → 403.
//! 9. **Replay**: `jti` (RFC 7519 §4.1.7; present in GitHub's and Buildkite's
//!    tokens) is required (configurable) and recorded with the SHA-256 of the
//!    request body until `exp` + leeway: the same token with the same body is
//!    an idempotent retry and accepted, with a different body it is refused.
//!
//! 10. **Which run** (GitHub Actions only, applied by the callback route once
//!     the body says which kind of callback it is: [`OidcVerifier::check_run`]):
//!     the token's `event_name` must be in [`GitHubRunPolicy::events`]
//!     (`repository_dispatch`) or, for `nightly` / `periodic` callbacks, in
//!     [`GitHubRunPolicy::scheduled_events`], and its `ref` (or the ref in
//!     `sub`) must be the repository's default branch. See [`GitHubRunPolicy`].
//!
//! Error messages name what was wrong; they never contain the token. Values
//! read from an unverified token (`alg`, `kid`, `iss`) are shown shortened
//! and with non-printable characters replaced.

pub mod buildkite;
pub mod jwks;
pub mod stores;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::StatusCode;
use jsonwebtoken::{errors::ErrorKind, Algorithm, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;

use crate::domain::RepoFullName;
use crate::ports::{Clock, StoreError};

pub use buildkite::{parse_buildkite_pipelines, BuildkiteMapError};
pub use jwks::{Jwk, Jwks, JwksFetchError, JwksFetcher};
pub use stores::{IdentityBindings, InMemoryIdentityBindings, InMemoryReplayGuard, ReplayGuard, ReplayVerdict};

/// The audience callers must request (CONTRACTS.md "Callback input").
pub const DEFAULT_AUDIENCE: &str = "pytorch-cross-repo-ci-relay";
/// GitHub Actions' OIDC issuer ("About security hardening with OpenID Connect").
pub const GITHUB_ACTIONS_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// Buildkite's OIDC issuer ("OIDC with Buildkite"; JWKS at `/.well-known/jwks`).
pub const BUILDKITE_ISSUER: &str = "https://agent.buildkite.com";
/// The largest clock-skew leeway the verifier accepts in its configuration.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// Longest bearer token accepted (GitHub's and Buildkite's are ~1-2 KB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Path of the JWKS below the issuer URL (both issuers' discovery documents
/// give `jwks_uri` = `<issuer>/.well-known/jwks`).
pub const JWKS_PATH: &str = "/.well-known/jwks";

/// Who minted the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssuerKind {
    GitHubActions,
    Buildkite,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::GitHubActions => "github_actions",
            IssuerKind::Buildkite => "buildkite",
        }
    }
}

/// A trusted issuer: the exact `iss` value and where its keys are published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustAnchor {
    /// Compared byte for byte with the token's `iss`.
    pub issuer: String,
    /// The issuer's JWKS (https; http only on loopback, for tests).
    pub jwks_url: String,
}

impl TrustAnchor {
    /// An issuer whose keys are at `<issuer>/.well-known/jwks`.
    pub fn new(issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        let jwks_url = format!("{}{JWKS_PATH}", issuer.trim_end_matches('/'));
        Self { issuer, jwks_url }
    }
    /// `https://token.actions.githubusercontent.com`.
    pub fn github_actions() -> Self {
        Self::new(GITHUB_ACTIONS_ISSUER)
    }
    /// `https://agent.buildkite.com`.
    pub fn buildkite() -> Self {
        Self::new(BUILDKITE_ISSUER)
    }
}

/// One entry of the Buildkite map: the repository a pipeline speaks for, and
/// claims its tokens must carry. Read with [`parse_buildkite_pipelines`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildkitePipeline {
    pub repo: RepoFullName,
    /// Claim name → allowed values: the token's claim, as a string (a
    /// number in decimal, a boolean `true` / `false`), must be one of them;
    /// a missing claim never matches (`_extract_repo_buildkite` in
    /// pytorch/test-infra `aws/lambda/cross_repo_ci_relay/utils/jwt_helper.py`).
    #[serde(default)]
    pub required_claims: BTreeMap<String, Vec<String>>,
}

impl BuildkitePipeline {
    /// Checks `claims` (a verified token's) against [`Self::required_claims`];
    /// `key` names the pipeline in the error. A mismatch is
    /// [`OidcError::IdentityNotAllowed`] (403) naming the claim.
    pub fn check_claims(&self, key: &str, claims: &Value) -> Result<(), OidcError> {
        for (name, allowed) in &self.required_claims {
            let got = buildkite::claim_string(claims.get(name));
            if !got.as_ref().is_some_and(|g| allowed.contains(g)) {
                let got = match (got, claims.get(name)) {
                    (Some(g), _) => format!("{:?}", shown(&g)),
                    (None, Some(v)) => shown(&v.to_string()),
                    (None, None) => "nothing".into(),
                };
                return Err(OidcError::IdentityNotAllowed(format!(
                    "Buildkite pipeline {key} requires claim {name} to be one of {allowed:?}, the token has {got}"
                )));
            }
        }
        Ok(())
    }
}

/// Which GitHub Actions workflow runs may report results.
///
/// The relay starts downstream workflows with `repository_dispatch`, which
/// "will only trigger a workflow run if the workflow file is on the default
/// branch" and runs with `GITHUB_REF` the default branch (GitHub docs
/// "Events that trigger workflows" → `repository_dispatch`,
/// <https://docs.github.com/actions/reference/events-that-trigger-workflows#repository_dispatch>).
/// Scheduled results (`nightly` / `periodic`) come from `schedule` runs
/// (also only on the default branch, same page → `schedule`) or from a
/// manual `workflow_dispatch`. A token from any other run of an allowlisted
/// repository — a `pull_request` run of a branch anyone with write access (or
/// a fork's workflow change) controls, `pull_request_target`, a `push` to a
/// feature branch — must not report a result for a PyTorch commit.
///
/// The claims read are GitHub's: `event_name` ("the name of the event that
/// triggered the workflow run"), `ref` ("the git ref that triggered the
/// workflow run") and `sub` (`repo:<owner>/<repo>:ref:<ref>` by default), in
/// GitHub docs "OpenID Connect reference" → "OIDC token claims"
/// (<https://docs.github.com/actions/reference/security/oidc>). The
/// default branch comes from this configuration, never from a GitHub call
/// per callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHubRunPolicy {
    /// `event_name`s accepted for callbacks of dispatched events. Default:
    /// `repository_dispatch` (`CRCR_CALLBACK_EVENTS`).
    pub events: BTreeSet<String>,
    /// `event_name`s accepted for `nightly` / `periodic` callbacks. Default:
    /// `repository_dispatch`, `schedule`, `workflow_dispatch`
    /// (`CRCR_CALLBACK_SCHEDULED_EVENTS`).
    pub scheduled_events: BTreeSet<String>,
    /// The ref runs must be on, for repositories not in [`Self::branches`]:
    /// a full ref. Default `refs/heads/main` (`CRCR_CALLBACK_DEFAULT_BRANCH`).
    pub default_branch: String,
    /// Lower-cased `owner/repo` → the full ref of its default branch
    /// (`CRCR_CALLBACK_BRANCHES`).
    pub branches: BTreeMap<String, String>,
}

impl Default for GitHubRunPolicy {
    fn default() -> Self {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            events: set(&["repository_dispatch"]),
            scheduled_events: set(&["repository_dispatch", "schedule", "workflow_dispatch"]),
            default_branch: "refs/heads/main".to_owned(),
            branches: BTreeMap::new(),
        }
    }
}

impl GitHubRunPolicy {
    /// A branch name as a full ref: `main` → `refs/heads/main`; a value that
    /// already starts with `refs/` is kept.
    pub fn full_ref(branch: &str) -> String {
        let b = branch.trim();
        if b.starts_with("refs/") {
            b.to_owned()
        } else {
            format!("refs/heads/{b}")
        }
    }

    /// The full ref `repo`'s runs must be on.
    pub fn branch_of(&self, repo: &RepoFullName) -> &str {
        self.branches.get(&repo.as_str().to_ascii_lowercase()).map_or(self.default_branch.as_str(), String::as_str)
    }

    /// Checks a verified GitHub Actions token's `claims` for `repo`;
    /// `scheduled`: a `nightly` / `periodic` callback. Errors
    /// ([`OidcError::RunNotAllowed`], 403) name the claim: `event_name`
    /// missing or not allowed, `ref` (or `sub`'s ref) missing or not the
    /// repository's default branch.
    pub fn check(&self, repo: &RepoFullName, claims: &Value, scheduled: bool) -> Result<(), OidcError> {
        let (allowed, kind) =
            if scheduled { (&self.scheduled_events, "nightly/periodic") } else { (&self.events, "dispatched-event") };
        let list = allowed.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        let event = match claims.get("event_name") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(OidcError::RunNotAllowed("event_name is not a string".into())),
            None => {
                return Err(OidcError::RunNotAllowed(format!(
                    "token has no event_name claim (one of {list} is required for {kind} callbacks)"
                )))
            }
        };
        if !allowed.contains(event) {
            return Err(OidcError::RunNotAllowed(format!(
                "event_name {:?} is not one of {list} (accepted for {kind} callbacks)",
                shown(event)
            )));
        }
        let git_ref = match claims.get("ref") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
            Some(Value::String(_)) | None | Some(Value::Null) => None,
            Some(_) => return Err(OidcError::RunNotAllowed("ref is not a string".into())),
        };
        // Without `ref`, the default `sub` template ends in `:ref:<ref>`.
        let from_sub = || match claims.get("sub") {
            Some(Value::String(s)) => s.split_once(":ref:").map(|(_, r)| r).filter(|r| !r.is_empty()),
            _ => None,
        };
        let want = self.branch_of(repo);
        match git_ref.or_else(from_sub) {
            Some(r) if r == want => Ok(()),
            Some(r) => Err(OidcError::RunNotAllowed(format!(
                "ref {:?} is not {want}, the default branch of {repo} (repository_dispatch and schedule runs are on the default branch)",
                shown(r)
            ))),
            None => Err(OidcError::RunNotAllowed(format!("token has no ref claim (and no ref in sub); {want} is required"))),
        }
    }
}

/// Verifier settings. `Default` is the production trust: GitHub Actions and
/// Buildkite at their real issuers, audience [`DEFAULT_AUDIENCE`], an empty
/// Buildkite map (every Buildkite token is refused until pipelines are
/// mapped), no enterprise issuer, the [`GitHubRunPolicy`] defaults, 60 s
/// leeway, one unknown-`kid` JWKS refetch per issuer per 60 s, a failed JWKS
/// fetch retried after 1 s doubling to 30 s, keys reloaded after an hour,
/// `jti` required.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcConfig {
    pub audience: String,
    /// `None` disables the issuer.
    pub github_actions: Option<TrustAnchor>,
    /// More GitHub Actions issuers: enterprises with a customised issuer
    /// (`https://token.actions.githubusercontent.com/<enterprise slug>`, GitHub
    /// "About security hardening with OpenID Connect" → "Customizing the
    /// issuer value for an enterprise"). Each is matched exactly, has its own
    /// JWKS and key cache, and its tokens are read like [`Self::github_actions`]'s.
    pub github_enterprise_issuers: Vec<TrustAnchor>,
    /// Which GitHub Actions runs may report ([`OidcVerifier::check_run`]).
    pub github_runs: GitHubRunPolicy,
    /// `None` disables the issuer.
    pub buildkite: Option<TrustAnchor>,
    /// Key `organization_id/pipeline_id` (Buildkite UUIDs, compared
    /// case-insensitively).
    pub buildkite_pipelines: BTreeMap<String, BuildkitePipeline>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`; at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// At most one unknown-`kid` JWKS refetch per issuer per this interval.
    pub jwks_refetch_interval: Duration,
    /// After a failed JWKS fetch no other fetch of that issuer's keys is made
    /// for this long (answered 503 with `Retry-After`); it doubles with each
    /// further failure up to [`Self::jwks_max_backoff`] and is reset by a
    /// successful fetch. Default 1 s.
    pub jwks_backoff: Duration,
    /// Longest JWKS back-off. Default 30 s.
    pub jwks_max_backoff: Duration,
    /// Cached keys older than this are reloaded (on the next request); a
    /// failed reload keeps the old keys.
    pub jwks_max_age: Duration,
    /// Refuse tokens without `jti` (both issuers always send one).
    pub require_jti: bool,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            audience: DEFAULT_AUDIENCE.to_owned(),
            github_actions: Some(TrustAnchor::github_actions()),
            github_enterprise_issuers: Vec::new(),
            github_runs: GitHubRunPolicy::default(),
            buildkite: Some(TrustAnchor::buildkite()),
            buildkite_pipelines: BTreeMap::new(),
            leeway: MAX_LEEWAY,
            jwks_refetch_interval: Duration::from_secs(60),
            jwks_backoff: Duration::from_secs(1),
            jwks_max_backoff: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(3600),
            require_jti: true,
        }
    }
}

/// A configuration the verifier refuses to start with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OidcConfigError {
    #[error("OIDC audience is empty")]
    EmptyAudience,
    #[error("OIDC leeway of {0:?} is above the 60 s maximum")]
    LeewayTooLarge(Duration),
    #[error("JWKS refetch interval must be at least one second")]
    RefetchIntervalTooShort,
    #[error("JWKS back-off must be at least one second and at most its maximum ({0:?} .. {1:?})")]
    BadJwksBackoff(Duration, Duration),
    #[error("no OIDC issuer is enabled")]
    NoIssuer,
    #[error("{what} {url:?} must be an https URL (http only on loopback)")]
    BadUrl { what: &'static str, url: String },
    #[error("the OIDC issuer {0:?} is configured twice")]
    SameIssuer(String),
    #[error("Buildkite map key {0:?} is not of the form organization_id/pipeline_id")]
    BadPipelineKey(String),
    #[error("Buildkite map keys {0:?} and {1:?} are the same pipeline")]
    DuplicatePipelineKey(String, String),
}

/// The verified caller.
#[derive(Clone, Debug, PartialEq)]
pub struct CallerIdentity {
    /// The repository the caller speaks for.
    pub repo: RepoFullName,
    pub issuer: IssuerKind,
    /// GitHub's immutable repository id (`repository_id`); `None` for Buildkite.
    pub repository_id: Option<String>,
    /// Every claim of the verified token.
    pub claims: Value,
    pub jti: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub exp: i64,
}

/// Why a token was refused. [`OidcError::status`] gives the HTTP answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OidcError {
    #[error("no bearer token (expected `Authorization: Bearer <OIDC JWT>`)")]
    MissingToken,
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("token algorithm {alg:?} is not accepted: only RS256")]
    Algorithm { alg: String },
    #[error("token header has no key id (kid)")]
    MissingKid,
    #[error("token issuer {iss:?} is not a trusted issuer")]
    UntrustedIssuer { iss: String },
    #[error("no key {kid:?} in the JWKS of {issuer}")]
    UnknownKid { issuer: String, kid: String },
    #[error("key {kid:?} of {issuer} cannot verify an RS256 token: {reason}")]
    KeyMismatch { issuer: String, kid: String, reason: String },
    #[error("token signature does not verify with key {kid:?} of {issuer}")]
    BadSignature { issuer: String, kid: String },
    #[error("token audience is not {expected:?}")]
    WrongAudience { expected: String },
    #[error("token has no {0} claim")]
    MissingClaim(String),
    #[error("token claim {claim} is malformed: {reason}")]
    BadClaim { claim: String, reason: String },
    #[error("token expired at {exp} (now {now}, leeway {leeway_s} s)")]
    Expired { exp: i64, now: i64, leeway_s: i64 },
    #[error("token is not valid before {nbf} (now {now}, leeway {leeway_s} s)")]
    NotYetValid { nbf: i64, now: i64, leeway_s: i64 },
    #[error("token issued in the future: iat {iat} (now {now}, leeway {leeway_s} s)")]
    IssuedInFuture { iat: i64, now: i64, leeway_s: i64 },
    #[error("token id (jti) was already used for a different request body")]
    Replay,
    #[error("identity not allowed: {0}")]
    IdentityNotAllowed(String),
    #[error(
        "repository {repo} is bound to repository_id {bound}, the token has {got} (renamed or re-created repository)"
    )]
    RepositoryIdMismatch { repo: String, bound: String, got: String },
    #[error("keys of {issuer} are unavailable: {reason} (retry in {retry_after_s} s)")]
    JwksUnavailable {
        issuer: String,
        reason: String,
        /// Seconds until the relay fetches the keys again (the `Retry-After` answered).
        retry_after_s: u64,
    },
    #[error("workflow run may not report results: {0}")]
    RunNotAllowed(String),
    #[error("{what} unavailable: {reason}")]
    StoreUnavailable { what: &'static str, reason: String },
}

impl OidcError {
    /// 401 for token problems, 403 for a valid token whose identity is not
    /// allowed, 503 when keys or stores are unreachable (the caller may retry).
    pub fn status(&self) -> StatusCode {
        match self {
            OidcError::IdentityNotAllowed(_) | OidcError::RepositoryIdMismatch { .. } | OidcError::RunNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            OidcError::JwksUnavailable { .. } | OidcError::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// How long the caller should wait before retrying (the `Retry-After`
    /// header, whole seconds, at least 1): `Some` only while an issuer's keys
    /// cannot be fetched (503 [`OidcError::JwksUnavailable`]). RFC 9110
    /// §10.2.3: `Retry-After` with a 503 tells how long the service is
    /// expected to be unavailable.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OidcError::JwksUnavailable { retry_after_s, .. } => Some(Duration::from_secs((*retry_after_s).max(1))),
            _ => None,
        }
    }

    /// A short stable name for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            OidcError::MissingToken => "missing_token",
            OidcError::Malformed(_) => "malformed",
            OidcError::Algorithm { .. } => "algorithm",
            OidcError::MissingKid => "missing_kid",
            OidcError::UntrustedIssuer { .. } => "untrusted_issuer",
            OidcError::UnknownKid { .. } => "unknown_kid",
            OidcError::KeyMismatch { .. } => "key_mismatch",
            OidcError::BadSignature { .. } => "bad_signature",
            OidcError::WrongAudience { .. } => "wrong_audience",
            OidcError::MissingClaim(_) => "missing_claim",
            OidcError::BadClaim { .. } => "bad_claim",
            OidcError::Expired { .. } => "expired",
            OidcError::NotYetValid { .. } => "not_yet_valid",
            OidcError::IssuedInFuture { .. } => "issued_in_future",
            OidcError::Replay => "replay",
            OidcError::IdentityNotAllowed(_) => "identity_not_allowed",
            OidcError::RepositoryIdMismatch { .. } => "repository_id_mismatch",
            OidcError::JwksUnavailable { .. } => "jwks_unavailable",
            OidcError::RunNotAllowed(_) => "run_not_allowed",
            OidcError::StoreUnavailable { .. } => "store_unavailable",
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme
/// case-insensitive, RFC 6750 §2.1).
pub fn bearer_token(authorization: Option<&http::HeaderValue>) -> Result<&str, OidcError> {
    let value = authorization.and_then(|v| v.to_str().ok()).ok_or(OidcError::MissingToken)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(OidcError::MissingToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(OidcError::MissingToken);
    }
    Ok(token)
}

/// SHA-256 of the raw request body: the `body_digest` of [`OidcVerifier::verify`].
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(body).into()
}

/// A value read from an unverified token, made safe to show: at most 64
/// characters, anything but printable ASCII replaced by `?`.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

fn check_url(what: &'static str, url: &str) -> Result<(), OidcConfigError> {
    let bad = || OidcConfigError::BadUrl { what, url: url.to_owned() };
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let host = uri.host().ok_or_else(bad)?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback_host(host) => Ok(()),
        _ => Err(bad()),
    }
}

/// One configured issuer and its key cache.
struct Issuer {
    kind: IssuerKind,
    anchor: TrustAnchor,
    keys: jwks::KeyCache,
}

/// Verifies callback tokens; see the module documentation for the rules.
/// Cheap to share (`Arc`); all state is behind interior locks.
pub struct OidcVerifier {
    config: OidcConfig,
    /// Buildkite map with lower-cased keys.
    pipelines: BTreeMap<String, BuildkitePipeline>,
    issuers: Vec<Issuer>,
    fetcher: Arc<dyn JwksFetcher>,
    clock: Arc<dyn Clock>,
    bindings: Arc<dyn IdentityBindings>,
    replay: Arc<dyn ReplayGuard>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier").field("config", &self.config).finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// A verifier with in-memory identity bindings and replay guard. A
    /// deployment with several instances (Lambda) must share them: see
    /// [`OidcVerifier::with_identity_bindings`] and
    /// [`OidcVerifier::with_replay_guard`].
    pub fn new(
        config: OidcConfig,
        fetcher: Arc<dyn JwksFetcher>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OidcConfigError> {
        if config.audience.trim().is_empty() {
            return Err(OidcConfigError::EmptyAudience);
        }
        if config.leeway > MAX_LEEWAY {
            return Err(OidcConfigError::LeewayTooLarge(config.leeway));
        }
        if config.jwks_refetch_interval < Duration::from_secs(1) {
            return Err(OidcConfigError::RefetchIntervalTooShort);
        }
        if config.jwks_backoff < Duration::from_secs(1) || config.jwks_max_backoff < config.jwks_backoff {
            return Err(OidcConfigError::BadJwksBackoff(config.jwks_backoff, config.jwks_max_backoff));
        }
        let mut issuers = Vec::new();
        let anchors = [(IssuerKind::GitHubActions, config.github_actions.as_ref())]
            .into_iter()
            .chain(config.github_enterprise_issuers.iter().map(|a| (IssuerKind::GitHubActions, Some(a))))
            .chain([(IssuerKind::Buildkite, config.buildkite.as_ref())]);
        for (kind, anchor) in anchors {
            let Some(anchor) = anchor else { continue };
            check_url("OIDC issuer", &anchor.issuer)?;
            check_url("JWKS URL", &anchor.jwks_url)?;
            if issuers.iter().any(|i: &Issuer| i.anchor.issuer == anchor.issuer) {
                return Err(OidcConfigError::SameIssuer(anchor.issuer.clone()));
            }
            let keys = jwks::KeyCache::new(
                anchor.clone(),
                config.jwks_refetch_interval.as_millis() as i64,
                config.jwks_max_age.as_millis() as i64,
                (config.jwks_backoff.as_millis() as i64, config.jwks_max_backoff.as_millis() as i64),
            );
            issuers.push(Issuer { kind, anchor: anchor.clone(), keys });
        }
        if issuers.is_empty() {
            return Err(OidcConfigError::NoIssuer);
        }
        let mut pipelines = BTreeMap::new();
        let mut spelled: BTreeMap<String, String> = BTreeMap::new();
        for (key, pipeline) in &config.buildkite_pipelines {
            let norm = key.trim().to_ascii_lowercase();
            let ok = matches!(norm.split_once('/'), Some((org, pipe)) if !org.is_empty() && !pipe.is_empty() && !pipe.contains('/'));
            if !ok {
                return Err(OidcConfigError::BadPipelineKey(key.clone()));
            }
            if let Some(first) = spelled.insert(norm.clone(), key.clone()) {
                return Err(OidcConfigError::DuplicatePipelineKey(first, key.clone()));
            }
            pipelines.insert(norm, pipeline.clone());
        }
        Ok(Self {
            bindings: Arc::new(InMemoryIdentityBindings::default()),
            replay: Arc::new(InMemoryReplayGuard::new(clock.clone())),
            config,
            pipelines,
            issuers,
            fetcher,
            clock,
        })
    }

    /// Uses `bindings` for the GitHub `repository` → `repository_id` bindings.
    pub fn with_identity_bindings(mut self, bindings: Arc<dyn IdentityBindings>) -> Self {
        self.bindings = bindings;
        self
    }

    /// Uses `guard` for the `jti` replay guard.
    pub fn with_replay_guard(mut self, guard: Arc<dyn ReplayGuard>) -> Self {
        self.replay = guard;
        self
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Verifies `bearer_token` (the JWT, without `Bearer `) for a request
    /// whose raw body hashes to `body_digest` ([`body_digest`]).
    pub async fn verify(&self, bearer_token: &str, body_digest: &[u8; 32]) -> Result<CallerIdentity, OidcError> {
        let token = bearer_token.trim();
        if token.is_empty() {
            return Err(OidcError::MissingToken);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OidcError::Malformed("not three dot-separated parts".into()));
        };

        // 1-3: header, read before any key is chosen.
        let header = decode_json_part(header_b64, "header")?;
        if header.get("crit").is_some() {
            return Err(OidcError::Malformed("critical header extensions (crit) are not supported".into()));
        }
        let alg = match header.get("alg") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(OidcError::Algorithm { alg: "(not a string)".into() }),
            None => return Err(OidcError::Algorithm { alg: "(missing)".into() }),
        };
        if alg != "RS256" {
            return Err(OidcError::Algorithm { alg: shown(alg) });
        }
        let kid = match header.get("kid") {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            _ => return Err(OidcError::MissingKid),
        };

        // 4: the issuer, matched exactly, before anything is fetched.
        let unverified = decode_json_part(payload_b64, "payload")?;
        let iss = match unverified.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(OidcError::BadClaim { claim: "iss".into(), reason: "not a string".into() }),
            None => return Err(OidcError::MissingClaim("iss".into())),
        };
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.anchor.issuer == iss)
            .ok_or(OidcError::UntrustedIssuer { iss: shown(iss) })?;

        // 5: the key.
        let now_ms = self.clock.now_ms();
        let key = issuer.keys.key(kid, now_ms, self.fetcher.as_ref()).await?;

        // 6: signature (RS256 only), iss and aud, by jsonwebtoken.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&issuer.anchor.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["iss", "aud"]);
        // Time claims are checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => {
                OidcError::BadSignature { issuer: issuer.anchor.issuer.clone(), kid: shown(kid) }
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => OidcError::Algorithm { alg: shown(alg) },
            ErrorKind::InvalidAudience => OidcError::WrongAudience { expected: self.config.audience.clone() },
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                OidcError::WrongAudience { expected: self.config.audience.clone() }
            }
            ErrorKind::MissingRequiredClaim(c) => OidcError::MissingClaim(c.clone()),
            ErrorKind::InvalidIssuer => OidcError::UntrustedIssuer { iss: shown(iss) },
            ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => OidcError::KeyMismatch {
                issuer: issuer.anchor.issuer.clone(),
                kid: shown(kid),
                reason: "not a usable RSA public key".into(),
            },
            _ => OidcError::Malformed("token could not be decoded".into()),
        })?;
        let claims = data.claims;
        if !claims.is_object() {
            return Err(OidcError::Malformed("claims are not a JSON object".into()));
        }

        // 7: time, with at most 60 s leeway.
        let now = now_ms.div_euclid(1000);
        let leeway_s = self.config.leeway.as_secs() as i64;
        let exp = numeric_claim(&claims, "exp")?.ok_or_else(|| OidcError::MissingClaim("exp".into()))?;
        if now >= exp.saturating_add(leeway_s) {
            return Err(OidcError::Expired { exp, now, leeway_s });
        }
        if let Some(nbf) = numeric_claim(&claims, "nbf")? {
            if now.saturating_add(leeway_s) < nbf {
                return Err(OidcError::NotYetValid { nbf, now, leeway_s });
            }
        }
        let iat = numeric_claim(&claims, "iat")?.ok_or_else(|| OidcError::MissingClaim("iat".into()))?;
        if iat > now.saturating_add(leeway_s) {
            return Err(OidcError::IssuedInFuture { iat, now, leeway_s });
        }

        let jti = match claims.get("jti") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            None | Some(Value::Null) if !self.config.require_jti => None,
            None | Some(Value::Null) => return Err(OidcError::MissingClaim("jti".into())),
            Some(_) => {
                return Err(OidcError::BadClaim { claim: "jti".into(), reason: "not a non-empty string".into() })
            }
        };

        // 8: identity.
        let (repo, repository_id) = match issuer.kind {
            IssuerKind::GitHubActions => self.github_identity(&claims).await?,
            IssuerKind::Buildkite => (self.buildkite_identity(&claims)?, None),
        };

        // 9: replay guard, kept until the token can no longer be accepted.
        if let Some(jti) = &jti {
            let key = format!("{}|{}", issuer.anchor.issuer, jti);
            let verdict = self
                .replay
                .check_and_record(&key, body_digest, exp.saturating_add(leeway_s))
                .await
                .map_err(|e| store_error("replay guard", e))?;
            if verdict == ReplayVerdict::DifferentBody {
                return Err(OidcError::Replay);
            }
        }

        Ok(CallerIdentity { repo, issuer: issuer.kind, repository_id, claims, jti, exp })
    }

    /// Whether the workflow run that minted `identity`'s token may report a
    /// callback; `scheduled`: the callback is `nightly` / `periodic`. Only
    /// GitHub Actions tokens are checked (a Buildkite pipeline's branch rule
    /// is its `required_claims`). A refusal is [`OidcError::RunNotAllowed`]
    /// (403) naming the claim. See [`GitHubRunPolicy`].
    pub fn check_run(&self, identity: &CallerIdentity, scheduled: bool) -> Result<(), OidcError> {
        if identity.issuer != IssuerKind::GitHubActions {
            return Ok(());
        }
        self.config.github_runs.check(&identity.repo, &identity.claims, scheduled)
    }

    /// GitHub Actions: `repository`, bound to `repository_id` on first sight.
    async fn github_identity(&self, claims: &Value) -> Result<(RepoFullName, Option<String>), OidcError> {
        let repo = match claims.get("repository") {
            Some(Value::String(s)) => RepoFullName::parse(s)
                .map_err(|_| OidcError::BadClaim { claim: "repository".into(), reason: "not owner/repo".into() })?,
            Some(_) => return Err(OidcError::BadClaim { claim: "repository".into(), reason: "not a string".into() }),
            None => return Err(OidcError::MissingClaim("repository".into())),
        };
        let id = match claims.get("repository_id") {
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
            Some(Value::Number(n)) if n.is_u64() => n.to_string(),
            Some(_) => {
                return Err(OidcError::BadClaim { claim: "repository_id".into(), reason: "not a numeric id".into() })
            }
            None => return Err(OidcError::MissingClaim("repository_id".into())),
        };
        let bound = self.bindings.put_if_absent(&repo, &id).await.map_err(|e| store_error("identity bindings", e))?;
        if bound != id {
            return Err(OidcError::RepositoryIdMismatch { repo: repo.to_string(), bound, got: id });
        }
        Ok((repo, Some(id)))
    }

    /// Buildkite: the configured map, keyed by `organization_id/pipeline_id`.
    fn buildkite_identity(&self, claims: &Value) -> Result<RepoFullName, OidcError> {
        let id = |name: &str| match claims.get(name) {
            Some(Value::String(s)) if !s.is_empty() && !s.contains('/') => Ok(s.to_ascii_lowercase()),
            _ => Err(OidcError::IdentityNotAllowed(format!(
                "Buildkite token has no usable {name} claim (request it with \
                 `buildkite-agent oidc request-token --claim organization_id,pipeline_id`)"
            ))),
        };
        let key = format!("{}/{}", id("organization_id")?, id("pipeline_id")?);
        let pipeline = self
            .pipelines
            .get(&key)
            .ok_or_else(|| OidcError::IdentityNotAllowed(format!("Buildkite pipeline {key} is not in the map")))?;
        pipeline.check_claims(&key, claims)?;
        Ok(pipeline.repo.clone())
    }
}

fn store_error(what: &'static str, e: StoreError) -> OidcError {
    OidcError::StoreUnavailable { what, reason: e.to_string() }
}

fn decode_json_part(b64: &str, what: &str) -> Result<Value, OidcError> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| OidcError::Malformed(format!("{what} is not base64url")))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| OidcError::Malformed(format!("{what} is not JSON")))?;
    if !v.is_object() {
        return Err(OidcError::Malformed(format!("{what} is not a JSON object")));
    }
    Ok(v)
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional), floored.
fn numeric_claim(claims: &Value, name: &str) -> Result<Option<i64>, OidcError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
                _ => Err(OidcError::BadClaim { claim: name.into(), reason: "not a NumericDate".into() }),
            },
        },
        Some(_) => Err(OidcError::BadClaim { claim: name.into(), reason: "not a NumericDate".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        let v = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer_token(Some(&v("Bearer abc.def.ghi"))), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(Some(&v("bearer  abc"))), Ok("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            assert_eq!(bearer_token(Some(&v(bad))), Err(OidcError::MissingToken), "{bad}");
        }
        assert_eq!(bearer_token(None), Err(OidcError::MissingToken));
    }

    #[test]
    fn shown_values_are_short_and_printable() {
        assert_eq!(shown("RS256"), "RS256");
        assert_eq!(shown("a\nb\u{1b}"), "a?b?");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 65);
    }

    #[test]
    fn loopback_http_only() {
        assert!(check_url("x", "https://token.actions.githubusercontent.com").is_ok());
        assert!(check_url("x", "http://127.0.0.1:8080/gha").is_ok());
        assert!(check_url("x", "http://[::1]:1/").is_ok());
        assert!(check_url("x", "http://localhost/").is_ok());
        assert!(check_url("x", "http://example.com/").is_err());
        assert!(check_url("x", "ftp://example.com/").is_err());
        assert!(check_url("x", "not a url").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(OidcError::Replay.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(OidcError::IdentityNotAllowed("x".into()).status(), StatusCode::FORBIDDEN);
        assert_eq!(
            OidcError::JwksUnavailable { issuer: "i".into(), reason: "r".into(), retry_after_s: 0 }.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(OidcError::RunNotAllowed("x".into()).status(), StatusCode::FORBIDDEN);
        let e = OidcError::JwksUnavailable { issuer: "i".into(), reason: "r".into(), retry_after_s: 4 };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
        assert_eq!(OidcError::Replay.retry_after(), None);
    }
}
