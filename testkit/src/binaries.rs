//! The workspace's binaries (`perchd`, `perch`, `perch-sim`) for tests of another
//! package, which cargo does not build for them.
//!
//! `cargo test --workspace` builds every binary before it runs a test. `cargo test -p
//! perch-tests` does not: [`workspace_binary`] then builds the one it needs itself with
//! the same cargo, profile and target folder, unless it is there and newer than every
//! source file it is built from. An environment variable can name another build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

/// Builds are serialized: tests asking at once wait for the first.
static BUILDING: Mutex<()> = Mutex::new(());

/// The binary `bin` of the workspace package `package`, built if missing or older than
/// the sources in `members` (the workspace folders it is built from, such as
/// `["firmware", "mqtt", "runtime"]`); `env` (such as `PERCH_PERCHD`), when set, names
/// the binary to use instead.
///
/// # Errors
///
/// The binary is not where `env` says, or cargo failed to build it (its output is in
/// the message).
pub fn workspace_binary(
    package: &str,
    bin: &str,
    members: &[&str],
    env: &str,
) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{env}={} is not a file", path.display()))
        };
    }
    let layout = Layout::of_this_test()?;
    let path = layout
        .profile_dir
        .join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    let _building = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    if is_fresh(&path, members) {
        return Ok(path);
    }
    let mut command = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args(["-p", package, "--bin", bin, "--profile", &layout.profile])
        .env("CARGO_TARGET_DIR", &layout.target_dir);
    if let Some(triple) = &layout.triple {
        command.args(["--target", triple]);
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run cargo to build {bin}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo could not build {bin}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(path)
}

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where this test's cargo puts binaries, and how to ask it for one.
struct Layout {
    /// `target/debug`, `target/release`, `target/{triple}/debug`...
    profile_dir: PathBuf,
    /// The folder to give cargo as its target folder.
    target_dir: PathBuf,
    /// The profile (`dev` for the `debug` folder).
    profile: String,
    /// The target triple of a cross build.
    triple: Option<String>,
}

impl Layout {
    /// From the running executable's own path: `{profile_dir}/deps/{test}-{hash}`, an
    /// example in `{profile_dir}/examples/`, or a binary in `{profile_dir}`.
    fn of_this_test() -> Result<Layout, String> {
        let exe = std::env::current_exe().map_err(|e| format!("no executable path: {e}"))?;
        let mut profile_dir = exe
            .parent()
            .ok_or_else(|| format!("{} is not in a cargo target folder", exe.display()))?
            .to_path_buf();
        if profile_dir
            .file_name()
            .is_some_and(|n| n == "deps" || n == "examples")
        {
            profile_dir.pop();
        }
        let name = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let profile = if name == "debug" { "dev" } else { name }.to_string();
        let parent = profile_dir.parent().unwrap_or(Path::new("."));
        let (target_dir, triple) = if parent.join("CACHEDIR.TAG").is_file() {
            (parent.to_path_buf(), None)
        } else {
            let triple = parent
                .file_name()
                .and_then(|n| n.to_str())
                .map(String::from);
            (parent.parent().unwrap_or(parent).to_path_buf(), triple)
        };
        Ok(Layout {
            profile_dir,
            target_dir,
            profile,
            triple,
        })
    }
}

/// Whether `binary` exists and is newer than the workspace's manifest and lock file
/// and every file of `members` (what cargo would rebuild it from).
fn is_fresh(binary: &Path, members: &[&str]) -> bool {
    let Some(built) = modified(binary) else {
        return false;
    };
    let root = workspace_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    for member in members {
        stack.push(root.join(member).join("Cargo.toml"));
        stack.push(root.join(member).join("src"));
    }
    while let Some(path) = stack.pop() {
        match std::fs::read_dir(&path) {
            Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
            Err(_) => {
                if let Some(time) = modified(&path) {
                    newest = newest.max(time);
                }
            }
        }
    }
    built >= newest
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
