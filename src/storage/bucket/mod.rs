//! The S3 backend: the registry's layout (`layout.rs`) as objects in one
//! bucket that several replicas share, read and written through
//! `objects.rs`, whose reads and writes a request waits on by being run
//! again once they are done.

pub mod layout;
pub mod objects;

#[cfg(test)]
mod testing;
