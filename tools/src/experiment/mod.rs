//! `perch experiment`: what an A/B experiment on a device shows ([`status`]), with the
//! statistics it uses ([`stats`]: the normal distribution through `erfc`, the
//! two-proportion z-test).

pub mod stats;
pub mod status;
