//! The conformance suite against the in-process backends.
#![cfg(all(feature = "store", feature = "test-util"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use futures_util::StreamExt as _;
use hexon_core::store::conformance;
use hexon_core::store::{
    Event, EventBus, MemoryBus, MemoryKvBackend, MemoryStore, SecretKeys, StartAt, StoreError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_kv_passes_the_conformance_suite() {
    conformance::kv_suite(&MemoryKvBackend::new()).await;
}

#[tokio::test]
async fn memory_bus_passes_the_conformance_suite() {
    conformance::bus_suite(Arc::new(MemoryBus::new("node-a"))).await;
}

#[tokio::test]
async fn memory_store_passes_the_conformance_suite() {
    let store = MemoryStore::new(Arc::new(SecretKeys::new([3; 32])));
    conformance::durable_suite(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_loads_each_save_whole() {
    let store = Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([3; 32]))));
    conformance::durable_loads_are_whole(store).await;
}

#[tokio::test]
async fn memory_bus_reports_events_it_no_longer_keeps() {
    let bus = MemoryBus::with_history("n", 5);
    for i in 0..12 {
        bus.publish(&Event::ConfigChanged {
            sha256: i.to_string(),
        })
        .await
        .unwrap();
    }
    let mut sub = bus.subscribe(StartAt::After(2)).await.unwrap();
    match sub.next().await.unwrap() {
        Err(StoreError::EventsMissed {
            after: 2,
            first_available: 8,
        }) => {}
        other => panic!("expected a missed-events error, got {other:?}"),
    }
    let first = sub.next().await.unwrap().unwrap();
    assert_eq!(first.seq, 8);
    // A subscriber that is up to date misses nothing.
    let mut current = bus.subscribe(StartAt::After(12)).await.unwrap();
    bus.publish(&Event::ConfigChanged { sha256: "x".into() })
        .await
        .unwrap();
    assert_eq!(current.next().await.unwrap().unwrap().seq, 13);
}
