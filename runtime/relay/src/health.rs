//! The relay's view of which publishers are healthy, refreshed on an interval (not per
//! event). Events of an unhealthy publisher are not claimed, so an outage of any length
//! spends none of their retries. A component publisher with no instance and nothing to
//! recover from is *idle*: recorded as such without a call, so that 100,000 configured
//! tenants cost a pass over their names per interval, not an instance each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::registry::PublisherRegistry;
use broadcaster_core::outcome::Health;
use broadcaster_core::routing::stored_names;

/// The last known health of each publisher.
#[derive(Debug, Default)]
pub struct HealthBoard {
    state: Mutex<HashMap<String, Health>>,
}

impl HealthBoard {
    /// Records a publisher's health; logs when it changes.
    pub fn record(&self, publisher: &str, health: Health) {
        let mut state = self.state.lock().expect("health lock");
        let was = state.get(publisher).map(|h| h.healthy);
        match (was, health.healthy) {
            (Some(true) | None, false) => {
                tracing::warn!(publisher, detail = %health.detail, "publisher unhealthy: its events wait, no retries are spent")
            }
            (Some(false), true) => tracing::info!(publisher, "publisher healthy again: resuming its events"),
            _ => {}
        }
        state.insert(publisher.to_string(), health);
    }

    /// Records that `publisher` is idle (see [`Health::idle`]) unless it is recorded so
    /// already; `detail` is asked only then.
    pub fn record_idle(&self, publisher: &str, detail: impl FnOnce() -> String) {
        let mut state = self.state.lock().expect("health lock");
        match state.get(publisher) {
            Some(health) if health.idle => {}
            Some(health) if !health.healthy => {
                tracing::info!(publisher, "publisher healthy again (idle): resuming its events");
                state.insert(publisher.to_string(), Health::idle(detail()));
            }
            _ => {
                state.insert(publisher.to_string(), Health::idle(detail()));
            }
        }
    }

    /// Forgets `publisher` (a reload removed or replaced it).
    pub fn forget(&self, publisher: &str) {
        self.state.lock().expect("health lock").remove(publisher);
    }

    /// The last health recorded for `publisher`, if it was checked.
    pub fn last(&self, publisher: &str) -> Option<Health> {
        self.state.lock().expect("health lock").get(publisher).cloned()
    }

    /// Whether `publisher` is known to be unhealthy.
    pub fn is_down(&self, publisher: &str) -> bool {
        self.state.lock().expect("health lock").get(publisher).is_some_and(|h| !h.healthy)
    }

    /// The `publisher_backend` values whose events must not be claimed now (the default
    /// publisher's events may be stored with an empty name).
    pub fn skip_list(&self) -> Vec<String> {
        let state = self.state.lock().expect("health lock");
        let mut skip = Vec::new();
        for (name, health) in state.iter() {
            if !health.healthy {
                skip.extend(stored_names(name).map(str::to_string));
            }
        }
        skip.sort();
        skip.dedup();
        skip
    }

    /// Checks each publisher of `registry` every `every`, starting now, each check on its own
    /// task (a slow check holds up only its own publisher's next check: a publisher whose
    /// check is still running is not checked again). Idle component publishers are recorded
    /// idle without a call. Runs until the returned set is dropped.
    pub fn monitor(self: &Arc<Self>, registry: &Arc<PublisherRegistry>, every: Duration) -> JoinSet<()> {
        let (board, registry) = (self.clone(), registry.clone());
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut checks: JoinSet<()> = JoinSet::new();
            let mut checking: HashMap<tokio::task::Id, String> = HashMap::new();
            loop {
                while let Some(done) = checks.try_join_next_with_id() {
                    checking.remove(&done.map_or_else(|err| err.id(), |(id, ())| id));
                }
                let busy: std::collections::HashSet<&str> = checking.values().map(String::as_str).collect();
                let mut started = Vec::new();
                for (name, publisher) in registry.iter() {
                    if let crate::publisher::Publisher::Component(component) = publisher
                        && component.is_idle()
                    {
                        board.record_idle(name, || component.idle_detail());
                        continue;
                    }
                    if busy.contains(name) {
                        continue;
                    }
                    let (board, name, publisher) = (board.clone(), name.to_string(), publisher.clone());
                    let check_name = name.clone();
                    let handle = checks.spawn(async move {
                        let health = publisher.health_unless_idle().await;
                        board.record(&check_name, health);
                    });
                    started.push((handle.id(), name));
                }
                drop(busy);
                checking.extend(started);
                tokio::time::sleep(every).await;
            }
        });
        tasks
    }

    /// Checks every publisher of `registry` at once (making component instances as needed)
    /// and records the results.
    pub async fn refresh(&self, registry: &PublisherRegistry) {
        for (name, _, health) in registry.health().await {
            self.record(&name, health);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unhealthy_default_publisher_skips_events_with_an_empty_name_too() {
        let board = HealthBoard::default();
        board.record("default", Health::down("redis down"));
        board.record("tenant-a", Health::up("ok"));
        board.record("tenant-b", Health::down("trapping"));
        assert_eq!(board.skip_list(), ["", "default", "tenant-b"]);
        assert!(board.is_down("default") && !board.is_down("tenant-a") && !board.is_down("unknown"));
        board.record("default", Health::up("back"));
        assert_eq!(board.skip_list(), ["tenant-b"]);
    }
}
