//! What every writer of files agrees on (a leaf: std only).

/// The prefix of migrate's temporary files. `host::local::write_atomic` and the remote write
/// script create them (random suffixes, exclusively); `engine::state_dir` knows them as
/// migrate's own when it checks a state directory.
pub const TEMP_PREFIX: &str = ".migrate-tmp";
