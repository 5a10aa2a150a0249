//! Retention: which stored images a namespace keeps. `rule` parses and
//! evaluates upstream Angos's `retention_policy.rules` (a CEL subset); the
//! pruner that walks storage and deletes what no rule keeps is built on it.
//! Knows no configuration file, no storage and no HTTP.

pub mod rule;
