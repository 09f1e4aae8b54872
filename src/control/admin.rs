//! The admin HTTP API, on a control thread of its own: never on the
//! packet path. It reads what the shards publish ([`ShardStats`]) and the
//! routing's health atomics, and writes only member states and reloads,
//! so a slow or hostile client costs the shards nothing.
//!
//! - `GET /healthz`, `GET /metrics` (Prometheus text);
//! - `GET /api/v1/sets`: every set and member with state, weight, active
//!   calls, latency and last probe result;
//! - `PUT /api/v1/sets/{set}/members/{member}` with `{"state": "draining"
//!   | "up" | "down"}` (`member` is its URI or its index in the set);
//! - `POST /api/v1/reload`.
//!
//! A bad request gets 400 with `{"error": ..., "field": ...}`. A peer the
//! admin ACL (`[acl] admin_allow`, `admin_deny`) refuses gets 403 on every
//! path, before any handler runs.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::metrics;
use super::{state_name, state_named, Control};
use crate::balance::probe::ProbeResult;
use crate::guard::Acl;
use crate::shard::stats::ShardStats;

/// Binds `address` now (so that a taken port fails at start-up, with the
/// address in the error) and serves the API on a thread named `admin`,
/// to the peers `acl` permits.
pub fn start(address: SocketAddr, control: Arc<Control>, acl: Acl) -> io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("admin".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "admin API: cannot listen");
                        return;
                    }
                };
                let service =
                    router(control, acl).into_make_service_with_connect_info::<SocketAddr>();
                if let Err(error) = axum::serve(listener, service).await {
                    tracing::error!(%error, "admin API stopped");
                }
            })
        })
}

fn router(control: Arc<Control>, acl: Acl) -> Router {
    let door = Arc::new(Door {
        acl,
        control: control.clone(),
    });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/sets", get(sets))
        .route("/api/v1/sets/{set}/members/{member}", put(set_member))
        .route("/api/v1/reload", post(reload))
        .with_state(control)
        .layer(middleware::from_fn_with_state(door, admit))
}

/// The admin ACL and where to count its refusals.
struct Door {
    acl: Acl,
    control: Arc<Control>,
}

/// Every request, any path (unknown ones too), passes here first: a peer
/// the ACL refuses gets 403 and no handler runs.
async fn admit(
    State(door): State<Arc<Door>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if door.acl.permits(peer.ip()) {
        return next.run(request).await;
    }
    door.control.admin_denied();
    tracing::debug!(%peer, "admin API: refused by the admin ACL");
    json_response(
        StatusCode::FORBIDDEN,
        json!({ "error": "refused by the admin ACL", "field": "source" }),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(control): State<Arc<Control>>) -> impl IntoResponse {
    let stats = control.shards.stats();
    let shards: Vec<&ShardStats> = stats.iter().map(|s| &**s).collect();
    let mut text = metrics::render(&shards);
    metrics::render_backends(
        &mut text,
        &control.shards.routing(),
        &control.transitions(),
        &control.probe_counts(),
    );
    metrics::render_guard(
        &mut text,
        &shards,
        control.shards.bans_active(),
        control.admin_denied_count(),
    );
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

fn bad_request(error: impl std::fmt::Display, field: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": error.to_string(), "field": field }),
    )
}

async fn sets(State(control): State<Arc<Control>>) -> Response {
    let routing = control.shards.routing();
    let sets: Vec<Value> = routing
        .sets()
        .iter()
        .map(|set| {
            let members: Vec<Value> = set
                .members
                .iter()
                .map(|m| {
                    let last_probe = match control.last_probe(&m.uri) {
                        Some(ProbeResult::Answered(code)) => json!(code),
                        Some(ProbeResult::TimedOut) => json!("timeout"),
                        None => Value::Null,
                    };
                    json!({
                        "uri": &*m.uri,
                        "address": m.address.to_string(),
                        "weight": m.weight,
                        "priority": m.priority,
                        "attrs": m.attrs,
                        "state": state_name(m.health.state()),
                        "active_calls": m.health.active_dialogs(),
                        "latency_us": m.health.latency_ewma_us(),
                        "last_probe": last_probe,
                    })
                })
                .collect();
            json!({
                "name": &*set.name,
                "algorithm": set.algorithm.name(),
                "members": members,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "default_set": &*routing.set(routing.default_set()).name, "sets": sets }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberChange {
    state: String,
}

async fn set_member(
    State(control): State<Arc<Control>>,
    Path((set, member)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let change: MemberChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => {
            let field = match e.to_string() {
                m if m.contains("unknown field") => {
                    m.split('`').nth(1).unwrap_or("state").to_string()
                }
                _ => "state".to_string(),
            };
            return bad_request(
                format!("the body must be {{\"state\": \"draining\" | \"up\" | \"down\"}}: {e}"),
                &field,
            );
        }
    };
    let Some(state) = state_named(&change.state) else {
        return bad_request(
            format!("state {:?} is not one of draining, up, down", change.state),
            "state",
        );
    };
    let routing = control.shards.routing();
    let Some(id) = routing.set_id(&set) else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no set named {set:?}"), "field": "set" }),
        );
    };
    let members = &routing.set(id).members;
    let found = members
        .iter()
        .find(|m| *m.uri == *member)
        .or_else(|| member.parse::<usize>().ok().and_then(|i| members.get(i)));
    let Some(found) = found else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("set {set:?} has no member {member:?}"), "field": "member" }),
        );
    };
    let from = found.health.state();
    found.health.set_state(state);
    if from != state {
        control.transition(state);
    }
    tracing::warn!(set, backend = %found.uri, from = state_name(from), to = state_name(state), "backend state set by the admin API");
    json_response(
        StatusCode::OK,
        json!({ "set": set, "member": &*found.uri, "state": state_name(state) }),
    )
}

async fn reload(State(control): State<Arc<Control>>) -> Response {
    let reloaded = control.reload();
    if let Err(error) = control.reload_tls() {
        tracing::warn!(%error, "TLS certificates not reloaded; the running ones stay");
    }
    match reloaded {
        Ok(backends) => {
            tracing::info!(backends, "configuration reloaded (admin API)");
            json_response(
                StatusCode::OK,
                json!({ "reloaded": true, "backends": backends }),
            )
        }
        Err(error) => {
            tracing::warn!(%error, "reload refused; the running configuration stays");
            json_response(
                StatusCode::BAD_REQUEST,
                json!({ "reloaded": false, "error": error.to_string(), "field": "config" }),
            )
        }
    }
}
