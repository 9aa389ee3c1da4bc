//! `db::is_unavailable` on errors a real PostgreSQL produces: a backend terminated under a
//! statement (as in a restart) is "unavailable, retry"; a refused statement is not.

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use videocall_runtime::db::is_unavailable;

async fn one_connection_pool() -> DatabaseConnection {
    let url = videocall_testkit::fresh_database().await;
    let mut options = ConnectOptions::new(url);
    options.max_connections(1).sqlx_logging(false);
    Database::connect(options).await.expect("PostgreSQL reachable")
}

#[tokio::test]
async fn a_backend_terminated_under_a_statement_is_unavailable() {
    let db = one_connection_pool().await;
    let error = db
        .execute_unprepared("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .expect_err("the backend ends under its own statement");
    assert!(is_unavailable(&error), "a terminated backend (57P01 or a closed socket) is unavailable: {error:?}");
    // The pool replaces the lost connection by itself.
    db.execute_unprepared("SELECT 1").await.expect("a fresh connection answers");
}

#[tokio::test]
async fn refused_statements_are_not_unavailable() {
    let db = one_connection_pool().await;
    db.execute_unprepared("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)").await.expect("setup");
    let duplicate = db.execute_unprepared("INSERT INTO t VALUES (1)").await.expect_err("duplicate key");
    assert!(!is_unavailable(&duplicate), "{duplicate:?}");
    let syntax = db.execute_unprepared("SELEC 1").await.expect_err("syntax error");
    assert!(!is_unavailable(&syntax), "{syntax:?}");
    let missing = db.execute_unprepared("SELECT * FROM no_such_table").await.expect_err("undefined table");
    assert!(!is_unavailable(&missing), "{missing:?}");
}
