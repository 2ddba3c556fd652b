//! Which publishers have batches in flight, and how many: looked up for every publisher
//! that wants a claim on every pass of the loop, so in O(1), however many are in flight.

use std::collections::HashMap;

/// The publishing tasks in flight, by task and by publisher.
#[derive(Debug, Default)]
pub(crate) struct BusyPublishers {
    by_task: HashMap<tokio::task::Id, String>,
    per_publisher: HashMap<String, usize>,
}

impl BusyPublishers {
    /// Task `id` publishes a batch of `name`'s.
    pub(crate) fn insert(&mut self, id: tokio::task::Id, name: String) {
        *self.per_publisher.entry(name.clone()).or_default() += 1;
        self.by_task.insert(id, name);
    }

    /// Task `id` ended; whose batch it published.
    pub(crate) fn remove(&mut self, id: tokio::task::Id) -> Option<String> {
        let name = self.by_task.remove(&id)?;
        if let Some(count) = self.per_publisher.get_mut(&name) {
            *count -= 1;
            if *count == 0 {
                self.per_publisher.remove(&name);
            }
        }
        Some(name)
    }

    /// How many of `name`'s batches are in flight.
    pub(crate) fn count(&self, name: &str) -> usize {
        self.per_publisher.get(name).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_follow_the_tasks_of_each_publisher() {
        let mut tasks = tokio::task::JoinSet::new();
        let ids: Vec<_> = (0..3).map(|_| tasks.spawn(async {}).id()).collect();
        let mut busy = BusyPublishers::default();
        busy.insert(ids[0], "a".into());
        busy.insert(ids[1], "a".into());
        busy.insert(ids[2], "b".into());
        assert_eq!((busy.count("a"), busy.count("b"), busy.count("c")), (2, 1, 0));
        assert_eq!(busy.remove(ids[0]).as_deref(), Some("a"));
        assert_eq!(busy.remove(ids[0]), None, "a task ends once");
        assert_eq!(busy.remove(ids[2]).as_deref(), Some("b"));
        assert_eq!((busy.count("a"), busy.count("b")), (1, 0));
    }
}
