//! The operator API over HTTPS (`stoa master --https`): the master's
//! certificate from the cluster CA, callers known by a bearer token or by
//! a client certificate of the CA (a tenant's or the operator's), and a
//! certificate of another CA refused at the handshake. Called with curl,
//! as a script would.

use std::process::Command;
use stoa_tests::Cluster;

struct Https<'a> {
    cluster: &'a Cluster,
    addr: String,
}

impl Https<'_> {
    /// `curl` of `path` with `extra` flags: the HTTP status and the body.
    fn get(&self, path: &str, extra: &[&str]) -> anyhow::Result<(u16, serde_json::Value)> {
        let ca = self.cluster.certs.join("ca.pem");
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(&ca)
            .args(extra)
            .arg(format!("https://{}{path}", self.addr))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((
            code.trim().parse()?,
            serde_json::from_str(body).unwrap_or_default(),
        ))
    }

    /// curl flags presenting certificate `name` of the cluster.
    fn cert(&self, name: &str) -> Vec<String> {
        let c = &self.cluster.certs;
        vec![
            "--cert".into(),
            c.join(format!("{name}.pem")).to_string_lossy().into_owned(),
            "--key".into(),
            c.join(format!("{name}.key")).to_string_lossy().into_owned(),
        ]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn callers_are_known_by_token_or_client_certificate_over_https() -> anyhow::Result<()> {
    let c = Cluster::start(1, "cpus:1;mem:256")?;
    let https = Https {
        cluster: &c,
        addr: std::fs::read_to_string(c.dir.path().join("master.https"))?,
    };
    // Nobody named: 401, saying both ways in.
    let (status, body) = https.get("/api/v1/summary", &[])?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("client certificate"),
        "{body}"
    );
    // A bearer token, as over HTTP.
    let token = stoa_tests::http::create_token(&c.addr.to_string(), &c.certs, "operator")?;
    let auth = format!("Authorization: Bearer {token}");
    let (status, body) = https.get("/api/v1/agents", &["-H", &auth])?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");
    // The operator's certificate: everything.
    let operator = https.cert("operator");
    let (status, _) = https.get("/api/v1/agents", &strs(&operator))?;
    assert_eq!(status, 200);
    // A tenant's certificate: its own view; the operator's calls refused.
    let client = https.cert("client");
    let (status, body) = https.get("/api/v1/frameworks", &strs(&client))?;
    assert_eq!((status, body), (200, serde_json::json!([])));
    let (status, body) = https.get("/api/v1/agents", &strs(&client))?;
    assert_eq!(status, 403, "{body}");
    // The UI is served over HTTPS too.
    let ui = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(c.certs.join("ca.pem"))
        .arg(format!("https://{}/ui/", https.addr))
        .output()?;
    assert!(String::from_utf8_lossy(&ui.stdout).contains("<title>Stoa</title>"));

    // A certificate of another CA does not get through the handshake.
    let other = tempfile::tempdir()?;
    stoa_transport::certs::init(other.path(), "elsewhere")?;
    let stranger = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(c.certs.join("ca.pem"))
        .arg("--cert")
        .arg(other.path().join("operator.pem"))
        .arg("--key")
        .arg(other.path().join("operator.key"))
        .arg(format!("https://{}/api/v1/agents", https.addr))
        .output()?;
    assert!(
        !stranger.status.success(),
        "another CA's certificate got in"
    );
    Ok(())
}

#[test]
fn plain_http_is_refused_beyond_loopback() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    stoa_transport::certs::init(&certs, "test")?;
    let out = Command::new(stoa_tests::stoa_bin()?)
        .args([
            "master",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "0.0.0.0:0",
            "--certs",
        ])
        .arg(&certs)
        .arg("--registry")
        .arg(dir.path().join("registry.redb"))
        .arg("--artifacts")
        .arg(dir.path().join("artifacts"))
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--https"), "{err}");
    Ok(())
}
