//! The Buildkite pipeline map (`CRCR_BUILDKITE_PIPELINES_FILE`) in the
//! format PyTorch keeps it: pytorch/test-infra
//! `aws/lambda/cross_repo_ci_relay/config/ci_providers.yml`, read by
//! `load_ci_provider_mappings` / `_load_buildkite_repo_map` and enforced by
//! `_extract_repo_buildkite` in `aws/lambda/cross_repo_ci_relay/utils/jwt_helper.py`.
//! A copy of the real file is `fixtures/ci_providers.yml`.
//!
//! ```yaml
//! providers:
//!   buildkite:
//!     repo_map:
//!       <organization_id>/<pipeline_id>: owner/repo          # simple form
//!       <organization_id>/<pipeline_id>:                      # constrained form
//!         repo: owner/repo
//!         required_claims:
//!           build_branch: [main, nightly]                     # any one of these
//! buildkite:                                                  # legacy flat section
//!   <organization_id>/<pipeline_id>: ...
//! ```
//!
//! Rules (jwt_helper.py unless said otherwise):
//! - YAML; JSON is YAML, so crcr's earlier JSON files keep working.
//! - The map is `providers.buildkite.repo_map`; when that is absent or empty,
//!   the legacy top-level `buildkite:` section. A document with neither a
//!   `providers` nor a `buildkite` key is crcr's earlier flat form: every
//!   top-level key is a pipeline (`{"<org id>/<pipeline id>": {"repo": ..,
//!   "required_claims": {..}}}`). An empty document is an empty map.
//! - A value is `owner/repo` or `{repo, required_claims}`; each required claim
//!   lists its allowed values, a scalar meaning one value. The token's claim,
//!   as a string, must be one of them.
//! - Unlike the Python relay, which skips a malformed entry with a warning,
//!   any malformed entry is an error naming it ([`BuildkiteMapError`]): a
//!   skipped constraint or a misspelt key (`required_claim`) must not
//!   silently widen who may report for a repository. So are an empty list of
//!   allowed values (nothing could match) and unknown keys in an entry.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use serde_yaml_ng::Value;

use super::BuildkitePipeline;
use crate::domain::RepoFullName;

/// A pipeline map that cannot be used; names the section or entry.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BuildkiteMapError {
    /// Not YAML (nor JSON) at all.
    #[error("not YAML: {0}")]
    Syntax(String),
    /// A section (`providers`, `providers.buildkite`, `repo_map`, the
    /// document) that is not a mapping.
    #[error("{section} must be a mapping")]
    NotAMapping { section: String },
    /// One entry, named by its key as written, and what is wrong with it.
    #[error("entry {entry:?}: {problem}")]
    Entry { entry: String, problem: String },
}

fn entry_err(entry: &str, problem: impl Into<String>) -> BuildkiteMapError {
    BuildkiteMapError::Entry { entry: entry.to_owned(), problem: problem.into() }
}

/// A YAML scalar as the Python relay compares it (`str(value)`): a string as
/// is, a number in decimal, a boolean `true` / `false`. `None` for anything else.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The mapping at `v`, `None` when absent or null.
fn mapping<'a>(v: Option<&'a Value>, section: &str) -> Result<Option<&'a serde_yaml_ng::Mapping>, BuildkiteMapError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(m)) => Ok(Some(m)),
        Some(_) => Err(BuildkiteMapError::NotAMapping { section: section.to_owned() }),
    }
}

/// Reads a pipeline map in PyTorch's `ci_providers.yml` format (or crcr's
/// earlier flat JSON form; see the module documentation). Keys come back as
/// written (trimmed); [`super::OidcVerifier::new`] lower-cases them and
/// refuses two spellings of one pipeline.
pub fn parse_buildkite_pipelines(text: &str) -> Result<BTreeMap<String, BuildkitePipeline>, BuildkiteMapError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| BuildkiteMapError::Syntax(e.to_string()))?;
    let Some(top) = mapping(Some(&doc), "the document")? else {
        return Ok(BTreeMap::new());
    };
    let has = |k: &str| top.contains_key(Value::String(k.to_owned()));
    if !has("providers") && !has("buildkite") {
        return section(top);
    }
    // PyTorch's format: other top-level keys are ignored, as the Python relay
    // does, except one that looks like a pipeline (it would be ignored too).
    if let Some(k) = top.keys().filter_map(scalar).find(|k| k.contains('/')) {
        return Err(entry_err(
            &k,
            "a pipeline at the top level of a file with a providers/buildkite section: \
             put it under providers.buildkite.repo_map",
        ));
    }
    let providers = mapping(top.get("providers"), "providers")?;
    let bk = mapping(providers.and_then(|p| p.get("buildkite")), "providers.buildkite")?;
    let repo_map = mapping(bk.and_then(|b| b.get("repo_map")), "providers.buildkite.repo_map")?;
    let map = match repo_map {
        Some(m) => section(m)?,
        None => BTreeMap::new(),
    };
    if !map.is_empty() {
        return Ok(map);
    }
    match mapping(top.get("buildkite"), "buildkite")? {
        Some(legacy) => section(legacy),
        None => Ok(map),
    }
}

/// One map of `org_id/pipeline_id` → entry.
fn section(m: &serde_yaml_ng::Mapping) -> Result<BTreeMap<String, BuildkitePipeline>, BuildkiteMapError> {
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let key = scalar(k).ok_or_else(|| entry_err(&format!("{k:?}"), "the key must be a string"))?;
        let key = key.trim().to_owned();
        let ok = matches!(key.split_once('/'), Some((org, pipe)) if !org.is_empty() && !pipe.is_empty() && !pipe.contains('/'));
        if !ok {
            return Err(entry_err(&key, "the key must be organization_id/pipeline_id"));
        }
        out.insert(key.clone(), entry(&key, v)?);
    }
    Ok(out)
}

fn repo(key: &str, v: &Value) -> Result<RepoFullName, BuildkiteMapError> {
    let s = match v {
        Value::String(s) => s.trim(),
        _ => return Err(entry_err(key, "repo must be a string owner/repo")),
    };
    RepoFullName::parse(s).map_err(|e| entry_err(key, format!("repo {s:?}: {e}")))
}

fn entry(key: &str, v: &Value) -> Result<BuildkitePipeline, BuildkiteMapError> {
    let m = match v {
        Value::String(_) => return Ok(BuildkitePipeline { repo: repo(key, v)?, required_claims: BTreeMap::new() }),
        Value::Mapping(m) => m,
        _ => return Err(entry_err(key, "must be owner/repo or {repo, required_claims}")),
    };
    for k in m.keys() {
        if !matches!(k.as_str(), Some("repo" | "required_claims")) {
            return Err(entry_err(key, format!("unknown key {k:?} (known: repo, required_claims)")));
        }
    }
    let repo = repo(key, m.get("repo").ok_or_else(|| entry_err(key, "repo is required"))?)?;
    let mut required_claims = BTreeMap::new();
    let claims = mapping(m.get("required_claims"), "required_claims")
        .map_err(|_| entry_err(key, "required_claims must be a mapping of claim name to allowed values"))?;
    for (name, allowed) in claims.into_iter().flatten() {
        let name = name.as_str().ok_or_else(|| entry_err(key, format!("claim name {name:?} is not a string")))?;
        let values: Vec<String> = match allowed {
            Value::Sequence(items) => items
                .iter()
                .map(|i| scalar(i).ok_or_else(|| entry_err(key, format!("claim {name}: {i:?} is not a scalar"))))
                .collect::<Result<_, _>>()?,
            other => vec![scalar(other).ok_or_else(|| {
                entry_err(key, format!("claim {name}: a value or a list of values is required, not {other:?}"))
            })?],
        };
        if values.is_empty() {
            return Err(entry_err(key, format!("claim {name}: the list of allowed values is empty")));
        }
        required_claims.insert(name.to_owned(), values);
    }
    Ok(BuildkitePipeline { repo, required_claims })
}

/// A token claim as the Python relay compares it (`str(claims.get(name))`):
/// a string as is, a number in decimal, a boolean `true` / `false`; a
/// missing or null claim, an array or an object never matches.
pub(super) fn claim_string(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::OidcError;
    use http::StatusCode;
    use serde_json::json;

    const REAL: &str = include_str!("../../../../fixtures/ci_providers.yml");
    const VLLM: &str = "018b5ec5-c236-4037-ba08-d8a5d29bcdae/018cdabc-d930-49f6-9085-634c4cb582ed";

    fn claims(branch: Json) -> Json {
        json!({"organization_id": "018b5ec5-c236-4037-ba08-d8a5d29bcdae",
            "pipeline_id": "018cdabc-d930-49f6-9085-634c4cb582ed", "build_branch": branch})
    }

    #[test]
    fn pytorch_ci_providers_file_maps_the_vllm_pipeline_to_main_only() {
        let map = parse_buildkite_pipelines(REAL).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), [VLLM]);
        let p = &map[VLLM];
        assert_eq!(p.repo.as_str(), "vllm-project/vllm");
        assert_eq!(p.required_claims, BTreeMap::from([("build_branch".to_owned(), vec!["main".to_owned()])]));
        p.check_claims(VLLM, &claims(json!("main"))).unwrap();
        let e = p.check_claims(VLLM, &claims(json!("contributor:fix-typo"))).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(
            matches!(&e, OidcError::IdentityNotAllowed(m) if m.contains("build_branch") && m.contains("main")),
            "{e}"
        );
        for other in [json!(null), json!(["main"]), json!({"b": "main"})] {
            assert!(p.check_claims(VLLM, &claims(other)).is_err());
        }
        let mut none = claims(json!("main"));
        none.as_object_mut().unwrap().remove("build_branch");
        assert!(p.check_claims(VLLM, &none).is_err(), "a missing claim never matches");
    }

    #[test]
    fn repo_map_first_then_the_legacy_section() {
        let only_legacy = "providers:\n  buildkite:\n    repo_map: {}\nbuildkite:\n  o/p: a/b\n";
        assert_eq!(parse_buildkite_pipelines(only_legacy).unwrap()["o/p"].repo.as_str(), "a/b");
        let both = "providers:\n  buildkite:\n    repo_map:\n      o/new: a/new\nbuildkite:\n  o/old: a/old\n";
        assert_eq!(parse_buildkite_pipelines(both).unwrap().keys().collect::<Vec<_>>(), ["o/new"]);
        let no_repo_map = "providers:\n  github: {}\nbuildkite:\n  o/p: a/b\n";
        assert_eq!(parse_buildkite_pipelines(no_repo_map).unwrap().len(), 1);
        assert!(parse_buildkite_pipelines("providers: {}\n").unwrap().is_empty());
        assert!(parse_buildkite_pipelines("").unwrap().is_empty());
        assert!(parse_buildkite_pipelines("# nothing yet\n").unwrap().is_empty());
    }

    #[test]
    fn scalar_and_list_values_and_the_flat_json_form() {
        let yaml = "providers:\n  buildkite:\n    repo_map:\n      o/p:\n        repo: a/b\n        required_claims:\n          build_branch: main\n          build_number: [5, 6]\n          build_source: [webhook, schedule]\n";
        let p = &parse_buildkite_pipelines(yaml).unwrap()["o/p"];
        assert_eq!(p.required_claims["build_branch"], ["main"]);
        assert_eq!(p.required_claims["build_number"], ["5", "6"]);
        let ok = json!({"build_branch": "main", "build_number": 6, "build_source": "schedule"});
        p.check_claims("o/p", &ok).unwrap();
        let e = p.check_claims("o/p", &json!({"build_branch": "main", "build_number": 7, "build_source": "schedule"}));
        assert!(matches!(e, Err(OidcError::IdentityNotAllowed(m)) if m.contains("build_number")));
        // crcr's earlier JSON file: flat, exact values.
        let flat = r#"{"O/P": {"repo": "a/b", "required_claims": {"build_branch": "main"}}, "o/q": {"repo": "a/c"}}"#;
        let map = parse_buildkite_pipelines(flat).unwrap();
        assert_eq!(map["O/P"].required_claims["build_branch"], ["main"]);
        assert!(map["o/q"].required_claims.is_empty());
        map["O/P"].check_claims("o/p", &json!({"build_branch": "main"})).unwrap();
        assert!(map["O/P"].check_claims("o/p", &json!({"build_branch": "dev"})).is_err());
    }

    #[test]
    fn a_bad_entry_is_an_error_naming_it() {
        let bad = |text: &str, entry: &str, problem: &str| match parse_buildkite_pipelines(text) {
            Err(BuildkiteMapError::Entry { entry: e, problem: p }) => {
                assert_eq!(e, entry, "{text}");
                assert!(p.contains(problem), "{text}: {p}");
            }
            other => panic!("{text}: {other:?}"),
        };
        bad("buildkite:\n  nopipeline: a/b\n", "nopipeline", "organization_id/pipeline_id");
        bad("buildkite:\n  o/p: not-a-repo\n", "o/p", "repo");
        bad("buildkite:\n  o/p: {required_claims: {b: [main]}}\n", "o/p", "repo is required");
        bad("buildkite:\n  o/p: {repo: a/b, required_claim: {b: [main]}}\n", "o/p", "unknown key");
        bad("buildkite:\n  o/p: {repo: a/b, required_claims: {b: []}}\n", "o/p", "empty");
        bad("buildkite:\n  o/p: {repo: a/b, required_claims: {b: [[main]]}}\n", "o/p", "not a scalar");
        bad("buildkite:\n  o/p: {repo: a/b, required_claims: {b: null}}\n", "o/p", "claim b");
        bad("buildkite:\n  o/p: {repo: a/b, required_claims: [main]}\n", "o/p", "required_claims");
        bad("buildkite:\n  o/p: [a/b]\n", "o/p", "owner/repo");
        bad("providers: {}\no/p: a/b\n", "o/p", "top level");
        bad(r#"{"o/p/x": "a/b"}"#, "o/p/x", "organization_id/pipeline_id");
        assert!(matches!(
            parse_buildkite_pipelines("providers: [a]\n"),
            Err(BuildkiteMapError::NotAMapping { section }) if section == "providers"
        ));
        assert!(matches!(parse_buildkite_pipelines("[1, 2]"), Err(BuildkiteMapError::NotAMapping { .. })));
        assert!(matches!(parse_buildkite_pipelines("{"), Err(BuildkiteMapError::Syntax(_))));
    }
}
