//! The Redis Cluster the cluster runs use (`testkit::RedisCluster`, `MPR_TEST_REDIS=cluster`),
//! proven with redis-cli alone: keys spread over the primaries by hash tag, a killed primary is
//! replaced by its replica with the data, and comes back as a replica; nodes whose picked ports
//! were taken meanwhile come up on fresh ones.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{RedisCluster, RedisClusterOpts};

/// SET on the key's primary, then WAIT until its replica has it too.
fn set_replicated(primary: u16, key: &str, value: &str) {
    let mut cli = Command::new("redis-cli")
        .args(["-p", &primary.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed");
    let commands = format!("SET {key} {value}\nWAIT 1 5000\n");
    let mut stdin = cli.stdin.take().expect("stdin");
    stdin.write_all(commands.as_bytes()).unwrap();
    drop(stdin);
    let output = cli.wait_with_output().unwrap();
    let replies = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        replies.trim(),
        "OK\n1",
        "SET {key} and WAIT for one replica"
    );
}

#[tokio::test]
async fn a_killed_primary_is_replaced_by_its_replica_and_rejoins_as_a_replica() {
    let began = Instant::now();
    let opts = RedisClusterOpts::new("redis-server").expect("free ports");
    let mut cluster = RedisCluster::start(opts)
        .await
        .expect("redis-server 7 is installed (scripts/ensure-redis) and the cluster forms");
    let formed = began.elapsed();
    let primaries = cluster.primaries().await.unwrap();
    let replicas = cluster.replicas().await.unwrap();
    assert_eq!(
        (primaries.len(), replicas.len()),
        (3, 3),
        "{primaries:?} {replicas:?}"
    );
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.seed_nodes_env().split(',').count(), 6);

    // Keys as the server names them: one hash tag per connection, so one slot per connection.
    let keys: Vec<String> = (0..12).map(|i| format!("mpr:{{c-{i}}}:cold")).collect();
    let mut owners = BTreeSet::new();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cluster.cli(&["SET", key, &format!("v{i}")]).unwrap(), "OK");
        owners.insert(cluster.primary_of_key(key).await.unwrap());
    }
    assert!(
        owners.len() > 1,
        "hash tags spread over the primaries: {owners:?}"
    );
    let scanned = cluster.cli(&["--scan", "--pattern", "mpr:*"]).unwrap();
    assert_eq!(
        scanned.lines().count(),
        keys.len(),
        "--scan sees every primary"
    );

    let key = &keys[0];
    let doomed = cluster.primary_of_key(key).await.unwrap();
    // Replication is asynchronous and AOF `always` only guards the node's own disk: a write
    // acknowledged just before the kill may not have reached the replica and is lost with the
    // failover unless the writer WAITs for the replica.
    set_replicated(doomed, key, "replicated");

    cluster.kill_node(doomed).await.unwrap();
    let killed = Instant::now();
    let promoted = cluster
        .wait_failover(doomed, Duration::from_secs(20))
        .await
        .expect("a replica takes over");
    let failover = killed.elapsed();
    assert!(replicas.contains(&promoted), "{promoted} was a replica");
    assert_eq!(cluster.primary_of_key(key).await.unwrap(), promoted);
    assert_eq!(cluster.cli(&["GET", key]).unwrap(), "replicated");
    assert_eq!(cluster.cli(&["GET", &keys[1]]).unwrap(), "v1");

    let restarting = Instant::now();
    cluster
        .restart_node(doomed)
        .await
        .expect("the old primary rejoins");
    let rejoined = restarting.elapsed();
    assert!(cluster.replicas().await.unwrap().contains(&doomed));
    assert!(!cluster.primaries().await.unwrap().contains(&doomed));
    assert_eq!(cluster.cli(&["GET", key]).unwrap(), "replicated");
    cluster.stop();
    eprintln!(
        "cluster formed in {formed:?}, failover in {failover:?}, rejoined in {rejoined:?}, \
         {:?} in all",
        began.elapsed()
    );
}

/// Ports taken between picking and starting (by another test's server, or a node's bus port):
/// those nodes come up on fresh ports and the cluster forms all the same.
#[tokio::test]
async fn a_cluster_forms_when_ports_picked_for_it_are_taken() {
    let opts = RedisClusterOpts::new("redis-server").expect("free ports");
    let (port_taken, bus_taken) = (opts.ports[1], opts.ports[4]);
    let hold = |port| std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
    let _held = [
        hold(port_taken),
        hold(bus_taken + testkit::CLUSTER_BUS_OFFSET),
    ];
    let cluster = RedisCluster::start(opts)
        .await
        .expect("the cluster forms on fresh ports");
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 6);
    for port in [port_taken, bus_taken] {
        assert!(!nodes.contains(&format!("127.0.0.1:{port}")), "{nodes:?}");
    }
    assert_eq!(cluster.primaries().await.unwrap().len(), 3);
    assert_eq!(cluster.replicas().await.unwrap().len(), 3);
}
