//! `perch-sim`: a fleet of simulated devices running the real agent, on one machine.
//!
//! See [`Args`] (`perch-sim --help`) and the `perch_tests::sim` library docs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use perch_firmware::config::HumanDuration;
use perch_tests::sim::{BrokerSpec, Faults, Fleet, FleetConfig, FleetFixture};

/// Runs N simulated devices, each the real device agent (perchd's code) on one shared
/// runtime, against an MQTT broker, sends them inference traffic and prints one line
/// per second: devices online, metrics reports received, model versions served,
/// rollout states, traffic. Ctrl-C stops it.
///
/// Every device is `{prefix}-{i:04}`, follows the OTA group --group, starts on the
/// same signed bundle and trusts the same public key. Without --bundle it packs the
/// digits-mlp reference model (version 1.0.0, sequence 1) with a fresh fleet key into
/// the work folder and prints the paths: sign new bundles with that fleet.key and roll
/// them out with `perch rollout start ... --broker <the URL printed>`.
#[derive(Debug, Parser)]
#[command(name = "perch-sim", version)]
struct Args {
    /// Number of devices.
    #[arg(long, short = 'n', default_value_t = 10, value_name = "N")]
    devices: usize,
    /// How many of them (the first ones) run as separate perchd processes (perchd must
    /// be built beside perch-sim, or named by PERCH_PERCHD); the rest run in-process.
    #[arg(long, default_value_t = 0, value_name = "N")]
    processes: usize,
    /// The MQTT broker: `embedded:PORT` starts the agent's embedded broker in this
    /// process on 127.0.0.1:PORT (`embedded` alone: any free port, printed);
    /// `mqtt://host:port` uses a running one (mosquitto, say).
    #[arg(long, default_value = "embedded:1883", value_name = "URL")]
    broker: BrokerSpec,
    /// The signed bundle every device starts on (needs --trusted-key). Default: the
    /// digits-mlp reference model packed with a fresh key in the work folder (reused
    /// when the folder has them from an earlier run).
    #[arg(long, requires = "trusted_key", value_name = "BUNDLE.perch")]
    bundle: Option<PathBuf>,
    /// The public key file (`perch keygen`'s .pub) the devices trust; with --bundle.
    #[arg(long, requires = "bundle", value_name = "PUB")]
    trusted_key: Option<PathBuf>,
    /// The OTA group every device follows (perch/fleet/{group}/rollout).
    #[arg(long, default_value = "default", value_name = "GROUP")]
    group: String,
    /// Device id prefix.
    #[arg(long, default_value = "sim", value_name = "PREFIX")]
    prefix: String,
    /// Inference requests per device per second (`5` or `5/s`; 0 for none).
    #[arg(long, default_value = "1/s", value_parser = parse_rate, value_name = "R/s")]
    rate: f64,
    /// Time between each device's metrics reports, e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    report_interval: HumanDuration,
    /// Play a bad model: requests to devices serving this version are sent malformed
    /// (the --bad-error-fraction share of them), so those devices answer with errors
    /// and report them, and a rollout of that version breaches an error-rate gate.
    #[arg(long, value_name = "X.Y.Z")]
    bad_version: Option<String>,
    /// With --bad-version: the share of requests that fail, 0 to 1.
    #[arg(
        long,
        default_value_t = 0.5,
        requires = "bad_version",
        value_name = "F"
    )]
    bad_error_fraction: f64,
    /// Warm-up inferences of each device at start.
    #[arg(long, default_value_t = 2, value_name = "N")]
    warmup: u32,
    /// Folder for the fleet key, the bundle and one folder per device (spool, model
    /// slots), kept, so a later run with the same folder continues where this one
    /// stopped. Default: a temporary folder removed at exit.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Stop by itself this long after every device first reported (e.g. `30s`)
    /// instead of at Ctrl-C.
    #[arg(long = "for", value_name = "DURATION")]
    run_for: Option<HumanDuration>,
    /// Print each line as a JSON object (the paths and broker as a first object on
    /// stderr).
    #[arg(long)]
    json: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?}: expected requests per device per second, e.g. 5 or 5/s"
        )),
    }
}

fn main() -> ExitCode {
    // rumqttd logs through `tracing`, which forwards every span to `log` (at levels up
    // to ERROR for routine packets): silenced unless RUST_LOG names it, as in perchd.
    // The agents' own lines are per device: warnings only, unless RUST_LOG says more.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("rumqttd", log::LevelFilter::Off)
        .filter_module("tracing::span", log::LevelFilter::Off)
        .parse_env(env_logger::Env::default())
        .init();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("perch-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let (work_dir, _temporary) = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("perch-sim-")
                .tempdir()
                .context("cannot create a temporary work folder")?;
            (dir.path().to_path_buf(), Some(dir))
        }
    };
    let (bundle, trusted_key, secret_key) = match (&args.bundle, &args.trusted_key) {
        (Some(bundle), Some(key)) => (bundle.clone(), key.clone(), None),
        _ => {
            let (bundle, public, secret) = (
                work_dir.join("digits-1.0.0.perch"),
                work_dir.join("fleet.pub"),
                work_dir.join("fleet.key"),
            );
            if !(bundle.is_file() && public.is_file() && secret.is_file()) {
                FleetFixture::digits(&work_dir).context("cannot pack the default bundle")?;
            }
            (bundle, public, Some(secret))
        }
    };
    let mut config = FleetConfig::new(args.devices, &bundle, &trusted_key, &work_dir);
    config.processes = args.processes;
    config.broker = args.broker.clone();
    config.group = args.group.clone();
    config.prefix = args.prefix.clone();
    config.rate = args.rate;
    config.report_interval = args.report_interval.0;
    config.warmup_runs = args.warmup;
    let fleet = Fleet::start(config).context("cannot start the fleet")?;
    if let Some(version) = &args.bad_version {
        fleet.traffic().set_faults(Some(Faults {
            version: Some(version.clone()),
            devices: Default::default(),
            error_fraction: args.bad_error_fraction.clamp(0.0, 1.0),
        }));
    }

    let header = serde_json::json!({
        "broker": fleet.broker_url(),
        "group": args.group,
        "devices": args.devices,
        "work_dir": work_dir,
        "bundle": bundle,
        "trusted_key": trusted_key,
        "signing_key": secret_key,
    });
    if args.json {
        eprintln!("{header}");
    } else {
        println!(
            "perch-sim: {} devices ({}-0000 …) in group {:?} on {}",
            args.devices,
            args.prefix,
            args.group,
            fleet.broker_url()
        );
        println!("  bundle      {}", bundle.display());
        println!("  trusted key {}", trusted_key.display());
        if let Some(secret) = &secret_key {
            println!("  signing key {}", secret.display());
        }
        println!("  work folder {}", work_dir.display());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    fleet.handle().spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    let ids = fleet.device_ids();
    let mut all_reported_at: Option<Instant> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        next += Duration::from_secs(1);
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let summary = fleet.summary();
        if args.json {
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            println!("{summary}");
        }
        if all_reported_at.is_none()
            && fleet.observer().with(|view| {
                ids.iter()
                    .all(|id| view.device(id).is_some_and(|d| d.reports > 0))
            })
        {
            all_reported_at = Some(Instant::now());
        }
        if let (Some(at), Some(run_for)) = (all_reported_at, args.run_for) {
            if at.elapsed() >= run_for.0 {
                break;
            }
        }
    }
    let failures = fleet.failures();
    fleet.shutdown();
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for failure in failures {
            eprintln!("perch-sim: {failure}");
        }
        Ok(ExitCode::from(1))
    }
}
