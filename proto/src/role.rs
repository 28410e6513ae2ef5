//! Roles: the unit of fairness, quota and reservation. Hierarchical, written
//! as a path (`eng/ml`); resources reserved for a role may be used by its
//! sub-roles.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid role {0:?}: use path segments of letters, digits, '-', '_', '.' separated by '/', e.g. eng/ml (at most 128 bytes)"
)]
pub struct RoleError(pub String);

/// A validated role path. Never empty; no empty, `.` or `..` segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Role(String);

impl Role {
    pub fn new(s: impl Into<String>) -> Result<Role, RoleError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.split('/').all(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        if ok { Ok(Role(s)) } else { Err(RoleError(s)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The role above this one, if any (`eng` for `eng/ml`).
    pub fn parent(&self) -> Option<Role> {
        self.0.rsplit_once('/').map(|(p, _)| Role(p.to_string()))
    }

    /// True when `self` is `other` or one of its ancestors: resources
    /// reserved for `self` may be used by a framework in `other`.
    pub fn contains(&self, other: &Role) -> bool {
        other.0 == self.0
            || (other.0.starts_with(&self.0) && other.0.as_bytes().get(self.0.len()) == Some(&b'/'))
    }

    /// This role and its ancestors, nearest first.
    pub fn lineage(&self) -> impl Iterator<Item = Role> {
        std::iter::successors(Some(self.clone()), Role::parent)
    }
}

impl TryFrom<String> for Role {
    type Error = RoleError;
    fn try_from(s: String) -> Result<Role, RoleError> {
        Role::new(s)
    }
}
impl From<Role> for String {
    fn from(r: Role) -> String {
        r.0
    }
}
impl std::str::FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Role, RoleError> {
        Role::new(s)
    }
}
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest() {
        let eng: Role = "eng".parse().expect("role");
        let ml: Role = "eng/ml".parse().expect("role");
        let engx: Role = "engx".parse().expect("role");
        assert!(
            eng.contains(&ml) && eng.contains(&eng) && !ml.contains(&eng) && !eng.contains(&engx)
        );
        assert_eq!(
            ml.lineage().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["eng/ml", "eng"]
        );
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a b"] {
            assert!(Role::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
