//! The Open Inference Protocol v2 over HTTP/1.1 (as KServe and Triton serve it), plus
//! `GET /metrics` for Prometheus, for every model of a [`Repository`] (a single
//! [`InferenceService`] is a repository of one).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v2/health/live` | 200 `{"live":true}` while the server runs |
//! | GET | `/v2/health/ready` | 200 `{"ready":true}`, or 503 `{"ready":false}` while the model is not ready |
//! | GET | `/v2` | server metadata: `{"name":"perchd","version":..,"extensions":[]}` |
//! | GET | `/v2/models/{name}` (also `/versions/{v}`) | model metadata: name, versions, platform `perch-tract`, inputs and outputs (name, datatype, shape with -1 for symbolic dimensions) |
//! | GET | `/v2/models/{name}/ready` (also `/versions/{v}/ready`) | as `/v2/health/ready`, for that model |
//! | POST | `/v2/models/{name}/infer` (also `/versions/{v}/infer`) | an inference ([`crate::service::oip`] JSON, with the binary tensor data extension of [`crate::service::oip_binary`] when the request has an `Inference-Header-Content-Length`; [`crate::service::binary`] postcard when the `Content-Type` is [`POSTCARD_CONTENT_TYPE`]) |
//! | GET | `/v2/models/{name}/config` (also `/versions/{v}/config`) | Triton's model configuration ([`crate::service::model_config`]) |
//! | GET | `/v2/models/stats`, `/v2/models/{name}/stats` (also `/versions/{v}/stats`) | Triton's statistics ([`crate::service::stats`]) |
//! | POST | `/v2/repository/index` | `[{"name", "version", "state", "reason"}]` of every model, loaded (`READY`) or not (`UNAVAILABLE`, with the reason) ([`crate::service::describe`]) |
//! | POST | `/v2/repository/models/{name}/load` | loads a configured model, or the signed bundle of `{"parameters": {"path": "..."}}`, within the memory budget ([`Repository::load`]); 200 `{}`, 404 unknown, 400 with the reason |
//! | POST | `/v2/repository/models/{name}/unload` | takes the model out (new requests: 404 "not ready"), answers 200 `{}` once its requests in flight have finished; 400 for the primary model |
//! | GET | `/v1/models`, `/v1/models/{name}` | KServe V1 model list and status |
//! | POST | `/v1/models/{name}:predict` | KServe V1 `instances` → `predictions` ([`crate::service::kserve_v1`]); for a model with a feature schema, instances that are objects of named features are answered with labels |
//! | POST | `/predict` (`?model=<name>`) | `{"features": {"name": value, ...}}` → `{"prediction", "probability", "model_version", "latency_ms"}` with the feature schema ([`crate::service::features`]) of the primary model, or of the one named |
//! | GET | `/v2/experiments`, `/v2/experiments/{name}` | the experiments' settings and figures ([`crate::experiment`]); inference routes take an experiment's name as a model's, answering with `X-Perch-Variant` |
//! | GET | `/health` | `{"status", "models": [{"name", "version", "ready"}]}` of every loaded model; `ok`, `degraded` (another model not ready) or `not ready` (503, the primary model) |
//! | GET | `/metrics` | Prometheus text format 0.0.4 ([`crate::prometheus`]): `prediction_latency_seconds` (histogram of engine time), `prediction_total{status="ok"\|"error"}`, each with a series per model (`model_name`), gauges `perch_model_ready{model_name}`, `perch_uptime_seconds`, `perch_models_memory_bytes`, `perch_memory_budget_bytes` (with a budget), `process_resident_memory_bytes`, `perch_report_backlog`, and the counter `perch_spool_dropped_reports_total`, each with `# HELP` and `# TYPE` |
//!
//! A binary infer response (some output asked for with `binary_data`, or
//! `binary_data_output`) has `Content-Type: application/octet-stream` and its JSON
//! header's length in `Inference-Header-Content-Length`.
//!
//! Errors are `{"error": "<reason>"}` (JSON) with status 400 (malformed or does not fit
//! the model), 404 (unknown model, version or path), 413 (body over
//! [`ServiceLimits::max_payload_bytes`](crate::service::ServiceLimits), or too many
//! elements), 500 (the engine failed) or 503 (not ready). Every failed inference
//! request, whatever the reason, counts in `prediction_total{status="error"}`. An
//! oversize body is read on (and thrown away) for up to 16 MiB past the limit before
//! the 413 goes out, so that clients which send the whole body before reading the
//! answer see the reason rather than a broken pipe; a body declared larger than that
//! is refused at once.
//!
//! Inference runs on tokio's blocking pool, so a slow model never stalls the event
//! loop; health and metrics answer while inferences run. At most one inference per
//! core runs at a time; further requests wait their turn without holding a thread. An
//! inference past [`ServiceLimits::deadline`](crate::service::ServiceLimits) is answered
//! 504 and gives its turn up (the model counts as hung until it returns).
//!
//! Connections are bounded ([`HttpLimits`]): at most `max_connections` at once (more
//! are closed as soon as they are accepted), request headers must arrive within
//! `header_timeout` and a body within `body_timeout` (408), so clients that open
//! connections and say nothing, or send a byte a minute, cannot hold the agent's file
//! descriptors (which the spool and over-the-air updates need too).
//!
//! ```no_run
//! # async fn example(service: perch_firmware::service::InferenceService) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! // Runs until the shutdown future completes: here, never.
//! perch_firmware::http::serve(listener, service, std::future::pending()).await
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, Path, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::sync::{watch, Semaphore};

use crate::body::read_body;
use crate::experiment::{self, shadow, Experiments};
use crate::repository::{Repository, RepositoryError};
use crate::service::oip_serve::OipReply;
use crate::service::{
    binary, describe, oip, oip_binary, Codec, InferenceService, Reply, ServiceError,
};

/// The `Content-Type` of a postcard request body (see [`crate::service::binary`]); its
/// reply has the same type. Any other request type is read as JSON.
pub const POSTCARD_CONTENT_TYPE: &str = "application/x-perch-postcard";

/// The `Content-Type` of `/metrics`.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bounds on the connections the server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive, idle keep-alive time included.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive (408 past it).
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    /// 64 connections, 10 s for headers, 30 s for a body.
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves the Open Inference Protocol v2 and `/metrics` for `service` on `listener`
/// with the default [`HttpLimits`] until `shutdown` completes, then lets requests in
/// flight finish and returns.
///
/// Errors accepting one connection (too many open files, say) are retried after a
/// pause; this returns an error only if the listener itself fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    models: impl Into<Repository>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, models, HttpLimits::default(), shutdown).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    models: impl Into<Repository>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let experiments = Experiments::default();
    serve_experiments(listener, models, experiments, limits, shutdown).await
}

/// [`serve_with`] with A/B experiments over the models ([`crate::experiment`]):
/// inference requests addressed to an experiment's name go to one of its variants,
/// and `GET /v2/experiments/{name}` reports on it.
pub async fn serve_experiments(
    listener: tokio::net::TcpListener,
    models: impl Into<Repository>,
    experiments: Experiments,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router_with(models.into(), experiments, limits.body_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closed) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("HTTP: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            Some(_) = connections.join_next() => continue,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!(
                "HTTP: {} connections open, closing a new one",
                limits.max_connections
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut closed = closed.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { closed.wait_for(|c| *c).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The routes of [`serve`], for embedding in another server (bodies must arrive within
/// [`HttpLimits::default`]'s body timeout).
pub fn router(models: impl Into<Repository>) -> Router {
    let experiments = Experiments::default();
    router_with(
        models.into(),
        experiments,
        HttpLimits::default().body_timeout,
    )
}

fn router_with(models: Repository, experiments: Experiments, body_timeout: Duration) -> Router {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shared = Shared {
        models,
        gate: Gate(Arc::new(Semaphore::new(cores))),
        body_timeout,
        experiments,
    };
    let mut router = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/stats", get(all_stats));
    // A model's routes, each also under `/versions/{version}` (one handler: `ModelPath`).
    let per_model: [(&str, MethodRouter<Shared>); 5] = [
        ("", get(model_metadata)),
        ("/ready", get(model_ready)),
        ("/infer", post(infer)),
        ("/config", get(config)),
        ("/stats", get(model_stats)),
    ];
    for (tail, handler) in per_model {
        router = router
            .route(&format!("/v2/models/{{name}}{tail}"), handler.clone())
            .route(
                &format!("/v2/models/{{name}}/versions/{{version}}{tail}"),
                handler,
            );
    }
    router
        .route("/v2/repository/index", post(repository_index))
        .route(
            "/v2/repository/models/{name}/{action}",
            post(load_or_unload),
        )
        .route("/v1/models", get(v1_models))
        .route("/v1/models/{target}", get(v1_model).post(v1_predict))
        .route("/predict", post(predict))
        .route("/v2/experiments", get(experiment_status))
        .route("/v2/experiments/{name}", get(experiment_status))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .with_state(shared)
}

/// The router's state: the models, the gate that bounds concurrent inferences, and
/// how long a request body may take to arrive.
#[derive(Clone)]
struct Shared {
    models: Repository,
    gate: Gate,
    body_timeout: Duration,
    experiments: Experiments,
}

/// One permit per inference allowed to run at once (one per core): more would only
/// add sessions, and their memory, without adding throughput. Requests beyond it wait
/// on the event loop, holding no thread.
#[derive(Clone)]
struct Gate(Arc<Semaphore>);

impl FromRef<Shared> for Repository {
    fn from_ref(shared: &Shared) -> Repository {
        shared.models.clone()
    }
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.into(),
    )
        .into_response()
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn error(e: &ServiceError) -> Response {
    json(status(e.http_status()), oip::encode_error(e))
}

/// A model's path parameters: `{name}`, and `{version}` on the `/versions/{version}`
/// routes, so that one handler serves both forms.
#[derive(Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

/// The model a path names, at the version it names (if it names one).
fn find(
    models: &Repository,
    name: &str,
    version: Option<&str>,
) -> Result<InferenceService, ServiceError> {
    let service = models.get(name)?;
    let id = service.model_id();
    match version {
        Some(v) if v != id.version.to_string() => Err(ServiceError::UnknownVersion {
            name: name.to_string(),
            version: v.to_string(),
            served: id.version.to_string(),
        }),
        _ => Ok(service),
    }
}

async fn live() -> Response {
    json(StatusCode::OK, br#"{"live":true}"#.to_vec())
}

fn readiness(service: &InferenceService) -> Response {
    readiness_of(service.ready() && service.hung() == 0)
}

/// The server is ready while the primary model is and no model has an inference hung
/// past its deadline.
async fn server_ready(State(models): State<Repository>) -> Response {
    let primary = models.primary();
    if models.loaded().iter().any(|s| s.hung() > 0) {
        return readiness_of(false);
    }
    readiness(&primary)
}

fn readiness_of(ready: bool) -> Response {
    if ready {
        json(StatusCode::OK, br#"{"ready":true}"#.to_vec())
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"ready":false}"#.to_vec(),
        )
    }
}

async fn server_metadata() -> Response {
    json(StatusCode::OK, oip::encode_server_metadata())
}

/// The model a path names; an experiment's name stands for its default variant's model.
fn find_routed(shared: &Shared, path: &ModelPath) -> Result<InferenceService, ServiceError> {
    match shared.experiments.get(&path.name) {
        Some(e) if path.version.is_none() => shared
            .models
            .get(&e.variant(e.spec().default_index()).model),
        _ => find(&shared.models, &path.name, path.version.as_deref()),
    }
}

async fn model_metadata(State(shared): State<Shared>, Path(path): Path<ModelPath>) -> Response {
    match find_routed(&shared, &path) {
        Ok(service) => {
            let served = service.served();
            json(
                StatusCode::OK,
                oip::encode_model_metadata(served.id(), served.metadata()),
            )
        }
        Err(e) => error(&e),
    }
}

async fn model_ready(State(shared): State<Shared>, Path(path): Path<ModelPath>) -> Response {
    match find_routed(&shared, &path) {
        Ok(service) => readiness(&service),
        Err(e) => error(&e),
    }
}

async fn infer(state: State<Shared>, Path(path): Path<ModelPath>, request: Request) -> Response {
    let (name, version) = (Some(path.name.as_str()), path.version.as_deref());
    infer_for(state, name, version, Protocol::V2, request).await
}

/// `POST /v1/models/{name}:predict` (the path's last segment is `{name}:predict`).
async fn v1_predict(state: State<Shared>, Path(path): Path<String>, request: Request) -> Response {
    let Some(name) = path.strip_suffix(":predict") else {
        return no_route().await;
    };
    infer_for(state, Some(name), None, Protocol::V1, request).await
}

/// `POST /predict`: named features for the primary model, or for the one named by
/// `?model=<name>`.
async fn predict(state: State<Shared>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or("").to_string();
    let name = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("model="));
    infer_for(state, name, None, Protocol::Predict, request).await
}

/// Which protocol an inference request speaks.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// Open Inference Protocol v2: JSON with the binary tensor data extension, or
    /// postcard.
    V2,
    /// KServe V1 `instances`.
    V1,
    /// `/predict`: named features.
    Predict,
}

async fn infer_for(
    State(shared): State<Shared>,
    name: Option<&str>,
    version: Option<&str>,
    protocol: Protocol,
    request: Request,
) -> Response {
    let Shared {
        models,
        gate,
        body_timeout,
        experiments,
    } = shared;
    // An experiment's name picks a variant once the body is read (the entity id may be
    // in it); until then the default variant's limits hold.
    let chosen = match name {
        Some(name) => experiments.get(name).filter(|_| version.is_none()),
        None if matches!(protocol, Protocol::Predict) => experiments.primary(),
        None => None,
    };
    let default = chosen
        .as_ref()
        .map(|e| e.variant(e.spec().default_index()).model.clone());
    let name = default.as_deref().or(name);
    // A request for a model the repository does not serve counts as an error of the
    // primary model, the one a device's dashboards follow.
    let (mut service, missing) = match name.map(|name| find(&models, name, version)) {
        Some(Ok(service)) => (service, None),
        Some(Err(e)) => (models.primary(), Some(e)),
        None => (models.primary(), None),
    };
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let codec = match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(t) if t.starts_with(POSTCARD_CONTENT_TYPE) && matches!(protocol, Protocol::V2) => {
            Codec::Binary
        }
        _ => Codec::Json,
    };
    let refuse = |service: &InferenceService, e: ServiceError| {
        service.count_error();
        match codec {
            Codec::Json => error(&e),
            Codec::Binary => postcard(status(e.http_status()), binary::encode_error(&e)),
        }
    };
    if let Some(e) = missing {
        return refuse(&service, e);
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let limit = service.limits().max_payload_bytes;
    let body = match tokio::time::timeout(body_timeout, read_body(body, limit, declared)).await {
        Ok(Ok(body)) => bytes::Bytes::from(body),
        Ok(Err(e)) => return refuse(&service, e),
        Err(_) => {
            let limit = body_timeout;
            return refuse(&service, ServiceError::BodyTimeout { limit });
        }
    };
    let header_length = headers
        .get(oip_binary::HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let routed = match &chosen {
        Some(e) => {
            let index = experiment::reply::choose(e, headers, &body, header_length.as_deref());
            match models.get(&e.variant(index).model) {
                Ok(variant) => service = variant,
                Err(err) => {
                    if let Some(stats) = e.variant_stats(index) {
                        stats.record(false, Duration::ZERO);
                    }
                    return refuse(&service, err);
                }
            }
            Some((e, index))
        }
        None => None,
    };
    let copy = body.clone();
    // The semaphore is never closed, so this waits for a permit and never fails. The
    // permit is given back when the answer comes, or at the deadline.
    let waiting = std::time::Instant::now();
    let permit = gate.0.acquire_owned().await.ok();
    service.record_queue(waiting.elapsed());
    let running = std::time::Instant::now();
    // Every path runs on the blocking pool within the service's deadline.
    let reply = match (protocol, codec) {
        (Protocol::V1 | Protocol::Predict, _) => {
            let handle = match protocol {
                Protocol::Predict => InferenceService::handle_predict,
                _ => InferenceService::handle_v1,
            };
            let reply = service
                .reply_within(
                    move |s| handle(s, &body),
                    |e| Reply {
                        status: e.http_status(),
                        body: oip::encode_error(&e),
                    },
                )
                .await;
            OipReply {
                status: reply.status,
                body: reply.body,
                header_length: None,
            }
        }
        (Protocol::V2, Codec::Json) => {
            service
                .reply_within(
                    move |s| s.handle_oip(&body, header_length.as_deref()),
                    |e| OipReply {
                        status: e.http_status(),
                        body: oip::encode_error(&e),
                        header_length: None,
                    },
                )
                .await
        }
        (Protocol::V2, Codec::Binary) => match service.answer_within(body, codec, usize::MAX).await
        {
            Ok(body) => OipReply {
                status: 200,
                body,
                header_length: None,
            },
            Err(e) => OipReply {
                status: e.http_status(),
                body: binary::encode_error(&e),
                header_length: None,
            },
        },
    };
    drop(permit);
    let code = status(reply.status);
    let (body, header_length) = match routed {
        Some((e, index)) => {
            let header_length = headers.get(oip_binary::HEADER_LENGTH);
            let header_length = header_length.and_then(|v| Some(v.to_str().ok()?.to_string()));
            let protocol = match (protocol, codec) {
                (Protocol::V1, _) => shadow::Protocol::V1,
                (Protocol::Predict, _) => shadow::Protocol::Predict,
                (Protocol::V2, Codec::Binary) => shadow::Protocol::Postcard,
                (Protocol::V2, Codec::Json) => shadow::Protocol::Oip { header_length },
            };
            let routed = experiment::reply::finish(
                &experiments,
                e,
                index,
                running.elapsed(),
                protocol,
                copy,
                (reply.status, reply.body, reply.header_length),
                |model| models.get(model).ok(),
            );
            (routed.body, routed.header_length)
        }
        None => (Body::from(reply.body), reply.header_length),
    };
    let mut response = match (codec, header_length) {
        (Codec::Json, None) => json(code, body),
        (Codec::Json, Some(length)) => binary_tensors(code, body, length),
        (Codec::Binary, _) => postcard(code, body),
    };
    if let Some((e, index)) = routed {
        experiment::reply::label(response.headers_mut(), e, index);
    }
    response
}

/// A response in the binary tensor data extension: JSON header, then the tensors.
fn binary_tensors(status: StatusCode, body: impl Into<Body>, header_length: usize) -> Response {
    (
        status,
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                axum::http::HeaderName::from_static("inference-header-content-length"),
                HeaderValue::from(header_length),
            ),
        ],
        body.into(),
    )
        .into_response()
}

fn postcard(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(POSTCARD_CONTENT_TYPE),
        )],
        body.into(),
    )
        .into_response()
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let text = crate::exposition::render(&shared.models, &shared.experiments);
    (
        StatusCode::OK,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

/// Answers `document` of the model a path names.
fn described(
    models: &Repository,
    path: &ModelPath,
    document: fn(&InferenceService) -> Reply,
) -> Response {
    match find(models, &path.name, path.version.as_deref()) {
        Ok(service) => sent(document(&service)),
        Err(e) => error(&e),
    }
}

fn sent(reply: Reply) -> Response {
    json(status(reply.status), reply.body)
}

async fn config(State(models): State<Repository>, Path(path): Path<ModelPath>) -> Response {
    described(&models, &path, describe::config)
}

async fn all_stats(State(models): State<Repository>) -> Response {
    sent(describe::statistics(&models.loaded()))
}

async fn model_stats(State(models): State<Repository>, Path(path): Path<ModelPath>) -> Response {
    described(&models, &path, |s| {
        describe::statistics(std::slice::from_ref(s))
    })
}

/// The body (`{"ready": bool}` or empty) is not needed to answer and is not read.
async fn repository_index(State(models): State<Repository>) -> Response {
    sent(describe::repository_index(&models.index()))
}

/// `POST /v2/repository/models/{name}/load` and `.../unload` (one handler: each route
/// adds to the device binary).
async fn load_or_unload(
    State(shared): State<Shared>,
    Path((name, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    match action.as_str() {
        "load" => load(shared, name, body).await,
        "unload" => unload(shared.models, name).await,
        _ => no_route().await,
    }
}

/// Loads a configured model, or the signed bundle at
/// `{"parameters": {"path": "..."}}`, on the blocking pool.
async fn load(shared: Shared, name: String, body: Body) -> Response {
    let limit = shared.models.primary().limits().max_payload_bytes;
    let read = tokio::time::timeout(shared.body_timeout, read_body(body, limit, None)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return error(&e),
        Err(_) => {
            let limit = shared.body_timeout;
            return error(&ServiceError::BodyTimeout { limit });
        }
    };
    let path = match load_path(&bytes) {
        Ok(path) => path,
        Err(e) => return repository_error(&e),
    };
    let models = shared.models;
    match tokio::task::spawn_blocking(move || models.load(&name, path)).await {
        Ok(Ok(_)) => json(StatusCode::OK, b"{}".to_vec()),
        Ok(Err(e)) => repository_error(&e),
        Err(e) => {
            let body = serde_json::json!({ "error": format!("the load failed: {e}") });
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                body.to_string().into_bytes(),
            )
        }
    }
}

/// The `path` of a load request's `{"parameters": {"path": "..."}}`; an empty body
/// or one without it loads the configured model.
fn load_path(body: &[u8]) -> Result<Option<std::path::PathBuf>, RepositoryError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| RepositoryError::BadRequest(format!("not JSON ({e})")))?;
    match value.pointer("/parameters/path") {
        None => Ok(None),
        Some(serde_json::Value::String(path)) => Ok(Some(path.into())),
        Some(_) => Err(RepositoryError::BadRequest(
            "parameters.path must be a string".into(),
        )),
    }
}

/// Unloads a model, answering once the requests running on it have finished (or
/// their deadline has passed).
async fn unload(models: Repository, name: String) -> Response {
    let service = match models.unload(&name) {
        Ok(Some(service)) => service,
        Ok(None) => return json(StatusCode::OK, b"{}".to_vec()),
        Err(e) => return repository_error(&e),
    };
    let until = tokio::time::Instant::now() + service.limits().deadline;
    while service.handles() > 1 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    json(StatusCode::OK, b"{}".to_vec())
}

fn repository_error(e: &RepositoryError) -> Response {
    let reason = perch_runtime::error::Chain(e).to_string();
    let body = serde_json::to_vec(&serde_json::json!({ "error": reason })).unwrap_or_default();
    json(status(e.http_status()), body)
}

async fn v1_models(State(models): State<Repository>) -> Response {
    sent(describe::v1_models(&models.loaded()))
}

async fn v1_model(State(models): State<Repository>, Path(name): Path<String>) -> Response {
    match find(&models, &name, None) {
        Ok(service) => sent(describe::v1_model(&service)),
        Err(e) => error(&e),
    }
}

async fn health(State(models): State<Repository>) -> Response {
    sent(describe::health(&models.loaded()))
}

/// `GET /v2/experiments/{name}`: the experiment's settings and figures
/// ([`experiment::Experiment::status`]); `GET /v2/experiments`: all of them.
async fn experiment_status(State(shared): State<Shared>, name: Option<Path<String>>) -> Response {
    match shared
        .experiments
        .status(name.as_ref().map(|p| p.0.as_str()))
    {
        Ok(document) => json(StatusCode::OK, document),
        Err(document) => json(StatusCode::NOT_FOUND, document),
    }
}

async fn no_route() -> Response {
    json(
        StatusCode::NOT_FOUND,
        br#"{"error":"no such endpoint; see /v2, /v2/models/{name}, /v2/models/{name}/infer, /v2/models/{name}/config, /v2/models/{name}/stats, /v2/repository/index, /v2/repository/models/{name}/load|unload, /v1/models/{name}:predict, /predict, /v2/experiments/{name}, /health, /metrics"}"#
            .to_vec(),
    )
}
