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

    /// Remember `value` under the pair (a run and a node, or a host and a file).
    pub(crate) fn remember(&self, outer: &str, inner: &str, value: T) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((outer.to_string(), inner.to_string()), value);
    }

    /// What is remembered under the pair, left in place.
    pub(crate) fn get(&self, outer: &str, inner: &str) -> Option<T>
    where
        T: Clone,
    {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(outer.to_string(), inner.to_string()))
            .cloned()
    }

    /// What was remembered under the pair, once.
    pub(crate) fn take(&self, outer: &str, inner: &str) -> Option<T> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(outer.to_string(), inner.to_string()))
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
