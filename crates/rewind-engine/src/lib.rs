//! rewind's engine: the work done with a vault. For now: restore. Later: the intercept
//! layer, verify/sync, retention and replication.

pub mod restore;
