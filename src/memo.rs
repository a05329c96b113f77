//! What one step of this process hands the next inside the write pause, by a pair of keys (a
//! run and a node; a host and a file), deliberately not journaled: only the process that saw
//! it happen may skip looking again. A resumed run looks afresh (between a crash and the
//! resume anything may have been done by hand).

use std::collections::BTreeMap;
use std::sync::Mutex;

pub(crate) struct Memo<T = String>(Mutex<BTreeMap<(String, String), T>>);

impl<T> Memo<T> {
    pub(crate) const fn new() -> Memo<T> {
        Memo(Mutex::new(BTreeMap::new()))
    }

    pub(crate) fn remember(&self, run_id: &str, node: &str, text: T) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((run_id.to_string(), node.to_string()), text);
    }

    /// What is remembered for `node` in `run_id`, left in place.
    pub(crate) fn get(&self, run_id: &str, node: &str) -> Option<T>
    where
        T: Clone,
    {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(run_id.to_string(), node.to_string()))
            .cloned()
    }

    /// What was remembered for `node` in `run_id`, once.
    pub(crate) fn take(&self, run_id: &str, node: &str) -> Option<T> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(run_id.to_string(), node.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the text this process remembered, for that run and node, and only once.
    #[test]
    fn a_memo_serves_one_reader_of_its_own_run_and_node() {
        let m: Memo = Memo::new();
        m.remember("run-a", "old", "Database cluster state: shut down".into());
        assert_eq!(m.take("run-b", "old"), None);
        assert_eq!(m.take("run-a", "new"), None);
        assert!(m.take("run-a", "old").is_some());
        assert_eq!(m.take("run-a", "old"), None);
    }
}
