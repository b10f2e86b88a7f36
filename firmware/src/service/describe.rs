//! The documents HTTP clients read about the served model, beside inference: Triton's
//! model configuration, repository index and statistics, KServe V1's model status,
//! and `/health`. Each is a [`Reply`] (status and JSON body) for the front end to send.

use serde_json::{json, Value};

use super::{model_config, stats, InferenceService, Reply};

fn reply(status: u16, value: &Value) -> Reply {
    Reply {
        status,
        body: serde_json::to_vec(value).unwrap_or_default(),
    }
}

/// 200 while the model is ready, 503 while not.
fn ready_status(service: &InferenceService) -> u16 {
    if service.ready() {
        200
    } else {
        503
    }
}

/// `GET /v2/models/{name}/config`: [`model_config::encode_model_config`].
pub fn config(service: &InferenceService) -> Reply {
    let served = service.served();
    Reply {
        status: 200,
        body: model_config::encode_model_config(served.id(), served.metadata(), service.limits()),
    }
}

/// `GET /v2/models/{name}/stats` and `/v2/models/stats`:
/// [`stats::encode_statistics`] of each of `services`.
pub fn statistics(services: &[InferenceService]) -> Reply {
    let ids: Vec<_> = services.iter().map(InferenceService::model_id).collect();
    let stats: Vec<_> = services
        .iter()
        .zip(&ids)
        .map(|(s, id)| (id, s.statistics()))
        .collect();
    Reply {
        status: 200,
        body: stats::encode_statistics(&stats),
    }
}

/// One model of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Its name.
    pub name: String,
    /// Its version, when known (a model not loaded may not say).
    pub version: Option<String>,
    /// Why it is not served (`None`: it is, and is ready).
    pub reason: Option<String>,
    /// A loaded model's estimated memory in bytes (what the memory budget counts).
    pub estimated_bytes: Option<u64>,
    /// How much the agent's resident memory grew while the model loaded, self-tested
    /// and warmed up, in bytes, when the repository loaded it (not for the primary
    /// model, nor a version an update swapped in).
    pub rss_delta_bytes: Option<u64>,
}

/// `POST /v2/repository/index`: `[{"name", "version", "state"}]`, `state` `READY`, or
/// `UNAVAILABLE` with a `reason` for a model not loaded or not ready.
pub fn repository_index(entries: &[IndexEntry]) -> Reply {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut entry = json!({"name": e.name, "state": "READY"});
            if let Some(version) = &e.version {
                entry["version"] = json!(version);
            }
            if let Some(reason) = &e.reason {
                entry["state"] = json!("UNAVAILABLE");
                entry["reason"] = json!(reason);
            }
            if let Some(bytes) = e.estimated_bytes {
                entry["estimated_bytes"] = json!(bytes);
            }
            if let Some(bytes) = e.rss_delta_bytes {
                entry["rss_delta_bytes"] = json!(bytes);
            }
            entry
        })
        .collect();
    reply(200, &Value::Array(list))
}

/// `GET /v1/models`: `{"models": ["<name>", ...]}` of the loaded models.
pub fn v1_models(services: &[InferenceService]) -> Reply {
    let names: Vec<_> = services
        .iter()
        .map(|s| s.model_id().name.to_string())
        .collect();
    reply(200, &json!({ "models": names }))
}

/// `GET /v1/models/{name}`: `{"name", "ready"}`, 503 while not ready.
pub fn v1_model(service: &InferenceService) -> Reply {
    let body = json!({"name": service.model_id().name.as_str(), "ready": service.ready()});
    reply(ready_status(service), &body)
}

/// `GET /health`: `{"status", "models": [{"name", "version", "ready"}]}` of the loaded
/// models, the primary (`services[0]`) first. `status` is `ok` when every model is
/// ready, `degraded` (still 200) when the primary is and another is not, and
/// `not ready` (503) when the primary is not.
pub fn health(services: &[InferenceService]) -> Reply {
    let models: Vec<Value> = services
        .iter()
        .map(|s| {
            let id = s.model_id();
            json!({"name": id.name.as_str(), "version": id.version.to_string(), "ready": s.ready()})
        })
        .collect();
    let primary_ready = services.first().is_some_and(InferenceService::ready);
    let status = match (primary_ready, services.iter().all(InferenceService::ready)) {
        (true, true) => "ok",
        (true, false) => "degraded",
        (false, _) => "not ready",
    };
    let code = if primary_ready { 200 } else { 503 };
    reply(code, &json!({"status": status, "models": models}))
}
