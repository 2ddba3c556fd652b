//! Several ingest requests in one transaction (`enqueue_requests`): each is all or nothing on
//! its own, so one refused request leaves the others of its transaction written.

use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, StoreError};
use broadcaster_tests::{OutboxKind, TestOutbox};

fn event(publisher: &str) -> NewEvent {
    NewEvent::new("order.created", "/shop").publisher(publisher)
}

#[tokio::test]
async fn a_refused_request_leaves_the_others_of_its_transaction_written() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let outbox = TestOutbox::create(kind).await;
        let store = OutboxStore::connect(outbox.url()).await.unwrap();
        store.migrate().await.unwrap();
        let taken = event("tenant-b");
        store.enqueue(std::slice::from_ref(&taken), now_micros()).await.unwrap();
        let first = [event("tenant-a"), event("tenant-a")];
        // Its second event reuses tenant-b's id: the whole request is refused, its first event too.
        let mut stolen = taken.clone();
        stolen.event.publisher_backend = "tenant-a".into();
        let refused = [event("tenant-a"), stolen];
        let mut nul = event("tenant-a");
        nul.event.subject = "a\0b".into();
        let unstorable = [nul];
        let repeat = [taken.clone(), event("tenant-b")];
        let requests: [&[NewEvent]; 4] = [&first, &refused, &unstorable, &repeat];
        let answers = store.enqueue_requests(&requests, now_micros()).await.unwrap();
        assert_eq!(answers[0].as_ref().unwrap(), &[true, true], "{kind:?}");
        assert!(matches!(answers[1], Err(StoreError::IdTaken { .. })), "{kind:?}: {:?}", answers[1]);
        assert!(matches!(answers[2], Err(StoreError::Unstorable(_))), "{kind:?}: {:?}", answers[2]);
        assert_eq!(answers[3].as_ref().unwrap(), &[false, true], "{kind:?}");
        let ids: Vec<String> = first.iter().chain(&refused).chain(&repeat).map(|e| e.event.id.clone()).collect();
        let found = store.find(&ids).await.unwrap();
        let stored: Vec<&str> = found.iter().map(|row| row.id.as_str()).collect();
        for written in [&first[0], &first[1], &repeat[1], &taken] {
            assert!(stored.contains(&written.event.id.as_str()), "{kind:?}: {} missing", written.event.id);
        }
        assert!(!stored.contains(&refused[0].event.id.as_str()), "{kind:?}: the refused request wrote its first event");
        assert_eq!(found.len(), 4, "{kind:?}");
    }
}

#[tokio::test]
async fn a_plain_enqueue_of_a_stored_id_fails_and_writes_none_of_its_events() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let outbox = TestOutbox::create(kind).await;
        let store = OutboxStore::connect(outbox.url()).await.unwrap();
        store.migrate().await.unwrap();
        let stored = event("tenant-a");
        store.enqueue(std::slice::from_ref(&stored), now_micros()).await.unwrap();
        let fresh = event("tenant-a");
        let result = store.enqueue(&[fresh.clone(), stored.clone()], now_micros()).await;
        assert!(result.is_err(), "{kind:?}: a stored id enqueued again");
        assert!(
            store.find(std::slice::from_ref(&fresh.event.id)).await.unwrap().is_empty(),
            "{kind:?}: half a batch written"
        );
    }
}
