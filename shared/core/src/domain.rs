//! Typed domain values, parsed once at the edge ("parse, don't validate").
//!
//! `DeliveryId` is GitHub's `X-GitHub-Delivery` GUID (a redelivery keeps it);
//! `RepoFullName` is `owner/repo`, compared case-insensitively because GitHub
//! treats `Org/Repo` and `org/repo` as one repository.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Errors from parsing a domain value; each names the value that was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("delivery id {0:?} is empty, longer than 128 characters or has characters other than [A-Za-z0-9-_.]")]
    BadDeliveryId(String),
    #[error("repository {0:?} is not of the form owner/repo")]
    BadRepo(String),
    #[error("commit SHA {0:?} is not 40 hexadecimal digits")]
    BadSha(String),
}

/// GitHub's `X-GitHub-Delivery` GUID, or another opaque id of at most 128
/// characters from `[A-Za-z0-9-_.]` (callbacks for nightly runs use a commit SHA).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeliveryId(String);

impl DeliveryId {
    /// Parses a delivery id; see the type's rules.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(DomainError::BadDeliveryId(s.chars().take(140).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeliveryId {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<DeliveryId> for String {
    fn from(d: DeliveryId) -> String {
        d.0
    }
}
impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A commit's SHA-1 as GitHub's payloads give it (`pull_request.head.sha`,
/// `check_run.head_sha`, `check_suite.head_sha`): 40 hexadecimal digits,
/// kept lower-case. Parsed once where a payload is read; what holds one
/// needs no further check.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeadSha(String);

impl HeadSha {
    /// Parses a SHA; errors with [`DomainError::BadSha`] naming the input.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(DomainError::BadSha(s.chars().take(64).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HeadSha {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<HeadSha> for String {
    fn from(s: HeadSha) -> String {
        s.0
    }
}
impl PartialEq<str> for HeadSha {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}
impl fmt::Display for HeadSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `owner/repo`. Keeps the spelling it was given for display and API paths;
/// equality, hashing and ordering use the lower-cased form.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoFullName {
    display: String,
    key: String,
}

impl RepoFullName {
    /// Parses `owner/repo` (surrounding whitespace ignored). GitHub owners are
    /// `[A-Za-z0-9-]`, repository names `[A-Za-z0-9-_.]`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let t = s.trim();
        let mut parts = t.split('/');
        let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(DomainError::BadRepo(s.to_owned()));
        };
        let owner_ok =
            !owner.is_empty() && owner.len() <= 39 && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name != "."
            && name != ".."
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !(owner_ok && name_ok) {
            return Err(DomainError::BadRepo(s.to_owned()));
        }
        Ok(Self { display: t.to_owned(), key: t.to_ascii_lowercase() })
    }
    /// As spelled where it was read (for API paths and display).
    pub fn as_str(&self) -> &str {
        &self.display
    }
    /// Lower-cased form: the identity used for comparison and storage keys.
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn owner(&self) -> &str {
        self.display.split('/').next().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.display.split('/').nth(1).unwrap_or_default()
    }
}

impl PartialEq for RepoFullName {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for RepoFullName {}
impl std::hash::Hash for RepoFullName {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key.hash(h)
    }
}
impl PartialOrd for RepoFullName {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for RepoFullName {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.cmp(&o.key)
    }
}
impl TryFrom<String> for RepoFullName {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<RepoFullName> for String {
    fn from(r: RepoFullName) -> String {
        r.display
    }
}
impl fmt::Display for RepoFullName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// Allowlist level (CONTRACTS.md "Allowlist"): cumulative, L1 < L2 < L3 < L4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    L1,
    L2,
    L3,
    L4,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::L1 => "L1",
            Level::L2 => "L2",
            Level::L3 => "L3",
            Level::L4 => "L4",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "L1" => Some(Level::L1),
            "L2" => Some(Level::L2),
            "L3" => Some(Level::L3),
            "L4" => Some(Level::L4),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_shas_are_40_hex_digits_kept_lower_case() {
        let sha = HeadSha::parse("EC26C3E57CA3A959CA5AAD62DE7213C562F8C821").unwrap();
        assert_eq!(sha.as_str(), "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        for bad in ["", "not-a-sha", &"a".repeat(39), &"a".repeat(41), &"g".repeat(40)] {
            assert!(matches!(HeadSha::parse(bad), Err(DomainError::BadSha(_))), "{bad:?}");
        }
        let json = serde_json::to_string(&sha).unwrap();
        assert_eq!(serde_json::from_str::<HeadSha>(&json).unwrap(), sha);
        assert!(serde_json::from_str::<HeadSha>("\"abc\"").is_err(), "checked when read back");
    }

    #[test]
    fn repo_names_compare_case_insensitively_and_keep_spelling() {
        let a = RepoFullName::parse("NVIDIA/pytorch-windows-ci").unwrap();
        let b = RepoFullName::parse(" nvidia/PyTorch-Windows-CI ").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "NVIDIA/pytorch-windows-ci");
        assert_eq!(b.key(), "nvidia/pytorch-windows-ci");
        assert_eq!((a.owner(), a.name()), ("NVIDIA", "pytorch-windows-ci"));
    }

    #[test]
    fn bad_repo_names_are_rejected_by_name() {
        for bad in ["", "org", "org/", "/repo", "a/b/c", "org/re po", "o rg/repo", "org/.."] {
            assert_eq!(RepoFullName::parse(bad), Err(DomainError::BadRepo(bad.into())), "{bad}");
        }
    }

    #[test]
    fn delivery_ids() {
        assert!(DeliveryId::parse("72d3162e-cc78-11e3-81ab-4c9367dc0958").is_ok());
        for bad in ["", "a b", "x/../y", &"a".repeat(129)] {
            assert!(DeliveryId::parse(bad).is_err(), "{bad}");
        }
    }
}
