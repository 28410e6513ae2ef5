//! Access control beyond the defaults: which frameworks may launch native
//! programs on agents' hosts. Wasm tasks are contained by the runtime and
//! need no permission; a native program runs as the agent's user on the
//! host, so nobody may launch one unless a rule allows it.
//!
//! `stoa master --acls FILE` reads the JSON form:
//!
//! ```json
//! { "launch_native": [ { "principals": ["ops"] }, { "roles": ["infra"] } ] }
//! ```
//!
//! A framework's principal is the name in its client certificate.

use serde::{Deserialize, Serialize};
use stoa_proto::Role;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acls {
    /// Who may launch native tasks: a framework matching any rule.
    #[serde(default)]
    pub launch_native: Vec<Rule>,
}

/// Matches a framework whose principal and role both match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Principals covered; any principal when absent.
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    /// Roles covered, each with its sub-roles; any role when absent.
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
}

impl Rule {
    fn matches(&self, principal: Option<&str>, role: &Role) -> bool {
        let principal_ok = self
            .principals
            .as_ref()
            .is_none_or(|ps| principal.is_some_and(|p| ps.iter().any(|q| q == p)));
        let role_ok = self
            .roles
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|r| r.contains(role)));
        principal_ok && role_ok
    }
}

impl Acls {
    pub fn may_launch_native(&self, principal: Option<&str>, role: &Role) -> bool {
        self.launch_native
            .iter()
            .any(|r| r.matches(principal, role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(s: &str) -> Role {
        Role::new(s).expect("valid role")
    }

    #[test]
    fn nobody_launches_native_tasks_by_default() {
        assert!(!Acls::default().may_launch_native(Some("ops"), &role("infra")));
    }

    #[test]
    fn rules_match_principals_and_roles_with_their_sub_roles() -> Result<(), serde_json::Error> {
        let acls: Acls = serde_json::from_str(
            r#"{"launch_native": [{"principals": ["ops"]}, {"principals": ["ci"], "roles": ["infra"]}]}"#,
        )?;
        assert!(acls.may_launch_native(Some("ops"), &role("anything")));
        assert!(acls.may_launch_native(Some("ci"), &role("infra/builds")));
        assert!(!acls.may_launch_native(Some("ci"), &role("web")));
        assert!(!acls.may_launch_native(Some("tenant"), &role("infra")));
        assert!(!acls.may_launch_native(None, &role("infra")));
        Ok(())
    }

    #[test]
    fn unknown_fields_and_bad_roles_are_refused() {
        assert!(serde_json::from_str::<Acls>(r#"{"launch_natve": []}"#).is_err());
        assert!(
            serde_json::from_str::<Acls>(r#"{"launch_native": [{"roles": ["a//b"]}]}"#).is_err()
        );
    }
}
