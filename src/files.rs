//! What every writer of files agrees on (a leaf: std only).

/// The prefix of migrate's temporary files. `host::local::write_atomic` and the remote write
/// script create them (random suffixes, exclusively); `engine::state_dir` knows them as
/// migrate's own when it checks a state directory.
pub const TEMP_PREFIX: &str = ".migrate-tmp";

/// Bytes of the regular files under `dir` (links not followed; unreadable entries count 0).
pub fn tree_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
