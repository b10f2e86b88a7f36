//! The model repository: every model the device serves over HTTP, by name, and the
//! loading and unloading of all but the primary one while serving.
//!
//! The primary model (the configuration's `[model]`) is the one MQTT requests, the
//! sensor, over-the-air updates and `/predict` without a model name use; it is loaded
//! at start and cannot be unloaded. The others (`[[models]]`) are loaded at start
//! unless `load = false`, and through [`Repository::load`] and [`Repository::unload`]
//! (`POST /v2/repository/models/{name}/load|unload`) at any time. Each model is an
//! [`InferenceService`] of its own: its sessions, warm-up and self-test ([`load`]),
//! counters, statistics and readiness.
//!
//! A request takes its model's service (an `Arc`) when it starts and finishes on it,
//! so an unload never cuts a request short: the model leaves the repository at once
//! (new requests get 404 "not ready"), and its memory goes when the last request on
//! it returns.
//!
//! # Memory budget
//!
//! With a budget, a load that would take the loaded models over it is refused with
//! the figures, before the model is read when its file alone does not fit, and the
//! models already serving carry on. A model's memory is estimated as its file's size
//! (the weights, as the engine holds them for float models; a bundle's whole file)
//! plus one inference's inputs and outputs at batch 1 ([`estimate`]). The engine does
//! not expose the size of its execution plan, so intermediate activations and the
//! weights an int8-weight model unpacks to float are not counted: the estimate is a
//! lower bound, and the budget should leave room for them.
//!
//! ```no_run
//! use perch_firmware::config::ModelConfig;
//! use perch_firmware::repository::Repository;
//! # fn example(primary: perch_firmware::service::InferenceService) -> Result<(), perch_firmware::repository::RepositoryError> {
//! let repository = Repository::new(primary, 0, Some(64 << 20), Vec::new());
//! let mut digits = ModelConfig::new("models/digits-mlp/model.onnx");
//! digits.name = Some("digits-mlp".into());
//! repository.configure(digits)?;
//! repository.load("digits-mlp", None)?; // blocks: loads, self-tests, warms up
//! assert!(repository.get("digits-mlp").is_ok());
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use perch_runtime::engine::{DType, Dim, Model, TensorInfo};
use perch_runtime::error::Chain;
use perch_runtime::model_files;

use crate::config::ModelConfig;
use crate::load::{self, LoadError};
use crate::service::describe::IndexEntry;
use crate::service::{InferenceService, ServiceError};

/// Why a model could not be loaded or unloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError {
    /// No model of that name is configured or loaded.
    #[error("no model named {0:?} in the repository")]
    UnknownModel(String),
    /// The primary model serves MQTT, the sensor and updates, and stays.
    #[error(
        "model {0:?} is the primary model (MQTT, the sensor and over-the-air updates use it) \
         and cannot be unloaded"
    )]
    Primary(String),
    /// A load named a path for a model that is already loaded.
    #[error("model {0:?} is loaded: unload it before loading another file under its name")]
    Loaded(String),
    /// Nothing says where the model is.
    #[error(
        "model {0:?} is not configured: give a signed bundle as \
         {{\"parameters\": {{\"path\": \"...\"}}}}"
    )]
    NoPath(String),
    /// Two models of the repository have the same name.
    #[error("two models are named {0:?}")]
    Duplicate(String),
    /// A path given in a load request is not a signed bundle.
    #[error("{}: only a signed bundle may be loaded by path", path.display())]
    NotABundle {
        /// The path.
        path: PathBuf,
    },
    /// The load request's body is not what the repository extension takes.
    #[error("the load request's body: {0}")]
    BadRequest(String),
    /// The model's file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The model or bundle did not load or verify.
    #[error("cannot load model {name:?}")]
    Load {
        /// The model's name.
        name: String,
        /// Why (boxed: it is large, and rare).
        #[source]
        source: Box<LoadError>,
    },
    /// The file holds a model of another name.
    #[error("{} holds model {found:?}, not {name:?}", path.display())]
    NameMismatch {
        /// The name asked for.
        name: String,
        /// The name the bundle gives its model.
        found: String,
        /// The file.
        path: PathBuf,
    },
    /// Loading the model would take the loaded models over the memory budget.
    #[error(
        "model {name:?} needs about {needed} bytes, {in_use} bytes of the memory budget of \
         {budget} bytes are in use: unload a model or raise memory_budget"
    )]
    OverBudget {
        /// The model's name.
        name: String,
        /// Its estimated memory ([`estimate`]; its file's size before it is loaded).
        needed: u64,
        /// The estimated memory of the models loaded.
        in_use: u64,
        /// The budget.
        budget: u64,
    },
}

impl RepositoryError {
    /// 404 for an unknown model, 400 for everything else (as Triton answers a failed
    /// load).
    pub fn http_status(&self) -> u16 {
        match self {
            RepositoryError::UnknownModel(_) => 404,
            _ => 400,
        }
    }
}

/// The models a device serves. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    budget: Option<u64>,
    /// The keys a bundle given by path in a load request must be signed with.
    trusted_keys: Vec<PathBuf>,
    /// The primary model first, then the others in configuration order.
    models: RwLock<Vec<Entry>>,
    /// Held for a whole load, so that two loads cannot both fit a budget only one fits.
    loading: Mutex<()>,
}

#[derive(Debug)]
struct Entry {
    /// The name it is asked for by (a served model answers to its own id's name).
    name: String,
    config: Option<ModelConfig>,
    /// The service and its estimated memory, while loaded.
    served: Option<(InferenceService, u64)>,
    /// Why it is not served, while not.
    reason: String,
    /// The growth of the agent's resident memory over its last load by the
    /// repository, bytes.
    rss_delta: Option<u64>,
}

impl Entry {
    fn answers_to(&self, name: &str) -> bool {
        match &self.served {
            Some((service, _)) => service.model_id().name.as_str() == name,
            None => self.name == name,
        }
    }
}

/// The entry of the model `name`, to change.
fn named<'m>(models: &'m mut [Entry], name: &str) -> Result<&'m mut Entry, RepositoryError> {
    models
        .iter_mut()
        .find(|e| e.answers_to(name))
        .ok_or_else(|| RepositoryError::UnknownModel(name.into()))
}

impl From<InferenceService> for Repository {
    /// A repository of one model, without a budget.
    fn from(service: InferenceService) -> Repository {
        Repository::new(service, 0, None, Vec::new())
    }
}

impl Repository {
    /// A repository serving `primary`, loaded from a file of `primary_file_bytes`, with
    /// a memory budget in bytes (`None`: none), verifying bundles loaded by path with
    /// `trusted_keys`. The primary model's memory counts against the budget but is
    /// never refused.
    pub fn new(
        primary: InferenceService,
        primary_file_bytes: u64,
        budget: Option<u64>,
        trusted_keys: Vec<PathBuf>,
    ) -> Repository {
        let bytes = estimate(primary.served().model(), primary_file_bytes);
        let entry = Entry {
            name: primary.model_id().name.to_string(),
            config: None,
            served: Some((primary, bytes)),
            reason: String::new(),
            rss_delta: None,
        };
        Repository {
            inner: Arc::new(Inner {
                budget,
                trusted_keys,
                models: RwLock::new(vec![entry]),
                loading: Mutex::new(()),
            }),
        }
    }

    /// Adds `config` (whose `name` names it) as a model that can be loaded; it is not
    /// loaded yet.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::Duplicate`]: a model of that name is already known.
    pub fn configure(&self, config: ModelConfig) -> Result<(), RepositoryError> {
        let name = config.name.clone().unwrap_or_default();
        let mut models = self.write();
        if models.iter().any(|e| e.answers_to(&name)) {
            return Err(RepositoryError::Duplicate(name));
        }
        models.push(Entry {
            name,
            config: Some(config),
            served: None,
            reason: "not loaded".into(),
            rss_delta: None,
        });
        Ok(())
    }

    /// Serves `service`, already loaded (by an embedding program, or a test), with an
    /// estimated memory of `bytes`, outside the budget. It cannot be loaded again once
    /// unloaded.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::Duplicate`]: a model of that name is already known.
    pub fn insert(&self, service: InferenceService, bytes: u64) -> Result<(), RepositoryError> {
        let name = service.model_id().name.to_string();
        let mut models = self.write();
        if models.iter().any(|e| e.answers_to(&name)) {
            return Err(RepositoryError::Duplicate(name));
        }
        models.push(Entry {
            name,
            config: None,
            served: Some((service, bytes)),
            reason: String::new(),
            rss_delta: None,
        });
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        self.inner
            .models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Entry>> {
        self.inner
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The memory budget in bytes, if there is one.
    pub fn budget(&self) -> Option<u64> {
        self.inner.budget
    }

    /// The primary model's service.
    pub fn primary(&self) -> InferenceService {
        let models = self.read();
        let (service, _) = models[0].served.as_ref().expect("the primary stays loaded");
        service.clone()
    }

    /// The service of the model named `name`, for one request.
    ///
    /// # Errors
    ///
    /// [`ServiceError::UnknownModel`], or [`ServiceError::Unavailable`] with the reason
    /// for a model that is configured but not loaded.
    pub fn get(&self, name: &str) -> Result<InferenceService, ServiceError> {
        let models = self.read();
        match models.iter().find(|e| e.answers_to(name)) {
            Some(Entry {
                served: Some((service, _)),
                ..
            }) => Ok(service.clone()),
            Some(entry) => Err(ServiceError::Unavailable {
                name: name.to_string(),
                reason: entry.reason.clone(),
            }),
            None => Err(ServiceError::UnknownModel(name.to_string())),
        }
    }

    /// Every loaded model's service, the primary first.
    pub fn loaded(&self) -> Vec<InferenceService> {
        let models = self.read();
        models
            .iter()
            .filter_map(|e| e.served.as_ref().map(|(s, _)| s.clone()))
            .collect()
    }

    /// The estimated memory of the loaded models, in bytes.
    pub fn in_use(&self) -> u64 {
        in_use(&self.read())
    }

    /// The repository index: every model, loaded or not.
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.read();
        models
            .iter()
            .map(|e| match &e.served {
                Some((service, bytes)) => {
                    let id = service.model_id();
                    IndexEntry {
                        name: id.name.to_string(),
                        version: Some(id.version.to_string()),
                        reason: (!service.ready()).then(|| "the model is not ready".into()),
                        estimated_bytes: Some(*bytes),
                        rss_delta_bytes: e.rss_delta,
                    }
                }
                None => IndexEntry {
                    name: e.name.clone(),
                    version: e
                        .config
                        .as_ref()
                        .and_then(|c| c.version)
                        .map(|v| v.to_string()),
                    reason: Some(e.reason.clone()),
                    estimated_bytes: None,
                    rss_delta_bytes: None,
                },
            })
            .collect()
    }

    /// Loads the model `name`: from `path` (a signed bundle, verified against the
    /// trusted keys) when given, else from its configuration. Loading a model that is
    /// loaded, without a path, does nothing. Blocks while the model loads, self-tests
    /// and warms up; the other models serve meanwhile. A model that fails its
    /// self-test is loaded and served as not ready, as at start.
    ///
    /// # Errors
    ///
    /// See [`RepositoryError`]; on any of them the models loaded before are untouched,
    /// and a configured model's index entry says why it is not served.
    pub fn load(
        &self,
        name: &str,
        path: Option<PathBuf>,
    ) -> Result<InferenceService, RepositoryError> {
        let _one_at_a_time = self
            .inner
            .loading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let config = {
            let models = self.read();
            let entry = models.iter().find(|e| e.answers_to(name));
            match (entry, path) {
                (
                    Some(Entry {
                        served: Some(_), ..
                    }),
                    Some(_),
                ) => return Err(RepositoryError::Loaded(name.into())),
                (
                    Some(Entry {
                        served: Some((service, _)),
                        ..
                    }),
                    None,
                ) => return Ok(service.clone()),
                (_, Some(path)) => {
                    if !model_files::is_bundle_file(&path) {
                        return Err(RepositoryError::NotABundle { path });
                    }
                    let mut config = ModelConfig::new(path);
                    config.trusted_keys.clone_from(&self.inner.trusted_keys);
                    config.name = Some(name.into());
                    config
                }
                (
                    Some(Entry {
                        config: Some(c), ..
                    }),
                    None,
                ) => c.clone(),
                (Some(_), None) => return Err(RepositoryError::NoPath(name.into())),
                (None, None) => return Err(RepositoryError::UnknownModel(name.into())),
            }
        };
        let rss_before = crate::process::rss_kib();
        let result = self.load_config(name, &config);
        // Loads are one at a time, but requests on the other models run meanwhile: a
        // measure, not an exact account of this model's memory.
        let rss_delta = match (rss_before, crate::process::rss_kib()) {
            (Some(before), Some(after)) => Some(u64::from(after.saturating_sub(before)) * 1024),
            _ => None,
        };
        let mut models = self.write();
        let at = match models.iter().position(|e| e.answers_to(name)) {
            Some(at) => at,
            None => {
                models.push(Entry {
                    name: name.into(),
                    config: None,
                    served: None,
                    reason: String::new(),
                    rss_delta: None,
                });
                models.len() - 1
            }
        };
        let result = result.and_then(|(service, bytes)| {
            let in_use = in_use(&models);
            match self.inner.budget {
                Some(budget) if in_use.saturating_add(bytes) > budget => {
                    Err(RepositoryError::OverBudget {
                        name: name.into(),
                        needed: bytes,
                        in_use,
                        budget,
                    })
                }
                _ => Ok((service, bytes)),
            }
        });
        let entry = &mut models[at];
        entry.config = Some(config);
        match result {
            Ok((service, bytes)) => {
                entry.served = Some((service.clone(), bytes));
                entry.reason.clear();
                entry.rss_delta = rss_delta;
                if let Some(delta) = rss_delta {
                    log::info!(
                        "model {name}: estimated {bytes} bytes; resident memory grew by {delta} \
                         bytes while it loaded"
                    );
                }
                Ok(service)
            }
            Err(e) => {
                entry.reason = format!("load failed: {}", Chain(&e));
                Err(e)
            }
        }
    }

    /// Loads, self-tests and warms up `config`, within the budget by its file's size.
    fn load_config(
        &self,
        name: &str,
        config: &ModelConfig,
    ) -> Result<(InferenceService, u64), RepositoryError> {
        let path = &config.path;
        let file_bytes = std::fs::metadata(path)
            .map_err(|source| RepositoryError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        if let Some(budget) = self.inner.budget {
            let in_use = self.in_use();
            if in_use.saturating_add(file_bytes) > budget {
                return Err(RepositoryError::OverBudget {
                    name: name.into(),
                    needed: file_bytes,
                    in_use,
                    budget,
                });
            }
        }
        let loaded = load::load(config).map_err(|source| RepositoryError::Load {
            name: name.into(),
            source: Box::new(source),
        })?;
        if loaded.id.name.as_str() != name {
            return Err(RepositoryError::NameMismatch {
                name: name.into(),
                found: loaded.id.name.to_string(),
                path: path.clone(),
            });
        }
        let bytes = estimate(&loaded.model, file_bytes);
        let primary = self.primary();
        let service = InferenceService::new(loaded.model, loaded.id.clone(), *primary.limits())
            .with_features(loaded.features);
        service.set_ready(loaded.boot.ready());
        match &loaded.boot.failure {
            None => log::info!("model {} from {}: loaded", loaded.id, loaded.source),
            Some(reason) => log::error!(
                "model {} from {} FAILED its self-test and will not serve: {reason}",
                loaded.id,
                loaded.source
            ),
        }
        Ok((service, bytes))
    }

    /// Makes `config` what the next load of the model `name` loads (an over-the-air
    /// update's slot, or the configured file after a roll-back), without loading it.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::UnknownModel`].
    pub fn set_config(&self, name: &str, config: ModelConfig) -> Result<(), RepositoryError> {
        let mut models = self.write();
        named(&mut models, name)?.config = Some(config);
        Ok(())
    }

    /// Serves `loaded`, loaded from `config`, as the model `name` from now on: a new
    /// version from an over-the-air update, or the version a roll-back returns to. A
    /// loaded model's service swaps it in (requests in flight finish on the old
    /// version; its estimated memory follows, outside the budget: the update is loaded
    /// already); a model not loaded stays unloaded. Either way `config` is what its
    /// next load loads. Returns whether it serves.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::UnknownModel`].
    pub fn update(
        &self,
        name: &str,
        loaded: load::Loaded,
        config: ModelConfig,
    ) -> Result<bool, RepositoryError> {
        let file_bytes = std::fs::metadata(&loaded.path).map_or(0, |m| m.len());
        let bytes = estimate(&loaded.model, file_bytes);
        let mut models = self.write();
        let entry = named(&mut models, name)?;
        entry.config = Some(config);
        let Some((service, estimated)) = entry.served.as_mut() else {
            return Ok(false);
        };
        let ready = loaded.boot.ready();
        service.replace(loaded.model, loaded.id, loaded.features);
        service.set_ready(ready);
        *estimated = bytes;
        entry.rss_delta = None;
        Ok(true)
    }

    /// Takes the model `name` out of the repository: new requests for it are answered
    /// 404 "not ready" at once, requests in flight finish on the returned service
    /// (whose memory goes when the last of them returns: see
    /// [`InferenceService::handles`]). Unloading a model that is not loaded does
    /// nothing and returns `None`.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::UnknownModel`], or [`RepositoryError::Primary`].
    pub fn unload(&self, name: &str) -> Result<Option<InferenceService>, RepositoryError> {
        let mut models = self.write();
        let Some(at) = models.iter().position(|e| e.answers_to(name)) else {
            return Err(RepositoryError::UnknownModel(name.into()));
        };
        if at == 0 {
            return Err(RepositoryError::Primary(name.into()));
        }
        let entry = &mut models[at];
        entry.name = name.into();
        entry.reason = "unloaded".into();
        Ok(entry.served.take().map(|(service, _)| service))
    }
}

fn in_use(models: &[Entry]) -> u64 {
    models
        .iter()
        .filter_map(|e| e.served.as_ref().map(|(_, b)| *b))
        .fold(0u64, u64::saturating_add)
}

/// A model's estimated memory in bytes: `file_bytes` (its file's size: the weights)
/// plus one inference's inputs and outputs at batch 1 (symbolic dimensions as 1). A
/// lower bound: intermediate activations are not counted (see the
/// [module docs](self)).
pub fn estimate(model: &Model, file_bytes: u64) -> u64 {
    let meta = model.metadata();
    let io: u64 = meta
        .inputs
        .iter()
        .chain(&meta.outputs)
        .map(tensor_bytes)
        .fold(0, u64::saturating_add);
    file_bytes.saturating_add(io)
}

fn tensor_bytes(info: &TensorInfo) -> u64 {
    let elements = info
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as u64,
            _ => 1,
        })
        .fold(1u64, u64::saturating_mul);
    let size = match info.dtype {
        DType::I8 | DType::U8 | DType::Bool => 1,
        DType::F16 | DType::I16 => 2,
        DType::F32 | DType::I32 => 4,
        _ => 8,
    };
    elements.saturating_mul(size)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use perch_runtime::bundle;
    use perch_runtime::engine::{Golden, LoadOptions, TensorData};
    use perch_runtime::wire::{ModelId, Version};

    use super::*;
    use crate::service::{InferRequest, RequestTensor, ServiceLimits, TensorValues};

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn file_size(model: &str) -> u64 {
        std::fs::metadata(models().join(model).join("model.onnx"))
            .unwrap()
            .len()
    }

    /// R1 (digits-mlp) as the primary model.
    fn primary(budget: Option<u64>, keys: Vec<PathBuf>) -> Repository {
        let path = models().join("digits-mlp/model.onnx");
        let model = Model::load(&path, &LoadOptions::new()).unwrap();
        let id = ModelId::new("digits-mlp", Version::new(1, 0, 0)).unwrap();
        let service = InferenceService::new(model, id, ServiceLimits::DEFAULT);
        Repository::new(service, file_size("digits-mlp"), budget, keys)
    }

    fn configured(model: &str) -> ModelConfig {
        let mut config = ModelConfig::new(models().join(model).join("model.onnx"));
        config.name = Some(model.into());
        config.warmup_runs = 1;
        config
    }

    /// The model's golden input as a request, and its golden output.
    fn golden(model: &str) -> (InferRequest, Vec<f32>) {
        let golden = Golden::load(models().join(model).join("golden")).unwrap();
        let floats = |view: perch_runtime::engine::TensorView<'_>| match view.data() {
            TensorData::F32(d) => d.to_vec(),
            other => panic!("{}", other.dtype()),
        };
        let input = &golden.inputs[0];
        let request = InferRequest {
            id: None,
            inputs: vec![RequestTensor {
                name: String::new(),
                shape: input.shape().to_vec(),
                data: TensorValues::F32(floats(input.view())),
            }],
        };
        (request, floats(golden.outputs[0].view()))
    }

    fn assert_answers_golden(repository: &Repository, model: &str) {
        let (request, want) = golden(model);
        let response = repository.get(model).unwrap().infer(&request).unwrap();
        assert_eq!(response.model_name, model);
        let TensorValues::F32(got) = &response.outputs[0].data else {
            panic!("{response:?}")
        };
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{model}: {worst}");
    }

    fn states(repository: &Repository) -> Vec<(String, bool)> {
        repository
            .index()
            .into_iter()
            .map(|e| (e.name, e.reason.is_none()))
            .collect()
    }

    #[test]
    fn two_models_serve_at_once_each_answering_under_its_own_name() {
        let repository = primary(None, Vec::new());
        repository.configure(configured("kws-dscnn")).unwrap();
        repository.load("kws-dscnn", None).unwrap();
        assert_answers_golden(&repository, "digits-mlp");
        assert_answers_golden(&repository, "kws-dscnn");
        let kws = repository.get("kws-dscnn").unwrap();
        assert_eq!(kws.totals().ok, 1, "each model counts its own requests");
        assert_eq!(repository.primary().totals().ok, 1);
        let err = repository.get("mobilenet").unwrap_err();
        assert_eq!(err.http_status(), 404);
        assert_eq!(
            err.to_string(),
            "no model named \"mobilenet\" is served here"
        );
    }

    #[test]
    fn a_model_loads_unloads_and_loads_again_and_the_index_follows() {
        let repository = primary(None, Vec::new());
        repository.configure(configured("kws-dscnn")).unwrap();
        assert_eq!(
            states(&repository),
            [("digits-mlp".into(), true), ("kws-dscnn".into(), false)]
        );
        let err = repository.get("kws-dscnn").unwrap_err();
        assert_eq!(err.http_status(), 404);
        assert_eq!(
            err.to_string(),
            "model \"kws-dscnn\" is not ready: not loaded"
        );

        repository.load("kws-dscnn", None).unwrap();
        assert_eq!(states(&repository)[1], ("kws-dscnn".into(), true));
        let before = repository.in_use();
        let unloaded = repository.unload("kws-dscnn").unwrap().unwrap();
        assert_eq!(unloaded.handles(), 1, "nothing else holds the model");
        assert!(repository.in_use() < before);
        assert_eq!(
            repository.get("kws-dscnn").unwrap_err().to_string(),
            "model \"kws-dscnn\" is not ready: unloaded"
        );
        assert!(repository.unload("kws-dscnn").unwrap().is_none());
        repository.load("kws-dscnn", None).unwrap();
        assert_answers_golden(&repository, "kws-dscnn");

        let err = repository.unload("digits-mlp").unwrap_err();
        assert!(matches!(err, RepositoryError::Primary(_)), "{err}");
        assert_eq!(repository.unload("nope").unwrap_err().http_status(), 404);
        assert_eq!(
            repository.load("nope", None).unwrap_err().http_status(),
            404
        );
        let err = repository.configure(configured("kws-dscnn")).unwrap_err();
        assert_eq!(err.to_string(), "two models are named \"kws-dscnn\"");
    }

    #[test]
    fn a_model_the_engine_refuses_is_a_load_error_and_one_failing_its_self_test_serves_not_ready() {
        let repository = primary(None, Vec::new());
        let mut broken = ModelConfig::new(models().join("fixtures/per-axis-dq-opset11.onnx"));
        broken.name = Some("broken".into());
        repository.configure(broken).unwrap();
        let err = repository.load("broken", None).unwrap_err();
        assert_eq!(err.http_status(), 400);
        let text = Chain(&err).to_string();
        assert!(
            text.starts_with("cannot load model \"broken\": cannot load ")
                && text.contains("DequantizeLinear"),
            "{text}"
        );
        assert!(repository.index()[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("DequantizeLinear"));

        let mut failing = configured("anomaly-ae");
        failing.variant = Some("w8".into()); // golden outputs of another model
        repository.configure(failing).unwrap();
        let service = repository.load("anomaly-ae", None).unwrap();
        assert!(!service.ready());
        assert_eq!(
            repository.index()[2].reason.as_deref(),
            Some("the model is not ready")
        );
        let health = crate::service::describe::health(&repository.loaded());
        let body: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
        assert_eq!(
            (health.status, body["status"].as_str()),
            (200, Some("degraded"))
        );
        assert_answers_golden(&repository, "digits-mlp");
    }

    #[test]
    fn the_index_gives_a_loaded_models_estimate_and_how_much_resident_memory_its_load_took() {
        let repository = primary(None, Vec::new());
        for model in ["kws-dscnn", "mobilenetv2-035"] {
            repository.configure(configured(model)).unwrap();
            let service = repository.load(model, None).unwrap();
            let entry = repository
                .index()
                .into_iter()
                .find(|e| e.name == model)
                .unwrap();
            let estimate = estimate(service.served().model(), file_size(model));
            assert_eq!(entry.estimated_bytes, Some(estimate));
            let measured = entry.rss_delta_bytes.expect("Linux reports VmRSS");
            // The figures for the docs: the estimate is a lower bound.
            eprintln!("{model}: estimated {estimate} bytes, resident memory +{measured} bytes");
        }
        let primary = &repository.index()[0];
        assert!(primary.estimated_bytes.is_some() && primary.rss_delta_bytes.is_none());
        repository.unload("kws-dscnn").unwrap();
        let entry = &repository.index()[1];
        assert_eq!((entry.estimated_bytes, entry.rss_delta_bytes), (None, None));
    }

    #[test]
    fn a_request_in_flight_finishes_on_a_model_unloaded_under_it() {
        let repository = primary(None, Vec::new());
        repository.configure(configured("kws-dscnn")).unwrap();
        repository.load("kws-dscnn", None).unwrap();
        let taken = repository.get("kws-dscnn").unwrap(); // as a request takes it
        let unloaded = repository.unload("kws-dscnn").unwrap().unwrap();
        assert_eq!(unloaded.handles(), 2, "the request still holds the model");
        let (request, _) = golden("kws-dscnn");
        assert!(taken.infer(&request).is_ok());
        drop(taken);
        assert_eq!(unloaded.handles(), 1);
    }

    #[test]
    fn a_load_over_the_budget_is_refused_with_the_figures_and_the_others_keep_serving() {
        let repository = primary(None, Vec::new());
        let in_use = repository.in_use();
        assert!(
            in_use > file_size("digits-mlp"),
            "inputs and outputs count too"
        );
        // Room for R1 and a little, not for R2's 105 KB file.
        let budget = in_use + 50_000;
        let repository = primary(Some(budget), Vec::new());
        repository.configure(configured("kws-dscnn")).unwrap();
        let err = repository.load("kws-dscnn", None).unwrap_err();
        let RepositoryError::OverBudget {
            needed,
            in_use: used,
            budget: b,
            ..
        } = err
        else {
            panic!("{err}")
        };
        assert_eq!((needed, used, b), (file_size("kws-dscnn"), in_use, budget));
        assert_eq!(err.http_status(), 400);
        let text = err.to_string();
        assert!(
            text.contains(&format!("needs about {needed} bytes"))
                && text.contains(&format!("{in_use} bytes of the memory budget of {budget}")),
            "{text}"
        );
        assert_answers_golden(&repository, "digits-mlp");
        let entry = &repository.index()[1];
        assert!(
            entry.reason.as_deref().unwrap().contains("memory budget"),
            "{entry:?}"
        );
        // A model that fits loads.
        repository.configure(configured("iris-mlp")).unwrap();
        repository.load("iris-mlp", None).unwrap();
        assert!(repository.in_use() <= budget);
    }

    #[test]
    fn bundles_that_fail_verification_or_are_not_bundles_are_refused_and_serving_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let key = bundle::SigningKey::from_bytes(&[7; 32]);
        let public = dir.path().join("fleet.pub");
        std::fs::write(&public, bundle::verifying_key_file(&key.verifying_key())).unwrap();
        let repository = primary(None, vec![public]);
        let packed = crate::testing::pack_kws(&key, 1, "1.2.3");

        let good = dir.path().join("kws.perch");
        std::fs::write(&good, packed.as_bytes()).unwrap();
        let mut tampered = packed.as_bytes().to_vec();
        let at = tampered.len() / 2;
        tampered[at] ^= 0x55;
        let bad = dir.path().join("tampered.perch");
        std::fs::write(&bad, &tampered).unwrap();
        let other = bundle::SigningKey::from_bytes(&[8; 32]);
        let foreign = dir.path().join("foreign.perch");
        std::fs::write(
            &foreign,
            crate::testing::pack_kws(&other, 1, "1.2.3").as_bytes(),
        )
        .unwrap();

        for path in [&bad, &foreign] {
            let err = repository.load("kws", Some(path.clone())).unwrap_err();
            assert!(matches!(err, RepositoryError::Load { .. }), "{err}");
            assert_eq!(err.http_status(), 400);
            let text = Chain(&err).to_string();
            assert!(text.contains("cannot load bundle"), "{text}");
        }
        let plain = models().join("kws-dscnn/model.onnx");
        let err = repository.load("kws", Some(plain)).unwrap_err();
        assert!(matches!(err, RepositoryError::NotABundle { .. }), "{err}");
        let err = repository.load("other", Some(good.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} holds model \"kws\", not \"other\"", good.display())
        );
        assert!(repository.get("kws").is_err());
        assert_answers_golden(&repository, "digits-mlp");

        repository.load("kws", Some(good.clone())).unwrap();
        let kws = repository.get("kws").unwrap();
        assert_eq!(kws.model_id().version.to_string(), "1.2.3");
        let err = repository.load("kws", Some(good)).unwrap_err();
        assert!(matches!(err, RepositoryError::Loaded(_)), "{err}");
    }
}
