//! The load generator against a broker on 127.0.0.1: it stops by itself and its JSON line
//! reports what happened (no loss, no duplicates for QoS 1 with one subscriber).

use std::process::Command;

use promptmq_broker::{Broker, BrokerConfig};

/// A broker on 127.0.0.1 (a free port) with its data directory and runtime.
fn start_broker() -> (tempfile::TempDir, tokio::runtime::Runtime, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(Broker::start(BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path()))).unwrap();
    (dir, rt, broker)
}

#[test]
fn bench_runs_bounded_and_reports_json() {
    let (dir, rt, broker) = start_broker();
    let port = broker.local_addr().port().to_string();
    let log = dir.path().join("latency.log");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_promptmq-bench"))
        .arg("--latency-log")
        .arg(&log)
        .args([
            "--port",
            &port,
            "--publishers",
            "2",
            "--subscribers",
            "1",
            "--qos",
            "1",
            "--duration",
            "30",
            "--count",
            "500",
            "--version",
            "5",
        ])
        .output()
        .expect("run promptmq-bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // --count ends the run, not --duration (30 s), and the rates are over the time spent.
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the bench waited out --duration");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).expect("last line is JSON");
    assert_eq!(json["sent"], 1000, "2 publishers x --count 500");
    assert!(json["send_rate"].as_f64().unwrap() > 1000.0 / 20.0, "rate over the publishing time");
    assert_eq!(json["received"], 1000);
    assert_eq!(json["lost"], 0);
    assert_eq!(json["duplicates"], 0);
    assert!(json["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    // One `sent_ns latency_ns` line per received message, in send order.
    let lines: Vec<(u64, u64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let (s, l) = l.split_once(' ').expect("two fields");
            (s.parse().unwrap(), l.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 1000);
    assert!(lines.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by send time");
    let max_ms = json["latency_ms"]["max"].as_f64().unwrap();
    assert!(
        lines.iter().all(|&(_, l)| l > 0 && (l as f64 / 1e6) <= max_ms * 1.01 + 0.001),
        "latencies within the reported max"
    );
    rt.block_on(broker.shutdown());
}

#[test]
fn bench_without_a_broker_fails_and_stops() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_promptmq-bench"))
        .args(["--port", &port, "--publishers", "1", "--subscribers", "2", "--duration", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run promptmq-bench");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("promptmq-bench kept running with no broker to talk to");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success(), "connection failures must fail the run");
}

/// `--retained` stores the messages and `--subscribe-rounds` times SUBSCRIBEs against them,
/// each round waiting for every retained message its filter matches (1 for a topic, all
/// 1 000 of a group for `K/+`): a broker that sent fewer would end the run with an error.
#[test]
fn bench_times_subscriptions_against_retained_messages() {
    let (_dir, rt, broker) = start_broker();
    let port = broker.local_addr().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_promptmq-bench"))
        .args(["--port", &port, "--publishers", "0", "--subscribers", "0", "--retained", "2500"])
        .args(["--subscribe-rounds", "6", "--duration", "1", "--drain", "0", "--qos", "1", "--persistent"])
        .output()
        .expect("run promptmq-bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).expect("last line is JSON");
    assert_eq!(json["errors"], 0);
    assert_eq!(json["retained"], 2500);
    for kind in ["exact", "wildcard"] {
        let s = &json["subscribe_ms"][kind];
        assert_eq!(s["rounds"], 3, "{kind}: {s}");
        assert!(s["p50"].as_f64().unwrap() > 0.0 && s["max"].as_f64().unwrap() >= s["p99"].as_f64().unwrap());
    }
    let received = broker.stats().messages_received.load(std::sync::atomic::Ordering::Relaxed);
    assert!(received >= 2500, "the broker took in {received} PUBLISHes");
    rt.block_on(broker.shutdown());
}
