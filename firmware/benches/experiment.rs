//! What routing through an A/B experiment adds to a request, measured in the same run
//! as the plain path: the R2 keyword spotter (kws-dscnn) served over HTTP by its own
//! name, and through an experiment whose variants both name it (100 % and 0 %), so the
//! two paths differ only by the routing.
//!
//! ```sh
//! cargo bench -p perch-firmware --bench experiment           # release profile (LTO)
//! cargo bench -p perch-firmware --bench experiment -- 5000   # samples per stage and round
//! ```
//!
//! Stages (the first two rotated in rounds, as in `benches/http.rs`; the HTTP paths
//! alternate request by request):
//!
//! - **router**: `Experiment::route` of one entity id: the canary bucket (SHA-256 of the
//!   id and the experiment's name) and the share ranges;
//! - **in-process**: what the HTTP handler adds for a routed request, on a real reply:
//!   the entity id from the header, the route, the variant's counters, the reply's
//!   `parameters` tag and the two headers;
//! - **HTTP JSON, model name**: `POST /v2/models/kws-dscnn/infer`;
//! - **HTTP JSON, experiment name**: `POST /v2/models/kws-ab/infer` with an
//!   `X-Perch-Entity-Id` header: the experiment lookup, the entity id, the route, the
//!   variant's counters, the reply's `parameters` tag and headers.

#[allow(dead_code)] // the table of `common::report` is for engine-relative stages
mod common;
#[path = "../tests/common/http.rs"]
mod http_server;

use std::time::Duration;

use http_server::HttpServer;
use perch_firmware::experiment::shadow::Protocol;
use perch_firmware::experiment::{
    reply, Agreement, EntitySource, Experiment, ExperimentSpec, Experiments, VariantSpec,
};
use perch_firmware::http::HttpLimits;
use perch_firmware::repository::Repository;
use perch_firmware::service::{InferenceService, ServiceLimits};
use perch_runtime::canary::Percent;
use perch_runtime::engine::TensorData;
use perch_runtime::wire::{ModelId, Version};

fn main() {
    let samples = common::samples();
    let (model, golden) = common::kws();
    let TensorData::F32(mfcc) = golden.inputs[0].input().unwrap().data else {
        panic!("the golden input is not f32")
    };
    let json = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "mfcc", "shape": [1, 1, 49, 10], "datatype": "FP32", "data": mfcc}]
    }))
    .unwrap();
    let variant = |name: &str, percent| VariantSpec {
        name: name.into(),
        model: "kws-dscnn".into(),
        share: Percent::from_whole(percent).unwrap(),
    };
    let spec = ExperimentSpec {
        name: "kws-ab".into(),
        variants: vec![variant("a", 100), variant("b", 0)],
        default: "a".into(),
        shadows: Vec::new(),
        entity: EntitySource::default(),
        agreement: Agreement::Argmax,
        primary: false,
    };
    let router = Experiment::new(spec.clone()).unwrap();
    let id = ModelId::new("kws-dscnn", Version::new(1, 0, 0)).unwrap();
    let service = InferenceService::new(model, id, ServiceLimits::default());
    let repository = Repository::from(service.clone());
    let experiments = Experiments::new(vec![spec], |m| m == "kws-dscnn", 64).unwrap();
    let server = HttpServer::serve_experiments(1, repository, experiments, HttpLimits::default());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    let post = |path: &str, entity: Option<&str>| {
        let mut request = agent
            .post(format!("{}{path}", server.base))
            .header("Content-Type", "application/json");
        if let Some(entity) = entity {
            request = request.header("X-Perch-Entity-Id", entity);
        }
        let mut response = request.send(&json[..]).unwrap();
        drop(response.body_mut().read_to_vec().unwrap());
    };

    // A real reply of the model, for the in-process stage.
    let reply = service
        .handle_request(&json, perch_firmware::service::Codec::Json)
        .body;
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("x-perch-entity-id", "customer-42".parse().unwrap());
    let plain = Experiments::default();
    let routing = || {
        let index = reply::choose(&router, &headers, &json, None);
        let routed = reply::finish(
            &plain,
            &router,
            index,
            Duration::from_micros(300),
            Protocol::Oip {
                header_length: None,
            },
            bytes::Bytes::from_static(b""),
            (200, reply.clone(), None),
            |_| None,
        );
        let mut response = axum::http::Response::new(routed.body);
        reply::label(response.headers_mut(), &router, index);
        std::hint::black_box(response);
    };
    let mut n = 0u64;
    let mut stages: Vec<common::Stage<'_>> = vec![
        (
            "router: Experiment::route (SHA-256 bucket + ranges)",
            Box::new(|| {
                n += 1;
                let entity = format!("customer-{n}");
                std::hint::black_box(router.route(Some(entity.as_bytes())));
            }),
            vec![],
        ),
        (
            "in-process: entity id, route, variant counters, tag, headers (reply::choose + finish + label)",
            Box::new(routing),
            vec![],
        ),
    ];
    common::measure(&mut stages, samples);
    // The two HTTP paths alternate request by request, so that whatever else the
    // machine does hits both alike; the difference of each pair is kept too.
    let (mut by_model, mut by_experiment, mut differences) = (vec![], vec![], vec![]);
    for i in 0..(samples * common::ROUNDS + 500) {
        let t = std::time::Instant::now();
        post("/v2/models/kws-dscnn/infer", None);
        let model = t.elapsed();
        let t = std::time::Instant::now();
        post("/v2/models/kws-ab/infer", Some("customer-42"));
        let experiment = t.elapsed();
        if i >= 500 {
            by_model.push(model);
            by_experiment.push(experiment);
            differences.push(experiment.as_secs_f64() - model.as_secs_f64());
        }
    }
    let mut stages: Vec<(&str, Vec<Duration>)> = stages
        .into_iter()
        .map(|(name, _, times)| (name, times))
        .collect();
    stages.push(("HTTP JSON, model name (alternating)", by_model));
    stages.push((
        "HTTP JSON, experiment name, routed (alternating)",
        by_experiment,
    ));
    server.shutdown().unwrap();
    let quantile = |times: &mut Vec<Duration>, p: f64| {
        times.sort_unstable();
        let rank = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len());
        times[rank - 1]
    };
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    println!(
        "kws-dscnn (R2), {} rounds x {samples} samples per stage, nearest-rank quantiles\n",
        common::ROUNDS
    );
    println!("| stage | p50 | p90 | p99 |");
    println!("|---|---:|---:|---:|");
    for (name, times) in stages.iter_mut() {
        let (p50, p90, p99) = (
            quantile(times, 0.5),
            quantile(times, 0.9),
            quantile(times, 0.99),
        );
        println!("| {name} | {} | {} | {} |", us(p50), us(p90), us(p99));
    }
    let plain = quantile(&mut stages[2].1, 0.5);
    let routed = quantile(&mut stages[3].1, 0.5);
    differences.sort_by(f64::total_cmp);
    println!(
        "\nrouting: p50 {} (experiment name) - {} (model name) = {:+.1} µs; median of the \
         paired differences {:+.1} µs",
        us(routed),
        us(plain),
        (routed.as_secs_f64() - plain.as_secs_f64()) * 1e6,
        differences[differences.len() / 2] * 1e6,
    );
}
