//! `GET /api/v1/events`: the cluster's events as server-sent events,
//! resumable with `Last-Event-ID` (or `?after=`) within what the leader
//! keeps (its last 10,000).
//!
//! An event's id is `INSTANCE.SEQ`: a sequence number within one
//! leader's run. Resuming from another run (a failover happened) or from
//! before what is kept first sends a `gap` event: some events were
//! missed, and the client should read the state afresh.

use super::api::{ApiError, Authed, Params};
use super::{ApiState, Published};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt as _};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use stoa_proto::operator::{Caller, ClusterEvent, OperatorCall, OperatorReply};
use tokio_stream::wrappers::BroadcastStream;

#[derive(Debug, Deserialize)]
pub struct EventsParams {
    /// As `Last-Event-ID`, for clients that cannot set headers.
    after: Option<String>,
}

/// Where a client resumes: a leader's run and a sequence number in it.
fn resume_point(headers: &HeaderMap, params: &EventsParams) -> Option<(String, u64)> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.after.clone())?;
    let (instance, seq) = raw.rsplit_once('.')?;
    Some((instance.to_string(), seq.parse().ok()?))
}

fn sse_event(instance: &str, event: &ClusterEvent) -> Event {
    let json = event.to_json();
    let kind = json["type"].as_str().unwrap_or("event").to_string();
    Event::default()
        .id(format!("{instance}.{}", event.seq))
        .event(kind)
        .data(json.to_string())
}

pub async fn stream(
    State(s): State<ApiState>,
    Authed(caller): Authed,
    headers: HeaderMap,
    Params(params): Params<EventsParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Follow first, then read what is kept: nothing falls between the two
    // (what both hold is sent once, by sequence number).
    let live = BroadcastStream::new(s.events.subscribe());
    let resume = resume_point(&headers, &params);
    let page = match s
        .call(
            &caller,
            OperatorCall::GetEvents {
                after: None,
                limit: u32::MAX,
            },
        )
        .await?
    {
        OperatorReply::Events(page) => page,
        OperatorReply::Forbidden { message } => {
            return Err(ApiError::new(axum::http::StatusCode::FORBIDDEN, message));
        }
        other => {
            return Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected reply {other:?}"),
            ));
        }
    };
    let instance: Arc<str> = page.instance.clone().into();
    // From where the client left off, if that is in this run and kept.
    let (after, gap) = match &resume {
        Some((run, seq)) if **run == *instance => {
            let missed = *seq + 1 < page.oldest;
            (*seq, missed)
        }
        Some(_) => (0, true),
        None => (0, false),
    };
    let mut first = Vec::new();
    if gap {
        first.push(Ok(Event::default().event("gap").data(
            "events were missed (a new leader, or older than what is kept): read the state afresh",
        )));
    }
    let mut last = after;
    for event in page.events.iter().filter(|e| e.seq > after) {
        first.push(Ok(sse_event(&instance, event)));
        last = event.seq;
    }
    let caller = Arc::new(caller);
    let follow = live.filter_map(move |item| {
        let (caller, instance) = (caller.clone(), instance.clone());
        async move {
            match item {
                Ok(p) => admit(&caller, &instance, last, &p).map(Ok),
                // Too slow a reader: it is told, as on resuming late.
                Err(_) => Some(Ok(Event::default().event("gap").data(
                    "events were missed (this stream fell behind): read the state afresh",
                ))),
            }
        }
    });
    // The stream ends with this master's term: a client reconnects and
    // finds the next leader's (resuming is then a `gap`).
    let mut core = s.core.clone();
    let term_ends = async move {
        let _ = core.wait_for(Option::is_none).await;
    };
    let follow = follow.take_until(Box::pin(term_ends));
    Ok(Sse::new(stream::iter(first).chain(follow)).keep_alive(KeepAlive::default()))
}

/// The event as `caller` may see it, if it follows what was sent.
fn admit(caller: &Caller, instance: &str, last: u64, p: &Published) -> Option<Event> {
    let newer = *p.instance != *instance || p.event.seq > last;
    (newer && p.audience.admits(caller, &p.acls)).then(|| sse_event(&p.instance, &p.event))
}
