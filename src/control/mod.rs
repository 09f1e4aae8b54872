//! The control plane: what runs beside the shards and never on the packet
//! path. The admin HTTP API and the Prometheus metrics it serves.

pub mod admin;
pub mod metrics;
