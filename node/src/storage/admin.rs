//! A storage node's HTTP admin surface: `/health`, `/metrics`, `/v1/status`.
//!
//! `/health` answers 200 while the node's lease holds (it heartbeats the metadata leader and
//! may serve the shards it leads).

use super::NodeCtx;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
        .with_state(ctx);
    axum::serve(listener, app).await
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
