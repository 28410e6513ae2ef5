//! Operator commands: roles, weights and quotas, through the master's
//! operator channel. The `operator` certificate may do everything; any
//! other certificate of the cluster (`--identity NAME`) is a tenant that
//! sees and ends only its own frameworks and tasks.

use anyhow::bail;
use std::path::PathBuf;
use stoa_client::ClientConfig;
use stoa_proto::operator::{OperatorCall, OperatorReply};
use stoa_proto::{Resources, Role};

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The masters' addresses, comma-separated (HOST:PORT,...); calls go
    /// to the one that leads.
    #[arg(long, default_value = "127.0.0.1:5050", env = "STOA_MASTER")]
    master: stoa_transport::Masters,
    /// Directory with ca.pem and the certificate to present.
    #[arg(long, default_value = ".stoa/certs", env = "STOA_CERTS")]
    certs: PathBuf,
    /// Certificate to present: `operator`, or a tenant's (who then sees
    /// only its own frameworks and tasks).
    #[arg(long, default_value = "operator", env = "STOA_IDENTITY")]
    identity: String,
}

impl Target {
    /// The directory of the cluster's certificates.
    pub fn certs(&self) -> &std::path::Path {
        &self.certs
    }

    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.master.clone(), &self.certs);
        config.identity = self.identity.clone();
        config
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct WeightArgs {
    #[command(flatten)]
    target: Target,
    /// The role, e.g. eng/ml.
    role: Role,
    /// A positive number; 2 means twice the share of a sibling of weight 1.
    weight: f64,
}

#[derive(Debug, clap::Args)]
pub struct QuotaArgs {
    #[command(flatten)]
    target: Target,
    /// The role, e.g. eng/ml.
    role: Role,
    /// What the role is guaranteed, e.g. "cpus:4;mem:8192".
    #[arg(long, default_value = "")]
    guarantee: Resources,
    /// Most the role may hold, e.g. "cpus:8;gpus:0" (zeros allowed).
    #[arg(long)]
    limit: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReserveArgs {
    #[command(flatten)]
    target: Target,
    /// The agent's id (see the agent's log or `stoa up`).
    agent: stoa_proto::AgentId,
    /// The role that alone (with its sub-roles) may use the resources.
    role: Role,
    /// What to reserve, e.g. "cpus:2;mem:1024".
    resources: Resources,
}

pub async fn reserve(a: ReserveArgs, reserve: bool) -> anyhow::Result<()> {
    let (agent, role, resources) = (a.agent.clone(), a.role.clone(), a.resources.clone());
    let request = if reserve {
        OperatorCall::Reserve {
            agent,
            role,
            resources,
        }
    } else {
        OperatorCall::Unreserve {
            agent,
            role,
            resources,
        }
    };
    call(&a.target, request).await?;
    let verb = if reserve { "reserved" } else { "unreserved" };
    println!("{verb} {} on {} for {}", a.resources, a.agent, a.role);
    Ok(())
}

pub(crate) async fn call(target: &Target, call: OperatorCall) -> anyhow::Result<OperatorReply> {
    refused_is_error(stoa_client::operator_call(&target.config(), &call).await?)
}

/// A refusal or a forbidden call, as an error that says why.
pub(crate) fn refused_is_error(reply: OperatorReply) -> anyhow::Result<OperatorReply> {
    match reply {
        OperatorReply::Refused { message } => bail!("the master refused: {message}"),
        OperatorReply::Forbidden { message } => bail!("forbidden: {message}"),
        reply => Ok(reply),
    }
}

pub async fn roles(a: ListArgs) -> anyhow::Result<()> {
    let OperatorReply::Roles(roles) = call(&a.target, OperatorCall::GetRoles).await? else {
        bail!("the master answered something other than a role list");
    };
    if a.json {
        let rows: Vec<_> = roles
            .iter()
            .map(|r| {
                serde_json::json!({
                    "role": r.role.as_str(),
                    "weight": r.weight,
                    "guarantee": r.guarantee.to_string(),
                    "limit": r.limit,
                    "allocated": r.allocated.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                                        "frameworks": r.frameworks,
                    "reservations": r.reservations.iter().map(|(a, x)| serde_json::json!({"agent": a.as_str(), "resources": x.to_string()})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:<24} {:<24} {:>10}  allocated",
        "ROLE", "WEIGHT", "GUARANTEE", "LIMIT", "FRAMEWORKS"
    );
    for r in roles {
        let mut allocated: Vec<String> = r
            .allocated
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        allocated.extend(
            r.reservations
                .iter()
                .map(|(agent, x)| format!("reserved {x} on {agent}")),
        );
        println!(
            "{:<24} {:>7} {:<24} {:<24} {:>10}  {}",
            r.role.as_str(),
            r.weight,
            r.guarantee.to_string(),
            r.limit.unwrap_or_else(|| "-".into()),
            r.frameworks,
            allocated.join(" ")
        );
    }
    Ok(())
}

pub async fn weight(a: WeightArgs) -> anyhow::Result<()> {
    call(
        &a.target,
        OperatorCall::SetWeight {
            role: a.role.clone(),
            weight: a.weight,
        },
    )
    .await?;
    println!("weight of {} is now {}", a.role, a.weight);
    Ok(())
}

pub async fn quota(a: QuotaArgs) -> anyhow::Result<()> {
    let removing = a.guarantee.is_empty() && a.limit.is_none();
    call(
        &a.target,
        OperatorCall::SetQuota {
            role: a.role.clone(),
            guarantee: a.guarantee,
            limit: a.limit,
        },
    )
    .await?;
    if removing {
        println!("quota of {} removed", a.role);
    } else {
        println!("quota of {} set", a.role);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct TeardownArgs {
    #[command(flatten)]
    target: Target,
    /// The framework's id (see `stoa frameworks`).
    framework_id: stoa_proto::FrameworkId,
}

pub async fn frameworks(a: ListArgs) -> anyhow::Result<()> {
    let OperatorReply::Frameworks(list) = call(&a.target, OperatorCall::GetFrameworks).await?
    else {
        bail!("the master answered something other than a framework list");
    };
    if a.json {
        let rows: Vec<_> = list
            .iter()
            .map(|f| {
                serde_json::json!({
                    "id": f.id.as_str(),
                    "name": f.name,
                    "role": f.role.as_str(),
                    "principal": f.principal,
                    "connected": f.connected,
                    "tasks": f.tasks,
                    "hosted": f.hosted.as_ref().map(|h| serde_json::json!({
                        "instance": h.instance.as_ref().map(|(t, _)| t.as_str()),
                        "agent": h.instance.as_ref().map(|(_, a)| a.as_str()),
                        "launched": h.launched,
                    })),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<28} {:<20} {:<16} {:<12} {:<10} {:>6}  scheduler",
        "ID", "NAME", "ROLE", "PRINCIPAL", "CONNECTED", "TASKS"
    );
    for f in list {
        let scheduler = match &f.hosted {
            None => "self-hosted".to_string(),
            Some(h) => match &h.instance {
                Some((task, agent)) => format!("hosted: {task} on {agent}"),
                None => format!("hosted: waiting to start (started {} so far)", h.launched),
            },
        };
        println!(
            "{:<28} {:<20} {:<16} {:<12} {:<10} {:>6}  {}",
            f.id.as_str(),
            f.name,
            f.role.as_str(),
            f.principal.as_deref().unwrap_or("-"),
            if f.connected { "yes" } else { "no" },
            f.tasks,
            scheduler
        );
    }
    Ok(())
}

pub async fn teardown(a: TeardownArgs) -> anyhow::Result<()> {
    call(
        &a.target,
        OperatorCall::Teardown {
            framework_id: a.framework_id.clone(),
        },
    )
    .await?;
    eprintln!("framework {} torn down", a.framework_id);
    Ok(())
}
