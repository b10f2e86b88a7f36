//! The Triton extensions of the Open Inference Protocol that `tritonclient` calls:
//! model configuration, the repository index and statistics.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v2/models/{name}/config` (also `/versions/{v}/config`) | [`crate::service::model_config`] |
//! | POST | `/v2/repository/index` | `[{"name", "version", "state": "READY"\|"UNAVAILABLE", "reason"}]` |
//! | GET | `/v2/models/stats`, `/v2/models/{name}/stats` (also `/versions/{v}/stats`) | [`crate::service::stats`] |

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use super::{error, find, json, Shared};
use crate::service::{model_config, stats, InferenceService};

/// The extension's routes, merged into [`super::router`].
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v2/models/{name}/config", get(config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(versioned_config),
        )
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(versioned_stats),
        )
        .route("/v2/repository/index", post(repository_index))
}

fn config_for(service: &InferenceService, name: &str, version: Option<&str>) -> Response {
    if let Err(e) = find(service, name, version) {
        return error(&e);
    }
    let served = service.served();
    json(
        StatusCode::OK,
        model_config::encode_model_config(served.id(), served.metadata(), service.limits()),
    )
}

async fn config(State(service): State<InferenceService>, Path(name): Path<String>) -> Response {
    config_for(&service, &name, None)
}

async fn versioned_config(
    State(service): State<InferenceService>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    config_for(&service, &name, Some(&version))
}

fn stats_for(service: &InferenceService, name: &str, version: Option<&str>) -> Response {
    if let Err(e) = find(service, name, version) {
        return error(&e);
    }
    all_stats_of(service)
}

fn all_stats_of(service: &InferenceService) -> Response {
    let id = service.model_id();
    json(
        StatusCode::OK,
        stats::encode_statistics(&[(&id, service.statistics())]),
    )
}

async fn all_stats(State(service): State<InferenceService>) -> Response {
    all_stats_of(&service)
}

async fn model_stats(
    State(service): State<InferenceService>,
    Path(name): Path<String>,
) -> Response {
    stats_for(&service, &name, None)
}

async fn versioned_stats(
    State(service): State<InferenceService>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    stats_for(&service, &name, Some(&version))
}

/// The repository index: the one served model. The request body (`{"ready": bool}`
/// or empty) is not needed to answer and is ignored.
async fn repository_index(State(service): State<InferenceService>) -> Response {
    let id = service.model_id();
    let mut entry = json!({
        "name": id.name.as_str(),
        "version": id.version.to_string(),
        "state": "READY",
    });
    if !service.ready() {
        entry["state"] = json!("UNAVAILABLE");
        entry["reason"] = json!("the model is not ready");
    }
    json(
        StatusCode::OK,
        serde_json::to_vec(&json!([entry])).unwrap_or_default(),
    )
}
