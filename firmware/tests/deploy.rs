//! The Raspberry Pi deployment files in firmware/deploy/ stay true to the agent: the
//! example configuration parses with the agent's own parser and covers every documented
//! key, the systemd unit starts perchd the way install.sh installs it (and systemd
//! accepts it, where `systemd-analyze` exists), and install.sh is valid bash that
//! refuses to run without root, prints its plan on a dry run, and installs into a staged
//! system image idempotently, keeping an existing configuration.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use perch_firmware::config::{Args, Broker, Config};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name)).unwrap()
}

fn perchd() -> &'static str {
    env!("CARGO_BIN_EXE_perchd")
}

/// The config path the tests pretend the example lives at (as install.sh puts it).
const INSTALLED_CONFIG: &str = "/etc/perch/perchd.toml";

fn parse(text: &str) -> Config {
    Config::from_toml(Path::new(INSTALLED_CONFIG), text, &Args::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `key` can be a setting's name.
fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `# key = value` and `# [section]` lines: a setting or section shown commented out.
fn commented_setting(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    if let Some(section) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return is_key(section).then_some(rest);
    }
    let (key, _) = rest.split_once(" = ")?;
    is_key(key).then_some(rest)
}

/// `section.key` of every setting in a TOML text, set or commented out (several
/// `key = value` pairs may share a commented line, as in the config module's docs).
fn keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let body = line.trim().trim_start_matches('#').trim();
        if let Some(header) = body.strip_prefix('[') {
            section = header.split(']').next().unwrap_or("").trim().to_string();
            continue;
        }
        let mut rest = body;
        while let Some(eq) = rest.find(" = ") {
            let key = rest[..eq].rsplit(' ').next().unwrap_or("");
            if is_key(key) {
                found.insert(if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                });
            }
            rest = &rest[eq + 3..];
        }
    }
    found
}

/// The value of `NAME=value` in install.sh.
fn script_var(script: &str, name: &str) -> String {
    script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("install.sh sets no {name}"))
        .to_string()
}

/// The values of `Key=` in the unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn install_sh(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(deploy_dir().join("install.sh"))
        .args(args)
        .current_dir("/")
        .output()
        .unwrap()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_example_configuration_is_accepted_as_written() {
    let config = parse(&read("perchd.toml"));
    let Broker::External(broker) = &config.broker else {
        panic!(
            "the example should use an external broker: {:?}",
            config.broker
        )
    };
    assert_eq!(
        (broker.endpoint.host.as_str(), broker.endpoint.port),
        ("broker.example.com", 8883)
    );
    let tls = broker
        .endpoint
        .tls
        .as_ref()
        .expect("the example uses mqtts://");
    assert_eq!(tls.ca, Path::new("/etc/perch/ca.pem"));
    let (cert, key) = tls.client.as_ref().expect("a client certificate");
    assert!(cert.starts_with("/etc/perch") && key.starts_with("/etc/perch"));
    assert_eq!(
        config.model.path.extension().and_then(|e| e.to_str()),
        Some("perch"),
        "the device build serves signed bundles"
    );
    assert!(config.model.path.starts_with("/var/lib/perch/models"));
    assert_eq!(
        config.model.trusted_keys,
        [PathBuf::from("/etc/perch/fleet.pub")]
    );
    assert!(config.spool.dir.starts_with("/var/lib/perch"));
    assert_eq!(config.slo.p99_ms, Some(10.0));
    assert_eq!(config.slo.max_error_rate, Some(0.01));
    assert_eq!(config.http_listen, Some("127.0.0.1:8080".parse().unwrap()));
}

#[test]
fn every_commented_out_setting_in_the_example_is_accepted_too() {
    let example = read("perchd.toml");
    let mut uncommented = 0;
    let all_on: String = example
        .lines()
        .map(|line| match commented_setting(line) {
            Some(setting) => {
                uncommented += 1;
                format!("{setting}\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented >= 8, "only {uncommented} commented settings");
    let config = parse(&all_on);
    assert_eq!(config.device_id.as_str(), "pi-kitchen");
    assert_eq!(config.model.variant.as_deref(), Some("w8"));
    assert!(config.model.golden.is_some() && config.model.version.is_some());
    let Broker::External(broker) = &config.broker else {
        panic!("{:?}", config.broker)
    };
    assert!(broker.endpoint.username.is_some() && broker.endpoint.password.is_some());
}

#[test]
fn the_example_shows_every_key_the_config_module_documents() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/mod.rs"))
            .unwrap();
    let docs: String = source
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .skip_while(|l| l.trim() != "```toml")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .map(|l| format!("{l}\n"))
        .collect();
    let documented = keys(&docs);
    assert!(documented.len() >= 25, "{documented:?}");
    let shown = keys(&read("perchd.toml"));
    let missing: Vec<_> = documented.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "perchd.toml lacks documented keys {missing:?}"
    );
}

#[test]
fn the_unit_starts_perchd_where_install_sh_puts_it() {
    let unit = read("perchd.service");
    let script = read("install.sh");
    let bin = script_var(&script, "bin_dest");
    let config_dir = script_var(&script, "config_dir");
    let config = script_var(&script, "config_dest").replace("$config_dir", &config_dir);
    let state = script_var(&script, "state_dir");
    let user = script_var(&script, "user");
    assert_eq!(config, INSTALLED_CONFIG);
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        [format!("{bin} --config {config}")]
    );
    assert_eq!(unit_values(&unit, "User"), [user.as_str()]);
    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    assert_eq!(unit_values(&unit, "WatchdogSec"), ["30s"]);
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&unit, "ProtectSystem"), ["strict"]);
    assert_eq!(unit_values(&unit, "ReadWritePaths"), [state.as_str()]);
    assert_eq!(
        unit_values(&unit, "StateDirectory"),
        [state.trim_start_matches("/var/lib/")]
    );
    assert!(unit_values(&unit, "Environment")
        .iter()
        .any(|e| e.starts_with("RUST_LOG=")));
    // What perchd writes (the spool) must be inside what the unit lets it write.
    let example = parse(&read("perchd.toml"));
    assert!(example.spool.dir.starts_with(&state));
}

#[test]
fn systemd_accepts_the_unit() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify insists that ExecStart exists: point it at the perchd these tests built.
    let dir = tempfile::tempdir().unwrap();
    let unit = read("perchd.service").replace("/usr/local/bin/perchd", perchd());
    let path = dir.path().join("perchd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    // Unknown keys and bad values are warnings on stderr with a zero exit code.
    let stderr = text(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn install_sh_is_valid_bash() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(deploy_dir().join("install.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_dry_run_prints_every_step_and_changes_nothing() {
    let installed = Path::new("/usr/local/bin/perchd").exists();
    let out = install_sh(&["--dry-run", "--binary", perchd()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for step in [
        format!(
            "+ install -m 0755 -o 0 -g 0 {} /usr/local/bin/perchd",
            perchd()
        ),
        "/etc/systemd/system/perchd.service\n".to_string(),
        "+ systemctl enable perchd.service\n".to_string(),
        "dry run: nothing was changed\n".to_string(),
    ] {
        assert!(stdout.contains(&step), "no {step:?} in:\n{stdout}");
    }
    if Path::new(INSTALLED_CONFIG).exists() {
        assert!(stdout.contains("keeping the existing /etc/perch/perchd.toml"));
    } else {
        assert!(
            stdout.contains("perchd.toml /etc/perch/perchd.toml\n"),
            "{stdout}"
        );
    }
    assert_eq!(Path::new("/usr/local/bin/perchd").exists(), installed);
}

#[test]
fn install_sh_refuses_to_run_without_root() {
    let out = if is_root() {
        // Drop to nobody for real; skip where setpriv is missing.
        let Ok(out) = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
            .arg(deploy_dir().join("install.sh"))
            .args(["--binary", perchd()])
            .current_dir("/")
            .output()
        else {
            eprintln!("skipped: running as root and setpriv is not installed");
            return;
        };
        out
    } else {
        install_sh(&["--binary", perchd()])
    };
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("must run as root"));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn an_unknown_option_is_refused() {
    let out = install_sh(&["--dryrun"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown argument '--dryrun'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn installing_twice_into_an_image_keeps_its_configuration() {
    if !is_root() {
        eprintln!("skipped: installing into an image needs root (useradd --root, chown)");
        return;
    }
    // A minimal system image: the user databases useradd needs.
    let image = tempfile::tempdir().unwrap();
    let root = image.path();
    std::fs::create_dir(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    let root_arg = root.to_str().unwrap();
    let install = || {
        let out = install_sh(&["--root", root_arg, "--binary", perchd()]);
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };

    let first = install();
    assert!(first.contains("installed and enabled"), "{first}");
    let config = root.join("etc/perch/perchd.toml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        read("perchd.toml")
    );
    std::fs::write(&config, "device_id = \"edited\"\n").unwrap();

    let second = install();
    assert!(second.contains("user perch exists"), "{second}");
    assert!(second.contains("keeping the existing"), "{second}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "device_id = \"edited\"\n"
    );

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let perch: Vec<&str> = passwd.lines().filter(|l| l.starts_with("perch:")).collect();
    assert_eq!(perch.len(), 1, "{passwd}");
    let fields: Vec<&str> = perch[0].split(':').collect();
    let (uid, gid): (u32, u32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    assert_eq!(fields[5], "/var/lib/perch");

    let mode_owner = |p: &str| {
        let meta = std::fs::symlink_metadata(root.join(p)).unwrap();
        (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
    };
    assert_eq!(mode_owner("etc/perch"), (0o750, 0, gid));
    assert_eq!(mode_owner("etc/perch/perchd.toml"), (0o640, 0, gid));
    for dir in [
        "var/lib/perch",
        "var/lib/perch/models",
        "var/lib/perch/spool",
    ] {
        assert_eq!(mode_owner(dir), (0o750, uid, gid), "{dir}");
    }
    assert_eq!(mode_owner("usr/local/bin/perchd"), (0o755, 0, 0));
    assert_eq!(
        std::fs::read(root.join("usr/local/bin/perchd")).unwrap(),
        std::fs::read(perchd()).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/systemd/system/perchd.service")).unwrap(),
        read("perchd.service")
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/perchd.service");
    assert_eq!(
        std::fs::read_link(wants).unwrap(),
        Path::new("/etc/systemd/system/perchd.service")
    );
}
