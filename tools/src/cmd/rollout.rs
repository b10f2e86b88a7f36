//! `perch rollout`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use perch_mqtt::Endpoint;
use perch_runtime::bundle::{read_signing_key, Bundle, Limits};
use perch_runtime::rollout::{self as wire, BundleRef, DeviceState, Phase};
use perch_tools::rollout::operator::{self, Progress, Store};
use perch_tools::rollout::{
    parse_duration_ms, parse_fleet, parse_gates, parse_size, parse_stages, Clock, Command,
    Controller, Effect, Plan, PlanError, Unexercised,
};

/// Roll a signed bundle out to a device group in canary stages, gated on the fleet's
/// own metrics.
///
/// `start` publishes a signed, retained rollout document on
/// perch/fleet/GROUP/rollout, serves the bundle in chunks over MQTT, watches the
/// devices' state reports (perch/+/rollout) and metrics (perch/+/metrics), and promotes
/// the cohort stage by stage (10 % → 50 % → 100 % by default) only when the canary
/// devices running the new version met every gate over the whole soak window. A breached
/// gate, or a device rolling back, aborts the rollout: every device returns to its
/// previous model. The state is saved in --state-dir, so `run` continues after the
/// operator process restarts; `status` reads it without a broker, and `report` writes
/// an HTML page of it (latency and error rate over time per cohort, stage timeline,
/// decisions) from the state and the journal the operator keeps beside it.
///
/// `promote`, `pause`, `resume` and `abort` steer the running controller through the
/// broker (perch/fleet/GROUP/rollout/command): the broker's ACLs must allow only
/// operators to publish on perch/fleet/#. The broker may be mqtt:// or mqtts:// (with
/// --mqtt-ca, and a client certificate if it asks for one).
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

// Parsed once per run: the size of `start`'s many flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
enum Sub {
    Start(StartArgs),
    Run(RunArgs),
    Status(StatusArgs),
    Report(ReportArgs),
    /// Promote the running rollout to its next stage now, skipping the soak and the
    /// gates (from the last stage: complete it).
    Promote(CommandArgs),
    /// Pause the running rollout: no promotion; devices that have not started
    /// downloading wait. Gates are still watched and a breach still aborts.
    Pause(CommandArgs),
    /// Resume a paused rollout; the stage's soak keeps its start.
    Resume(CommandArgs),
    /// Abort the rollout: every device that activated the bundle returns to its
    /// previous model.
    Abort(CommandArgs),
}

/// How to reach the broker.
#[derive(clap::Args)]
struct BrokerArgs {
    /// The MQTT broker: mqtt://HOST[:PORT] (default port 1883) or mqtts://HOST[:PORT]
    /// (TLS, default port 8883, with --mqtt-ca); an IPv6 host in brackets.
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// mqtts: PEM file of the certificate authority that signed the broker's certificate.
    #[arg(long, env = "PERCH_MQTT_CA", value_name = "PEM")]
    mqtt_ca: Option<PathBuf>,
    /// mqtts: PEM client certificate, for brokers that authenticate clients by
    /// certificate; needs --mqtt-client-key.
    #[arg(long, env = "PERCH_MQTT_CLIENT_CERT", value_name = "PEM")]
    mqtt_client_cert: Option<PathBuf>,
    /// mqtts: PEM private key of the client certificate.
    #[arg(long, env = "PERCH_MQTT_CLIENT_KEY", value_name = "PEM")]
    mqtt_client_key: Option<PathBuf>,
    /// MQTT user name.
    #[arg(long, env = "PERCH_MQTT_USERNAME", value_name = "NAME")]
    mqtt_username: Option<String>,
    /// MQTT password (from the environment: other users see flags in the process list).
    #[arg(
        long,
        env = "PERCH_MQTT_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    mqtt_password: Option<String>,
}

impl BrokerArgs {
    fn endpoint(&self) -> Result<Endpoint, PlanError> {
        operator::broker_endpoint(
            &self.broker,
            self.mqtt_ca.clone(),
            (self.mqtt_client_cert.clone(), self.mqtt_client_key.clone()),
            self.mqtt_username.clone(),
            self.mqtt_password.clone(),
        )
    }
}

/// Where the controller connects and keeps its state.
#[derive(clap::Args)]
struct Common {
    /// The device group (the devices' `group` setting).
    #[arg(long, value_name = "GROUP")]
    group: String,
    /// The model of the devices' repositories to update, by name (a `[[models]]` entry
    /// of perchd's configuration; the bundle must carry that name). Its rollout runs on
    /// its own topic (perch/fleet/GROUP/model/MODEL/rollout) and state files
    /// (GROUP+MODEL.*), beside the primary model's. Default: the primary model.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Where rollout states are kept: GROUP.json (the state) and GROUP.perch (the
    /// bundle served).
    #[arg(long, value_name = "DIR", default_value = "rollouts")]
    state_dir: PathBuf,
    /// Print one JSON line per decision instead of a progress display.
    #[arg(long)]
    json: bool,
    /// Also write the rollout's metrics (phase, stage, devices per state, cohort p50/p99
    /// and error rate) to FILE in the Prometheus text format, rewritten after each save,
    /// for node_exporter's textfile collector (e.g.
    /// /var/lib/node_exporter/textfile/perch-rollout-GROUP.prom). The file keeps the
    /// final phase after the command exits; deploy/prometheus/perch-rules.yml alerts on
    /// an aborted rollout from it.
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
}

impl Common {
    fn store(&self) -> Result<Store, PlanError> {
        let mut store = Store::of_model(&self.state_dir, &self.group, self.model.as_deref())?;
        store.metrics_file.clone_from(&self.metrics_file);
        Ok(store)
    }
}

/// Start a rollout of BUNDLE and run its controller in the foreground until it
/// completes (exit 0) or aborts (exit 1).
///
/// Refuses to start while another rollout of the group is running or paused.
#[derive(clap::Args)]
struct StartArgs {
    /// The signed bundle (from `perch pack`).
    bundle: PathBuf,
    #[command(flatten)]
    common: Common,
    /// The fleet's secret key (from `perch keygen`): the bundle must be signed by it,
    /// and it signs the rollout documents.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The cohort share of each stage, percent, increasing and ending at 100.
    #[arg(long, default_value = "10,50,100")]
    stages: String,
    /// How long each stage soaks before promotion (ms, s, m or h). Soak time counts
    /// only while a controller runs.
    #[arg(long, default_value = "10m")]
    soak: String,
    /// Gates the canary cohort must meet over the soak, e.g.
    /// "p99<10ms,error_rate<1%,throughput>1/s" (repeatable). Latency quantiles come from
    /// the devices' merged histograms; error_rate is Σerrors/Σrequests; throughput is
    /// inferences per second of an average canary device. A breach aborts.
    #[arg(long, value_name = "GATES")]
    gate: Vec<String>,
    /// Canary devices that must report metrics of the new version before a stage is
    /// promoted.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min_devices: usize,
    /// Chunk size of the MQTT transfer (1KiB to 1MiB).
    #[arg(long, value_name = "SIZE", default_value = "64KiB")]
    chunk_size: String,
    /// How long each device watches its own SLO after activating the bundle before it
    /// confirms it.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    device_soak: String,
    /// The fewest requests a device's soak must judge before it confirms the bundle;
    /// intervals are pooled into windows of at least this many before their p99 and
    /// error rate are checked. A device whose soak ends with fewer reports unexercised
    /// and keeps the bundle on probation.
    #[arg(long, value_name = "N", default_value_t = wire::DEFAULT_SOAK_MIN_REQUESTS)]
    device_soak_requests: u64,
    /// The fewest canary requests in a stage's window before a latency or error-rate
    /// gate is judged and before the stage is promoted.
    #[arg(long, value_name = "N", default_value_t = perch_tools::rollout::MIN_REQUESTS)]
    min_requests: u64,
    /// What a soaked stage does while canary devices report unexercised: wait (promote
    /// by hand to go on) or accept (judge the cohort's traffic as a whole).
    #[arg(long, value_name = "POLICY", default_value = "wait")]
    unexercised: String,
    /// How long devices hold the rollout's document fresh (0 = forever). The controller
    /// publishes a new revision every quarter of it; a device that hears none for
    /// longer (the controller stopped, or the broker withholds its documents) freezes:
    /// it downloads and confirms nothing, and says so.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    fresh: String,
    /// The group's device ids, one per line (# comments): state reports from any other
    /// id are ignored and counted, so a made-up id cannot abort or steer the rollout.
    /// Without it, a roll-back counts only from a device seen serving the bundle.
    #[arg(long, value_name = "FILE")]
    fleet: Option<PathBuf>,
    /// The rollout's id (letters, digits, `.`, `_`, `-`; at most 64). Cohorts are drawn
    /// from it: the same id over the same devices draws the same cohort. Default:
    /// NAME-VERSION-SEQUENCE-RANDOM, a fresh cohort every rollout.
    #[arg(long, value_name = "ID")]
    rollout_id: Option<String>,
}

/// Continue the controller of a group's rollout from its saved state (after the
/// operator process stopped).
#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The fleet's secret key, which signs the rollout documents.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
}

/// Show a rollout from its saved state: stages, cohorts (canary vs. the rest), every
/// device's version, bucket, state, p50/p99 and error rate, and the decision log.
/// Needs no broker.
#[derive(clap::Args)]
struct StatusArgs {
    /// The device group.
    #[arg(long, value_name = "GROUP")]
    group: String,
    /// The model whose rollout it is (as given to `perch rollout start --model`).
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Where rollout states are kept.
    #[arg(long, value_name = "DIR", default_value = "rollouts")]
    state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Write a rollout's report: one self-contained HTML page (no script, nothing
/// fetched) with p50/p99 latency and error rate over time for the canary cohort and the
/// rest of the group, the stage timeline and the decision log, from the saved state
/// (GROUP.json) and the journal the operator appends to (GROUP.journal). Needs no
/// broker; works while the rollout runs and after it ended.
#[derive(clap::Args)]
struct ReportArgs {
    /// The device group.
    #[arg(long, value_name = "GROUP")]
    group: String,
    /// The model whose rollout it is (as given to `perch rollout start --model`).
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Where rollout states are kept.
    #[arg(long, value_name = "DIR", default_value = "rollouts")]
    state_dir: PathBuf,
    /// The HTML file to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

/// Sends a command to the running controller of a group (on
/// perch/fleet/GROUP/rollout/command) and waits for the document it publishes in answer,
/// then prints the new phase and share. Exit 2 when no controller answers.
#[derive(clap::Args)]
struct CommandArgs {
    /// The device group.
    #[arg(long, value_name = "GROUP")]
    group: String,
    /// The model whose rollout it is (as given to `perch rollout start --model`).
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    #[command(flatten)]
    broker: BrokerArgs,
    /// The fleet's secret key, which signs the rollout documents and the command (the
    /// controller ignores commands not signed with it).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Why (kept in the decision log).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// How long to wait for the controller's answer.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    timeout: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Sub::Start(a) => start(a),
        Sub::Run(a) => run(a),
        Sub::Status(a) => {
            let store = Store::of_model(&a.state_dir, &a.group, a.model.as_deref())?;
            let controller = Controller::from_state(store.load_existing()?)?;
            super::print(&controller.status(), a.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Sub::Report(a) => {
            let store = Store::of_model(&a.state_dir, &a.group, a.model.as_deref())?;
            let state = store.load_existing()?;
            let points = store.journal(&state.plan.rollout_id)?;
            let html = perch_tools::rollout::render_report(&state, &points);
            perch_tools::fsio::write_atomic(&a.output, html.as_bytes())
                .with_context(|| format!("cannot write {}", a.output.display()))?;
            println!(
                "wrote {} ({} journal points, {} decisions)",
                a.output.display(),
                points.len(),
                state.log.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Sub::Promote(a) => command(a, Command::Promote),
        Sub::Pause(a) => command(a, Command::Pause),
        Sub::Resume(a) => command(a, Command::Resume),
        Sub::Abort(a) => command(a, Command::Abort),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn start(a: StartArgs) -> anyhow::Result<ExitCode> {
    let store = a.common.store()?;
    let stages = parse_stages(&a.stages)?;
    let soak_ms = parse_duration_ms("--soak", &a.soak)?;
    let device_soak_s = parse_duration_ms("--device-soak", &a.device_soak)? / 1000;
    let gates = a
        .gate
        .iter()
        .map(|g| parse_gates(g))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let chunk_size = parse_size("--chunk-size", &a.chunk_size)?;
    let chunk_size = u32::try_from(chunk_size)
        .ok()
        .filter(|c| (wire::MIN_CHUNK_SIZE..=wire::MAX_CHUNK_SIZE).contains(c))
        .with_context(|| {
            format!(
                "--chunk-size {}: must be between {} and {} bytes",
                a.chunk_size,
                wire::MIN_CHUNK_SIZE,
                wire::MAX_CHUNK_SIZE
            )
        })?;
    let broker = a.common.broker.endpoint()?;
    let key = read_signing_key(&a.key)
        .with_context(|| format!("cannot read the key {}", a.key.display()))?;
    let bundle = Bundle::read_file(&a.bundle, &Limits::default())
        .with_context(|| format!("cannot read the bundle {}", a.bundle.display()))?;
    let bundle = bundle.verify(&[key.verifying_key()]).with_context(|| {
        format!(
            "the bundle {} does not verify with the public half of {}",
            a.bundle.display(),
            a.key.display()
        )
    })?;
    let bundle = bundle.into_bundle();
    let previous = store.load()?;
    let previous_revision = previous.as_ref().map_or(0, |state| state.revision);
    if let Some(state) = previous {
        if matches!(state.phase, Phase::Running | Phase::Paused) {
            anyhow::bail!(
                "rollout {} of group {} is {} (state in {}): abort it with `perch rollout abort --group {}` or continue its controller with `perch rollout run --group {}`",
                state.plan.rollout_id,
                state.plan.group,
                state.phase,
                store.state_path().display(),
                state.plan.group,
                state.plan.group
            );
        }
    }
    let manifest = bundle.manifest();
    let mut random = [0u8; 3];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
    let version = manifest.version.to_string();
    let plan = Plan {
        group: a.common.group.clone(),
        model: a.common.model.clone(),
        rollout_id: match &a.rollout_id {
            Some(id) => id.clone(),
            None => Plan::rollout_id(&manifest.name, &version, manifest.sequence, random),
        },
        bundle: BundleRef::describe(
            &manifest.name,
            &version,
            manifest.sequence,
            bundle.as_bytes(),
            chunk_size,
        ),
        stages,
        soak_ms,
        gates,
        min_devices: a.min_devices,
        device_soak_s,
        device_soak_requests: a.device_soak_requests,
        min_requests: a.min_requests,
        unexercised: Unexercised::parse(&a.unexercised)?,
        fresh_s: parse_duration_ms("--fresh", &a.fresh)?.div_ceil(1000),
        fleet: match &a.fleet {
            Some(path) => Some(parse_fleet(&std::fs::read_to_string(path).with_context(
                || format!("cannot read the fleet list {}", path.display()),
            )?)?),
            None => None,
        },
    };
    let (controller, effects) =
        Controller::start_after(plan, Clock::new(0, unix_ms()), previous_revision)?;
    store.save_bundle(bundle.as_bytes())?;
    store.save(controller.state())?;
    let started = effects.into_iter().find_map(|e| match e {
        Effect::Log(line) => Some(line),
        Effect::PublishDocument(_) => None,
    });
    drive(
        controller,
        started,
        bundle.as_bytes(),
        &key,
        &store,
        &broker,
        a.common.json,
    )
}

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let store = a.common.store()?;
    let controller = Controller::from_state(store.load_existing()?)?;
    if controller.is_finished() {
        anyhow::bail!(
            "rollout {} of group {} is already {}; start a new one with `perch rollout start`",
            controller.state().plan.rollout_id,
            a.common.group,
            controller.state().phase
        );
    }
    let broker = a.common.broker.endpoint()?;
    let key = read_signing_key(&a.key)
        .with_context(|| format!("cannot read the key {}", a.key.display()))?;
    let bundle = store.load_bundle()?;
    let expected = &controller.state().plan.bundle;
    if BundleRef::describe(
        &expected.name,
        &expected.version,
        expected.sequence,
        &bundle,
        expected.chunk_size,
    ) != *expected
    {
        anyhow::bail!(
            "{} is not the bundle the rollout serves (its hash differs)",
            store.bundle_path().display()
        );
    }
    drive(
        controller,
        None,
        &bundle,
        &key,
        &store,
        &broker,
        a.common.json,
    )
}

/// Runs the loop with a progress display (or JSON lines) and maps the end to an exit
/// code: 0 completed, 1 aborted.
fn drive(
    controller: Controller,
    first: Option<String>,
    bundle: &[u8],
    key: &ed25519_dalek::SigningKey,
    store: &Store,
    broker: &Endpoint,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut report = |c: &Controller, progress: Progress<'_>| {
        let s = c.state();
        match progress {
            Progress::Decision(message) => {
                if json {
                    let line = serde_json::json!({
                        "group": s.plan.group,
                        "rollout_id": s.plan.rollout_id,
                        "revision": s.revision,
                        "phase": s.phase,
                        "stage": s.stage + 1,
                        "percent": f64::from(s.plan.stages[s.stage]) / 100.0,
                        "message": message,
                    });
                    println!("{line}");
                } else {
                    bar.println(format!("{}: {message}", s.plan.group));
                }
            }
            Progress::Connection(Ok(())) => log::info!("connected to {}", broker.url()),
            Progress::Connection(Err(why)) => {
                if !json {
                    bar.set_message(format!("broker {} unreachable: {why}", broker.url()));
                }
                log::warn!("broker {}: {why}", broker.url());
                return;
            }
            Progress::Dropped(why) => bar.suspend(|| log::warn!("{why}")),
            Progress::Tick => {}
        }
        if !json && last_draw.elapsed() >= Duration::from_millis(200) {
            last_draw = Instant::now();
            bar.set_message(summary(c));
        }
    };
    if let Some(line) = first {
        report(&controller, Progress::Decision(&line));
    }
    let phase = operator::run(controller, bundle, key, broker, store, &mut report)?;
    bar.finish_and_clear();
    if !json {
        let final_state = Controller::from_state(store.load_existing()?)?;
        println!("{}", final_state.status());
    }
    Ok(match phase {
        Phase::Completed => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// One line: stage, phase, soak, devices per state.
fn summary(c: &Controller) -> String {
    let s = c.state();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for view in s.devices.values() {
        let state = view.status.as_ref().map_or("unknown", |st| match st.state {
            DeviceState::NotInCohort => "not in cohort",
            other => other.as_str(),
        });
        *counts.entry(state).or_default() += 1;
    }
    let devices: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "stage {}/{} ({} %) {} · soaked {}s/{}s · {}",
        s.stage + 1,
        s.plan.stages.len(),
        f64::from(s.plan.stages[s.stage]) / 100.0,
        s.phase,
        s.clock_ms.saturating_sub(s.stage_started_ms) / 1000,
        s.plan.soak_ms / 1000,
        if devices.is_empty() {
            "no device reported yet".into()
        } else {
            devices.join(", ")
        }
    )
}

fn command(a: CommandArgs, command: Command) -> anyhow::Result<ExitCode> {
    let timeout = parse_duration_ms("--timeout", &a.timeout)?;
    let key = perch_runtime::bundle::read_signing_key(&a.key)
        .with_context(|| format!("cannot read the key {}", a.key.display()))?;
    let outcome = operator::send_command(
        &a.broker.endpoint()?,
        &a.group,
        a.model.as_deref(),
        &key,
        command,
        a.reason,
        Duration::from_millis(timeout),
    )?;
    super::print(&outcome, a.json)?;
    Ok(ExitCode::SUCCESS)
}
