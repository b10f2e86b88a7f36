//! `perchd`: Perch's device agent.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use perch_firmware::config::{self, Config};
use perch_firmware::BootReport;
use perch_firmware::{agent, load};
use perch_runtime::wire::{Health, MetricsReport};

/// Perch's device agent: serves a model over MQTT and HTTP (Open Inference Protocol v2)
/// and publishes its latency metrics over MQTT.
///
/// With no configuration it serves models/kws-dscnn/model.onnx, starts an MQTT broker
/// inside itself on 127.0.0.1:1883 and the HTTP API on 127.0.0.1:8080. Settings come
/// from a TOML file (--config), environment variables and flags, in increasing order of
/// precedence; docs/protocol.md lists every topic and endpoint. Logs go to
/// stderr, filtered by RUST_LOG (default `info`).
#[derive(Parser)]
#[command(name = "perchd", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: config::Args,
    /// Check the model and exit instead of serving: load it (verifying a bundle's
    /// signature), self-test it against its golden outputs, warm it up, and print the
    /// health and metrics messages the agent would publish. Exit code 0 if it may
    /// serve, 1 if its self-test failed, 2 on an error.
    #[arg(long)]
    check: bool,
    /// With --check: print JSON (the messages, and their postcard bytes in hex).
    #[arg(long, requires = "check")]
    json: bool,
}

fn main() -> ExitCode {
    perch_firmware::use_one_malloc_arena();
    // rumqttd logs through `tracing`, which forwards every span to `log` (at levels up
    // to ERROR for routine packets): silenced unless RUST_LOG names it.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("rumqttd", log::LevelFilter::Off)
        .filter_module("tracing::span", log::LevelFilter::Off)
        // tract warns on every start on an FP16 core (Pi 5) that this build has no FP16
        // kernels, which Perch leaves out on purpose (runtime/Cargo.toml, `no_fp16`).
        .filter_module("tract_linalg::arm64", log::LevelFilter::Error)
        .parse_env(env_logger::Env::default())
        .init();
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
    let config = Config::load(&cli.args)?;
    if cli.check {
        return check(&config, cli.json);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("perchd")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(agent::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what systemd and `docker stop` send).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                log::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

fn check(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let loaded = load::load(&config.model)?;
    let report = &loaded.boot;
    let text = if json {
        serde_json::to_string_pretty(&to_json(report)?)?
    } else {
        format!("source   {}\n{}", loaded.source, text(report)?)
    };
    // A closed stdout (`perchd --check | head`) ends the output quietly.
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
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

fn text(report: &BootReport) -> anyhow::Result<String> {
    let mut out = String::new();
    let h = &report.health;
    let model = h.model.as_ref().map(|m| m.to_string()).unwrap_or_default();
    writeln!(out, "model    {model}  state {:?}", h.state)?;
    writeln!(
        out,
        "load     {:.1} ms",
        report.load_time.as_secs_f64() * 1e3
    )?;
    if let Some(t) = &report.self_test {
        for o in &t.outputs {
            writeln!(
                out,
                "golden   {} relative error {:.2e}",
                o.name, o.relative_error
            )?;
        }
    }
    if let Some(f) = &report.failure {
        writeln!(out, "failure  {f}")?;
    }
    let q = quantiles_ms(report);
    writeln!(
        out,
        "warm-up  {} runs, p50 {} ms, p99 {} ms (bucket midpoints, ±12%)",
        report.warmup.latency.count(),
        q["p50"].as_f64().map_or("-".into(), |v| format!("{v:.3}")),
        q["p99"].as_f64().map_or("-".into(), |v| format!("{v:.3}")),
    )?;
    let mut buf = [0u8; MetricsReport::MAX_ENCODED_LEN];
    writeln!(
        out,
        "metrics  {} bytes postcard",
        report.warmup.encode(&mut buf)?.len()
    )?;
    writeln!(out, "rss      {} KiB", h.rss_kib)?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
