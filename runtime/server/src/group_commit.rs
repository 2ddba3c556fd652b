//! Ingest requests that arrive together are committed together: one transaction, each
//! request decided on its own, all or nothing
//! ([`OutboxBackend::enqueue_requests`](broadcaster_outbox::OutboxBackend::enqueue_requests)),
//! so many small requests share one commit (one WAL flush) instead of queueing for one each.
//! A request is answered only after the commit that holds it.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use broadcaster_core::event::now_micros;
use broadcaster_outbox::{NewEvent, OutboxStore, StoreError};

/// Most requests in one transaction.
pub const MOST_REQUESTS: usize = 256;
/// A transaction takes no more requests once it holds this many events.
pub const MOST_EVENTS: usize = 2000;

/// One request waiting to be written.
struct Pending {
    events: Vec<NewEvent>,
    answer: oneshot::Sender<Result<Vec<bool>, StoreError>>,
}

/// The queue of requests and the tasks that write them.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("events", &self.events.len()).finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts `writers` tasks writing to `store` (one for SQLite, whose writers take turns
    /// anyway; more let PostgreSQL build one transaction while another commits). They end
    /// when every handle is dropped.
    pub fn start(store: OutboxStore, writers: usize) -> Self {
        let (queue, requests) = mpsc::channel::<Pending>(MOST_REQUESTS * 4);
        let requests = Arc::new(Mutex::new(requests));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_groups(store.clone(), requests.clone()));
        }
        Self { queue }
    }

    /// Writes one request's events ([`OutboxStore::enqueue_once`]'s answer), together with
    /// whatever other requests are waiting.
    pub async fn write(&self, events: Vec<NewEvent>) -> Result<Vec<bool>, StoreError> {
        let (answer, answered) = oneshot::channel();
        // No writer left (shutting down): an outage, not the sender's fault.
        let gone = || StoreError::Database(sqlx::Error::PoolClosed);
        self.queue.send(Pending { events, answer }).await.map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

async fn write_groups(store: OutboxStore, requests: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let mut group = Vec::new();
        {
            let mut requests = requests.lock().await;
            let Some(first) = requests.recv().await else { return };
            let mut events = first.events.len();
            group.push(first);
            while group.len() < MOST_REQUESTS && events < MOST_EVENTS {
                match requests.try_recv() {
                    Ok(next) => {
                        events += next.events.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
        }
        let batch: Vec<&[NewEvent]> = group.iter().map(|p| p.events.as_slice()).collect();
        match store.enqueue_requests(&batch, now_micros()).await {
            Ok(answers) => {
                for (pending, answer) in group.into_iter().zip(answers) {
                    let _ = pending.answer.send(answer);
                }
            }
            // The transaction failed as a whole: each request on its own, for its own answer.
            Err(_) => {
                for pending in group {
                    let answer = store.enqueue_once(&pending.events, now_micros()).await;
                    let _ = pending.answer.send(answer);
                }
            }
        }
    }
}
