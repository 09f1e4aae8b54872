//! The control plane: what runs beside the shards and never on the packet
//! path: the admin HTTP API and the Prometheus metrics it serves, and the
//! health probes.

pub mod admin;
pub mod metrics;
pub mod probe;
