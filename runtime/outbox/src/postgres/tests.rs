//! The PostgreSQL store's own behaviour: the claims' plans.

use super::claim::{CLAIM_FOR, CLAIM_HELD};
use super::*;
use crate::tests::ScratchDatabase;

/// The claims' generic plans after the statistics were taken over a backlog that was all
/// pending and most of it has been published since: they must walk the claim index, not
/// Django's `scheduled_at` index over every published row.
#[tokio::test]
async fn claims_walk_the_claim_index_even_when_statistics_saw_only_pending_rows() {
    let database = ScratchDatabase::create("claim_plan").await;
    let plans = async {
        let store = PostgresStore::connect(&database.url()).await?;
        store.migrate().await?;
        let now = broadcaster_core::event::now_micros();
        let events: Vec<NewEvent> = (0..5_000).map(|i| NewEvent::new(format!("e{i}"), "/s").publisher("p")).collect();
        store.enqueue(&events, now).await?;
        sqlx::query("ANALYZE outbox_events").execute(&store.pool).await?;
        sqlx::query(
            "UPDATE outbox_events SET status = 'published' \
             WHERE id IN (SELECT id FROM outbox_events ORDER BY scheduled_at LIMIT 4000)",
        )
        .execute(&store.pool)
        .await?;
        let mut plans = Vec::new();
        for statement in [CLAIM_FOR, CLAIM_HELD] {
            let mut tx = store.pool.begin().await?;
            sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan").execute(&mut *tx).await?;
            let explain = sqlx::AssertSqlSafe(format!("EXPLAIN {statement}"));
            let lines: Vec<String> =
                sqlx::query_scalar(explain).bind(now).bind("p").bind("p").bind(100_i64).fetch_all(&mut *tx).await?;
            plans.push(lines.join("\n"));
        }
        store.pool.close().await;
        Ok::<_, StoreError>(plans)
    }
    .await;
    database.remove().await;
    for plan in plans.unwrap() {
        assert!(plan.contains("outbox_events_broadcaster_claim_idx"), "{plan}");
        assert!(!plan.contains("outbox_events_scheduled_at_6a2d7649"), "{plan}");
    }
}
