//! KServe's V1 protocol and the plain health check, beside the V2 routes.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v1/models` | `{"models": ["<name>"]}` |
//! | GET | `/v1/models/{name}` | `{"name", "ready"}` (503 while not ready) |
//! | POST | `/v1/models/{name}:predict` | `{"instances": [...]}` → `{"predictions": [...]}` ([`crate::service::kserve_v1`]) |
//! | GET | `/health` | `{"status": "ok"\|"not ready", "models": [{"name", "version", "ready"}]}` (503 while not ready) |

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use perch_runtime::engine::EngineError;
use serde_json::json;

use super::{error, find, json, read_body, status, Gate, Shared};
use crate::service::{InferenceService, ServiceError};

/// The routes, merged into [`super::router`].
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/models", get(list))
        .route("/v1/models/{target}", get(model).post(predict))
        .route("/health", get(health))
}

fn ready_status(service: &InferenceService) -> StatusCode {
    if service.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn to_vec(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

async fn list(State(service): State<InferenceService>) -> Response {
    let id = service.model_id();
    json(
        StatusCode::OK,
        to_vec(&json!({"models": [id.name.as_str()]})),
    )
}

async fn model(State(service): State<InferenceService>, Path(name): Path<String>) -> Response {
    if let Err(e) = find(&service, &name, None) {
        return error(&e);
    }
    json(
        ready_status(&service),
        to_vec(&json!({"name": name, "ready": service.ready()})),
    )
}

async fn predict(
    State(service): State<InferenceService>,
    State(gate): State<Gate>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(name) = target.strip_suffix(":predict") else {
        return json(
            StatusCode::NOT_FOUND,
            to_vec(&json!({"error": format!(
                "no such endpoint; V1 predictions are POST /v1/models/{{name}}:predict, not \
                 /v1/models/{target}"
            )})),
        );
    };
    let refuse = |e: ServiceError| {
        service.count_error();
        error(&e)
    };
    if let Err(e) = find(&service, name, None) {
        return refuse(e);
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let body = match read_body(body, service.limits().max_payload_bytes, declared).await {
        Ok(body) => body,
        Err(e) => return refuse(e),
    };
    let waiting = std::time::Instant::now();
    // The semaphore is never closed, so this waits for a permit and never fails.
    let permit = gate.0.acquire_owned().await.ok();
    service.record_queue(waiting.elapsed());
    let worker = service.clone();
    let task = tokio::task::spawn_blocking(move || {
        let reply = worker.handle_v1(&body);
        drop(permit);
        reply
    });
    match task.await {
        Ok(reply) => json(status(reply.status), reply.body),
        Err(e) => refuse(ServiceError::Engine(EngineError::Run {
            reason: format!("the inference task failed: {e}"),
        })),
    }
}

async fn health(State(service): State<InferenceService>) -> Response {
    let id = service.model_id();
    let ready = service.ready();
    let body = json!({
        "status": if ready { "ok" } else { "not ready" },
        "models": [{
            "name": id.name.as_str(),
            "version": id.version.to_string(),
            "ready": ready,
        }],
    });
    json(ready_status(&service), to_vec(&body))
}
