//! A client of the master's HTTP API for tests: JSON calls with a bearer
//! token, and the event stream read event by event.

use anyhow::{Context as _, bail};
use serde_json::Value;
use std::io::BufRead as _;
use std::path::Path;
use std::time::Duration;

/// A token for `principal`, made by `stoa token create` as an operator
/// would.
pub fn create_token(master: &str, certs: &Path, principal: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new(crate::stoa_bin()?)
        .args([
            "token",
            "create",
            "--json",
            "--master",
            master,
            "--principal",
            principal,
        ])
        .arg("--certs")
        .arg(certs)
        .output()?;
    if !out.status.success() {
        bail!(
            "stoa token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reply: Value = serde_json::from_slice(&out.stdout)?;
    reply["token"]
        .as_str()
        .map(str::to_string)
        .context("no token in stoa token create's output")
}

#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A reply: its status and JSON body (`Null` if the body is not JSON).
pub type Reply = (u16, Value);

impl Api {
    pub fn new(addr: &str, token: Option<&str>) -> Api {
        Api {
            base: format!("http://{addr}"),
            token: token.map(str::to_string),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(20))
                .build(),
        }
    }

    /// The address it calls (`HOST:PORT`).
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// The bearer token it calls with.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same API with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => request.set("Authorization", &format!("Bearer {t}")),
            None => request,
        }
    }

    fn finish(result: Result<ureq::Response, ureq::Error>) -> anyhow::Result<Reply> {
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.into()),
        };
        let status = response.status();
        let body = response.into_string()?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Reply> {
        Api::finish(self.request("GET", path).call())
    }

    pub fn send(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Reply> {
        Api::finish(self.request(method, path).send_json(body))
    }

    /// `METHOD path` without a body. (A body a handler does not read may
    /// leave the server to close the connection after its answer, and a
    /// pooled connection then fails the next request.)
    pub fn bare(&self, method: &str, path: &str) -> anyhow::Result<Reply> {
        Api::finish(self.request(method, path).call())
    }

    /// `GET path`, which must answer 200; its body.
    pub fn ok(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Follows the event stream, from after `last_event_id` if given.
    pub fn events(&self, last_event_id: Option<&str>) -> anyhow::Result<Events> {
        let agent = ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(30))
            .build();
        let mut request = agent.get(&format!("{}/api/v1/events", self.base));
        if let Some(t) = &self.token {
            request = request.set("Authorization", &format!("Bearer {t}"));
        }
        if let Some(id) = last_event_id {
            request = request.set("Last-Event-ID", id);
        }
        let response = request.call()?;
        Ok(Events {
            lines: std::io::BufReader::new(response.into_reader()),
        })
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

pub struct Events {
    lines: std::io::BufReader<Box<dyn std::io::Read + Send + Sync>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    /// The next event (keep-alive comments skipped).
    pub fn next_event(&mut self) -> anyhow::Result<SseEvent> {
        let mut event = SseEvent::default();
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line)? == 0 {
                bail!("the event stream ended");
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !event.event.is_empty() || !event.data.is_empty() {
                    return Ok(event);
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id:") {
                event.id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                event.event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                event.data.push_str(v.trim_start());
            }
        }
    }

    /// Events until one of type `kind` for which `matches` holds.
    pub fn until(
        &mut self,
        kind: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<SseEvent> {
        loop {
            let e = self.next_event()?;
            if e.event == kind {
                let data: Value = serde_json::from_str(&e.data)?;
                if matches(&data) {
                    return Ok(e);
                }
            }
        }
    }
}

/// A metric's value in Prometheus text (the first line that starts with
/// `name` and contains every label given).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split([' ', '{']).next() == Some(name) && labels.iter().all(|lb| l.contains(lb))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
