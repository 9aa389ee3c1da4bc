//! Several services starting at once against a fresh PostgreSQL database all come up: the
//! migrations run once, under an advisory lock, instead of racing on CREATE TABLE.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio_util::sync::CancellationToken;
use videocall_runtime::db::connect_and_migrate;

#[tokio::test]
async fn concurrent_starts_migrate_once_and_all_succeed() {
    let url = videocall_testkit::fresh_database().await;
    let shutdown = CancellationToken::new();
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let (url, shutdown) = (url.clone(), shutdown.clone());
            tokio::spawn(async move { connect_and_migrate(&url, &shutdown).await })
        })
        .collect();
    let mut dbs = Vec::new();
    for start in starts {
        dbs.push(start.await.expect("task").expect("every service starts"));
    }
    let row = dbs[0]
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT count(*) AS n FROM seaql_migrations"))
        .await
        .expect("query")
        .expect("row");
    let applied: i64 = row.try_get("", "n").expect("count");
    let expected = <videocall_migrations::Migrator as videocall_migrations::MigratorTrait>::migrations().len();
    assert_eq!(applied as usize, expected, "each migration recorded once");
}
