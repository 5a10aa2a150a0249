//! Registry events and their JSON payload.
