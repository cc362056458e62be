//! One conformance suite for every store: memory, a standalone `redis-server`, and a
//! 3-node Redis Cluster, each started by the test on free ports.

mod support;

use std::time::{Duration, SystemTime};

use idgate::config::{FailMode, StoreConfig, StoreUrl};
use idgate::directory::model::Email;
use idgate::directory::model::{Group, Membership, User};
use idgate::session::model::{RevokeReason, SamlSubject, SessionRecord};
use idgate::store::{
    CreateGroup, CreateUser, DirectoryStore, EphemeralStore, Event, EventBus, Index, Job, JobQueue,
    Listing, QueueStats, Records, ReplaceGroup, ReplaceUser, SessionStore, Store, StoredSession,
    UserKey,
};
use support::{RedisCluster, RedisServer};

fn open(url: StoreUrl) -> Store {
    open_with_ca(url, None)
}

fn open_with_ca(url: StoreUrl, ca_certificate: Option<Vec<u8>>) -> Store {
    Store::open(&StoreConfig {
        url,
        key_prefix: format!("conformance{}", std::process::id()),
        fail_mode: FailMode::Closed,
        ca_certificate,
    })
    .expect("open store")
}

fn cluster_url(url: &str) -> StoreUrl {
    let hosts = url.strip_prefix("redis+cluster://").unwrap();
    StoreUrl::Cluster(hosts.split(',').map(|h| format!("redis://{h}")).collect())
}

async fn conformance(store: Store) {
    concurrent_group_creates_have_one_winner(&store).await;
    group_updates_are_compare_and_set(&store).await;
    user_indexes_are_unique(&store).await;
    email_index_never_holds_two_users(&store).await;
    user_updates_move_indexes_and_are_compare_and_set(&store).await;
    listings_are_paged_in_id_order_and_hide_deprovisioned(&store).await;
    every_user_is_listed_and_found_by_the_user_name_it_shows(&store).await;
    multi_valued_indexes_follow_the_record(&store).await;
    group_external_ids_are_unique(&store).await;
    sessions_live_expire_and_revoke(&store).await;
    saml_subjects_find_their_sessions(&store).await;
    listings_continue_after_a_cursor(&store).await;
    a_users_sessions_are_found_by_their_index(&store).await;
    job_queues_hand_each_job_to_one_consumer_and_recover_stale_ones(&store).await;
    queue_stats_count_what_is_not_done_and_date_the_oldest(&store).await;
    ephemeral_values_are_claimed_once_taken_once_and_expire(&store).await;
    leases_are_renewed_and_released_only_by_their_holder(&store).await;
    events_reach_subscribers(&store).await;
}

async fn job_queues_hand_each_job_to_one_consumer_and_recover_stale_ones(store: &Store) {
    let q = "conformance-jobs";
    let stale = Duration::from_millis(400);
    for i in 0..3 {
        store.enqueue(q, &format!("job-{i}")).await.unwrap();
    }
    let a = store.claim(q, "A", 2, stale).await.unwrap();
    let bodies = |jobs: &[Job]| jobs.iter().map(|j| j.body.clone()).collect::<Vec<_>>();
    assert_eq!(bodies(&a), ["job-0", "job-1"], "in order");
    let b = store.claim(q, "B", 5, stale).await.unwrap();
    assert_eq!(bodies(&b), ["job-2"], "a claimed job is nobody else's");
    assert!(store.claim(q, "B", 5, stale).await.unwrap().is_empty());
    store.ack(q, &a[0].id).await.unwrap();
    store.ack(q, &b[0].id).await.unwrap();
    // A keeps job-1 alive for a while, then stops (it died): B takes it over.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store
            .keep(q, "A", std::slice::from_ref(&a[1].id))
            .await
            .unwrap();
        assert!(
            store.claim(q, "B", 5, stale).await.unwrap().is_empty(),
            "kept jobs stay A's"
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let taken = store.claim(q, "B", 5, stale).await.unwrap();
    assert_eq!(bodies(&taken), ["job-1"]);
    store.ack(q, &taken[0].id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        store.claim(q, "C", 5, stale).await.unwrap().is_empty(),
        "acked jobs are gone"
    );

    // Many consumers at once: every job exactly once.
    for i in 0..40 {
        store.enqueue(q, &format!("bulk-{i}")).await.unwrap();
    }
    let mut tasks = Vec::new();
    for c in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let jobs = store
                    .claim(q, &format!("c{c}"), 3, Duration::from_secs(60))
                    .await
                    .unwrap();
                if jobs.is_empty() {
                    break got;
                }
                for j in jobs {
                    store.ack(q, &j.id).await.unwrap();
                    got.push(j.body);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("bulk-{i}")).collect();
    want.sort();
    assert_eq!(all, want);

    assert_eq!(store.get_record("r1").await.unwrap(), None);
    store.set_record("r1", "v1").await.unwrap();
    assert_eq!(store.get_record("r1").await.unwrap().as_deref(), Some("v1"));
    store.delete_record("r1").await.unwrap();
    assert_eq!(store.get_record("r1").await.unwrap(), None);
}

/// What the job loop reads for `idgate_job_queue_depth` and
/// `idgate_job_queue_oldest_age_seconds`.
async fn queue_stats_count_what_is_not_done_and_date_the_oldest(store: &Store) {
    let q = "conformance-stats";
    assert_eq!(
        store.stats(q).await.unwrap(),
        QueueStats::default(),
        "no queue yet"
    );
    // Redis dates a job by its own clock: a generous window, not a timing bound.
    let slack = Duration::from_secs(30);
    let before = SystemTime::now() - slack;
    store.enqueue(q, "a").await.unwrap();
    store.enqueue(q, "b").await.unwrap();
    let after = SystemTime::now() + slack;
    let s = store.stats(q).await.unwrap();
    assert_eq!(s.depth, 2);
    let first = s.oldest.expect("an oldest job");
    assert!(before <= first && first <= after, "{first:?}");
    // A claimed job is not done yet.
    let jobs = store
        .claim(q, "A", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.stats(q).await.unwrap().depth, 2);
    store.ack(q, &jobs[0].id).await.unwrap();
    let s = store.stats(q).await.unwrap();
    assert_eq!(s.depth, 1);
    assert!(s.oldest.expect("the second job") >= first);
    let jobs = store
        .claim(q, "A", 5, Duration::from_secs(60))
        .await
        .unwrap();
    store.ack(q, &jobs[0].id).await.unwrap();
    assert_eq!(
        store.stats(q).await.unwrap(),
        QueueStats::default(),
        "all done"
    );
}

async fn ephemeral_values_are_claimed_once_taken_once_and_expire(store: &Store) {
    let ttl = Duration::from_secs(30);
    // Concurrent claims of one key (a replayed assertion id): exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_once("assertion:abc", &i.to_string(), ttl)
                .await
                .unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    assert!(store.put_once("pending:r1", "/return", ttl).await.unwrap());
    assert_eq!(
        store.take("pending:r1").await.unwrap().as_deref(),
        Some("/return")
    );
    assert_eq!(store.take("pending:r1").await.unwrap(), None, "taken once");
    assert!(
        store
            .put_once("short", "x", Duration::from_millis(300))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.take("short").await.unwrap(), None, "expired");
    assert!(
        store.put_once("short", "y", ttl).await.unwrap(),
        "free again after expiry"
    );
}

/// A lease (a lock that a crashed holder cannot keep for long) is an ephemeral value
/// whose holder renews it: only the holder's token renews or releases it, so a holder
/// that lost it (it expired and another took it) cannot extend or free the new one.
async fn leases_are_renewed_and_released_only_by_their_holder(store: &Store) {
    let short = Duration::from_millis(1000);
    assert!(store.put_once("lease:a", "holder-1", short).await.unwrap());
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            store.renew("lease:a", "holder-1", short).await.unwrap(),
            "renewed by its holder"
        );
    }
    // 1.2 s after it was taken, it holds only because it was renewed.
    assert!(
        !store.put_once("lease:a", "holder-2", short).await.unwrap(),
        "still held"
    );
    assert!(
        !store.renew("lease:a", "holder-2", short).await.unwrap(),
        "not by another"
    );
    assert!(
        !store.release("lease:a", "holder-2").await.unwrap(),
        "nor freed by another"
    );
    assert!(
        !store.put_once("lease:a", "holder-2", short).await.unwrap(),
        "still held"
    );
    assert!(
        store.release("lease:a", "holder-1").await.unwrap(),
        "freed by its holder"
    );
    assert!(!store.release("lease:a", "holder-1").await.unwrap(), "once");
    assert!(
        !store.renew("lease:a", "holder-1", short).await.unwrap(),
        "a freed lease is not renewed back"
    );
    // Unrenewed, it lapses; its old holder cannot take it back from the next.
    assert!(
        store.put_once("lease:a", "holder-2", short).await.unwrap(),
        "free again"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !store.renew("lease:a", "holder-2", short).await.unwrap(),
        "lapsed"
    );
    assert!(
        store.put_once("lease:a", "holder-3", short).await.unwrap(),
        "taken after it lapsed"
    );
    assert!(
        !store.renew("lease:a", "holder-2", short).await.unwrap(),
        "the lapsed holder cannot renew it"
    );
    assert!(
        !store.release("lease:a", "holder-2").await.unwrap(),
        "nor free it"
    );
    assert!(store.release("lease:a", "holder-3").await.unwrap());
}

async fn concurrent_group_creates_have_one_winner(store: &Store) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let g = Group::new("g-race", format!("Company {i}"), 100);
            (i, store.create_group("t1", &g).await.expect("create_group"))
        }));
    }
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for t in tasks {
        let (i, outcome) = t.await.unwrap();
        match outcome {
            CreateGroup::Created => winners.push(i),
            CreateGroup::Exists(existing) => seen.push(existing),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    let stored = store.get_group("t1", "g-race").await.unwrap().unwrap();
    assert_eq!(stored.name, format!("Company {}", winners[0]));
    assert!(
        seen.iter().all(|g| *g == stored),
        "losers see the winner's record"
    );
    // Tenants are separate namespaces.
    assert!(store.get_group("t2", "g-race").await.unwrap().is_none());
}

async fn group_updates_are_compare_and_set(store: &Store) {
    let g = Group::new("g-cas", "Acme", 1);
    assert_eq!(
        store.create_group("t1", &g).await.unwrap(),
        CreateGroup::Created
    );
    let mut cancelled = g.clone();
    cancelled.active = false;
    cancelled.version = 2;
    assert_eq!(
        store.replace_group("t1", &g, &cancelled).await.unwrap(),
        ReplaceGroup::Replaced
    );
    let mut stale = g.clone();
    stale.name = "Stale".into();
    stale.version = 2;
    assert_eq!(
        store.replace_group("t1", &g, &stale).await.unwrap(),
        ReplaceGroup::Conflict,
        "stale write refused"
    );
    let stored = store.get_group("t1", "g-cas").await.unwrap().unwrap();
    assert!(!stored.active);
    assert_eq!(stored.name, "Acme");
}

fn user(id: &str, name: Option<&str>, ext: Option<&str>, email: Option<&str>) -> User {
    let mut u = User::new(id, 1);
    u.user_name = name.map(Into::into);
    u.external_id = ext.map(Into::into);
    u.email = email.map(Into::into);
    u
}

async fn user_indexes_are_unique(store: &Store) {
    let a = user(
        "u-a",
        Some("Alice@Example.com"),
        Some("ext-a"),
        Some("alice@example.com"),
    );
    assert_eq!(
        store.create_user("t1", &a).await.unwrap(),
        CreateUser::Created
    );
    assert_eq!(
        store.create_user("t1", &a).await.unwrap(),
        CreateUser::IdTaken
    );
    let same_name = user("u-b", Some("alice@EXAMPLE.com"), None, None);
    assert_eq!(
        store.create_user("t1", &same_name).await.unwrap(),
        CreateUser::UserNameTaken("u-a".into()),
        "userName is unique, compared case-insensitively"
    );
    let same_ext = user("u-c", None, Some("ext-a"), None);
    assert_eq!(
        store.create_user("t1", &same_ext).await.unwrap(),
        CreateUser::ExternalIdTaken("u-a".into())
    );
    assert!(
        store.get_user("t1", "u-b").await.unwrap().is_none(),
        "a refused create stores nothing"
    );
    let find = |k, v: &'static str| store.find_user("t1", k, v);
    assert_eq!(
        find(UserKey::UserName, "ALICE@example.COM")
            .await
            .unwrap()
            .as_deref(),
        Some("u-a")
    );
    assert_eq!(
        find(UserKey::ExternalId, "ext-a").await.unwrap().as_deref(),
        Some("u-a")
    );
    assert_eq!(
        find(UserKey::ExternalId, "EXT-A").await.unwrap(),
        None,
        "externalId is exact"
    );
    let stored = store.get_user("t1", "u-a").await.unwrap().unwrap();
    assert_eq!(
        stored.user_name.as_deref(),
        Some("Alice@Example.com"),
        "case preserved"
    );
}

async fn email_index_never_holds_two_users(store: &Store) {
    // Concurrent creates of users sharing one email.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let u = user(&format!("dup-{i}"), None, None, Some("Shared@Example.com"));
            store.create_user("t3", &u).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), CreateUser::Created);
    }
    assert_eq!(
        store
            .find_user("t3", UserKey::Email, "shared@example.com")
            .await
            .unwrap(),
        None,
        "an email several users share links to none of them"
    );
    let solo = user("solo", None, None, Some("Solo@Example.com"));
    store.create_user("t3", &solo).await.unwrap();
    assert_eq!(
        store
            .find_user("t3", UserKey::Email, "solo@example.COM")
            .await
            .unwrap()
            .as_deref(),
        Some("solo")
    );
    let second = user("solo-2", None, None, Some("solo@example.com"));
    store.create_user("t3", &second).await.unwrap();
    assert_eq!(
        store
            .find_user("t3", UserKey::Email, "solo@example.com")
            .await
            .unwrap(),
        None
    );
}

async fn user_updates_move_indexes_and_are_compare_and_set(store: &Store) {
    let old = user(
        "u-m",
        Some("mover"),
        Some("ext-m"),
        Some("mover@example.com"),
    );
    store.create_user("t4", &old).await.unwrap();
    let other = user("u-o", Some("other"), None, None);
    store.create_user("t4", &other).await.unwrap();

    let mut new = old.clone();
    new.user_name = Some("moved".into());
    new.email = Some("moved@example.com".into());
    new.external_id = None;
    new.active = false;
    new.memberships.push(Membership {
        group_id: "g".into(),
        role: "admin".into(),
    });
    new.version = 2;
    let mut clash = new.clone();
    clash.user_name = Some("OTHER".into());
    assert_eq!(
        store.replace_user("t4", &old, &clash).await.unwrap(),
        ReplaceUser::UserNameTaken("u-o".into())
    );
    assert_eq!(
        store.replace_user("t4", &old, &new).await.unwrap(),
        ReplaceUser::Replaced
    );
    assert_eq!(
        store.replace_user("t4", &old, &new).await.unwrap(),
        ReplaceUser::Conflict,
        "a write based on a stale version is refused"
    );
    let f = |k, v: &'static str| store.find_user("t4", k, v);
    assert_eq!(
        f(UserKey::UserName, "mover").await.unwrap(),
        None,
        "old userName released"
    );
    assert_eq!(
        f(UserKey::UserName, "moved").await.unwrap().as_deref(),
        Some("u-m")
    );
    assert_eq!(f(UserKey::ExternalId, "ext-m").await.unwrap(), None);
    assert_eq!(f(UserKey::Email, "mover@example.com").await.unwrap(), None);
    assert_eq!(
        f(UserKey::Email, "moved@example.com")
            .await
            .unwrap()
            .as_deref(),
        Some("u-m")
    );
    assert_eq!(store.get_user("t4", "u-m").await.unwrap().unwrap(), new);
    // The released userName can be taken by someone else now.
    let taker = user("u-t", Some("Mover"), None, None);
    assert_eq!(
        store.create_user("t4", &taker).await.unwrap(),
        CreateUser::Created
    );
}

async fn listings_are_paged_in_id_order_and_hide_deprovisioned(store: &Store) {
    for i in [3, 1, 4, 0, 2] {
        let u = user(&format!("L{i}"), Some(&format!("list-{i}")), None, None);
        assert_eq!(
            store.create_user("t7", &u).await.unwrap(),
            CreateUser::Created
        );
    }
    let (page, total) = store.list("t7", Listing::Users, 1, 2).await.unwrap();
    assert_eq!((page, total), (vec!["L1".to_owned(), "L2".into()], 5));
    let (tail, _) = store.list("t7", Listing::Users, 4, 10).await.unwrap();
    assert_eq!(tail, vec!["L4".to_owned()]);
    let (none, total) = store.list("t7", Listing::Users, 9, 10).await.unwrap();
    assert!(none.is_empty() && total == 5);

    let old = store.get_user("t7", "L2").await.unwrap().unwrap();
    let mut gone = old.clone();
    gone.deprovisioned = true;
    gone.version = 2;
    store.replace_user("t7", &old, &gone).await.unwrap();
    let (all, total) = store.list("t7", Listing::Users, 0, 10).await.unwrap();
    assert_eq!(total, 4);
    assert!(
        !all.contains(&"L2".to_owned()),
        "deprovisioned users are not listed"
    );
    assert_eq!(
        store
            .find_user("t7", UserKey::UserName, "LIST-2")
            .await
            .unwrap()
            .as_deref(),
        Some("L2"),
        "but keep their userName, so a later create can restore them"
    );
    let got = store
        .get_users("t7", &["L0".into(), "nope".into(), "L4".into()])
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        ["L0", "L4"]
    );
    let (groups, n) = store.list("t7", Listing::Groups, 0, 10).await.unwrap();
    assert!(groups.is_empty() && n == 0, "listings are separate");
}

/// SCIM shows every user of a tenant, whoever made it (SPEC §10): each user not
/// deprovisioned is listed, and holds the userName it shows (see `User::scim_user_name`)
/// in the unique index, whether a client gave it, a login chose it, or it is the id.
async fn every_user_is_listed_and_found_by_the_user_name_it_shows(store: &Store) {
    let t = "t9";
    let mut by_login = user("S-1", None, None, Some("ann@x.com"));
    by_login.login_name = Some("Ann@X.com".into());
    let bare = user("S-2", None, None, None);
    let managed = user("S-3", Some("carl"), None, None);
    for u in [&by_login, &bare, &managed] {
        assert_eq!(store.create_user(t, u).await.unwrap(), CreateUser::Created);
    }
    let (all, total) = store.list(t, Listing::Users, 0, 10).await.unwrap();
    assert_eq!(
        (all, total),
        (vec!["S-1".into(), "S-2".into(), "S-3".into()], 3)
    );
    let named = |v: &'static str| store.find_user(t, UserKey::UserName, v);
    assert_eq!(named("ANN@x.com").await.unwrap().as_deref(), Some("S-1"));
    assert_eq!(named("s-2").await.unwrap().as_deref(), Some("S-2"));
    assert_eq!(named("Carl").await.unwrap().as_deref(), Some("S-3"));

    let mut clash = user("S-4", None, None, None);
    clash.login_name = Some("ann@X.COM".into());
    assert_eq!(
        store.create_user(t, &clash).await.unwrap(),
        CreateUser::UserNameTaken("S-1".into()),
        "a chosen userName is as unique as a given one"
    );
    assert_eq!(
        store
            .create_user(t, &user("S-5", Some("S-2"), None, None))
            .await
            .unwrap(),
        CreateUser::UserNameTaken("S-2".into()),
        "so is an id standing in for one"
    );

    // A client takes the user over with its own userName: the chosen one is released.
    let mut adopted = by_login.clone();
    adopted.user_name = Some("ann.lee".into());
    adopted.version = 2;
    assert_eq!(
        store.replace_user(t, &by_login, &adopted).await.unwrap(),
        ReplaceUser::Replaced
    );
    assert_eq!(named("ann@x.com").await.unwrap(), None);
    assert_eq!(named("Ann.Lee").await.unwrap().as_deref(), Some("S-1"));

    // Deprovisioned: no longer listed, but every user id is still there to maintain.
    let mut gone = bare.clone();
    gone.deprovisioned = true;
    gone.version = 2;
    store.replace_user(t, &bare, &gone).await.unwrap();
    let (all, _) = store.list(t, Listing::Users, 0, 10).await.unwrap();
    assert_eq!(all, ["S-1", "S-3"]);
    let mut every = store.user_ids(t).await.unwrap();
    every.sort();
    assert_eq!(every, ["S-1", "S-2", "S-3"]);
    assert!(store.user_ids("t-none").await.unwrap().is_empty());
}

async fn multi_valued_indexes_follow_the_record(store: &Store) {
    let mut a = user("M-a", Some("ma"), None, None);
    a.set_emails(vec![
        Email {
            value: "Work@X.com".into(),
            kind: Some("work".into()),
            primary: true,
        },
        Email {
            value: "home@x.com".into(),
            kind: Some("home".into()),
            primary: false,
        },
    ]);
    a.display_name = Some("Ann Lee".into());
    a.memberships.push(Membership {
        group_id: "G1".into(),
        role: "member".into(),
    });
    store.create_user("t8", &a).await.unwrap();
    let mut b = user("M-b", Some("mb"), None, Some("home@X.com"));
    b.memberships.push(Membership {
        group_id: "G1".into(),
        role: "admin".into(),
    });
    store.create_user("t8", &b).await.unwrap();

    let find = |i, v: &'static str| store.find("t8", i, v);
    assert_eq!(find(Index::Email, "work@x.com").await.unwrap(), ["M-a"]);
    assert_eq!(
        find(Index::Email, "HOME@x.com").await.unwrap(),
        ["M-a", "M-b"]
    );
    assert_eq!(
        find(Index::UserDisplayName, "ann lee").await.unwrap(),
        ["M-a"]
    );
    assert_eq!(find(Index::Members, "G1").await.unwrap(), ["M-a", "M-b"]);

    let mut moved = a.clone();
    moved.memberships.clear();
    moved.set_emails(Vec::new());
    moved.display_name = None;
    moved.version = 2;
    assert_eq!(
        store.replace_user("t8", &a, &moved).await.unwrap(),
        ReplaceUser::Replaced
    );
    assert!(find(Index::Email, "work@x.com").await.unwrap().is_empty());
    assert_eq!(find(Index::Email, "home@x.com").await.unwrap(), ["M-b"]);
    assert!(
        find(Index::UserDisplayName, "Ann Lee")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(find(Index::Members, "G1").await.unwrap(), ["M-b"]);
    assert_eq!(
        store
            .find_user("t8", UserKey::Email, "home@x.com")
            .await
            .unwrap()
            .as_deref(),
        Some("M-b"),
        "an email one user holds again links to that user"
    );
}

async fn group_external_ids_are_unique(store: &Store) {
    let mut g = Group::new("GX1", "Sales", 1);
    g.external_id = Some("ext-g".into());
    assert_eq!(
        store.create_group("t9", &g).await.unwrap(),
        CreateGroup::Created
    );
    let mut h = Group::new("GX2", "sales", 1);
    h.external_id = Some("ext-g".into());
    assert_eq!(
        store.create_group("t9", &h).await.unwrap(),
        CreateGroup::ExternalIdTaken("GX1".into())
    );
    assert!(store.get_group("t9", "GX2").await.unwrap().is_none());
    h.external_id = None;
    store.create_group("t9", &h).await.unwrap();
    assert_eq!(
        store.find("t9", Index::GroupName, "SALES").await.unwrap(),
        ["GX1", "GX2"],
        "display names are not unique"
    );
    assert_eq!(
        store
            .find("t9", Index::GroupExternalId, "ext-g")
            .await
            .unwrap(),
        ["GX1"]
    );
    let mut renamed = g.clone();
    renamed.name = "Marketing".into();
    renamed.version = 2;
    store.replace_group("t9", &g, &renamed).await.unwrap();
    assert_eq!(
        store.find("t9", Index::GroupName, "sales").await.unwrap(),
        ["GX2"]
    );
    let (ids, total) = store.list("t9", Listing::Groups, 0, 10).await.unwrap();
    assert_eq!((ids.len(), total), (2, 2));
}

fn session(user_id: &str, now: i64) -> StoredSession {
    StoredSession {
        record: SessionRecord {
            tenant: "t5".into(),
            user_id: user_id.into(),
            group_id: "g".into(),
            created_at: now,
            expires_at: now + 3600,
            mno: None,
            saml: None,
            client: None,
            user_agent: None,
        },
        last_seen: now,
        revoked: None,
    }
}

/// The admin API's pages: ids after the cursor, in id order, however the ids read to
/// Redis's range syntax.
async fn listings_continue_after_a_cursor(store: &Store) {
    for id in ["c-a", "c-b", "[c", "(c", "c-c", "c+d", "-c"] {
        let u = user(id, Some(&format!("cur-{id}")), None, None);
        store.create_user("t-cursor", &u).await.unwrap();
    }
    let mut all: Vec<String> = ["c-a", "c-b", "[c", "(c", "c-c", "c+d", "-c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_after("t-cursor", Listing::Users, cursor.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        cursor = page.last().cloned();
        seen.extend(page);
    }
    assert_eq!(seen, all);
    assert!(
        store
            .list_after("t-cursor", Listing::Users, Some("zzz"), 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_after("t-cursor", Listing::Users, None, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The admin API lists a user's sessions from the user's index: live ones only, that
/// tenant's only.
async fn a_users_sessions_are_found_by_their_index(store: &Store) {
    let now = 1_700_000_000;
    let long = Duration::from_secs(60);
    store
        .put_session("h-u1", &session("uu", now), long)
        .await
        .unwrap();
    store
        .put_session("h-u2", &session("uu", now), long)
        .await
        .unwrap();
    store
        .put_session("h-u3", &session("uu", now), Duration::from_millis(300))
        .await
        .unwrap();
    store
        .put_session("h-u4", &session("other", now), long)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let found: Vec<String> = store
        .user_sessions("t5", "uu")
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert_eq!(found, ["h-u1", "h-u2"]);
    assert!(store.user_sessions("t6", "uu").await.unwrap().is_empty());
}

/// Single Logout finds sessions by (tenant, NameID): only live ones, only that tenant's,
/// and a deleted or expired session drops out of the index.
async fn saml_subjects_find_their_sessions(store: &Store) {
    let now = 1_700_000_000;
    let long = Duration::from_secs(60);
    let with = |tenant: &str, name_id: &str, index: &str| {
        let mut s = session("un", now);
        s.record.tenant = tenant.into();
        s.record.saml = Some(SamlSubject {
            name_id: name_id.into(),
            session_index: Some(index.into()),
        });
        s
    };
    let n1 = with("t5", "alice@idp", "si-1");
    store.put_session("h-n1", &n1, long).await.unwrap();
    store
        .put_session("h-n2", &with("t5", "alice@idp", "si-2"), long)
        .await
        .unwrap();
    store
        .put_session("h-n3", &with("t6", "alice@idp", "si-3"), long)
        .await
        .unwrap();
    store
        .put_session(
            "h-n4",
            &with("t5", "alice@idp", "si-4"),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut found: Vec<String> = store
        .saml_sessions("t5", "alice@idp")
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    found.sort();
    assert_eq!(found, ["h-n1", "h-n2"], "live sessions of that tenant only");
    store.delete_session("h-n1", &n1.record).await.unwrap();
    let found = store.saml_sessions("t5", "alice@idp").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "h-n2");
    assert_eq!(
        found[0]
            .1
            .record
            .saml
            .as_ref()
            .unwrap()
            .session_index
            .as_deref(),
        Some("si-2")
    );
    assert!(
        store
            .saml_sessions("t5", "bob@idp")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn sessions_live_expire_and_revoke(store: &Store) {
    let now = 1_700_000_000;
    let long = Duration::from_secs(60);
    let a1 = session("ua", now);
    store.put_session("h-a1", &a1, long).await.unwrap();
    store
        .put_session("h-a2", &session("ua", now), long)
        .await
        .unwrap();
    store
        .put_session("h-b1", &session("ub", now), long)
        .await
        .unwrap();
    assert_eq!(store.get_session("h-a1").await.unwrap(), Some(a1.clone()));
    assert_eq!(store.get_session("h-none").await.unwrap(), None);

    // TTL expiry, and sliding renewal pushing it back.
    store
        .put_session("h-short", &session("uc", now), Duration::from_millis(800))
        .await
        .unwrap();
    store
        .put_session("h-slid", &session("uc", now), Duration::from_millis(800))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        store
            .touch_session("h-slid", now + 1, Duration::from_secs(5))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        store.get_session("h-short").await.unwrap(),
        None,
        "expired after its TTL"
    );
    assert!(
        !store.touch_session("h-short", now + 2, long).await.unwrap(),
        "cannot revive"
    );
    let slid = store
        .get_session("h-slid")
        .await
        .unwrap()
        .expect("renewed session lives");
    assert_eq!(slid.last_seen, now + 1);

    // Leaving one company ends only the sessions made in it.
    let mut other_group = session("ua", now);
    other_group.record.group_id = "g-other".into();
    store.put_session("h-a3", &other_group, long).await.unwrap();
    let only = store
        .revoke_user_sessions(
            "t5",
            "ua",
            RevokeReason::RemovedFromCompany,
            Some("g-other"),
        )
        .await
        .unwrap();
    assert_eq!(only, ["h-a3"]);
    assert_eq!(
        store.get_session("h-a1").await.unwrap().unwrap().revoked,
        None
    );

    // Revocation marks every session of that user, and only those, with the reason.
    let mut revoked = store
        .revoke_user_sessions("t5", "ua", RevokeReason::AccountDeactivated, None)
        .await
        .unwrap();
    revoked.sort();
    assert_eq!(revoked, ["h-a1", "h-a2"], "h-a3 was revoked already");
    assert_eq!(
        store.get_session("h-a3").await.unwrap().unwrap().revoked,
        Some(RevokeReason::RemovedFromCompany),
        "a session keeps the first reason it was revoked for"
    );
    let a1 = store.get_session("h-a1").await.unwrap().unwrap();
    assert_eq!(
        a1.revoked,
        Some(RevokeReason::AccountDeactivated),
        "kept, marked, not forgotten"
    );
    assert_eq!(
        store.get_session("h-b1").await.unwrap().unwrap().revoked,
        None
    );
    // A touch never clears the mark.
    assert!(store.touch_session("h-a1", now + 5, long).await.unwrap());
    assert_eq!(
        store.get_session("h-a1").await.unwrap().unwrap().revoked,
        Some(RevokeReason::AccountDeactivated)
    );

    store
        .delete_session("h-b1", &session("ub", now).record)
        .await
        .unwrap();
    assert_eq!(store.get_session("h-b1").await.unwrap(), None);
    assert!(
        store
            .revoke_user_sessions("t5", "ub", RevokeReason::CompanyCancelled, None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn events_reach_subscribers(store: &Store) {
    let mut rx = store.subscribe();
    let event = Event::User {
        tenant: "t6".into(),
        id: "u|1".into(),
    };
    // A Redis subscription connects in the background: publish until it is heard.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        store.publish(&event).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                match rx.recv().await {
                    Ok(e) if e == event => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .await
        {
            Ok(true) => break,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "event never arrived"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    conformance(open(StoreUrl::Memory)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let redis = RedisServer::start();
    conformance(open(StoreUrl::Redis(redis.url()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_store_conforms() {
    let redis = RedisServer::start_tls();
    // Verified against the private CA given as store.ca_certificate: the whole suite,
    // including the event subscriber's own connection.
    conformance(open_with_ca(
        StoreUrl::Redis(redis.tls_verified_url()),
        Some(redis.tls_ca()),
    ))
    .await;
    // The same server is refused without that CA (the web PKI roots do not know it)
    // and with another CA, and reached with #insecure, which skips verification.
    let other = tempfile::tempdir().unwrap();
    support::make_ca(other.path(), "other");
    let other_ca = std::fs::read(other.path().join("other.pem")).unwrap();
    for (what, store) in [
        (
            "web PKI roots",
            open(StoreUrl::Redis(redis.tls_verified_url())),
        ),
        (
            "another CA",
            open_with_ca(StoreUrl::Redis(redis.tls_verified_url()), Some(other_ca)),
        ),
    ] {
        assert!(
            store.ping().await.is_err(),
            "a server certificate that does not chain to the trusted CA was accepted ({what})"
        );
    }
    open(StoreUrl::Redis(redis.tls_url()))
        .ping()
        .await
        .expect("#insecure reaches the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let cluster = RedisCluster::start();
    conformance(open(cluster_url(&cluster.url()))).await;
}
