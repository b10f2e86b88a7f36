//! Loading a model file into an optimized plan, and what the model looks like.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use std::collections::HashMap;

use tract_core::internal::{Symbol, TDim, TractResult};
use tract_core::model::TypedModel;
use tract_core::plan::SimplePlan;
use tract_core::prelude::{Framework, TypedSimplePlan};

use super::error::{chain, EngineError, Result};
use super::metadata::{Metadata, ModelFormat, NonFinitePolicy};
use super::session::{Outputs, Session};
use super::tensor::{DType, Dim, Input, TensorInfo};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub(crate) input_shapes: Vec<(String, Vec<usize>)>,
    pub(crate) non_finite: NonFinitePolicy,
    pub(crate) perch_kernels: Option<bool>,
}

/// The environment variable that turns Perch's kernels off (`off`, `0` or `false`)
/// when [`LoadOptions::perch_kernels`] does not decide.
pub const PERCH_KERNELS_ENV: &str = "PERCH_KERNELS";

impl LoadOptions {
    /// The defaults: shapes as the model declares them, non-finite inputs rejected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the shape of the named input (fixing a symbolic batch size, say).
    ///
    /// A fixed dimension of the model may not be changed for an NNEF archive, whose
    /// shapes are already typed; ONNX models are re-analysed with the new shape.
    pub fn input_shape(mut self, name: impl Into<String>, shape: &[usize]) -> Self {
        self.input_shapes.push((name.into(), shape.to_vec()));
        self
    }

    /// Sets the policy for NaN and infinite float inputs.
    pub fn non_finite(mut self, policy: NonFinitePolicy) -> Self {
        self.non_finite = policy;
        self
    }

    /// Whether Perch's kernels replace tract's operators where they cover a node (see
    /// [`crate::engine::internal::ops`]). Unset, they do unless `PERCH_KERNELS` is `off`, `0` or
    /// `false`. Off, the model runs on tract's operators only, for A/B measurement or
    /// as an escape hatch; operators an NNEF archive already holds stay.
    pub fn perch_kernels(mut self, on: bool) -> Self {
        self.perch_kernels = Some(on);
        self
    }

    /// Whether the kernel pass runs, from the option or the environment.
    pub fn kernels_on(&self) -> bool {
        self.perch_kernels.unwrap_or_else(|| {
            !matches!(
                std::env::var(PERCH_KERNELS_ENV).as_deref().map(str::trim),
                Ok("off" | "0" | "false")
            )
        })
    }
}

/// A model loaded and optimized, ready to run.
///
/// `Model` is cheap to share between threads; each thread runs it through its own
/// [`Session`].
#[derive(Debug, Clone)]
pub struct Model {
    plan: Arc<TypedSimplePlan>,
    meta: Arc<Metadata>,
    non_finite: NonFinitePolicy,
    /// Bounds of the inputs that feed index operands ([`super::guards`]).
    index_bounds: Arc<Vec<super::guards::IndexBound>>,
}

impl Model {
    /// Loads an ONNX model or an NNEF archive (see [`ModelFormat::detect`]).
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        match ModelFormat::detect(path)? {
            ModelFormat::Onnx => {
                let bytes = std::fs::read(path).map_err(|cause| EngineError::Io {
                    path: path.into(),
                    cause,
                })?;
                let dir = path.parent().and_then(Path::to_str);
                Self::onnx(&bytes, &path.display().to_string(), dir, options, path)
            }
            ModelFormat::Nnef => {
                let what = path.display().to_string();
                let typed = contain("reading the NNEF archive", || {
                    nnef_framework().model_for_path(path)
                })
                .map_err(|e| malformed(&what, e))?;
                Self::from_typed(typed, Source::nnef(), &options.input_shapes, options)
            }
        }
    }

    /// Loads an ONNX model from memory (a bundle's payload, say).
    pub fn from_onnx_bytes(bytes: &[u8], options: &LoadOptions) -> Result<Model> {
        Self::onnx(bytes, "ONNX bytes", None, options, Path::new("<memory>"))
    }

    /// Loads an NNEF archive (tar, optionally gzipped) from memory.
    pub fn from_nnef_bytes(bytes: &[u8], options: &LoadOptions) -> Result<Model> {
        let typed = contain("reading the NNEF archive", || {
            nnef_framework().model_for_read(&mut &*bytes)
        })
        .map_err(|e| malformed("NNEF bytes", e))?;
        Self::from_typed(typed, Source::nnef(), &options.input_shapes, options)
    }

    #[cfg(feature = "onnx")]
    fn onnx(
        bytes: &[u8],
        what: &str,
        dir: Option<&str>,
        options: &LoadOptions,
        _path: &Path,
    ) -> Result<Model> {
        use tract_hir::infer::Factoid;
        use tract_hir::prelude::{InferenceFact, InferenceModelExt};
        use tract_onnx::tract_hir;

        let onnx = super::onnx_contrib::onnx_framework();
        let proto =
            onnx.proto_model_for_read(&mut &*bytes)
                .map_err(|e| EngineError::Malformed {
                    what: what.into(),
                    reason: format!("it does not decode as an ONNX protobuf ({})", chain(&e)),
                })?;
        super::onnx_check::check(&proto, &onnx.op_register)?;
        super::guards::check_onnx_dims(&proto)?;
        let opset = super::onnx_check::default_opset(&proto);
        let mut ops = BTreeMap::new();
        for node in proto.graph.iter().flat_map(|g| g.node.iter()) {
            *ops.entry(node.op_type.clone()).or_insert(0) += 1;
        }
        let producer = Some(format!(
            "{} {}",
            proto.producer_name, proto.producer_version
        ))
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().to_string());

        let parsed = contain("parsing the ONNX graph", || onnx.parse(&proto, dir))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(EngineError::Malformed {
                what: what.into(),
                reason: format!(
                    "nodes read tensors that nothing defines: {}",
                    parsed.unresolved_inputs.join(", ")
                ),
            });
        }
        let mut model = parsed.model;
        for (name, shape) in &options.input_shapes {
            let ix = input_index(model.input_outlets().map_err(prep)?, name, |o| {
                model.node(o.node).name.clone()
            })?;
            let dt = model.input_fact(ix).map_err(prep)?.datum_type.concretize();
            let fact = match dt {
                Some(dt) => InferenceFact::dt_shape(dt, shape),
                None => InferenceFact::shape(shape),
            };
            model.set_input_fact(ix, fact).map_err(prep)?;
        }
        let typed = contain("analysing and typing the graph", move || model.into_typed())?;
        let source = Source {
            format: ModelFormat::Onnx,
            opset,
            producer,
            op_histogram: Some(ops),
        };
        // The shapes were applied before typing, where ONNX allows changing any dimension.
        Self::from_typed(typed, source, &[], options)
    }

    #[cfg(not(feature = "onnx"))]
    fn onnx(
        _bytes: &[u8],
        _what: &str,
        _dir: Option<&str>,
        _options: &LoadOptions,
        path: &Path,
    ) -> Result<Model> {
        Err(EngineError::OnnxDisabled { path: path.into() })
    }

    fn from_typed(
        mut typed: TypedModel,
        source: Source,
        input_shapes: &[(String, Vec<usize>)],
        options: &LoadOptions,
    ) -> Result<Model> {
        let non_finite = options.non_finite;
        if !input_shapes.is_empty() {
            typed = concretize(typed, input_shapes)?;
        }
        let Source {
            format,
            opset,
            producer,
            op_histogram,
        } = source;
        let op_histogram = op_histogram.unwrap_or_else(|| {
            let mut ops = BTreeMap::new();
            for node in typed.nodes() {
                let op = node.op.name();
                if op != "Source" && op != "Const" {
                    *ops.entry(op.to_string()).or_insert(0) += 1;
                }
            }
            ops
        });
        let typed = contain("decluttering the graph", move || {
            super::ops::declutter(typed)
        })?;
        let inputs = describe(&typed, typed.input_outlets().map_err(prep)?)?;
        let outputs = describe(&typed, typed.output_outlets().map_err(prep)?)?;
        let index_bounds = Arc::new(super::guards::index_bounds(&typed)?);
        let kernel_pass = options.kernels_on();
        let (typed, kernels) = if kernel_pass {
            contain("planning Perch's kernels", move || {
                super::ops::rewrite(typed, crate::kernels::Cpu::detect())
            })?
        } else {
            let kernels = super::ops::existing(&typed);
            (typed, kernels)
        };
        let optimized = contain("optimizing the graph", move || {
            super::ops::remove_barriers(typed.into_optimized()?)
        })?;
        let plan = contain("planning the execution", move || SimplePlan::new(optimized))?;
        let meta = Metadata {
            format,
            inputs,
            outputs,
            opset,
            op_histogram,
            producer,
            kernels,
            kernel_pass,
        };
        Ok(Model {
            plan,
            meta: Arc::new(meta),
            non_finite,
            index_bounds,
        })
    }

    /// The model's inputs, outputs and composition.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The optimized graph the engine runs; tools reach it through
    /// [`internal::ModelExt`](super::internal::ModelExt).
    pub(crate) fn optimized_model(&self) -> &TypedModel {
        self.plan.model()
    }

    /// A new session: the mutable state one thread needs to run the model.
    pub fn session(&self) -> Result<Session> {
        let state = contain("creating a session", || self.plan.spawn())?;
        Ok(Session::new(
            state,
            self.meta.clone(),
            self.non_finite,
            self.index_bounds.clone(),
        ))
    }

    /// Runs the model once in a fresh session; for repeated runs keep a [`Session`].
    pub fn run(&self, inputs: &[Input<'_>]) -> Result<Outputs> {
        self.session()?.run(inputs)
    }
}

/// What is known of a model from its source file, before the engine types it.
struct Source {
    format: ModelFormat,
    opset: Option<i64>,
    producer: Option<String>,
    /// Operators of the source file; `None` takes them from the typed graph.
    op_histogram: Option<BTreeMap<String, usize>>,
}

impl Source {
    fn nnef() -> Source {
        Source {
            format: ModelFormat::Nnef,
            opset: None,
            producer: None,
            op_histogram: None,
        }
    }
}

/// The NNEF framework the engine reads archives with: tract's core operators, Perch's
/// operators (registry `perch`) and, with the `onnx-ops` feature, tract's ONNX operator
/// extensions, so archives converted from ONNX load without the ONNX parser. The host
/// tools write archives with it.
pub fn nnef_framework() -> tract_nnef::internal::Nnef {
    let mut nnef = tract_nnef::nnef();
    nnef.registries.push(super::ops::registry());
    #[cfg(feature = "onnx-ops")]
    {
        use tract_onnx_opl::WithOnnx;
        nnef.enable_onnx();
    }
    nnef
}

/// Binds symbolic input dimensions of a typed model to the requested sizes.
fn concretize(typed: TypedModel, shapes: &[(String, Vec<usize>)]) -> Result<TypedModel> {
    let mut values: HashMap<Symbol, TDim> = HashMap::new();
    for (name, shape) in shapes {
        let outlets = typed.input_outlets().map_err(prep)?;
        let ix = input_index(outlets, name, |o| typed.node(o.node).name.clone())?;
        let fact = typed.input_fact(ix).map_err(prep)?;
        let dims: Vec<_> = fact.shape.iter().cloned().collect();
        if dims.len() != shape.len() {
            return Err(EngineError::Prepare {
                stage: "applying input shapes",
                reason: format!(
                    "input {name:?} has rank {}, the override {shape:?} has rank {}",
                    dims.len(),
                    shape.len()
                ),
            });
        }
        for (dim, want) in dims.iter().zip(shape) {
            match dim.to_i64() {
                Ok(fixed) if fixed as usize != *want => {
                    return Err(EngineError::Prepare {
                        stage: "applying input shapes",
                        reason: format!(
                        "input {name:?} has a fixed dimension {fixed} that {shape:?} would change"
                    ),
                    })
                }
                Ok(_) => {}
                Err(_) => {
                    for sym in dim.symbols() {
                        values.insert(sym, TDim::Val(*want as i64));
                    }
                }
            }
        }
    }
    contain("applying input shapes", || typed.set_symbols(&values))
}

fn input_index<O: Copy>(
    outlets: &[O],
    name: &str,
    name_of: impl Fn(&O) -> String,
) -> Result<usize> {
    outlets
        .iter()
        .position(|o| name_of(o) == name)
        .ok_or_else(|| EngineError::UnknownInput {
            name: name.into(),
            available: outlets.iter().map(&name_of).collect::<Vec<_>>().join(", "),
        })
}

fn describe(
    model: &TypedModel,
    outlets: &[tract_core::prelude::OutletId],
) -> Result<Vec<TensorInfo>> {
    outlets
        .iter()
        .map(|o| {
            let fact = model.outlet_fact(*o).map_err(prep)?;
            let name = model
                .outlet_label(*o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone());
            Ok(TensorInfo {
                name,
                shape: fact.shape.iter().map(Dim::from_tdim).collect(),
                dtype: DType::from_datum(fact.datum_type),
            })
        })
        .collect()
}

fn prep(e: tract_core::prelude::TractError) -> EngineError {
    EngineError::Prepare {
        stage: "reading the graph",
        reason: chain(&e),
    }
}

fn malformed(what: &str, e: EngineError) -> EngineError {
    match e {
        EngineError::Prepare { reason, .. } => EngineError::Malformed {
            what: what.into(),
            reason: with_registry_hint(reason),
        },
        other => other,
    }
}

/// How tract says an archive needs the ONNX operator extensions it was not given.
const MISSING_ONNX_REGISTRY: &str = "Registry not found Identifier(\"tract_onnx\")";

/// Says which build loads an archive that needs the ONNX operator extensions.
fn with_registry_hint(reason: String) -> String {
    if cfg!(not(feature = "onnx-ops")) && reason.contains(MISSING_ONNX_REGISTRY) {
        format!(
            "{reason} (the archive uses tract's ONNX operator extensions, which this \
             build leaves out: build perchd with the `onnx-ops` feature)"
        )
    } else {
        reason
    }
}

/// Runs an engine step, turning its errors and panics into [`EngineError`]s.
///
/// The engine is not supposed to panic, but a model file is untrusted input and a
/// device agent must survive whatever it contains.
pub(crate) fn contain<T>(stage: &'static str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(EngineError::Prepare {
            stage,
            reason: chain(&e),
        }),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(EngineError::EnginePanic { stage, message })
        }
    }
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use super::*;

    /// The hint of a build without `onnx-ops` relies on tract's wording: an archive
    /// written with the ONNX extensions, read without them, must fail with it.
    #[test]
    fn tract_names_a_missing_onnx_registry_as_the_hint_expects() {
        let tar = crate::testing::nnef_tar(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/fixtures/onnx-extension-op.onnx"),
        );
        let err = tract_nnef::nnef().model_for_read(&mut &*tar).unwrap_err();
        let reason = chain(&err);
        assert!(reason.contains(MISSING_ONNX_REGISTRY), "{reason}");
        // ... and the engine (with `onnx-ops` here) loads it.
        assert!(Model::from_nnef_bytes(&tar, &LoadOptions::new()).is_ok());
    }
}
