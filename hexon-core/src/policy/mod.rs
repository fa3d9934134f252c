//! Policy engine: placeholder until the engine lands.
pub mod spec;
