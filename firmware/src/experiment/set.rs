//! The experiments a device runs: each with its router and figures, and the shadow
//! queue they share. Cheap to clone (an `Arc`); the set can be replaced whole while
//! serving ([`Experiments::replace`]), requests in flight finishing on the experiment
//! they started with.

use std::sync::{Arc, PoisonError, RwLock};

use serde_json::{json, Value};

use super::config::{validate_all, ExperimentError, ExperimentSpec, ShadowSpec, VariantSpec};
use super::router::Router;
use super::shadow::{ShadowJob, ShadowQueue};
use super::stats::{self, ShadowStats, VariantStats};

/// One running experiment.
#[derive(Debug)]
pub struct Experiment {
    spec: ExperimentSpec,
    router: Router,
    variants: Vec<VariantStats>,
    shadows: Vec<Arc<ShadowStats>>,
}

impl Experiment {
    /// The experiment `spec` describes, with zeroed figures.
    ///
    /// # Errors
    ///
    /// Whatever [`ExperimentSpec::validate`] finds.
    pub fn new(spec: ExperimentSpec) -> Result<Experiment, ExperimentError> {
        let router = Router::new(&spec)?;
        Ok(Experiment {
            variants: spec
                .variants
                .iter()
                .map(|_| VariantStats::default())
                .collect(),
            shadows: spec.shadows.iter().map(|_| Arc::default()).collect(),
            router,
            spec,
        })
    }

    /// What it was made from.
    pub fn spec(&self) -> &ExperimentSpec {
        &self.spec
    }

    /// The index of the variant that serves `entity` (the default without one).
    pub fn route(&self, entity: Option<&[u8]>) -> usize {
        self.router.route(entity)
    }

    /// The variant at `index` (from [`route`](Self::route)); the default for an index
    /// out of range.
    pub fn variant(&self, index: usize) -> &VariantSpec {
        self.spec
            .variants
            .get(index)
            .unwrap_or(&self.spec.variants[self.router.default()])
    }

    /// The figures of the variant at `index`, if there is one.
    pub fn variant_stats(&self, index: usize) -> Option<&VariantStats> {
        self.variants.get(index)
    }

    /// Each shadow and its figures.
    pub fn shadows(&self) -> impl Iterator<Item = (&ShadowSpec, &Arc<ShadowStats>)> {
        self.spec.shadows.iter().zip(&self.shadows)
    }

    /// The `GET /v2/experiments/{name}` document: the experiment's settings and each
    /// variant's and shadow's figures.
    pub fn status(&self) -> Value {
        let variants: Vec<Value> = self
            .spec
            .variants
            .iter()
            .zip(&self.variants)
            .map(|(v, s)| {
                let mut figures = stats::variant_json(s);
                figures["name"] = json!(v.name);
                figures["model"] = json!(v.model);
                figures["share_percent"] = json!(f64::from(v.share.basis_points()) / 100.0);
                figures["default"] = json!(v.name == self.spec.default);
                figures
            })
            .collect();
        let shadows: Vec<Value> = self
            .spec
            .shadows
            .iter()
            .zip(&self.shadows)
            .map(|(v, s)| {
                let mut figures = stats::shadow_json(s);
                figures["name"] = json!(v.name);
                figures["model"] = json!(v.model);
                figures
            })
            .collect();
        json!({
            "name": self.spec.name,
            "default": self.spec.default,
            "entity_id": self.spec.entity.to_string(),
            "agreement": match self.spec.agreement {
                super::config::Agreement::Argmax => "argmax",
                super::config::Agreement::MaxRelativeDifference => "max_relative_difference",
            },
            "variants": variants,
            "shadows": shadows,
        })
    }
}

/// The experiments of a device, and the shadow queue.
#[derive(Debug, Clone, Default)]
pub struct Experiments {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    running: RwLock<Vec<Arc<Experiment>>>,
    queue: Option<ShadowQueue>,
}

impl Experiments {
    /// Runs `specs`, every variant and shadow naming a model `known` knows, with a
    /// shadow queue of `queue` copies (its worker thread starts here).
    ///
    /// # Errors
    ///
    /// [`ExperimentError`] for the first experiment refused ([`validate_all`]), or
    /// [`ExperimentError::Worker`] when the shadow thread cannot start.
    pub fn new(
        specs: Vec<ExperimentSpec>,
        known: impl Fn(&str) -> bool,
        queue: usize,
    ) -> Result<Experiments, ExperimentError> {
        let running = build(specs, known)?;
        let queue =
            ShadowQueue::start(queue).map_err(|e| ExperimentError::Worker(e.to_string()))?;
        Ok(Experiments {
            inner: Arc::new(Inner {
                running: RwLock::new(running),
                queue: Some(queue),
            }),
        })
    }

    /// Replaces every experiment by `specs`, checked as [`new`](Self::new) checks
    /// them. An experiment whose spec is unchanged keeps its figures. On an error
    /// the running experiments carry on untouched.
    ///
    /// # Errors
    ///
    /// See [`new`](Self::new).
    pub fn replace(
        &self,
        specs: Vec<ExperimentSpec>,
        known: impl Fn(&str) -> bool,
    ) -> Result<(), ExperimentError> {
        validate_all(&specs, &known)?;
        let mut running = self
            .inner
            .running
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::with_capacity(specs.len());
        for spec in specs {
            match running.iter().find(|e| e.spec == spec) {
                Some(same) => next.push(same.clone()),
                None => next.push(Arc::new(Experiment::new(spec)?)),
            }
        }
        *running = next;
        Ok(())
    }

    fn running(&self) -> Vec<Arc<Experiment>> {
        self.inner
            .running
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The experiment named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Experiment>> {
        let running = self
            .inner
            .running
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        running.iter().find(|e| e.spec.name == name).cloned()
    }

    /// The experiment a bare `/predict` goes through, if one says `primary = true`.
    pub fn primary(&self) -> Option<Arc<Experiment>> {
        let running = self
            .inner
            .running
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        running.iter().find(|e| e.spec.primary).cloned()
    }

    /// Every running experiment.
    pub fn list(&self) -> Vec<Arc<Experiment>> {
        self.running()
    }

    /// The status document of the experiment `name` ([`Experiment::status`]), or of
    /// every experiment as an array; `Err` with `{"error": ...}` for an unknown name.
    pub fn status(&self, name: Option<&str>) -> Result<String, String> {
        match name {
            Some(name) => match self.get(name) {
                Some(e) => Ok(e.status().to_string()),
                None => {
                    let reason = format!("no experiment named {name:?} runs here");
                    Err(json!({ "error": reason }).to_string())
                }
            },
            None => Ok(Value::from_iter(self.running().iter().map(|e| e.status())).to_string()),
        }
    }

    /// Queues a shadow run without waiting (a full queue drops it and counts it).
    pub fn offer(&self, job: ShadowJob) {
        match &self.inner.queue {
            Some(queue) => {
                queue.offer(job);
            }
            None => job.stats.dropped(),
        }
    }

    /// The experiments' series for `/metrics` ([`stats::render`]); empty without
    /// experiments.
    pub fn prometheus(&self) -> String {
        let running = self.running();
        let series: Vec<stats::Series<'_>> = running
            .iter()
            .map(|e| stats::Series {
                experiment: &e.spec.name,
                variants: e
                    .spec
                    .variants
                    .iter()
                    .map(|v| v.name.as_str())
                    .zip(&e.variants)
                    .collect(),
                shadows: e
                    .spec
                    .shadows
                    .iter()
                    .map(|s| s.name.as_str())
                    .zip(e.shadows.iter().map(|s| &**s))
                    .collect(),
            })
            .collect();
        stats::render(&series)
    }
}

fn build(
    specs: Vec<ExperimentSpec>,
    known: impl Fn(&str) -> bool,
) -> Result<Vec<Arc<Experiment>>, ExperimentError> {
    validate_all(&specs, known)?;
    specs
        .into_iter()
        .map(|s| Experiment::new(s).map(Arc::new))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use perch_runtime::canary::Percent;

    use super::*;
    use crate::experiment::config::{Agreement, EntitySource};

    fn spec(name: &str, shares: [u16; 2]) -> ExperimentSpec {
        ExperimentSpec {
            name: name.into(),
            variants: ["a", "b"]
                .iter()
                .zip(shares)
                .map(|(v, bp)| VariantSpec {
                    name: (*v).into(),
                    model: format!("model-{v}"),
                    share: Percent::from_basis_points(bp).unwrap(),
                })
                .collect(),
            default: "a".into(),
            shadows: Vec::new(),
            entity: EntitySource::default(),
            agreement: Agreement::Argmax,
            primary: false,
        }
    }

    fn known(model: &str) -> bool {
        model.starts_with("model-")
    }

    #[test]
    fn a_refused_replacement_leaves_the_running_experiments_and_their_figures() {
        let experiments = Experiments::new(vec![spec("e", [5000, 5000])], known, 4).unwrap();
        let running = experiments.get("e").unwrap();
        running
            .variant_stats(0)
            .unwrap()
            .record(true, Duration::from_millis(1));
        let refused = [
            vec![spec("e", [5000, 4000])],
            vec![{
                let mut s = spec("e", [5000, 5000]);
                s.variants[1].model = "gone".into();
                s
            }],
            vec![spec("e", [5000, 5000]), spec("e", [5000, 5000])],
        ];
        for specs in refused {
            assert!(experiments.replace(specs, known).is_err());
            let now = experiments.get("e").unwrap();
            assert!(
                Arc::ptr_eq(&now, &running),
                "the running experiment keeps going"
            );
        }
        assert_eq!(running.variant_stats(0).unwrap().snapshot().0, 1);

        // An unchanged experiment keeps its figures; a changed one starts afresh.
        experiments
            .replace(vec![spec("e", [5000, 5000]), spec("f", [0, 10_000])], known)
            .unwrap();
        assert!(Arc::ptr_eq(&experiments.get("e").unwrap(), &running));
        experiments
            .replace(vec![spec("e", [6000, 4000])], known)
            .unwrap();
        let changed = experiments.get("e").unwrap();
        assert_eq!(changed.variant_stats(0).unwrap().snapshot().0, 0);
        assert!(experiments.get("f").is_none());
        assert_eq!(changed.spec().variants[0].share.basis_points(), 6000);
    }
}
