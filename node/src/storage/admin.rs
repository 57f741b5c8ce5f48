//! A storage node's HTTP admin surface: `/health`, `/metrics`, `/v1/status`, `/v1/health`,
//! and `POST /v1/health/inject`.
//!
//! `/health` answers 200 while the node's lease holds (it heartbeats the metadata leader and
//! may serve the shards it leads). `/v1/health?samples=N&rounds=M` shows the health agent's
//! source, the models loaded, the latest risk (or why there is none), recent samples and the
//! risk timeline.
//!
//! The admin port is plain HTTP without authentication (it serves read-only views), so the
//! one write, fault injection into a simulated health source, is accepted only from a
//! loopback peer: an operator injects from the node's own host (as `augur local` and tests
//! do); anything else gets 403 and changes nothing.

use super::health::{InjectError, Injection};
use super::NodeCtx;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;

/// Serves the admin API until the listener fails.
pub async fn serve(ctx: Arc<NodeCtx>, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/health", get(health_view))
        .route("/v1/health/inject", post(inject))
        .with_state(ctx);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

async fn health(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let ok = ctx.lease_valid();
    let body = serde_json::json!({
        "ready": ok,
        "node": ctx.node.0,
        "incarnation": format!("{:016x}", ctx.incarnation),
        "lease_age_ms": ctx.lease.age().map(|a| a.as_millis() as u64),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let report = ctx.report().await;
    let m = &ctx.metrics;
    m.stored_bytes.set(report.used_bytes as i64);
    m.lease_valid.set(ctx.lease_valid() as i64);
    m.copy_rate_limit.set(ctx.throttle.rate() as i64);
    let debt = ctx.engine.compaction_debt();
    m.compaction_pending_bytes.set(debt.pending_bytes as i64);
    m.compactions_running.set(debt.running as i64);
    m.commit_lag.clear();
    m.replication_lag.clear();
    for r in &report.replicas {
        let label = super::metrics::ShardLabel {
            shard: r.shard.0,
            role: match r.role {
                augur_proto::data::ReplicaRole::Primary => "primary",
                augur_proto::data::ReplicaRole::Secondary => "secondary",
                augur_proto::data::ReplicaRole::Learner => "learner",
                augur_proto::data::ReplicaRole::Stray => "stray",
            },
        };
        m.commit_lag
            .get_or_create(&label)
            .set(r.committed.saturating_sub(r.applied) as i64);
        m.replication_lag
            .get_or_create(&label)
            .set(r.prepared.saturating_sub(r.committed) as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

async fn status(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let report = ctx.report().await;
    Json(serde_json::json!({
        "node": report.node.0,
        "incarnation": format!("{:016x}", report.incarnation),
        "node_epoch": report.node_epoch,
        "lease_valid": ctx.lease_valid(),
        "lease_age_ms": ctx.lease.age().map(|a| a.as_millis() as u64),
        "used_bytes": report.used_bytes,
        "capacity_bytes": report.capacity_bytes,
        "replicas": report.replicas,
    }))
    .into_response()
}

/// How much of the local store `/v1/health` returns.
#[derive(Debug, serde::Deserialize)]
struct HealthQuery {
    /// Recent samples (default 20).
    samples: Option<usize>,
    /// Scoring rounds (default 20).
    rounds: Option<usize>,
}

async fn health_view(State(ctx): State<Arc<NodeCtx>>, Query(q): Query<HealthQuery>) -> Response {
    let h = &ctx.health;
    let nh = h.node_health();
    Json(serde_json::json!({
        "node": ctx.node.0,
        "source": nh.source,
        "models": h.models(),
        "risk": nh.risk,
        "summary": nh.summary,
        "samples": h.recent(q.samples.unwrap_or(20)),
        "timeline": h.timeline(q.rounds.unwrap_or(20)),
    }))
    .into_response()
}

/// `POST /v1/health/inject`: `{"fault": "fail-slow", "ramp_ms": 60000}`.
#[derive(Debug, serde::Deserialize)]
struct InjectBody {
    fault: String,
    #[serde(default)]
    ramp_ms: Option<u64>,
}

fn refuse(code: StatusCode, kind: &str, message: String) -> Response {
    (
        code,
        Json(serde_json::json!({"error": kind, "message": message})),
    )
        .into_response()
}

async fn inject(
    State(ctx): State<Arc<NodeCtx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    if !peer.ip().is_loopback() {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("fault injection is accepted only from this host (request from {peer})"),
        );
    }
    let body: InjectBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let what: Injection = match body.fault.parse() {
        Ok(w) => w,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "unknown_fault", e.to_string()),
    };
    match ctx.health.inject(what, body.ramp_ms) {
        Ok(faults) => Json(serde_json::json!({
            "node": ctx.node.0,
            "injected": body.fault,
            "faults": faults,
        }))
        .into_response(),
        Err(e @ InjectError::NotSimulated(_)) => {
            refuse(StatusCode::CONFLICT, "not_simulated", e.to_string())
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, "unknown_fault", e.to_string()),
    }
}
