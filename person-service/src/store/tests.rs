//! The store's promises, each checked on both backends: every test body
//! below runs once on a fresh SQLite file and once on a fresh PostgreSQL
//! database (created on the shared server and dropped afterwards).

use super::*;
use crate::domain::{NewPerson, Page, PersonChanges};
use std::collections::{BTreeMap, HashSet};
use test_support::postgres::TestDb;
use test_support::WithinExt;

/// A fresh database of either kind; removed when dropped.
enum Fresh {
    Sqlite(tempfile::TempDir),
    Postgres(TestDb),
}

impl Fresh {
    fn database(&self) -> Database {
        match self {
            Fresh::Sqlite(dir) => Database::Sqlite(dir.path().join("p.db")),
            Fresh::Postgres(db) => Database::parse(&db.url()),
        }
    }

    async fn open_with(&self, options: StoreOptions) -> Store {
        Store::connect(&self.database(), options)
            .within(Duration::from_secs(30), "the store to open")
            .await
            .unwrap_or_else(|e| panic!("the store opens: {e}"))
    }

    async fn open(&self) -> Store {
        self.open_with(StoreOptions::default()).await
    }
}

/// Runs `$body(fresh)` as a test on each backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("temp dir");
                super::$name(super::Fresh::Sqlite(dir)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = test_support::postgres::TestDb::create().await;
                super::$name(super::Fresh::Postgres(db)).await
            }
        }
    )*};
}

on_both!(
    crud_and_keyset_paging,
    concurrent_writes_all_land_durably,
    a_replayed_request_gets_its_first_answer_and_writes_nothing,
    a_request_twice_in_one_batch_is_applied_once,
    a_request_replayed_to_another_instance_writes_nothing,
    outbox_keeps_order_and_context_until_published,
    request_records_expire,
    instances_starting_together_on_a_fresh_database_all_open,
    the_highest_id_deleted_is_not_handed_out_again,
);

pub(super) fn new(first: &str, age: i64) -> NewPerson {
    NewPerson::new(first.into(), "Test".into(), age, false).unwrap()
}

fn none() -> WriteMeta {
    WriteMeta::default()
}

pub(super) fn rpc(id: &str) -> WriteMeta {
    WriteMeta {
        request_id: Some(id.to_owned()),
        event: Some(Default::default()),
    }
}

async fn crud_and_keyset_paging(fresh: Fresh) {
    let store = fresh.open().await;
    let a = store.create(new("Ada", 36), none()).await.unwrap();
    let b = store.create(new("Bob", 40), none()).await.unwrap();
    assert!(b.id > a.id);
    assert_eq!(store.get(a.id).await.unwrap(), a);
    let changed = store
        .update(
            a.id,
            PersonChanges::new(None, None, Some(37), Some(true)).unwrap(),
            none(),
        )
        .await
        .unwrap();
    assert_eq!(
        (changed.age, changed.member, changed.first_name.as_str()),
        (37, true, "Ada")
    );
    assert_eq!(
        store.list(Page::default()).await.unwrap(),
        vec![changed.clone(), b.clone()]
    );
    assert_eq!(
        store
            .list(Page::new(Some(1), Some(a.id)).unwrap())
            .await
            .unwrap(),
        vec![b.clone()]
    );
    assert_eq!(
        store.list(Page::new(Some(1), None).unwrap()).await.unwrap(),
        vec![changed.clone()]
    );
    store.delete(a.id, none()).await.unwrap();
    assert_eq!(store.get(a.id).await, Err(DomainError::NotFound(a.id)));
    assert_eq!(
        store.delete(a.id, none()).await,
        Err(DomainError::NotFound(a.id))
    );
    assert_eq!(
        store
            .update(
                a.id,
                PersonChanges::new(None, None, Some(1), None).unwrap(),
                none()
            )
            .await,
        Err(DomainError::NotFound(a.id))
    );
    // Ids are never reused.
    let c = store.create(new("Cy", 1), none()).await.unwrap();
    assert!(c.id > b.id);
    assert_eq!(store.count().await.unwrap(), 2);
    // No event context, no events.
    assert!(store.outbox(10).await.unwrap().is_empty());
    store.check().await.expect("healthy");
}

/// The case a plain "highest id plus one" gets wrong: the row at the top
/// goes, and the next create would take its id. Also after a restart,
/// which forgets whatever the process kept in memory.
async fn the_highest_id_deleted_is_not_handed_out_again(fresh: Fresh) {
    let store = fresh.open().await;
    store.create(new("Ann", 30), none()).await.unwrap();
    let top = store.create(new("Bo", 31), none()).await.unwrap();
    store.delete(top.id, none()).await.unwrap();
    let next = store.create(new("Cy", 32), none()).await.unwrap();
    assert!(next.id > top.id, "{} after deleting {}", next.id, top.id);
    store.delete(next.id, none()).await.unwrap();
    drop(store);
    let reopened = fresh.open().await;
    let after_restart = reopened.create(new("Di", 33), none()).await.unwrap();
    assert!(
        after_restart.id > next.id,
        "{} after deleting {} and reopening",
        after_restart.id,
        next.id
    );
}

async fn concurrent_writes_all_land_durably(fresh: Fresh) {
    let store = fresh.open().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.create(new(&format!("P{i}"), i % 150), none()).await
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().unwrap().id);
    }
    assert_eq!(ids.len(), 200);
    drop(store);
    // Reopening sees every row: they were committed, not just answered.
    let again = fresh.open().await;
    assert_eq!(again.count().await.unwrap(), 200);
}

async fn a_replayed_request_gets_its_first_answer_and_writes_nothing(fresh: Fresh) {
    let store = fresh.open().await;
    let first = store.create(new("Once", 1), rpc("c-1")).await.unwrap();
    let again = store.create(new("Once", 1), rpc("c-1")).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(store.count().await.unwrap(), 1);
    let other = store.create(new("Twice", 2), rpc("c-2")).await.unwrap();
    assert_ne!(other.id, first.id);

    let up = PersonChanges::new(None, None, Some(5), None).unwrap();
    let u1 = store
        .update(first.id, up.clone(), rpc("u-1"))
        .await
        .unwrap();
    store
        .update(
            first.id,
            PersonChanges::new(None, None, Some(9), None).unwrap(),
            none(),
        )
        .await
        .unwrap();
    // The replay answers as the first time, without applying age 5 again.
    assert_eq!(store.update(first.id, up, rpc("u-1")).await.unwrap(), u1);
    assert_eq!(store.get(first.id).await.unwrap().age, 9);

    store.delete(other.id, rpc("d-1")).await.unwrap();
    assert_eq!(store.delete(other.id, rpc("d-1")).await, Ok(()));
    // A failed write records nothing: the same id may succeed later.
    assert_eq!(
        store.delete(999_999, rpc("d-2")).await,
        Err(DomainError::NotFound(999_999))
    );
    // One event per change actually made, in commit order.
    let kinds: Vec<String> = store
        .outbox(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type.into_owned())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "person_created",
            "person_created",
            "person_updated",
            "person_deleted"
        ]
    );
}

/// The same request twice among others sent together (on SQLite they
/// share a commit, whose first attempt does not look requests up): applied
/// once, both answered alike, and the others in the batch unharmed.
async fn a_request_twice_in_one_batch_is_applied_once(fresh: Fresh) {
    let store = fresh.open().await;
    for round in 0..10 {
        let twice = format!("twice-{round}");
        let (a, b, c, d) = tokio::join!(
            store.create(new("Before", round), rpc(&format!("before-{round}"))),
            store.create(new("Twice", round), rpc(&twice)),
            store.create(new("Twice", round), rpc(&twice)),
            store.create(new("After", round), rpc(&format!("after-{round}"))),
        );
        let (a, b, c, d) = (a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap());
        assert_eq!(b, c, "round {round}");
        let ids: std::collections::HashSet<i64> = [a.id, b.id, d.id].into_iter().collect();
        assert_eq!(ids.len(), 3, "round {round}");
    }
    assert_eq!(store.count().await.unwrap(), 30);
    assert_eq!(store.outbox(100).await.unwrap().len(), 30);
}

/// Two instances on one database (two stores, as two processes would
/// have): a request redelivered to the other gets the first answer, and
/// nothing is written twice, also when both get it at the same moment.
async fn a_request_replayed_to_another_instance_writes_nothing(fresh: Fresh) {
    let one = fresh.open().await;
    let two = fresh.open().await;
    let first = one.create(new("Ada", 36), rpc("x-1")).await.unwrap();
    assert_eq!(two.create(new("Ada", 36), rpc("x-1")).await.unwrap(), first);
    assert_eq!(two.count().await.unwrap(), 1);

    // The same request to both at once: one applies it, the other waits
    // for its commit and replays it.
    for round in 0..20 {
        let id = format!("race-{round}");
        let (a, b) = tokio::join!(
            one.create(new("Race", round), rpc(&id)),
            two.create(new("Race", round), rpc(&id)),
        );
        assert_eq!(a.unwrap(), b.unwrap(), "round {round}");
    }
    assert_eq!(one.count().await.unwrap(), 21);
    assert_eq!(one.outbox(100).await.unwrap().len(), 21);
}

async fn outbox_keeps_order_and_context_until_published(fresh: Fresh) {
    let store = fresh.open().await;
    let ctx = rpc_core::Propagated {
        call_id_stack: vec!["a.b.1".into()],
        data: [("user_id".to_owned(), serde_json::json!("u1"))]
            .into_iter()
            .collect(),
    };
    let meta = WriteMeta {
        request_id: None,
        event: Some(Arc::new(ctx.clone())),
    };
    let p = store.create(new("E", 3), meta.clone()).await.unwrap();
    store.delete(p.id, meta).await.unwrap();
    let events = store.outbox(10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, "person_created");
    assert_eq!(events[0].data(), serde_json::to_value(&p).unwrap());
    assert_eq!(*events[0].context, ctx);
    assert_eq!(events[1].data(), serde_json::json!({"id": p.id}));
    // Bodies are the wire's bytes (kombu's separators), whether the event
    // comes from the table or, below, from the writer's memory.
    assert_eq!(events[0].body, rpc_core::wire::json::to_vec(&p).unwrap());
    assert_eq!(events[1].body, format!("{{\"id\": {}}}", p.id).into_bytes());

    // A claim dropped unfinished gives its events back (on PostgreSQL once
    // the server has rolled back the closed session's transaction, which
    // it does asynchronously: until then the rows are skipped, not lost).
    let claim = store.claim_outbox(10).await.unwrap();
    assert_eq!(claim.events(), events.as_slice());
    drop(claim);
    let claim = async {
        loop {
            let claim = store.claim_outbox(10).await.unwrap();
            if claim.events().len() == events.len() {
                return claim;
            }
            drop(claim);
            tokio::task::yield_now().await;
        }
    }
    .within(
        Duration::from_secs(10),
        "the dropped claim's events to come back",
    )
    .await;
    assert_eq!(claim.events(), events.as_slice());
    // Only the published (confirmed) prefix is removed.
    claim.finish(1).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.outbox(10).await.unwrap(), vec![events[1].clone()]);
    let claim = store.claim_outbox(10).await.unwrap();
    assert_eq!(claim.events(), &events[1..]);
    claim.finish(1).await.unwrap();
    store.flush().await.unwrap();
    assert!(store.outbox(10).await.unwrap().is_empty());
    assert!(store.claim_outbox(10).await.unwrap().is_empty());
}

async fn request_records_expire(fresh: Fresh) {
    let store = fresh
        .open_with(StoreOptions {
            request_ttl: Duration::ZERO,
            ..StoreOptions::default()
        })
        .await;
    let meta = WriteMeta {
        request_id: Some("c-1".into()),
        event: None,
    };
    // Every record is at least 0 s old, so expired at once: a later replay
    // is a new request.
    let a = store.create(new("A", 1), meta.clone()).await.unwrap();
    let b = store.create(new("A", 1), meta).await.unwrap();
    assert_ne!(a.id, b.id);
}

/// Before migrations were serialised, instances started together on a
/// fresh SQLite file failed with `table person already exists`.
async fn instances_starting_together_on_a_fresh_database_all_open(fresh: Fresh) {
    let db = fresh.database();
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { Store::connect(&db, StoreOptions::default()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for (i, open) in opens.into_iter().enumerate() {
        let opened = open
            .within(Duration::from_secs(60), "a store to open")
            .await
            .expect("no panic");
        stores.push(opened.unwrap_or_else(|e| panic!("store {i} did not open: {e}")));
    }
    // Every table is there: each store writes a person, its event and its
    // request record.
    for (i, store) in stores.iter().enumerate() {
        store
            .create(new("S", 1), rpc(&format!("start-{i}")))
            .await
            .expect("writes");
    }
    assert_eq!(stores[0].count().await.unwrap(), 6);
    assert_eq!(stores[0].outbox(10).await.unwrap().len(), 6);
    if let Fresh::Postgres(test_db) = &fresh {
        let (client, conn) = tokio_postgres::connect(&test_db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let rows = client
            .query("SELECT version FROM schema_version", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, i32>(0), 3);
        drop(client);
        let _ = task.await;
    }
}

/// PostgreSQL only: two relays at once take disjoint events, and an event
/// whose id was drawn before another's but committed after it is still
/// relayed (a watermark would skip it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relays_share_the_outbox_and_miss_no_late_commit() {
    let db = TestDb::create().await;
    let fresh = Fresh::Postgres(db);
    let store = fresh.open().await;
    let other = fresh.open().await;
    let ctx = WriteMeta {
        request_id: None,
        event: Some(Default::default()),
    };
    for i in 0..3 {
        store.create(new("R", i), ctx.clone()).await.unwrap();
    }
    let a = store.claim_outbox(2).await.unwrap();
    let b = other.claim_outbox(10).await.unwrap();
    assert_eq!(a.events().len(), 2);
    assert_eq!(
        b.events().len(),
        1,
        "the rows the first relay holds are skipped"
    );
    let a_ids: HashSet<i64> = a.events().iter().map(|e| e.id).collect();
    assert!(!a_ids.contains(&b.events()[0].id));
    a.finish(2).await.unwrap();
    b.finish(1).await.unwrap();
    assert!(store.outbox(10).await.unwrap().is_empty());

    // A transaction draws an outbox id, then commits after a later one has
    // been relayed.
    let Fresh::Postgres(test_db) = &fresh else {
        unreachable!()
    };
    let (mut client, conn) = tokio_postgres::connect(&test_db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let slow = client.transaction().await.unwrap();
    slow.execute(
        "INSERT INTO event_outbox (event_type, payload, call_id_stack, context, created_at)
         VALUES ('person_created', '{\"late\":true}', '[]', '{}', 0)",
        &[],
    )
    .await
    .unwrap();
    store.create(new("After", 1), ctx.clone()).await.unwrap();
    let claim = store.claim_outbox(10).await.unwrap();
    assert_eq!(claim.events().len(), 1);
    claim.finish(1).await.unwrap();
    slow.commit().await.unwrap();
    let claim = store.claim_outbox(10).await.unwrap();
    assert_eq!(claim.events().len(), 1);
    assert_eq!(claim.events()[0].data(), serde_json::json!({"late": true}));
    // Written compact by hand: published in the wire's form.
    assert_eq!(claim.events()[0].body, br#"{"late": true}"#);
    claim.finish(1).await.unwrap();
    drop(client);
    let _ = task.await;
}

/// PostgreSQL only (SQLite's is in `sqlite.rs`): a database migrated by a
/// newer build is refused, naming it without its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_newer_schema() {
    let db = TestDb::create().await;
    let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE schema_version (singleton BOOLEAN PRIMARY KEY DEFAULT TRUE, version INTEGER NOT NULL);
             INSERT INTO schema_version VALUES (TRUE, 99);",
        )
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    match Store::connect(&Database::parse(&db.url()), StoreOptions::default()).await {
        Err(StoreError::TooNew {
            found: 99,
            db: shown,
            ..
        }) => {
            assert!(shown.ends_with(db.name()), "{shown}")
        }
        Err(e) => panic!("expected TooNew, got {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[test]
fn request_records_of_either_form_read_back() {
    let ada = Person {
        id: 7,
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        age: 36,
        member: true,
    };
    let (_, body) = WriteOp::Create(new("Ada", 36))
        .event(&Written::Person(ada.clone()))
        .expect("a create has an event");
    let current = std::str::from_utf8(&body).unwrap();
    assert_eq!(
        recorded_answer("create", current),
        Some(Written::Person(ada.clone()))
    );
    assert_eq!(
        recorded_answer("delete", r#"{"id": 7}"#),
        Some(Written::Deleted(7))
    );
    // The form records had before they shared the event's encoding.
    let earlier = serde_json::to_string(&Written::Person(ada.clone())).unwrap();
    assert_eq!(
        recorded_answer("update", &earlier),
        Some(Written::Person(ada))
    );
    assert_eq!(
        recorded_answer("delete", r#"{"Deleted": 7}"#),
        Some(Written::Deleted(7))
    );
    assert_eq!(recorded_answer("create", "null"), None);
    assert_eq!(recorded_answer("delete", r#"{"Person": 1}"#), None);
}

#[test]
fn context_columns_are_the_json_encoding() {
    let stacks: [&[&str]; 4] = [
        &["standalone_rpc_proxy.call.5d4a", "person.create.1f0e-2b"],
        &["quote\"d"],
        &["back\\slash", "plain"],
        &["t\u{e9}l\u{e9}phone", "tab\there"],
    ];
    for stack in stacks {
        let ctx = rpc_core::Propagated {
            call_id_stack: stack.iter().map(|s| s.to_string()).collect(),
            data: BTreeMap::new(),
        };
        let (text, data) = context_columns(&ctx);
        assert_eq!(text, serde_json::to_string(&ctx.call_id_stack).unwrap());
        assert_eq!(
            serde_json::from_str::<Vec<String>>(&text).unwrap(),
            ctx.call_id_stack
        );
        assert_eq!(data, "{}");
    }
}
