//! The OCI Distribution registry: routes, handlers and errors over `storage`.

pub mod manifest;
pub mod range;
pub mod reference;
