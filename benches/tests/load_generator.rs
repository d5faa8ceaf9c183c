//! The load generator against a broker on 127.0.0.1: it stops by itself and its JSON line
//! reports what happened (no loss, no duplicates for QoS 1 with one subscriber).

use std::process::Command;

use promptmq_broker::{Broker, BrokerConfig};

#[test]
fn bench_runs_bounded_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(Broker::start(BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path()))).unwrap();
    let port = broker.local_addr().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_promptmq-bench"))
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
            "1",
            "--count",
            "500",
            "--version",
            "5",
        ])
        .output()
        .expect("run promptmq-bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).expect("last line is JSON");
    assert_eq!(json["sent"], 1000, "2 publishers x --count 500");
    assert_eq!(json["received"], 1000);
    assert_eq!(json["lost"], 0);
    assert_eq!(json["duplicates"], 0);
    assert!(json["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    rt.block_on(broker.shutdown());
}
