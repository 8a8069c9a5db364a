//! Leader election against a real kube-apiserver: one leader among replicas, hand-over on
//! shutdown, take-over from a replica that died, and a leader that loses its lease stops
//! claiming it.
//!
//! Timings are short (2 s lease, 1 s renew deadline, 200 ms retry) but never asserted:
//! outcomes are awaited with generous timeouts, because the machines are shared and slow.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use ferrolb_controller::Error;
use ferrolb_controller::leader::{LeaderConfig, LeaderElector, LeaderHandle};
use ferrolb_e2e::TestControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "default";
const PATIENCE: Duration = Duration::from_secs(30);

/// One control plane at a time: the machine has two shared cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn short(lease: &str, identity: &str) -> LeaderConfig {
    LeaderConfig::new(lease, NAMESPACE, identity).with_timings(
        Duration::from_secs(2),
        Duration::from_secs(1),
        Duration::from_millis(200),
    )
}

struct Replica {
    handle: LeaderHandle,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

fn start(client: &kube::Client, config: LeaderConfig) -> Replica {
    let elector = LeaderElector::new(client.clone(), config).unwrap();
    let handle = elector.handle();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(elector.run(cancel.clone()));
    Replica {
        handle,
        cancel,
        task,
    }
}

/// Polls `done` until it holds; panics naming `what` after [`PATIENCE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn holder(api: &Api<Lease>, name: &str) -> Option<String> {
    api.get_opt(name)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn two_replicas_on_one_lease_elect_exactly_one_leader() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = TestControlPlane::start().await.unwrap();
    let client = cp.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let a = start(&client, short("one-leader", "replica-a"));
    let b = start(&client, short("one-leader", "replica-b"));

    eventually("one replica leads", || {
        a.handle.is_leader() || b.handle.is_leader()
    })
    .await;

    // For several lease durations, never do both count as leader by their own clocks.
    let watch_until = Instant::now() + Duration::from_secs(6);
    let mut samples = 0u32;
    while Instant::now() < watch_until {
        assert!(
            !(a.handle.still_leading() && b.handle.still_leading()),
            "both replicas claim the lease: a={:?} b={:?}",
            a.handle.state(),
            b.handle.state()
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(samples > 10);

    // And the API agrees with the replicas about who that one is.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let named = holder(&leases, "one-leader").await;
        let leaders: Vec<&str> = [&a, &b]
            .iter()
            .filter(|r| r.handle.is_leader())
            .map(|r| r.handle.identity())
            .collect();
        if leaders.len() == 1 && named.as_deref() == Some(leaders[0]) {
            let follower = if leaders[0] == "replica-a" { &b } else { &a };
            assert_eq!(follower.handle.holder().as_deref(), Some(leaders[0]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no single leader: lease names {named:?}, leading: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for r in [a, b] {
        r.cancel.cancel();
        r.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_leader_that_shuts_down_hands_the_lease_over_at_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = TestControlPlane::start().await.unwrap();
    let client = cp.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    // A lease far longer than the test's patience: the other replica can only take over
    // this fast because the leader releases the lease, not because it expired.
    let long = |identity| {
        LeaderConfig::new("hand-over", NAMESPACE, identity).with_timings(
            Duration::from_secs(120),
            Duration::from_secs(10),
            Duration::from_millis(200),
        )
    };
    let a = start(&client, long("replica-a"));
    tokio::time::timeout(PATIENCE, a.handle.wait_until_leading())
        .await
        .expect("replica-a leads")
        .unwrap();
    let b = start(&client, long("replica-b"));
    eventually("replica-b sees replica-a leading", || {
        b.handle.holder().as_deref() == Some("replica-a")
    })
    .await;
    assert!(!b.handle.is_leader());

    let stopping = Instant::now();
    a.cancel.cancel();
    tokio::time::timeout(PATIENCE, a.task)
        .await
        .expect("replica-a stops")
        .unwrap()
        .expect("replica-a released the lease");
    assert!(!a.handle.is_leader());
    assert!(!a.handle.still_leading());
    assert!(
        matches!(
            a.handle.wait_until_leading().await,
            Err(Error::ElectorStopped { .. })
        ),
        "waiting on a stopped elector fails instead of hanging"
    );

    tokio::time::timeout(PATIENCE, b.handle.wait_until_leading())
        .await
        .expect("replica-b takes over well before the 120 s lease would expire")
        .unwrap();
    eprintln!("hand-over took {:?}", stopping.elapsed());
    assert_eq!(
        holder(&leases, "hand-over").await.as_deref(),
        Some("replica-b")
    );

    b.cancel.cancel();
    b.task.await.unwrap().unwrap();
    assert_eq!(holder(&leases, "hand-over").await, None, "released again");
}

#[tokio::test]
async fn a_leader_that_dies_without_releasing_is_replaced_after_its_lease_expires() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = TestControlPlane::start().await.unwrap();
    let client = cp.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let a = start(&client, short("dies", "replica-a"));
    tokio::time::timeout(PATIENCE, a.handle.wait_until_leading())
        .await
        .expect("replica-a leads")
        .unwrap();
    let b = start(&client, short("dies", "replica-b"));
    eventually("replica-b sees replica-a leading", || {
        b.handle.holder().as_deref() == Some("replica-a")
    })
    .await;

    // The process dies: its loop stops mid-flight and never releases anything.
    a.task.abort();
    assert!(a.task.await.unwrap_err().is_cancelled());
    // Until when the dead replica's leadership counted by its own clock (on a slow machine
    // it may already have stepped down, having missed its renew deadline).
    let a_last = a.handle.state();
    let a_until = a_last.leading_until.filter(|_| a_last.leading);
    assert!(!a.handle.is_leader(), "a dead elector leads nothing");
    assert_eq!(
        holder(&leases, "dies").await.as_deref(),
        Some("replica-a"),
        "nothing released the lease"
    );

    tokio::time::timeout(PATIENCE, b.handle.wait_until_leading())
        .await
        .expect("replica-b takes over once the lease expires")
        .unwrap();
    // Safety, not speed: the new leader only started after the dead one's leadership had
    // run out by its own clock.
    if let Some(a_until) = a_until {
        assert!(Instant::now() >= a_until, "replica-b took over too early");
    }
    assert_eq!(holder(&leases, "dies").await.as_deref(), Some("replica-b"));
    let transitions = leases
        .get("dies")
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions;
    assert_eq!(transitions, Some(1));

    b.cancel.cancel();
    b.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_claiming_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = TestControlPlane::start().await.unwrap();
    let client = cp.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let a = start(&client, short("taken", "replica-a"));
    let mut transitions = a.handle.subscribe();
    tokio::time::timeout(PATIENCE, a.handle.wait_until_leading())
        .await
        .expect("replica-a leads")
        .unwrap();
    assert!(a.handle.still_leading());
    transitions.mark_unchanged();

    // Someone else takes the lease over (as a replica that judged it expired would), with
    // a long duration so that replica-a must not take it back during the test.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut lease = leases.get("taken").await.unwrap();
        let spec = lease.spec.as_mut().unwrap();
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(120);
        match leases
            .replace("taken", &PostParams::default(), &lease)
            .await
        {
            Ok(_) => break,
            // replica-a renewed between our read and our write; read again.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                assert!(Instant::now() < deadline, "could not take the lease over");
            }
            Err(e) => panic!("taking the lease over: {e}"),
        }
    }

    tokio::time::timeout(PATIENCE, a.handle.wait_until_not_leading())
        .await
        .expect("replica-a notices it lost the lease");
    eventually("replica-a no longer counts as leader", || {
        !a.handle.still_leading() && !a.handle.is_leader()
    })
    .await;
    assert_eq!(a.handle.holder().as_deref(), Some("intruder"));
    assert!(
        transitions.has_changed().unwrap(),
        "subscribers hear about the loss"
    );
    assert!(!transitions.borrow_and_update().leading);

    // It stands by instead of grabbing the lease back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!a.handle.still_leading());
    assert_eq!(holder(&leases, "taken").await.as_deref(), Some("intruder"));

    a.cancel.cancel();
    a.task.await.unwrap().unwrap();
    assert_eq!(
        holder(&leases, "taken").await.as_deref(),
        Some("intruder"),
        "a replica that does not hold the lease does not release it"
    );
}

/// A leader whose Lease is deleted stops counting itself leader at once, before its next
/// round (which would have written the Lease anew and carried on as if nothing happened).
/// Rounds here are 10 s apart, so "before the next round" is told apart by the Lease being
/// still absent when the handle turns.
#[tokio::test]
async fn a_leader_whose_lease_is_deleted_stops_before_its_next_round() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = TestControlPlane::start().await.unwrap();
    let client = cp.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let config = LeaderConfig::new("deleted", NAMESPACE, "replica-a").with_timings(
        Duration::from_secs(30),
        Duration::from_secs(20),
        Duration::from_secs(10),
    );
    let a = start(&client, config);
    tokio::time::timeout(PATIENCE, a.handle.wait_until_leading())
        .await
        .expect("replica-a leads")
        .unwrap();
    // Give the watch a moment to be in place after the first round.
    tokio::time::sleep(Duration::from_secs(1)).await;
    leases
        .delete("deleted", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, a.handle.wait_until_not_leading())
        .await
        .expect("replica-a notices its lease is gone");
    assert!(!a.handle.still_leading());
    assert_eq!(
        leases.get_opt("deleted").await.unwrap().map(|l| l.spec),
        None,
        "the handle turned only after a new round wrote the lease again"
    );
    // The next round takes it anew.
    tokio::time::timeout(PATIENCE, a.handle.wait_until_leading())
        .await
        .expect("replica-a leads again")
        .unwrap();
    a.cancel.cancel();
    a.task.await.unwrap().unwrap();
}

/// Two processes given the same identity (a configuration mistake): the second never
/// takes the first's record for its own, so they never both lead, and the second says why.
#[tokio::test]
async fn two_processes_with_one_identity_never_both_lead() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = TestControlPlane::start().await.unwrap();
    let client = cp.client();
    let first = start(&client, short("clash", "same"));
    tokio::time::timeout(PATIENCE, first.handle.wait_until_leading())
        .await
        .expect("the first leads")
        .unwrap();
    let second = start(&client, short("clash", "same"));
    // For several lease durations (2 s each), the second never counts as leader, and
    // the first keeps leading.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert!(
            !second.handle.still_leading(),
            "the second process leads on the first's record: {:?}",
            second.handle.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(first.handle.still_leading());
    for r in [first, second] {
        r.cancel.cancel();
        r.task.await.unwrap().unwrap();
    }
}
