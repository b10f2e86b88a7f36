//! A/B experiments on the device: requests addressed to an experiment's name go to one
//! of its variants (repository models) by hashing the request's entity id with the
//! canary bucketing, and shadow models see a copy of each request after the reply is
//! sent, their answers compared with the served one and never returned.
//!
//! One concern per module: [`config`] (what an experiment is, and the one check),
//! [`router`] (entity → variant, pure), [`entity`] (where the entity id comes from),
//! [`shadow`] (the bounded queue, its worker, and comparing answers), [`stats`]
//! (figures, `/metrics` series, the status document's numbers), [`set`] (the running
//! experiments) and [`reply`] (what an experiment adds to an HTTP reply).
//!
//! ```
//! use perch_firmware::experiment::{Experiment, ExperimentSpec, VariantSpec, EntitySource, Agreement};
//! use perch_runtime::canary::Percent;
//!
//! let variant = |name: &str, percent| VariantSpec {
//!     name: name.into(),
//!     model: format!("iris-{name}"),
//!     share: Percent::from_whole(percent).unwrap(),
//! };
//! let experiment = Experiment::new(ExperimentSpec {
//!     name: "iris-ab".into(),
//!     variants: vec![variant("a", 90), variant("b", 10)],
//!     default: "a".into(),
//!     shadows: Vec::new(),
//!     entity: EntitySource::default(),
//!     agreement: Agreement::Argmax,
//!     primary: false,
//! })?;
//! let chosen = experiment.route(Some(b"customer-42"));
//! assert_eq!(experiment.route(Some(b"customer-42")), chosen, "always the same variant");
//! assert_eq!(experiment.variant(experiment.route(None)).name, "a", "no id: the default");
//! # Ok::<(), perch_firmware::experiment::ExperimentError>(())
//! ```

pub mod config;
pub mod entity;
pub mod reply;
pub mod router;
pub mod set;
pub mod shadow;
pub mod stats;

pub use config::{
    Agreement, EntitySource, ExperimentError, ExperimentSpec, ShadowSpec, VariantSpec,
};
pub use set::{Experiment, Experiments};
