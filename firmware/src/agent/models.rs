//! The repository at start-up, with an over-the-air updater per model: each
//! `[[models]]` entry has its own slot pair, rollout state and soak in
//! `{ota.dir}/models/{name}/` (the primary model's stay in `{ota.dir}`), and follows its
//! own rollout document, `perch/fleet/{group}/model/{name}/rollout`. The updaters are
//! the same [`Updater`] as the primary model's, one per model.

use std::path::{Path, PathBuf};

use perch_runtime::bundle::{Bundle, Limits};
use perch_runtime::error::Chain;
use perch_runtime::model_files;
use perch_runtime::rollout;
use perch_runtime::slo::Slo;

use crate::config::{Config, ModelConfig, OtaSettings};
use crate::device::DeviceId;
use crate::load;
use crate::ota::{self, Boot, OtaError, Updater};
use crate::repository::Repository;
use crate::service::InferenceService;

/// The updater of one model of the repository, opened and booted.
pub(super) struct ModelUpdater {
    /// The model's name.
    pub(super) name: String,
    /// Its updater.
    pub(super) updater: Updater,
    /// What its boot asks once connected.
    pub(super) effects: Vec<ota::Effect>,
}

/// Opens the updater of the model `name` (`None`: the primary) with its SLOs, and
/// counts this start (a crash loop on probation rolls back here). Blocks.
///
/// # Errors
///
/// Its keys, folder or state cannot be read, or its state is damaged.
pub(super) fn open_updater(
    settings: &OtaSettings,
    model: &ModelConfig,
    slo: Slo,
    device: &DeviceId,
    name: Option<&str>,
) -> Result<(Updater, Boot), OtaError> {
    let keys = load::read_trusted_keys(&model.trusted_keys)
        .map_err(|e| OtaError::Config(Chain(&e).to_string()))?;
    if let Some(name) = name {
        rollout::check_id("model", name).map_err(OtaError::Config)?;
    }
    let config = ota::OtaConfig {
        dir: updater_dir(&settings.dir, name),
        group: settings.group.clone(),
        chunk_timeout: settings.chunk_timeout,
        stall_timeout: settings.stall_timeout,
        max_probation_boots: settings.max_probation_boots,
        warmup_runs: model.warmup_runs,
        install_timeout: ota::DEFAULT_INSTALL_TIMEOUT,
        model: name.map(str::to_string),
        slo,
    };
    let mut updater = Updater::open(config, device.as_str(), keys)?;
    let boot = updater.boot()?;
    Ok((updater, boot))
}

/// The folder of a model's updater: `dir` for the primary, `dir/models/{name}` for the
/// others.
pub(super) fn updater_dir(dir: &Path, name: Option<&str>) -> PathBuf {
    match name {
        None => dir.to_path_buf(),
        Some(name) => dir.join("models").join(name),
    }
}

/// What loads a model from an update slot: the signed bundle at `slot`, checked with
/// the model's keys and warmed up as configured.
pub(super) fn slot_config(configured: &ModelConfig, slot: PathBuf) -> ModelConfig {
    ModelConfig {
        path: slot,
        golden: None,
        variant: None,
        version: None,
        ..configured.clone()
    }
}

/// The release sequence of a configured bundle; `None` for a plain model file, or a
/// bundle that does not verify (its load says why).
fn bundle_sequence(config: &ModelConfig) -> Option<u64> {
    if !model_files::is_bundle_file(&config.path) {
        return None;
    }
    let keys = load::read_trusted_keys(&config.trusted_keys).ok()?;
    let bundle = Bundle::read_file(&config.path, &Limits::default()).ok()?;
    Some(bundle.verify(&keys).ok()?.manifest().sequence)
}

/// The repository: the primary model, then each `[[models]]` entry, loaded unless it
/// says `load = false`, from its active update slot when it has one. One that does not
/// load is logged and listed unavailable with the reason; the others serve. With
/// updates on, each `[[models]]` entry gets its updater, returned; a model whose
/// update state is damaged (or whose name is not a topic level) is served from its
/// configuration, without updates, and says why in the log. Blocks.
pub(super) fn repository(
    primary: InferenceService,
    config: &Config,
) -> (Repository, Vec<ModelUpdater>) {
    // The configured file stands for the primary's size even when an update slot
    // serves (the slots hold versions of the same model).
    let file_bytes = std::fs::metadata(&config.model.path).map_or(0, |m| m.len());
    let models = Repository::new(
        primary,
        file_bytes,
        config.memory_budget,
        config.model.trusted_keys.clone(),
    );
    let mut updaters = Vec::new();
    for model in &config.models {
        let name = model.config.name.clone().unwrap_or_default();
        if let Err(e) = models.configure(model.config.clone()) {
            log::error!("model {name} is not served: {e}");
            continue;
        }
        let mut from_slot = false;
        if let Some(settings) = &config.ota {
            let slo = model.slo.or(&config.slo);
            match open_updater(settings, &model.config, slo, &config.device_id, Some(&name)) {
                Ok((mut updater, boot)) => {
                    if let Some(slot) = boot.serve {
                        from_slot = true;
                        let _ = models.set_config(&name, slot_config(&model.config, slot));
                    } else if let Some(sequence) = bundle_sequence(&model.config) {
                        // The configured bundle counts as installed: no rollout may go
                        // below it (as for the primary model).
                        updater.set_configured_sequence(sequence);
                    }
                    updaters.push(ModelUpdater {
                        name: name.clone(),
                        updater,
                        effects: boot.effects,
                    });
                }
                Err(e) => log::error!(
                    "model {name}: over-the-air updates are off (its name, keys or update \
                     state in {}: {}); serving its configured file",
                    updater_dir(&settings.dir, Some(&name)).display(),
                    Chain(&e)
                ),
            }
        }
        if !model.load {
            continue;
        }
        let mut loaded = models.load(&name, None);
        if let (Err(e), true) = (&loaded, from_slot) {
            log::error!(
                "model {name}: its active update slot does not load ({}); serving its \
                 configured file",
                Chain(e)
            );
            let _ = models.set_config(&name, model.config.clone());
            loaded = models.load(&name, None);
        }
        match loaded {
            Ok(service) if service.ready() => log::info!("model {name}: serving over HTTP"),
            Ok(_) => {}
            Err(e) => log::error!("model {name} is not served: {}", Chain(&e)),
        }
    }
    for model in &mut updaters {
        if let Ok(service) = models.get(&model.name) {
            model
                .updater
                .set_serving(&serving_name(&service.model_id()));
        }
    }
    (models, updaters)
}

/// A model as rollout reports name it: `name version`.
pub(super) fn serving_name(id: &perch_runtime::wire::ModelId) -> String {
    format!("{} {}", id.name, id.version)
}
