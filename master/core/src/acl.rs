//! Who may do what: the master's access control lists, in the manner of
//! Mesos's ACLs. A subject (a principal: the name in a certificate or a
//! token) takes an action on an object (a role, or the principal that
//! owns a framework). Each action has its own rules, tried in order; the
//! first that matches decides. When none matches, the default decides.
//!
//! `stoa master --acls FILE` reads the JSON form (reloaded on SIGHUP; a
//! file that does not parse is refused whole and the old rules stay):
//!
//! ```json
//! {
//!   "default": "deny",
//!   "register_framework": [
//!     { "name": "web team", "principals": ["web"], "roles": ["web"] },
//!     { "name": "no prod", "roles": ["prod"], "allow": false }
//!   ],
//!   "launch_native": [ { "principals": ["ops"], "roles": ["infra"] } ],
//!   "view": [ { "principals": ["auditor"] } ],
//!   "kill": [ { "principals": ["oncall"], "owners": ["web"] } ],
//!   "set_weight": [ { "principals": ["web-lead"], "roles": ["web"] } ]
//! }
//! ```
//!
//! Roles match with their sub-roles. An absent `principals`, `roles` or
//! `owners` matches any. Fixed points, whatever the rules:
//!
//! * the `operator` principal may do everything (the cluster's own
//!   certificate; scoped operators are principals given rules);
//! * a principal may always view, kill and tear down its own frameworks
//!   and tasks;
//! * nobody launches native tasks unless a rule allows it: a native
//!   program runs on the agent's host as the agent's user.
//!
//! The default (`"allow"` unless the file says otherwise, as for a local
//! `stoa up`) decides what no rule matched: with `"allow"`, any principal
//! may register frameworks in any role, launch wasm tasks and upload
//! artifacts, and nothing else; with `"deny"`, the mode for production,
//! nothing.

use serde::{Deserialize, Serialize};
use stoa_proto::Role;

/// The principal that may do everything.
pub const OPERATOR: &str = stoa_proto::operator::Caller::OPERATOR;

/// What is decided when no rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultMode {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acls {
    #[serde(default)]
    pub default: DefaultMode,
    /// Subscribe a framework in a role (object: the role).
    #[serde(default)]
    pub register_framework: Vec<Rule>,
    /// Launch a native command (object: the framework's role).
    #[serde(default)]
    pub launch_native: Vec<Rule>,
    /// Launch a wasm task (object: the framework's role).
    #[serde(default)]
    pub launch_wasm: Vec<Rule>,
    /// See another principal's frameworks, tasks, logs and events
    /// (object: the owner).
    #[serde(default)]
    pub view: Vec<Rule>,
    /// Kill another principal's tasks and tear down its frameworks
    /// (object: the owner).
    #[serde(default)]
    pub kill: Vec<Rule>,
    /// Set a role's weight (object: the role).
    #[serde(default)]
    pub set_weight: Vec<Rule>,
    /// Set or remove a role's quota (object: the role).
    #[serde(default)]
    pub set_quota: Vec<Rule>,
    /// Reserve and unreserve resources for a role (object: the role).
    #[serde(default)]
    pub reserve: Vec<Rule>,
    /// Upload artifacts to the master's store (no object).
    #[serde(default)]
    pub upload: Vec<Rule>,
}

/// One rule: whether the principals it names may take its action on the
/// objects it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Named in refusals; `ACTION #N` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Principals covered; any principal when absent.
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    /// Roles covered, each with its sub-roles; any when absent (role
    /// actions only).
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
    /// Owners of the frameworks covered; any when absent (view and kill
    /// only).
    #[serde(default)]
    pub owners: Option<Vec<String>>,
    /// Whether a match allows (the default) or denies.
    #[serde(default = "yes")]
    pub allow: bool,
}

fn yes() -> bool {
    true
}

/// What an action is taken on.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    Role(&'a Role),
    /// The principal owning the framework acted on.
    Owner(Option<&'a str>),
    Nothing,
}

/// The actions the rules govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RegisterFramework,
    LaunchNative,
    LaunchWasm,
    View,
    Kill,
    SetWeight,
    SetQuota,
    Reserve,
    Upload,
}

impl Action {
    /// The action's name in the ACL file.
    pub fn name(self) -> &'static str {
        match self {
            Action::RegisterFramework => "register_framework",
            Action::LaunchNative => "launch_native",
            Action::LaunchWasm => "launch_wasm",
            Action::View => "view",
            Action::Kill => "kill",
            Action::SetWeight => "set_weight",
            Action::SetQuota => "set_quota",
            Action::Reserve => "reserve",
            Action::Upload => "upload",
        }
    }

    /// What `"allow"` as the default allows when no rule matches.
    fn allowed_by_permissive_default(self) -> bool {
        matches!(
            self,
            Action::RegisterFramework | Action::LaunchWasm | Action::Upload
        )
    }
}

/// A refusal, saying which rule (or default) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {action}{object}: {why}")]
pub struct Denied {
    pub principal: String,
    pub action: &'static str,
    pub object: String,
    pub why: String,
}

impl Rule {
    fn matches(&self, principal: Option<&str>, object: Object<'_>) -> bool {
        let principal_ok = self
            .principals
            .as_ref()
            .is_none_or(|ps| principal.is_some_and(|p| ps.iter().any(|q| q == p)));
        let object_ok = match object {
            Object::Role(role) => self
                .roles
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r.contains(role))),
            Object::Owner(owner) => self
                .owners
                .as_ref()
                .is_none_or(|os| owner.is_some_and(|o| os.iter().any(|q| q == o))),
            Object::Nothing => true,
        };
        principal_ok && object_ok
    }
}

impl Acls {
    fn rules(&self, action: Action) -> &[Rule] {
        match action {
            Action::RegisterFramework => &self.register_framework,
            Action::LaunchNative => &self.launch_native,
            Action::LaunchWasm => &self.launch_wasm,
            Action::View => &self.view,
            Action::Kill => &self.kill,
            Action::SetWeight => &self.set_weight,
            Action::SetQuota => &self.set_quota,
            Action::Reserve => &self.reserve,
            Action::Upload => &self.upload,
        }
    }

    /// May `principal` take `action` on `object`? A refusal names what
    /// refused.
    pub fn check(
        &self,
        principal: Option<&str>,
        action: Action,
        object: Object<'_>,
    ) -> Result<(), Denied> {
        if principal == Some(OPERATOR) {
            return Ok(());
        }
        if let Object::Owner(Some(owner)) = object
            && principal == Some(owner)
            && matches!(action, Action::View | Action::Kill)
        {
            return Ok(());
        }
        let denied = |why: String| Denied {
            principal: principal
                .unwrap_or("a caller without a principal")
                .to_string(),
            action: action.name(),
            object: match object {
                Object::Role(role) => format!(" in role {role}"),
                Object::Owner(Some(owner)) => format!(" of {owner}"),
                Object::Owner(None) => " of a framework without a principal".into(),
                Object::Nothing => String::new(),
            },
            why,
        };
        for (i, rule) in self.rules(action).iter().enumerate() {
            if rule.matches(principal, object) {
                let name = rule
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{} #{}", action.name(), i + 1));
                return if rule.allow {
                    Ok(())
                } else {
                    Err(denied(format!("the ACL rule \"{name}\" denies it")))
                };
            }
        }
        let allowed = match action {
            // Native code on an agent's host needs a rule in every mode.
            Action::LaunchNative => false,
            _ => self.default == DefaultMode::Allow && action.allowed_by_permissive_default(),
        };
        if allowed {
            return Ok(());
        }
        let why = match (action, self.default) {
            (Action::LaunchNative, _) => format!(
                "no rule of {} in the master's --acls allows it (native tasks always need one)",
                action.name()
            ),
            (_, DefaultMode::Deny) => format!(
                "no rule of {} in the master's --acls allows it, and the default is deny",
                action.name()
            ),
            (_, DefaultMode::Allow) => format!(
                "only the operator may, unless a rule of {} in the master's --acls allows it",
                action.name()
            ),
        };
        Err(denied(why))
    }

    /// Parses an ACL file: the whole file, or an error that says where it
    /// is wrong.
    pub fn parse(text: &str) -> Result<Acls, String> {
        serde_json::from_str(text).map_err(|e| format!("not a valid ACL file: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(s: &str) -> Role {
        Role::new(s).expect("valid role")
    }

    fn acls(json: &str) -> Acls {
        Acls::parse(json).expect("valid ACLs")
    }

    #[test]
    fn nobody_launches_native_tasks_without_a_rule() {
        for default in ["allow", "deny"] {
            let a = acls(&format!(r#"{{"default": "{default}"}}"#));
            let err = a
                .check(
                    Some("ops"),
                    Action::LaunchNative,
                    Object::Role(&role("infra")),
                )
                .expect_err("allowed");
            assert!(
                err.to_string().contains("native tasks always need one"),
                "{err}"
            );
            assert!(
                a.check(
                    Some(OPERATOR),
                    Action::LaunchNative,
                    Object::Role(&role("infra"))
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn rules_match_principals_and_roles_with_their_sub_roles() {
        let a = acls(
            r#"{"launch_native": [{"principals": ["ops"]}, {"principals": ["ci"], "roles": ["infra"]}]}"#,
        );
        let native = |p: Option<&str>, r: &str| {
            a.check(p, Action::LaunchNative, Object::Role(&role(r)))
                .is_ok()
        };
        assert!(native(Some("ops"), "anything"));
        assert!(native(Some("ci"), "infra/builds"));
        assert!(!native(Some("ci"), "web"));
        assert!(!native(Some("tenant"), "infra"));
        assert!(!native(None, "infra"));
    }

    #[test]
    fn the_first_matching_rule_decides_and_a_refusal_names_it() {
        let a = acls(
            r#"{"default": "deny", "register_framework": [
                {"name": "no prod", "roles": ["prod"], "allow": false},
                {"principals": ["web"], "roles": ["web", "prod"]}
            ]}"#,
        );
        let register =
            |p: &str, r: &str| a.check(Some(p), Action::RegisterFramework, Object::Role(&role(r)));
        assert!(register("web", "web/frontend").is_ok());
        let err = register("web", "prod").expect_err("prod");
        assert_eq!(
            err.to_string(),
            "web may not register_framework in role prod: the ACL rule \"no prod\" denies it"
        );
        let err = register("other", "web").expect_err("default");
        assert!(err.to_string().contains("the default is deny"), "{err}");
    }

    #[test]
    fn the_permissive_default_allows_registering_wasm_and_uploads_only() {
        let a = Acls::default();
        let anyone = Some("tenant");
        assert!(
            a.check(anyone, Action::RegisterFramework, Object::Role(&role("x")))
                .is_ok()
        );
        assert!(
            a.check(anyone, Action::LaunchWasm, Object::Role(&role("x")))
                .is_ok()
        );
        assert!(a.check(anyone, Action::Upload, Object::Nothing).is_ok());
        for action in [Action::SetWeight, Action::SetQuota, Action::Reserve] {
            let err = a
                .check(anyone, action, Object::Role(&role("x")))
                .expect_err("operator's");
            assert!(err.to_string().contains("only the operator may"), "{err}");
        }
        // Others' frameworks: not without a rule; one's own: always.
        assert!(
            a.check(anyone, Action::View, Object::Owner(Some("b")))
                .is_err()
        );
        assert!(
            a.check(anyone, Action::Kill, Object::Owner(Some("tenant")))
                .is_ok()
        );
        let deny = acls(r#"{"default": "deny"}"#);
        assert!(
            deny.check(anyone, Action::View, Object::Owner(Some("tenant")))
                .is_ok()
        );
        assert!(deny.check(anyone, Action::Upload, Object::Nothing).is_err());
    }

    #[test]
    fn scoped_operators_get_what_their_rules_give() {
        let a = acls(
            r#"{"default": "deny",
                "view": [{"principals": ["auditor"]}],
                "kill": [{"principals": ["oncall"], "owners": ["web"]}],
                "set_weight": [{"principals": ["web-lead"], "roles": ["web"]}]}"#,
        );
        assert!(
            a.check(Some("auditor"), Action::View, Object::Owner(Some("web")))
                .is_ok()
        );
        assert!(
            a.check(Some("auditor"), Action::Kill, Object::Owner(Some("web")))
                .is_err()
        );
        assert!(
            a.check(Some("oncall"), Action::Kill, Object::Owner(Some("web")))
                .is_ok()
        );
        assert!(
            a.check(Some("oncall"), Action::Kill, Object::Owner(Some("db")))
                .is_err()
        );
        let weight = |r: &str| a.check(Some("web-lead"), Action::SetWeight, Object::Role(&role(r)));
        assert!(weight("web/api").is_ok());
        assert!(weight("db").is_err());
    }

    #[test]
    fn unknown_fields_bad_roles_and_bad_defaults_are_refused_whole() {
        for bad in [
            r#"{"launch_natve": []}"#,
            r#"{"launch_native": [{"roles": ["a//b"]}]}"#,
            r#"{"default": "maybe"}"#,
            r#"{"view": [{"principals": ["a"], "colour": "red"}]}"#,
        ] {
            let err = Acls::parse(bad).expect_err(bad);
            assert!(err.starts_with("not a valid ACL file"), "{err}");
        }
    }
}
