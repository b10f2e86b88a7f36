//! The `/metrics` document: every loaded model's series, the agent's gauges and the
//! experiments' series, written in the text format of [`crate::prometheus`].

use crate::experiment::Experiments;
use crate::repository::Repository;
use crate::service::InferenceService;

/// `prediction_latency_seconds`, `prediction_total` and `perch_model_ready` per loaded
/// model, `perch_uptime_seconds`, `perch_models_memory_bytes`,
/// `process_resident_memory_bytes`, `perch_report_backlog`,
/// `perch_spool_dropped_reports_total`, `perch_memory_budget_bytes` (with a budget),
/// then the experiments' `perch_experiment_*` families.
pub fn render(models: &Repository, experiments: &Experiments) -> String {
    let loaded = models.loaded();
    let primary = models.primary();
    let (backlog, dropped) = primary.report_queue();
    let rss_bytes = crate::process::rss_kib().map_or(f64::NAN, |kib| f64::from(kib) * 1024.0);
    let mut extra = vec![
        (
            "perch_uptime_seconds",
            "Seconds since the agent started.",
            primary.uptime().as_secs_f64(),
        ),
        (
            "perch_models_memory_bytes",
            "Estimated memory of the loaded models (file sizes plus one inference's inputs and outputs).",
            models.in_use() as f64,
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss_bytes,
        ),
        (
            "perch_report_backlog",
            "Metrics reports waiting for the MQTT broker (spooled and in memory).",
            backlog as f64,
        ),
        (
            "perch_spool_dropped_reports_total",
            "Metrics reports dropped from the full spool since its folder was created.",
            dropped as f64,
        ),
    ];
    if let Some(budget) = models.budget() {
        extra.push((
            "perch_memory_budget_bytes",
            "The memory budget of the loaded models.",
            budget as f64,
        ));
    }
    let ids: Vec<_> = loaded.iter().map(InferenceService::model_id).collect();
    let totals: Vec<_> = loaded.iter().map(InferenceService::totals).collect();
    let series: Vec<_> = loaded
        .iter()
        .zip(&ids)
        .zip(&totals)
        .map(|((service, id), totals)| crate::prometheus::ModelSeries {
            name: id.name.as_str(),
            latency: &totals.latency,
            ok: totals.ok,
            errors: totals.errors,
            ready: Some(service.ready()),
        })
        .collect();
    let mut text = crate::prometheus::render_models(&series, &extra);
    text.push_str(&experiments.prometheus());
    text
}
