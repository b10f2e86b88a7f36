//! `perchd`: Perch's device agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use perch_firmware::{boot, BootConfig, BootReport};
use perch_runtime::wire::{Health, MetricsReport, Version};

/// Perch's device agent. Today: boot a model — load, self-test against its golden
/// outputs, warm up — and print the health and metrics messages the agent publishes.
#[derive(Parser)]
#[command(name = "perchd", version, about, long_about = None)]
struct Cli {
    /// The model to serve (ONNX or NNEF).
    #[arg(
        long,
        env = "PERCH_MODEL",
        default_value = "models/kws-dscnn/model.onnx"
    )]
    model: PathBuf,
    /// Golden folder for the self-test (default: `golden/` beside the model).
    #[arg(long)]
    golden: Option<PathBuf>,
    /// Golden output variant, e.g. `w8` (default: from `model.<variant>.onnx`).
    #[arg(long)]
    variant: Option<String>,
    /// Model name in reports (default: the model's folder name).
    #[arg(long)]
    name: Option<String>,
    /// Model version in reports, MAJOR.MINOR.PATCH.
    #[arg(long = "model-version", value_name = "X.Y.Z", default_value = "0.0.0", value_parser = parse_version)]
    model_version: Version,
    /// Warm-up inferences after the self-test.
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_version(text: &str) -> Result<Version, String> {
    let parts: Vec<u16> = text
        .split('.')
        .map(|p| p.parse::<u16>().map_err(|e| format!("{text:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [major, minor, patch] => Ok(Version::new(major, minor, patch)),
        _ => Err(format!("{text:?}: expected MAJOR.MINOR.PATCH")),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("perchd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let config = BootConfig {
        model: cli.model.clone(),
        golden: cli.golden,
        variant: cli.variant,
        name: cli.name,
        version: cli.model_version,
        warmup_runs: cli.warmup,
    };
    let report = boot(&config).with_context(|| format!("cannot boot {}", cli.model.display()))?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&report)?)?);
    } else {
        print_text(&report)?;
    }
    Ok(if report.ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn quantiles_ms(report: &BootReport) -> serde_json::Value {
    let q = |p| {
        report
            .warmup
            .latency
            .quantile(p)
            .map(|d| d.as_secs_f64() * 1e3)
    };
    serde_json::json!({ "p50": q(0.5), "p95": q(0.95), "p99": q(0.99) })
}

fn to_json(report: &BootReport) -> anyhow::Result<serde_json::Value> {
    let mut health = [0u8; Health::MAX_ENCODED_LEN];
    let mut metrics = [0u8; MetricsReport::MAX_ENCODED_LEN];
    Ok(serde_json::json!({
        "health": report.health,
        "health_postcard_hex": hex(report.health.encode(&mut health)?),
        "warmup": report.warmup,
        "warmup_latency_ms": quantiles_ms(report),
        "warmup_postcard_hex": hex(report.warmup.encode(&mut metrics)?),
        "load_ms": report.load_time.as_secs_f64() * 1e3,
        "self_test_failure": report.failure,
    }))
}

fn print_text(report: &BootReport) -> anyhow::Result<()> {
    let h = &report.health;
    let model = h.model.as_ref().map(|m| m.to_string()).unwrap_or_default();
    println!("model    {model}  state {:?}", h.state);
    println!("load     {:.1} ms", report.load_time.as_secs_f64() * 1e3);
    if let Some(t) = &report.self_test {
        for o in &t.outputs {
            println!(
                "golden   {} relative error {:.2e}",
                o.name, o.relative_error
            );
        }
    }
    if let Some(f) = &report.failure {
        println!("failure  {f}");
    }
    let q = quantiles_ms(report);
    println!(
        "warm-up  {} runs, p50 {} ms, p99 {} ms (bucket midpoints, ±12%)",
        report.warmup.latency.count(),
        q["p50"].as_f64().map_or("-".into(), |v| format!("{v:.3}")),
        q["p99"].as_f64().map_or("-".into(), |v| format!("{v:.3}")),
    );
    let mut buf = [0u8; MetricsReport::MAX_ENCODED_LEN];
    println!(
        "metrics  {} bytes postcard",
        report.warmup.encode(&mut buf)?.len()
    );
    println!("rss      {} KiB", h.rss_kib);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
