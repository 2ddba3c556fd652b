//! The catalog on both databases: each test runs the same steps on a SQLite file and on a
//! scratch PostgreSQL database.

use serde_json::json;

use super::*;
use crate::OutboxStore;
use crate::tests::ScratchDatabase;
use broadcaster_core::event::now_micros;

/// Runs `steps` on a migrated SQLite file and on a migrated scratch PostgreSQL database.
async fn on_both<F, Fut>(purpose: &str, steps: F)
where
    F: Fn(Catalog) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let sqlite = OutboxStore::connect(&format!("sqlite://{}", dir.path().join("outbox.db").display())).await.unwrap();
    sqlite.migrate().await.unwrap();
    steps(sqlite.catalog().unwrap()).await;
    let scratch = ScratchDatabase::create(purpose).await;
    let postgres = OutboxStore::connect(&scratch.url()).await.unwrap();
    postgres.migrate().await.unwrap();
    steps(postgres.catalog().unwrap()).await;
    drop(postgres);
    scratch.remove().await;
}

fn component(sha: &str) -> ComponentInfo {
    ComponentInfo { sha256: sha.into(), size: 3, contract: "0.2.0".into(), imports: vec!["wasi:io/error@0.2.0".into()] }
}

#[tokio::test]
async fn a_component_is_stored_once_by_its_digest() {
    on_both("catalog_component", |catalog| async move {
        let now = now_micros();
        assert!(catalog.put_component(&component("aa"), b"abc", "ops", now).await.unwrap());
        assert!(!catalog.put_component(&component("aa"), b"abc", "ops", now).await.unwrap());
        assert_eq!(catalog.component_bytes("aa").await.unwrap().unwrap(), b"abc");
        assert_eq!(catalog.component("aa").await.unwrap().unwrap(), component("aa"));
        assert!(catalog.component("bb").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn publishers_are_versioned_and_every_change_is_numbered_in_order() {
    on_both("catalog_versions", |catalog| async move {
        let now = now_micros();
        let start = catalog.last_change().await.unwrap();
        catalog.put_component(&component("aa"), b"abc", "ops", now).await.unwrap();
        let one = json!({"component": "aa", "options": {"stream": "a"}});
        let two = json!({"component": "aa", "options": {"stream": "b"}});
        assert_eq!(
            catalog.put_publisher("t", &one, Some("aa"), None, "ops", now).await.unwrap(),
            PutOutcome::Created(1)
        );
        assert_eq!(
            catalog.put_publisher("t", &one, Some("aa"), None, "ops", now).await.unwrap(),
            PutOutcome::Unchanged(1)
        );
        assert_eq!(
            catalog.put_publisher("t", &two, Some("aa"), Some(1), "ops", now).await.unwrap(),
            PutOutcome::Changed(2)
        );
        let stale = catalog.put_publisher("t", &one, Some("aa"), Some(1), "ops", now).await.unwrap_err();
        assert!(matches!(stale, CatalogError::VersionConflict { current: 2, expected: 1, .. }), "{stale}");
        let missing = catalog.put_publisher("u", &one, Some("cc"), None, "ops", now).await.unwrap_err();
        assert!(matches!(missing, CatalogError::ComponentMissing(_)), "{missing}");

        let stored = catalog.publisher("t").await.unwrap().unwrap();
        assert_eq!((stored.version, &stored.definition, stored.updated_by.as_str()), (2, &two, "ops"));
        let versions = catalog.versions("t").await.unwrap();
        assert_eq!(
            versions.iter().map(|v| (v.version, v.definition.clone())).collect::<Vec<_>>(),
            [(1, one.clone()), (2, two)]
        );

        assert_eq!(catalog.remove_publisher("t", now).await.unwrap(), Some(2));
        assert_eq!(catalog.remove_publisher("t", now).await.unwrap(), None);
        assert!(catalog.publisher("t").await.unwrap().is_none());
        // After a removal the numbering goes on: a new definition is version 3.
        assert_eq!(
            catalog.put_publisher("t", &one, Some("aa"), Some(0), "ops", now).await.unwrap(),
            PutOutcome::Created(3)
        );

        let changes = catalog.changes_since(start, 100).await.unwrap();
        let seen: Vec<_> = changes.iter().map(|c| (c.kind, c.name.as_str())).collect();
        assert_eq!(seen, [(ChangeKind::Publisher, "t"); 4], "created, changed, removed, created");
        assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(catalog.changes_since(changes[3].seq, 100).await.unwrap(), []);
    })
    .await;
}

#[tokio::test]
async fn publishers_are_listed_by_name_a_page_at_a_time() {
    on_both("catalog_pages", |catalog| async move {
        let now = now_micros();
        for name in ["c", "a", "b"] {
            catalog.put_publisher(name, &json!({"backend": "redis-stream"}), None, None, "ops", now).await.unwrap();
        }
        let names = |page: Vec<StoredPublisher>| page.into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(names(catalog.publishers(None, 2).await.unwrap()), ["a", "b"]);
        assert_eq!(names(catalog.publishers(Some("b"), 2).await.unwrap()), ["c"]);
    })
    .await;
}

#[tokio::test]
async fn tokens_are_made_once_and_revoked() {
    on_both("catalog_tokens", |catalog| async move {
        let now = now_micros();
        let token = StoredToken {
            name: "tenant-a".into(),
            sha256: "ff".repeat(32),
            publishers: vec!["tenant-a-*".into()],
            rate: Some(2.5),
            burst: Some(10),
            created_at: now,
            created_by: "ops".into(),
        };
        catalog.put_token(&token).await.unwrap();
        assert!(matches!(catalog.put_token(&token).await, Err(CatalogError::TokenExists(_))));
        assert_eq!(catalog.tokens().await.unwrap(), [token]);
        assert!(catalog.remove_token("tenant-a", now).await.unwrap());
        assert!(!catalog.remove_token("tenant-a", now).await.unwrap());
        assert_eq!(catalog.tokens().await.unwrap(), []);
    })
    .await;
}

#[tokio::test]
async fn pruning_keeps_the_newest_versions_and_the_components_they_run() {
    on_both("catalog_prune", |catalog| async move {
        let now = now_micros();
        for sha in ["aa", "bb", "cc"] {
            catalog.put_component(&component(sha), b"x", "ops", now).await.unwrap();
        }
        for (i, sha) in ["aa", "bb", "aa"].iter().enumerate() {
            let definition = json!({"component": sha, "options": {"n": i}});
            catalog.put_publisher("t", &definition, Some(sha), None, "ops", now).await.unwrap();
        }
        // Versions 1 (aa) and 2 (bb) go; 3 (aa) stays; bb and the unused cc go.
        assert_eq!(catalog.prune_versions(1).await.unwrap(), (2, 2));
        assert_eq!(catalog.versions("t").await.unwrap().iter().map(|v| v.version).collect::<Vec<_>>(), [3]);
        assert!(catalog.component("aa").await.unwrap().is_some());
        assert!(catalog.component("bb").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn a_database_without_the_catalog_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = OutboxStore::connect(&format!("sqlite://{}", dir.path().join("old.db").display())).await.unwrap();
    let catalog = store.catalog().unwrap();
    assert!(!catalog.is_present().await.unwrap());
    assert!(matches!(catalog.publishers(None, 10).await, Err(CatalogError::Missing)));
    store.migrate().await.unwrap();
    assert!(catalog.is_present().await.unwrap());
}

#[tokio::test]
async fn the_change_feed_returns_each_change_once_in_order() {
    on_both("catalog_feed", |catalog| async move {
        let now = now_micros();
        let mut feed = ChangeFeed::new(catalog.clone(), catalog.last_change().await.unwrap());
        let writer = catalog.clone();
        let writes = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            for name in ["a", "b"] {
                writer.put_publisher(name, &json!({"backend": "redis-stream"}), None, None, "ops", now).await.unwrap();
            }
        });
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.extend(feed.next().await.unwrap().into_iter().map(|c| c.name));
        }
        writes.await.unwrap();
        assert_eq!(seen, ["a", "b"]);
        assert_eq!(feed.position(), catalog.last_change().await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn an_import_writes_new_and_changed_definitions_as_versions_in_one_go() {
    on_both("catalog_import", |catalog| async move {
        let now = now_micros();
        let native = |stream: &str| json!({"backend": "redis-stream", "options": {"stream_name": stream}});
        catalog.put_publisher("a", &native("a"), None, None, "ops", now).await.unwrap();
        let start = catalog.last_change().await.unwrap();
        let rows: Vec<(String, serde_json::Value, Option<String>)> =
            vec![("a".into(), native("a"), None), ("b".into(), native("b"), None), ("c".into(), native("c"), None)];
        assert_eq!(catalog.import_publishers(&rows, "import", now).await.unwrap(), 2, "a is in force as given");
        let changed = vec![("a".to_string(), native("a2"), None)];
        assert_eq!(catalog.import_publishers(&changed, "import", now).await.unwrap(), 1);
        let versions: Vec<(String, i64)> =
            catalog.publishers(None, 10).await.unwrap().into_iter().map(|p| (p.name, p.version)).collect();
        assert_eq!(versions, [("a".to_string(), 2), ("b".to_string(), 1), ("c".to_string(), 1)]);
        let names: Vec<String> = catalog.changes_since(start, 10).await.unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["b", "c", "a"]);
    })
    .await;
}
