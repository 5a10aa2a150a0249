//! Configuration: TOML into a validated Config.
