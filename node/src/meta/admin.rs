//! The HTTP admin surface: `/health`, `/metrics`, `/v1/status`, `/v1/digest`, `/v1/control`.
//!
//! `/health` answers 200 only when the node takes part in Raft, knows a leader and has applied
//! everything it knows to be committed: a load balancer or `augur local up` can use it as
//! "ready". A member that lost its data and waits to be added again says so there.

use super::MetaNode;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use std::net::SocketAddr;

/// Serves the admin API until the node shuts down.
pub async fn serve(node: MetaNode, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut shutdown = node.shutdown_signal();
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/digest", get(digest))
        .route("/v1/control", get(control))
        .with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

async fn health(State(node): State<MetaNode>) -> Response {
    let s = node.status();
    let ready = s.waiting.is_none()
        && s.leader.is_some()
        && s.applied >= s.committed
        && !node.is_shutting_down();
    let body = serde_json::json!({
        "ready": ready,
        "role": s.role,
        "leader": s.leader.map(|l| l.id.0),
        "committed": s.committed,
        "applied": s.applied,
        "incarnation": format!("{:016x}", s.incarnation),
        "cluster": s.cluster.map(|c| c.to_string()),
        "waiting": s.waiting,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(node): State<MetaNode>) -> Response {
    let m = node.raft.metrics().borrow_watched().clone();
    let g = &node.metrics;
    g.term.set(m.current_term as i64);
    g.is_leader.set((m.state == ServerState::Leader) as i64);
    g.leader_id.set(m.current_leader.unwrap_or(0) as i64);
    g.commit_index
        .set(m.local_committed.map(|l| l.index).unwrap_or(0) as i64);
    g.applied_index
        .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
    g.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
    g.purged_index
        .set(m.purged.as_ref().map_or(0, |l| l.index) as i64);
    g.rocksdb_bytes.set(node.sm.db_size_bytes() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        g.encode(),
    )
        .into_response()
}

async fn status(State(node): State<MetaNode>) -> Response {
    Json(node.status()).into_response()
}

/// The control plane's view of the data plane (nodes, under-replicated and stuck shards,
/// moves in flight), as of its last repair pass; `"leading": false` on a member that does
/// not lead.
async fn control(State(node): State<MetaNode>) -> Response {
    Json(node.control.view()).into_response()
}

async fn digest(State(node): State<MetaNode>) -> Response {
    let sm = node.sm.clone();
    match tokio::task::spawn_blocking(move || sm.digest()).await {
        Ok(Ok(d)) => Json(serde_json::json!({
            "revision": d.revision,
            "records": d.records,
            "crc64": format!("{:016x}", d.crc64),
        }))
        .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
