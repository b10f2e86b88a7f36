//! `perch device`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use perch_runtime::bundle::read_signing_key;
use perch_runtime::repository_command::{Action, RepositoryCommand};
use perch_tools::rollout::{parse_duration_ms, send_repository_command};

/// Load or unload a model of one device's repository over MQTT, or list it.
///
/// Publishes on perch/DEVICE/repository/req and prints the device's reply from
/// perch/DEVICE/repository/res: the status, the error if any, and the repository index
/// after the command. A load or an unload is signed with the fleet key (the device
/// refuses anything else) and carries the current time in milliseconds as its
/// revision (the device refuses one not above the last it accepted). Exit 0 when the
/// device answered 200, 1 when it refused, 2 when it did not answer.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Load a configured model, or the signed bundle at --path on the device.
    Load(ModelArgs),
    /// Unload a model (answered once its requests in flight have finished).
    Unload(ModelArgs),
    /// List the repository (unsigned).
    Index(DeviceArgs),
}

#[derive(clap::Args)]
struct DeviceArgs {
    /// The device id.
    #[arg(long, value_name = "ID")]
    device: String,
    /// The MQTT broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (with PERCH_MQTT_CA).
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// mqtts: PEM file of the certificate authority that signed the broker's certificate.
    #[arg(long, env = "PERCH_MQTT_CA", value_name = "PEM")]
    mqtt_ca: Option<PathBuf>,
    /// How long to wait for the device's answer (a load waits for the model's
    /// self-test and warm-up).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    timeout: String,
}

#[derive(clap::Args)]
struct ModelArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// The model's name in the device's repository.
    #[arg(long, value_name = "NAME")]
    model: String,
    /// The fleet's secret key (one of the device's trusted keys).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Load only: a signed bundle on the device to load under the model's name.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id = format!("perch-{now:x}");
    let (device, payload) = match args.command {
        Sub::Index(d) => {
            let body = serde_json::json!({"action": "index", "id": id});
            (d, body.to_string().into_bytes())
        }
        Sub::Load(m) => signed(Action::Load, m, now, &id)?,
        Sub::Unload(m) => {
            if m.path.is_some() {
                anyhow::bail!("--path is only for a load");
            }
            signed(Action::Unload, m, now, &id)?
        }
    };
    let broker = perch_tools::rollout::operator::broker_endpoint(
        &device.broker,
        device.mqtt_ca.clone(),
        (None, None),
        None,
        None,
    )?;
    let timeout = Duration::from_millis(parse_duration_ms("--timeout", &device.timeout)?);
    let reply = send_repository_command(&broker, &device.device, payload, &id, timeout)?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(if reply["status"] == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The device's arguments and the command signed with `--key`.
fn signed(
    action: Action,
    m: ModelArgs,
    revision: u64,
    id: &str,
) -> anyhow::Result<(DeviceArgs, Vec<u8>)> {
    let key = read_signing_key(&m.key)
        .with_context(|| format!("cannot read the key {}", m.key.display()))?;
    let command = RepositoryCommand {
        path: m.path,
        id: Some(id.to_string()),
        ..RepositoryCommand::new(action, &m.device.device, Some(&m.model), revision)
    };
    Ok((m.device, command.sign(&key)))
}
