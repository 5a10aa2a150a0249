//! The registry's errors are the API's OCI errors (`http::oci_error`).

pub use crate::http::oci_error::{ErrorCode, RegistryError};
