//! Three walship-kv nodes: replicas serve reads, refuse writes naming the leader, read
//! their own writes with a token, agree on expiry, and a failover keeps every
//! acknowledged key. A restarted node rebuilds its key space from its log.

mod common;

use std::time::Duration;

use common::{client, cmd, eventually, stop_all, Cluster, WAIT};
use walship_engine::Durability;
use walship_transport::NodeRole;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_read_refuse_writes_and_read_their_own_writes() {
    let c = Cluster::new(3);
    let nodes = c.start_all(Durability::RemoteFlush).await;
    let (leader, r2, r3) = (
        nodes[0].resp_addr(),
        nodes[1].resp_addr(),
        nodes[2].resp_addr(),
    );
    // A write acknowledged at remote-flush, and its token.
    let token = client(leader, false, |con| {
        assert_eq!(cmd(&["SET", "k", "v1"]).query::<String>(con).unwrap(), "OK");
        // Both followers have flushed it once WAIT 2 says so.
        assert_eq!(cmd(&["WAIT", "2", "5000"]).query::<i64>(con).unwrap(), 2);
        assert_eq!(cmd(&["SET", "k", "v2"]).query::<String>(con).unwrap(), "OK");
        cmd(&["WALSHIP.TOKEN"]).query::<String>(con).unwrap()
    })
    .await;
    for replica in [r2, r3] {
        let t = token.clone();
        client(replica, false, move |con| {
            assert_eq!(
                cmd(&["WALSHIP.WAITAPPLIED", &t, "5000"])
                    .query::<String>(con)
                    .unwrap(),
                "OK"
            );
            // Read-your-writes: after the token is applied, the replica has the write.
            assert_eq!(cmd(&["GET", "k"]).query::<String>(con).unwrap(), "v2");
            let e = cmd(&["SET", "k", "x"]).query::<String>(con).unwrap_err();
            assert_eq!(e.code(), Some("READONLY"), "{e:?}");
            assert!(e.to_string().contains("The leader is n1"), "{e}");
            let e = cmd(&["WAIT", "1", "10"]).query::<i64>(con).unwrap_err();
            assert!(e.to_string().contains("replica"), "{e}");
            let info = cmd(&["INFO", "replication"]).query::<String>(con).unwrap();
            assert!(
                info.contains("role:slave\r\n") && info.contains("master_link_status:up"),
                "{info}"
            );
            let role: redis::Value = cmd(&["ROLE"]).query(con).unwrap();
            assert!(format!("{role:?}").contains("slave"), "{role:?}");
        })
        .await;
    }
    let info = client(leader, false, |con| {
        cmd(&["INFO", "replication"]).query::<String>(con).unwrap()
    })
    .await;
    assert!(
        info.contains("role:master\r\nconnected_slaves:2\r\n"),
        "{info}"
    );
    stop_all(nodes).await;
}

/// Expiry is decided by the leader and logged: every node removes the key, and a
/// replica hides it as soon as it is due, before the leader's record arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_agrees_on_expiry() {
    let c = Cluster::new(3);
    let nodes = c.start_all(Durability::RemoteFlush).await;
    let leader = nodes[0].resp_addr();
    client(leader, false, |con| {
        assert_eq!(
            cmd(&["SET", "short", "v", "PX", "300"])
                .query::<String>(con)
                .unwrap(),
            "OK"
        );
        assert_eq!(
            cmd(&["SET", "long", "v", "EX", "1000"])
                .query::<String>(con)
                .unwrap(),
            "OK"
        );
        assert_eq!(
            cmd(&["SET", "plain", "v"]).query::<String>(con).unwrap(),
            "OK"
        );
    })
    .await;
    for n in &nodes {
        let db = std::sync::Arc::clone(n.db());
        eventually("every node holds three keys", || db.len() == 3).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for n in &nodes {
        let db = std::sync::Arc::clone(n.db());
        // Gone from every key space: removed by the leader's logged expiry.
        eventually("the expired key is removed everywhere", || db.len() == 2).await;
        assert_eq!(db.get(b"short"), None);
        assert!(db.get(b"long").is_some());
        let addr = n.resp_addr();
        let ttl = client(addr, false, |con| {
            cmd(&["TTL", "short"]).query::<i64>(con).unwrap()
        })
        .await;
        assert_eq!(ttl, -2);
    }
    let info = client(leader, false, |con| {
        cmd(&["INFO", "stats"]).query::<String>(con).unwrap()
    })
    .await;
    assert!(info.contains("expired_keys:1\r\n"), "{info}");
    stop_all(nodes).await;
}

/// Promoted over the old leader, n2 serves every key n1 acknowledged at remote-flush,
/// takes writes, and n1 follows it with the same key space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_keeps_every_acknowledged_key() {
    let c = Cluster::new(3);
    let nodes = c.start_all(Durability::RemoteFlush).await;
    let leader = nodes[0].resp_addr();
    client(leader, false, |con| {
        for i in 0..200 {
            let k = format!("key:{i}");
            assert_eq!(
                cmd(&["SET", &k, &i.to_string()])
                    .query::<String>(con)
                    .unwrap(),
                "OK"
            );
        }
        assert_eq!(
            cmd(&["INCRBY", "counter", "200"])
                .query::<i64>(con)
                .unwrap(),
            200
        );
    })
    .await;
    let epoch = nodes[1].node().promote().await.expect("promote n2");
    nodes[1]
        .node()
        .wait_for_role(|r| *r == NodeRole::Leader { epoch }, WAIT)
        .await
        .expect("n2 leads");
    for n in [&nodes[0], &nodes[2]] {
        n.node()
            .wait_for_role(
                |r| matches!(r, NodeRole::Follower { leader, .. } if leader == "n2"),
                WAIT,
            )
            .await
            .expect("follows n2");
    }
    let new_leader = nodes[1].resp_addr();
    client(new_leader, false, |con| {
        for i in 0..200 {
            let k = format!("key:{i}");
            assert_eq!(
                cmd(&["GET", &k]).query::<String>(con).unwrap(),
                i.to_string(),
                "{k}"
            );
        }
        assert_eq!(cmd(&["INCR", "counter"]).query::<i64>(con).unwrap(), 201);
        assert_eq!(cmd(&["WAIT", "2", "5000"]).query::<i64>(con).unwrap(), 2);
    })
    .await;
    // n1 now replicates n2: it refuses writes, naming n2, and holds the new write.
    let old = nodes[0].resp_addr();
    client(old, false, |con| {
        let e = cmd(&["SET", "k", "x"]).query::<String>(con).unwrap_err();
        assert!(e.to_string().contains("The leader is n2"), "{e}");
    })
    .await;
    for n in &nodes {
        let db = std::sync::Arc::clone(n.db());
        eventually("every node has the new leader's write", || {
            db.get(b"counter").as_deref() == Some(&b"201"[..])
        })
        .await;
        assert_eq!(db.len(), 201);
    }
    stop_all(nodes).await;
}

/// A restart rebuilds the key space from the log: values, deletions and expiry times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rebuilds_the_key_space_from_the_log() {
    let mut c = Cluster::new(1);
    let nodes = c.start_all(Durability::Local).await;
    client(nodes[0].resp_addr(), false, |con| {
        assert_eq!(
            cmd(&["MSET", "a", "1", "b", "2", "c", "3"])
                .query::<String>(con)
                .unwrap(),
            "OK"
        );
        assert_eq!(cmd(&["DEL", "b"]).query::<i64>(con).unwrap(), 1);
        assert_eq!(cmd(&["EXPIRE", "c", "1000"]).query::<i64>(con).unwrap(), 1);
        assert_eq!(cmd(&["INCRBY", "a", "9"]).query::<i64>(con).unwrap(), 10);
    })
    .await;
    stop_all(nodes).await;
    c.reconfigure("n1");
    let nodes = c.start_all(Durability::Local).await;
    client(nodes[0].resp_addr(), false, |con| {
        let got: Vec<Option<String>> = cmd(&["MGET", "a", "b", "c"]).query(con).unwrap();
        assert_eq!(got, vec![Some("10".into()), None, Some("3".into())]);
        let ttl = cmd(&["TTL", "c"]).query::<i64>(con).unwrap();
        assert!((990..=1000).contains(&ttl), "{ttl}");
    })
    .await;
    stop_all(nodes).await;
}
