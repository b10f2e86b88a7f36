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
/// [`stats::encode_statistics`] of the served model.
pub fn statistics(service: &InferenceService) -> Reply {
    let id = service.model_id();
    Reply {
        status: 200,
        body: stats::encode_statistics(&[(&id, service.statistics())]),
    }
}

/// `POST /v2/repository/index`: `[{"name", "version", "state"}]`, `state` `READY`, or
/// `UNAVAILABLE` with a `reason` while the model is not ready.
pub fn repository_index(service: &InferenceService) -> Reply {
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
    reply(200, &json!([entry]))
}

/// `GET /v1/models`: `{"models": ["<name>"]}`.
pub fn v1_models(service: &InferenceService) -> Reply {
    reply(200, &json!({"models": [service.model_id().name.as_str()]}))
}

/// `GET /v1/models/{name}`: `{"name", "ready"}`, 503 while not ready.
pub fn v1_model(service: &InferenceService) -> Reply {
    let body = json!({"name": service.model_id().name.as_str(), "ready": service.ready()});
    reply(ready_status(service), &body)
}

/// `GET /health`: `{"status": "ok"|"not ready", "models": [{"name", "version",
/// "ready"}]}`, 503 while not ready.
pub fn health(service: &InferenceService) -> Reply {
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
    reply(ready_status(service), &body)
}
