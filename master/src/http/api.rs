//! Routes, the bearer-token check, and the mapping of the core's typed
//! replies to JSON and status codes.

use super::ApiState;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use stoa_proto::operator::{Caller, OperatorCall, OperatorReply, TaskQuery};
use stoa_proto::side::LogStream;
use stoa_proto::{AgentId, FrameworkId, Resources, Role, TaskId, TaskState};

/// The API's description, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The API's paths, as the router serves them and the OpenAPI
/// description must name them (a test holds the two together).
pub const ROUTES: &[&str] = &[
    OPENAPI_PATH,
    "/api/v1/summary",
    "/api/v1/agents",
    "/api/v1/frameworks",
    "/api/v1/frameworks/{framework_id}",
    "/api/v1/tasks",
    "/api/v1/tasks/{task_id}/kill",
    "/api/v1/tasks/{task_id}/log",
    "/api/v1/roles",
    "/api/v1/weights",
    "/api/v1/quotas",
    "/api/v1/reservations",
    "/api/v1/offers",
    "/api/v1/events",
];

const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// Prometheus's conventional path, outside the API's versioned tree.
pub const METRICS_PATH: &str = "/metrics";

/// Prometheus metrics: counts and timings of the whole cluster, no ids
/// and no names, so served without a token (as scrapers expect).
async fn metrics(State(s): State<ApiState>) -> Response {
    let summary = match s.call(&Caller::Operator, OperatorCall::GetSummary).await {
        Ok(OperatorReply::Summary(summary)) => Some(summary),
        _ => None,
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(summary.as_ref()),
    )
        .into_response()
}

pub fn router(state: ApiState) -> Router {
    let r = |i: usize| ROUTES[i];
    Router::new()
        .route(r(0), get(openapi))
        .route(r(1), get(summary))
        .route(r(2), get(agents))
        .route(r(3), get(frameworks))
        .route(r(4), delete(teardown))
        .route(r(5), get(tasks))
        .route(r(6), post(kill))
        .route(r(7), get(log))
        .route(r(8), get(roles))
        .route(r(9), post(set_weight))
        .route(r(10), post(set_quota))
        .route(r(11), post(reserve).delete(unreserve))
        .route(r(12), get(offers))
        .route(r(13), get(super::events::stream))
        .route(METRICS_PATH, get(metrics))
        .merge(super::ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// A JSON body; a malformed one is a 400 with the API's error shape.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Query parameters; malformed ones are a 400 with the API's error shape.
pub struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// An error as the API gives it: a status and `{"error": …, "hint": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    hint: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }

    fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }

    /// This master does not lead (or stopped leading mid-call).
    pub fn standby(leader: Option<SocketAddr>) -> ApiError {
        let e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this master is a standby and serves no API",
        );
        match leader {
            Some(l) => e.hint(format!(
                "ask the leader, whose QUIC address is {l} (its HTTP API is where it was told to serve it)"
            )),
            None => e.hint("no master leads yet; an election takes about a lease's time"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if let Some(hint) = self.hint {
            body["hint"] = Value::String(hint);
        }
        (self.status, Json(body)).into_response()
    }
}

/// The caller a request's bearer token names.
pub struct Authed(pub Caller);

const TOKEN_HINT: &str = "create a token with `stoa token create --principal NAME` and send it as the header `Authorization: Bearer TOKEN`, or (over HTTPS) present a client certificate of the cluster CA";

impl FromRequestParts<ApiState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        // Over HTTPS, a client certificate of the cluster CA names the
        // caller (a token, if sent as well, is what counts).
        if header.is_none()
            && let Some(super::tls::ClientCert(Some((principal, serial)))) =
                parts.extensions.get::<super::tls::ClientCert>()
        {
            if state.revoked.borrow().contains(&format!("serial:{serial}")) {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this client certificate was revoked",
                )
                .hint(TOKEN_HINT));
            }
            return Ok(Authed(Caller::from_principal(principal)));
        }
        let Some(header) = header else {
            return Err(
                ApiError::new(StatusCode::UNAUTHORIZED, "no bearer token given").hint(TOKEN_HINT),
            );
        };
        let Some(token) = header.strip_prefix("Bearer ") else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the Authorization header is not `Bearer TOKEN`",
            )
            .hint(TOKEN_HINT));
        };
        let principal = state
            .tokens
            .verify(token.trim(), super::token::unix_now())
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).hint(TOKEN_HINT))?;
        let revoked = stoa_proto::operator::Revocation::Token(token.trim().to_string())
            .key()
            .is_ok_and(|key| state.revoked.borrow().contains(&key));
        if revoked {
            return Err(
                ApiError::new(StatusCode::UNAUTHORIZED, "this token was revoked").hint(TOKEN_HINT),
            );
        }
        Ok(Authed(Caller::from_principal(&principal)))
    }
}

/// The reply as JSON, or the refusal as an error.
fn answer(reply: OperatorReply) -> Result<Response, ApiError> {
    let body = match reply {
        OperatorReply::Done => json!({ "ok": true }),
        OperatorReply::Roles(v) => json!(v),
        OperatorReply::Frameworks(v) => json!(v),
        OperatorReply::Summary(v) => json!(v),
        OperatorReply::Agents(v) => json!(v),
        OperatorReply::Offers(v) => json!(v),
        OperatorReply::Events(v) => json!({
            "instance": v.instance,
            "oldest": v.oldest,
            "events": v.events.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
        }),
        OperatorReply::Tasks(page) => json!({
            "tasks": page.tasks,
            "next": page.next.map(|(f, t)| json!({ "after_framework": f, "after_task": t })),
        }),
        OperatorReply::Log(chunk) => json!({
            "data": String::from_utf8_lossy(&chunk.data),
            "next_offset": chunk.next_offset,
            "task_ended": chunk.task_ended,
        }),
        OperatorReply::Token {
            token,
            expires_unix,
        } => json!({ "token": token, "expires_unix": expires_unix }),
        OperatorReply::Refused { message } => {
            let status = if message.starts_with("no ") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            };
            return Err(ApiError::new(status, message));
        }
        OperatorReply::Forbidden { message } => {
            return Err(ApiError::new(StatusCode::FORBIDDEN, message));
        }
    };
    Ok(Json(body).into_response())
}

async fn call(state: &ApiState, caller: &Caller, call: OperatorCall) -> Result<Response, ApiError> {
    answer(state.call(caller, call).await?)
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method",
    )
    .hint("the endpoints and their methods are listed at /api/v1/openapi.json")
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
        .hint("the endpoints are listed at /api/v1/openapi.json")
}

async fn summary(State(s): State<ApiState>, Authed(c): Authed) -> Result<Response, ApiError> {
    call(&s, &c, OperatorCall::GetSummary).await
}

async fn agents(State(s): State<ApiState>, Authed(c): Authed) -> Result<Response, ApiError> {
    call(&s, &c, OperatorCall::GetAgents).await
}

async fn frameworks(State(s): State<ApiState>, Authed(c): Authed) -> Result<Response, ApiError> {
    call(&s, &c, OperatorCall::GetFrameworks).await
}

async fn roles(State(s): State<ApiState>, Authed(c): Authed) -> Result<Response, ApiError> {
    call(&s, &c, OperatorCall::GetRoles).await
}

async fn offers(State(s): State<ApiState>, Authed(c): Authed) -> Result<Response, ApiError> {
    call(&s, &c, OperatorCall::GetOffers).await
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| ApiError::bad_request(format!("invalid {what} {s:?}: {e}")))
}

#[derive(Debug, Deserialize)]
struct TasksParams {
    framework: Option<String>,
    agent: Option<String>,
    state: Option<String>,
    after_framework: Option<String>,
    after_task: Option<String>,
    limit: Option<u32>,
}

async fn tasks(
    State(s): State<ApiState>,
    Authed(c): Authed,
    Params(p): Params<TasksParams>,
) -> Result<Response, ApiError> {
    let after = match (&p.after_framework, &p.after_task) {
        (Some(f), Some(t)) => Some((
            parse::<FrameworkId>("framework id", f)?,
            parse::<TaskId>("task id", t)?,
        )),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give after_framework and after_task together (the `next` of the previous page)",
            ));
        }
    };
    let query = TaskQuery {
        framework: p
            .framework
            .as_deref()
            .map(|f| parse("framework id", f))
            .transpose()?,
        agent: p
            .agent
            .as_deref()
            .map(|a| parse::<AgentId>("agent id", a))
            .transpose()?,
        state: p
            .state
            .as_deref()
            .map(|s| s.parse::<TaskState>().map_err(ApiError::bad_request))
            .transpose()?,
        after,
        limit: p.limit.unwrap_or(TaskQuery::DEFAULT_LIMIT),
    };
    call(&s, &c, OperatorCall::GetTasks(query)).await
}

#[derive(Debug, Deserialize)]
struct FrameworkParam {
    framework: Option<String>,
}

async fn kill(
    State(s): State<ApiState>,
    Authed(c): Authed,
    Path(task_id): Path<String>,
    Params(p): Params<FrameworkParam>,
) -> Result<Response, ApiError> {
    let call_ = OperatorCall::KillTask {
        framework_id: p
            .framework
            .as_deref()
            .map(|f| parse("framework id", f))
            .transpose()?,
        task_id: parse("task id", &task_id)?,
    };
    call(&s, &c, call_).await
}

#[derive(Debug, Deserialize)]
struct LogParams {
    framework: Option<String>,
    stream: Option<String>,
    offset: Option<u64>,
    max_len: Option<u32>,
    wait_ms: Option<u32>,
}

async fn log(
    State(s): State<ApiState>,
    Authed(c): Authed,
    Path(task_id): Path<String>,
    Params(p): Params<LogParams>,
) -> Result<Response, ApiError> {
    let stream = match p.stream.as_deref() {
        None | Some("stdout") => LogStream::Stdout,
        Some("stderr") => LogStream::Stderr,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid stream {other:?}: give stdout or stderr"
            )));
        }
    };
    let call_ = OperatorCall::ReadLog {
        framework_id: p
            .framework
            .as_deref()
            .map(|f| parse("framework id", f))
            .transpose()?,
        task_id: parse("task id", &task_id)?,
        stream,
        offset: p.offset.unwrap_or(0),
        max_len: p.max_len.unwrap_or(64 * 1024).min(1 << 20),
        wait_ms: p
            .wait_ms
            .unwrap_or(0)
            .min(stoa_proto::side::MAX_LOG_WAIT_MS),
    };
    call(&s, &c, call_).await
}

async fn teardown(
    State(s): State<ApiState>,
    Authed(c): Authed,
    Path(framework_id): Path<String>,
) -> Result<Response, ApiError> {
    let framework_id = parse("framework id", &framework_id)?;
    call(&s, &c, OperatorCall::Teardown { framework_id }).await
}

#[derive(Debug, Deserialize)]
struct WeightBody {
    role: String,
    weight: f64,
}

async fn set_weight(
    State(s): State<ApiState>,
    Authed(c): Authed,
    Body(b): Body<WeightBody>,
) -> Result<Response, ApiError> {
    let role = parse::<Role>("role", &b.role)?;
    call(
        &s,
        &c,
        OperatorCall::SetWeight {
            role,
            weight: b.weight,
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
struct QuotaBody {
    role: String,
    #[serde(default)]
    guarantee: String,
    limit: Option<String>,
}

async fn set_quota(
    State(s): State<ApiState>,
    Authed(c): Authed,
    Body(b): Body<QuotaBody>,
) -> Result<Response, ApiError> {
    let role = parse::<Role>("role", &b.role)?;
    let guarantee = if b.guarantee.is_empty() {
        Resources::new()
    } else {
        parse::<Resources>("guarantee", &b.guarantee)?
    };
    call(
        &s,
        &c,
        OperatorCall::SetQuota {
            role,
            guarantee,
            limit: b.limit,
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
struct ReservationBody {
    agent: String,
    role: String,
    resources: String,
}

/// The reserve or unreserve call `b` asks for.
fn reservation(b: &ReservationBody, reserve: bool) -> Result<OperatorCall, ApiError> {
    let (agent, role, resources) = (
        parse("agent id", &b.agent)?,
        parse("role", &b.role)?,
        parse("resources", &b.resources)?,
    );
    Ok(if reserve {
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
    })
}

async fn reserve(
    State(s): State<ApiState>,
    Authed(c): Authed,
    Body(b): Body<ReservationBody>,
) -> Result<Response, ApiError> {
    call(&s, &c, reservation(&b, true)?).await
}

async fn unreserve(
    State(s): State<ApiState>,
    Authed(c): Authed,
    Body(b): Body<ReservationBody>,
) -> Result<Response, ApiError> {
    call(&s, &c, reservation(&b, false)?).await
}
