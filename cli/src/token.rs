//! `stoa token create`: a bearer token for the HTTP API.

use crate::operator::{Target, call};
use anyhow::bail;
use stoa_proto::operator::{OperatorCall, OperatorReply};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token that acts as PRINCIPAL (`operator` sees and does
    /// everything; any other name sees its own frameworks and tasks).
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    #[command(flatten)]
    target: Target,
    /// Who the token acts as: `operator`, or the principal a tenant's
    /// frameworks subscribe as (its certificate's name).
    #[arg(long)]
    principal: String,
    /// How long it is valid: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    ttl: u64,
    /// Print JSON (token and expiry) instead of the token alone.
    #[arg(long)]
    json: bool,
}

/// `90`, `90s`, `30m`, `24h`, `7d` → seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: give e.g. 3600, 30m, 24h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("invalid unit in {s:?}: give s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("invalid duration {s:?}: give a positive length")),
        Some(secs) => Ok(secs),
    }
}

pub async fn run(a: TokenArgs) -> anyhow::Result<()> {
    let TokenCommand::Create(a) = a.command;
    let reply = call(
        &a.target,
        OperatorCall::CreateToken {
            principal: a.principal.clone(),
            ttl_secs: a.ttl,
        },
    )
    .await?;
    let OperatorReply::Token {
        token,
        expires_unix,
    } = reply
    else {
        bail!("the master answered something other than a token");
    };
    if a.json {
        let out = serde_json::json!({
            "principal": a.principal,
            "token": token,
            "expires_unix": expires_unix,
        });
        println!("{out}");
    } else {
        println!("{token}");
        eprintln!(
            "a token for {} valid for {} s; send it as `Authorization: Bearer TOKEN`",
            a.principal, a.ttl
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_as_people_write_them() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1_800));
        assert_eq!(parse_ttl("24h"), Ok(86_400));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        for bad in ["", "0", "h", "3w", "-1", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
