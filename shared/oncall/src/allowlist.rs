//! `crcr allowlist check`: validate a proposed allowlist, show what it says
//! (levels, devices, oncalls) and what changes against the one in use, for
//! reviewing allowlist pull requests.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crcr_core::allowlist::{Allowlist, AllowlistEntry, AllowlistSource};
use crcr_core::config::Env;
use crcr_core::domain::Level;
use crcr_core::ports::GitHubApp;

use super::table::Table;

const LEVELS: [Level; 4] = [Level::L1, Level::L2, Level::L3, Level::L4];

/// One allowlisted repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub repo: String,
    pub level: Level,
    pub device: Option<String>,
    pub oncalls: Vec<String>,
}

impl From<&AllowlistEntry> for EntryView {
    fn from(e: &AllowlistEntry) -> Self {
        Self { repo: e.repo.to_string(), level: e.level, device: e.device.clone(), oncalls: e.oncalls.clone() }
    }
}

/// What an allowlist says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowlistSummary {
    /// Content hash (as in the relay's logs).
    pub version: String,
    pub repos: usize,
    /// Repositories per level, `L1`..`L4`.
    pub levels: BTreeMap<String, usize>,
    /// Device label → repositories.
    pub devices: BTreeMap<String, Vec<String>>,
    /// Every entry, in file order.
    pub entries: Vec<EntryView>,
    /// Valid but worth a reviewer's look.
    pub warnings: Vec<String>,
}

impl AllowlistSummary {
    pub fn of(list: &Allowlist) -> Self {
        let mut levels: BTreeMap<String, usize> = LEVELS.iter().map(|l| (l.as_str().to_owned(), 0)).collect();
        let mut devices: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut warnings = Vec::new();
        for e in list.entries() {
            *levels.entry(e.level.as_str().to_owned()).or_default() += 1;
            if let Some(d) = &e.device {
                devices.entry(d.clone()).or_default().push(e.repo.to_string());
            }
            if e.level >= Level::L3 && e.oncalls.is_empty() {
                warnings.push(format!(
                    "{} is {} but lists no oncall: nobody to reach when its results gate upstream PRs",
                    e.repo,
                    e.level.as_str()
                ));
            }
        }
        Self {
            version: list.version().to_owned(),
            repos: list.entries().len(),
            levels,
            devices,
            entries: list.entries().iter().map(EntryView::from).collect(),
            warnings,
        }
    }

    /// `L1 4, L2 3, L3 2, L4 1`.
    pub fn levels_text(&self) -> String {
        self.levels.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ")
    }
}

/// A repository in both allowlists whose entry differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryChange {
    pub repo: String,
    /// `[in use, proposed]` when the level changes.
    pub level: Option<[Level; 2]>,
    /// `[in use, proposed]` when the device changes.
    pub device: Option<[Option<String>; 2]>,
    pub oncalls_added: Vec<String>,
    pub oncalls_removed: Vec<String>,
}

/// Proposed allowlist against the one in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowlistDiff {
    pub from_version: String,
    pub to_version: String,
    pub added: Vec<EntryView>,
    pub removed: Vec<EntryView>,
    pub changed: Vec<EntryChange>,
    pub unchanged: usize,
}

impl AllowlistDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What changes from `current` to `proposed`. Repositories compare
/// case-insensitively, oncalls too (GitHub logins are case-insensitive).
pub fn diff(current: &Allowlist, proposed: &Allowlist) -> AllowlistDiff {
    let mut out = AllowlistDiff {
        from_version: current.version().to_owned(),
        to_version: proposed.version().to_owned(),
        added: vec![],
        removed: vec![],
        changed: vec![],
        unchanged: 0,
    };
    for p in proposed.entries() {
        let Some(c) = current.get(&p.repo) else {
            out.added.push(p.into());
            continue;
        };
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect::<BTreeSet<_>>();
        let (was, now) = (lower(&c.oncalls), lower(&p.oncalls));
        let change = EntryChange {
            repo: p.repo.to_string(),
            level: (c.level != p.level).then_some([c.level, p.level]),
            device: (c.device != p.device).then(|| [c.device.clone(), p.device.clone()]),
            oncalls_added: p.oncalls.iter().filter(|o| !was.contains(&o.to_ascii_lowercase())).cloned().collect(),
            oncalls_removed: c.oncalls.iter().filter(|o| !now.contains(&o.to_ascii_lowercase())).cloned().collect(),
        };
        if change.level.is_none()
            && change.device.is_none()
            && change.oncalls_added.is_empty()
            && change.oncalls_removed.is_empty()
        {
            out.unchanged += 1;
        } else {
            out.changed.push(change);
        }
    }
    for c in current.entries() {
        if proposed.get(&c.repo).is_none() {
            out.removed.push(c.into());
        }
    }
    out
}

/// The answer of `crcr allowlist check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Where the proposed allowlist was read from.
    pub source: String,
    pub summary: AllowlistSummary,
    /// Where the allowlist in use was read from, and the changes against it.
    pub against: Option<String>,
    pub diff: Option<AllowlistDiff>,
    /// Why there is no diff (no allowlist in use configured, or it could not be read).
    pub against_error: Option<String>,
}

fn oncalls(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter().map(|o| format!("@{o}")).collect::<Vec<_>>().join(" ")
    }
}

/// What `crcr allowlist check` prints.
pub fn render_check(r: &CheckReport) -> String {
    let s = &r.summary;
    let mut out =
        format!("{}: valid, version {}, {} repositories ({})\n\n", r.source, s.version, s.repos, s.levels_text());
    let mut t = Table::new(["LEVEL", "REPOSITORY", "DEVICE", "ONCALLS"]).max_cell(80);
    for e in &s.entries {
        t.row([
            e.level.as_str().to_owned(),
            e.repo.clone(),
            e.device.clone().unwrap_or_else(|| "-".into()),
            oncalls(&e.oncalls),
        ]);
    }
    out.push_str(&t.render());
    if !s.devices.is_empty() {
        out.push_str("\ndevices:\n");
        for (d, repos) in &s.devices {
            out.push_str(&format!("  {d}: {}\n", repos.join(", ")));
        }
    }
    for w in &s.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    match (&r.diff, &r.against, &r.against_error) {
        (Some(d), Some(src), _) => {
            out.push_str(&format!("\nchanges against the allowlist in use ({src}, version {}):\n", d.from_version));
            if d.is_empty() {
                out.push_str("  none\n");
            }
            for e in &d.added {
                let device = e.device.as_ref().map(|d| format!(", device {d}")).unwrap_or_default();
                out.push_str(&format!(
                    "  + {} ({}{device}, oncalls {})\n",
                    e.repo,
                    e.level.as_str(),
                    oncalls(&e.oncalls)
                ));
            }
            for e in &d.removed {
                out.push_str(&format!("  - {} (was {})\n", e.repo, e.level.as_str()));
            }
            for c in &d.changed {
                let mut parts = Vec::new();
                if let Some([a, b]) = c.level {
                    parts.push(format!("level {} -> {}", a.as_str(), b.as_str()));
                }
                if let Some([a, b]) = &c.device {
                    parts.push(format!(
                        "device {} -> {}",
                        a.as_deref().unwrap_or("none"),
                        b.as_deref().unwrap_or("none")
                    ));
                }
                if !c.oncalls_added.is_empty() {
                    parts.push(format!("oncalls added {}", oncalls(&c.oncalls_added)));
                }
                if !c.oncalls_removed.is_empty() {
                    parts.push(format!("oncalls removed {}", oncalls(&c.oncalls_removed)));
                }
                out.push_str(&format!("  ~ {}: {}\n", c.repo, parts.join("; ")));
            }
            out.push_str(&format!(
                "  {} added, {} removed, {} changed, {} unchanged\n",
                d.added.len(),
                d.removed.len(),
                d.changed.len(),
                d.unchanged
            ));
        }
        (_, _, Some(e)) => out.push_str(&format!("\nno comparison: {e}\n")),
        _ => out.push_str(
            "\nno comparison: no allowlist in use given (--against, CRCR_ALLOWLIST_FILE or CRCR_ALLOWLIST_URL)\n",
        ),
    }
    out
}

/// Reads `https://github.com/<owner>/<repo>/blob/<ref>/<path>` through the
/// GitHub App (installation token of that repository) when
/// `CRCR_GITHUB_APP_ID` is set, with `CRCR_GITHUB_APP_PRIVATE_KEY(_FILE)` and
/// `CRCR_GITHUB_API_URL`, as the relay does. `Ok(None)`: no App configured.
pub async fn fetch_with_app(env: &Env<'_>, url: &str) -> anyhow::Result<Option<String>> {
    use secrecy::ExposeSecret;
    let Some(app_id) = env.opt("CRCR_GITHUB_APP_ID") else {
        return Ok(None);
    };
    let AllowlistSource::GitHub { repo, git_ref, path } = AllowlistSource::from_url(url)? else {
        return Ok(None);
    };
    let app_id: u64 =
        app_id.trim().parse().map_err(|_| anyhow::anyhow!("CRCR_GITHUB_APP_ID must be a positive integer"))?;
    let key = env.secret("CRCR_GITHUB_APP_PRIVATE_KEY")?;
    let api = env.opt("CRCR_GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into());
    let gh = crcr_clients::github::GitHubAppClient::new(crcr_clients::github::GitHubAppConfig::new(
        app_id,
        key.expose_secret().to_owned(),
        api,
    ))?;
    let bytes = gh.file_contents(&repo, &path, &git_ref).await?;
    Ok(Some(String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{url} is not UTF-8"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_added_removed_and_changed() {
        let current = Allowlist::parse(
            "L1:\n  - org/a\n  - org/b: alice\nL3:\n  gpu:\n    org/c: [bob, carol]\n    org/d: [dan]\n",
        )
        .unwrap();
        let proposed = Allowlist::parse(concat!(
            "L1:\n  - ORG/A\nL2:\n  - org/b: Alice\n",
            "L3:\n  gpu:\n    org/c: [bob, erin]\n  npu:\n    org/d: [dan]\nL4:\n  - org/e\n",
        ))
        .unwrap();
        let d = diff(&current, &proposed);
        assert_eq!(d.added.iter().map(|e| e.repo.as_str()).collect::<Vec<_>>(), ["org/e"]);
        assert!(d.removed.is_empty());
        assert_eq!(d.unchanged, 1, "org/a, spelled differently, is the same repository");
        let by: BTreeMap<_, _> = d.changed.iter().map(|c| (c.repo.as_str(), c)).collect();
        assert_eq!(by["org/b"].level, Some([Level::L1, Level::L2]));
        assert!(by["org/b"].oncalls_added.is_empty(), "oncalls compare case-insensitively");
        assert_eq!(by["org/c"].oncalls_added, ["erin"]);
        assert_eq!(by["org/c"].oncalls_removed, ["carol"]);
        assert_eq!(by["org/d"].device, Some([Some("gpu".into()), Some("npu".into())]));
        let back = diff(&proposed, &current);
        assert_eq!(back.removed.iter().map(|e| e.repo.as_str()).collect::<Vec<_>>(), ["org/e"]);
        let s = AllowlistSummary::of(&proposed);
        assert_eq!(s.levels_text(), "L1 1, L2 1, L3 2, L4 1");
        assert_eq!(s.devices["gpu"], ["org/c"]);
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].starts_with("org/e is L4"), "{:?}", s.warnings);
        let text = render_check(&CheckReport {
            source: "new.yml".into(),
            summary: s,
            against: Some("old.yml".into()),
            diff: Some(d),
            against_error: None,
        });
        assert!(text.contains("  + org/e (L4, oncalls -)"), "{text}");
        assert!(text.contains("  ~ org/b: level L1 -> L2"), "{text}");
        assert!(text.contains("  ~ org/c: oncalls added @erin; oncalls removed @carol"), "{text}");
        assert!(text.contains("1 added, 0 removed, 3 changed, 1 unchanged"), "{text}");
    }
}
