//! The NATS JetStream backend against real servers: the conformance suite on
//! the shared server at 127.0.0.1:4222, and a server of its own that a test
//! kills and restarts.
//!
//! Start the shared server with:
//! `start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log`
#![cfg(all(feature = "nats", feature = "test-util"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use hexon_core::store::conformance::{self, unique};
use hexon_core::store::nats::{NatsOptions, NatsState};
use hexon_core::store::{
    Event, EventBus, EventRecord, EventStream, KvBackend, StartAt, StoreError,
};

const SHARED_URL: &str = "nats://127.0.0.1:4222";
const START_SHARED: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

/// Everything one test creates on a server: deleted when the test ends,
/// passed or failed.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // Drop may run inside the test's runtime: clean up from a thread of
        // its own with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(hexon_core::store::conformance::delete_nats_prefix(
                &url, &prefix,
            ));
        })
        .join();
    }
}

async fn connect(options: &NatsOptions) -> NatsState {
    match NatsState::connect(options).await {
        Ok(state) => state,
        Err(e) => panic!(
            "the NATS server for this test is not reachable ({e}). Start the shared one with:\n  {START_SHARED}"
        ),
    }
}

/// A fresh prefix on the shared server, and its cleanup.
fn shared(tag: &str) -> (NatsOptions, Cleanup) {
    let prefix = unique(tag);
    let options = NatsOptions::new(SHARED_URL)
        .prefix(&prefix)
        .node(format!("{tag}-node"));
    (
        options,
        Cleanup {
            url: SHARED_URL.into(),
            prefix,
        },
    )
}

async fn next(sub: &mut EventStream) -> Result<EventRecord, StoreError> {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("no event within 20 s")
        .expect("the subscription ended")
}

fn revoked(i: usize) -> Event {
    Event::UserSessionsRevoked {
        subject: format!("u-{i}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_kv_passes_the_conformance_suite() {
    let (options, _cleanup) = shared("kv");
    let nats = connect(&options).await;
    conformance::kv_suite(&nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_passes_the_conformance_suite() {
    let (options, _cleanup) = shared("bus");
    let nats = connect(&options).await;
    conformance::bus_suite(Arc::new(nats)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_kv_refuses_ttls_past_the_bucket_and_updates_its_max_age() {
    let (options, cleanup) = shared("kvx");
    let nats = connect(&options).await;
    let kv = nats.bucket("codes", Duration::from_secs(60)).await.unwrap();
    assert!(matches!(
        kv.put("k", b"v", Duration::from_secs(61)).await,
        Err(StoreError::Invalid { what: "ttl", .. })
    ));
    kv.put("k", b"v", Duration::from_secs(60)).await.unwrap();

    // Reopening with another max_ttl updates the bucket and keeps its data.
    let kv = nats
        .bucket("codes", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(kv.get("k").await.unwrap().unwrap().value, b"v");
    kv.put("k2", b"v", Duration::from_secs(600)).await.unwrap();
    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let info = js
        .get_stream(format!("KV_{}_codes", cleanup.prefix))
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(600));
    assert_eq!(info.config.max_messages_per_subject, 1);
    // A node opening it with a shorter max_ttl does not shrink it (that would
    // drop the other node's entries before their TTL).
    let _short = nats.bucket("codes", Duration::from_secs(60)).await.unwrap();
    let info = js
        .get_stream(format!("KV_{}_codes", cleanup.prefix))
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(600));
    assert_eq!(kv.get("k2").await.unwrap().unwrap().value, b"v");

    // A value written by something else than Hexon (no expiry) is not
    // mistaken for a live or an absent entry.
    let subject = format!(
        "$KV.{}_codes.{}",
        cleanup.prefix,
        URL_SAFE_NO_PAD.encode("foreign") // the backend's key encoding
    );
    js.publish(subject, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(
        kv.get("foreign").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(
        kv.put_if_absent("foreign", b"y", Duration::from_secs(5))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_put_if_absent_over_expired_or_deleted_entries_has_one_winner_across_nodes() {
    let (options, _cleanup) = shared("pia");
    let a = connect(&options.clone().node("a")).await;
    let b = connect(&options.node("b")).await;
    let ttl = Duration::from_secs(60);
    let kv_a = a.bucket("nonces", ttl).await.unwrap();
    let kv_b = b.bucket("nonces", ttl).await.unwrap();
    let keys: Vec<String> = (0..8).map(|_| unique("n")).collect();
    for (i, key) in keys.iter().enumerate() {
        if i % 2 == 0 {
            // Expires before the race starts.
            kv_a.put(key, b"old", Duration::from_secs(1)).await.unwrap();
        } else {
            let r = kv_a.put(key, b"old", ttl).await.unwrap();
            assert!(kv_b.delete_if(key, r).await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let keys = Arc::new(keys);
    let mut tasks = Vec::new();
    for t in 0..32usize {
        let kv = if t % 2 == 0 {
            kv_a.clone()
        } else {
            kv_b.clone()
        };
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for key in keys.iter() {
                if kv
                    .put_if_absent(key, t.to_string().as_bytes(), ttl)
                    .await
                    .unwrap()
                    .is_some()
                {
                    won.push(key.clone());
                }
            }
            (t, won)
        }));
    }
    let mut winners = std::collections::HashMap::new();
    for task in tasks {
        let (t, won) = task.await.unwrap();
        for key in won {
            assert!(
                winners.insert(key.clone(), t).is_none(),
                "two winners for {key}"
            );
        }
    }
    assert_eq!(
        winners.len(),
        keys.len(),
        "every key has exactly one winner"
    );
    for (key, t) in winners {
        assert_eq!(
            kv_b.get(&key).await.unwrap().unwrap().value,
            t.to_string().as_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_subscriber_catches_up_on_what_another_node_published_while_it_was_away() {
    let (options, _cleanup) = shared("away");
    let a = connect(&options.clone().node("node-a")).await;
    let b = connect(&options.node("node-b")).await;
    let mut sub = b.subscribe(StartAt::New).await.unwrap();
    let first = a.publish(&revoked(0)).await.unwrap();
    let got = next(&mut sub).await.unwrap();
    assert_eq!((got.seq, got.node.as_str()), (first, "node-a"));
    let last_seen = got.seq;
    drop(sub);

    let mut missed = Vec::new();
    for i in 1..=5 {
        missed.push(a.publish(&revoked(i)).await.unwrap());
    }
    let own = b.publish(&revoked(6)).await.unwrap();
    let mut sub = b.subscribe(StartAt::After(last_seen)).await.unwrap();
    for (i, seq) in missed.iter().enumerate() {
        let got = next(&mut sub).await.unwrap();
        assert_eq!(
            (got.seq, got.node.as_str(), &got.event),
            (*seq, "node-a", &revoked(i + 1))
        );
    }
    let got = next(&mut sub).await.unwrap();
    assert_eq!((got.seq, got.node.as_str()), (own, "node-b"));
    // Then live events, and nothing else in between.
    let live = a.publish(&revoked(7)).await.unwrap();
    assert_eq!(next(&mut sub).await.unwrap().seq, live);
    assert_eq!(a.last_seq().await.unwrap(), live);
    assert_eq!(b.last_seq().await.unwrap(), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_reports_events_it_no_longer_keeps() {
    let (options, _cleanup) = shared("trim");
    let nats = connect(&options.events_max_messages(5)).await;
    for i in 0..12 {
        nats.publish(&revoked(i)).await.unwrap();
    }
    for after in [0, 2] {
        let mut sub = nats.subscribe(StartAt::After(after)).await.unwrap();
        match next(&mut sub).await {
            Err(StoreError::EventsMissed {
                after: a,
                first_available: 8,
            }) if a == after => {}
            other => panic!("expected a missed-events error after {after}, got {other:?}"),
        }
        let got = next(&mut sub).await.unwrap();
        assert_eq!((got.seq, got.event), (8, revoked(7)));
    }
    // Up to date, or just before the oldest kept: nothing was missed.
    for after in [7, 12] {
        let mut sub = nats.subscribe(StartAt::After(after)).await.unwrap();
        let expect = after + 1;
        if after < 12 {
            assert_eq!(next(&mut sub).await.unwrap().seq, expect);
        } else {
            nats.publish(&revoked(99)).await.unwrap();
            assert_eq!(next(&mut sub).await.unwrap().seq, 13);
        }
    }
}

// ----------------------------------------------------------- own server

/// Fails closed within the timeout (plus scheduling slack).
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    bound: Duration,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(bound * 3, op)
        .await
        .unwrap_or_else(|_| panic!("{what} hung during the outage"));
    let took = started.elapsed();
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{what} during the outage: expected Unavailable, got {result:?}"
    );
    assert!(
        took <= bound + Duration::from_millis(500),
        "{what} took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_survives_a_server_restart_failing_closed_meanwhile() {
    let storage = tempfile::tempdir().unwrap();
    let mut server = hexon_core::store::conformance::NatsServer::start(storage.path());
    let timeout = Duration::from_secs(2);
    let options = NatsOptions::new(server.url())
        .prefix("restart")
        .node("node-r")
        .request_timeout(timeout);
    // JetStream may take a moment after the port opens.
    let deadline = Instant::now() + Duration::from_secs(10);
    let nats = loop {
        match NatsState::connect(&options).await {
            Ok(nats) => break nats,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the test server: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("own nats-server not usable: {e}"),
        }
    };
    let kv = nats
        .bucket("sessions", Duration::from_secs(600))
        .await
        .unwrap();
    let ttl = Duration::from_secs(600);
    let before = kv
        .put_if_absent("before", b"kept", ttl)
        .await
        .unwrap()
        .unwrap();

    // One subscriber keeps reading through the outage, one is not polled
    // until the server is back.
    let mut sub = nats.subscribe(StartAt::New).await.unwrap();
    let mut quiet = nats.subscribe(StartAt::New).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push((nats.publish(&revoked(i)).await.unwrap(), i));
    }
    // Part of them is delivered before the crash, the rest after.
    let mut received: Vec<EventRecord> = Vec::new();
    for _ in 0..5 {
        received.push(next(&mut sub).await.unwrap());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(item) = sub.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });

    server.kill();
    // At once (the client may not have noticed yet) and after a while.
    assert_unavailable("get", timeout, kv.get("before")).await;
    for _ in 0..2 {
        assert_unavailable(
            "put_if_absent",
            timeout,
            kv.put_if_absent("during", b"x", ttl),
        )
        .await;
        assert_unavailable("get", timeout, kv.get("before")).await;
        assert_unavailable("delete", timeout, kv.delete("before")).await;
        assert_unavailable("publish", timeout, nats.publish(&revoked(100))).await;
        assert_unavailable("last_seq", timeout, nats.last_seq()).await;
        assert!(
            nats.subscribe(StartAt::New).await.is_err(),
            "subscribe during the outage"
        );
        assert!(!nats.is_connected());
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nats.is_connected() {
        assert!(Instant::now() < deadline, "no reconnect within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // JetStream recovers its streams after the port opens: retry until it
    // answers. Every publish that returned an acknowledgement must arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 10;
    while i < 20 {
        match nats.publish(&revoked(i)).await {
            Ok(seq) => {
                acked.push((seq, i));
                i += 1;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                assert!(Instant::now() < deadline, "JetStream not back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let last_acked = acked.last().unwrap().0;
    while received.last().is_none_or(|r| r.seq < last_acked) {
        let item = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("no event within 20 s after the restart")
            .expect("the subscription ended");
        received.push(item.unwrap());
    }
    reader.abort();
    let mut quiet_received = Vec::new();
    while quiet_received
        .last()
        .is_none_or(|r: &EventRecord| r.seq < last_acked)
    {
        quiet_received.push(next(&mut quiet).await.unwrap());
    }
    for received in [&received, &quiet_received] {
        assert!(
            received.windows(2).all(|w| w[0].seq < w[1].seq),
            "out of order or repeated: {:?}",
            received.iter().map(|r| r.seq).collect::<Vec<_>>()
        );
        let mut seen = HashSet::new();
        for r in received {
            assert!(
                seen.insert(format!("{:?}", r.event)),
                "event delivered twice: {r:?}"
            );
        }
        for (seq, i) in &acked {
            let got = received
                .iter()
                .find(|r| r.seq == *seq)
                .unwrap_or_else(|| panic!("acknowledged event #{seq} lost"));
            assert_eq!(got.event, revoked(*i));
            assert_eq!(got.node, "node-r");
        }
        // Nothing was queued for later during the outage: every event is an
        // acknowledged one.
        assert_eq!(
            received.len(),
            acked.len(),
            "unexpected events: {received:?}"
        );
    }

    // State written before the crash is intact, and still guards.
    let got = kv.get("before").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.revision), (&b"kept"[..], before));
    assert_eq!(
        kv.put_if_absent("before", b"again", ttl).await.unwrap(),
        None
    );
    assert!(
        kv.put_if_absent("after", b"new", ttl)
            .await
            .unwrap()
            .is_some()
    );
}
