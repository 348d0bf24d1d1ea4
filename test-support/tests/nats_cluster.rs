//! The three-node cluster guard elects a JetStream meta leader and survives losing a node.

use std::time::{Duration, Instant};

#[test]
fn a_cluster_elects_a_meta_leader_again_after_losing_it() {
    if !test_support::has_nats_server() {
        eprintln!("skipped: nats-server is not installed");
        return;
    }
    let mut cluster = test_support::NatsCluster::start();
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.url().split(',').count(), 3);
    let first = cluster.meta_leader().expect("a meta leader once started");
    cluster.kill(first);
    assert!(!cluster.is_running(first));
    let start = Instant::now();
    let next = loop {
        if let Some(i) = cluster.meta_leader().filter(|&i| i != first) {
            break i;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no new meta leader"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(next, first);
    cluster.restart(first);
    assert!(cluster.is_running(first));
    assert!(cluster.meta_leader().is_some());
    assert_eq!(cluster.stream_leader("NO_SUCH_STREAM"), None);
}
