//! Restart tests: the broker as a separate process, stopped with SIGKILL and started again
//! on the same data directory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use promptmq_broker::codec::*;
use promptmq_tests::{drain, Client, ConnectOptions};

struct Proc {
    child: Child,
    addr: std::net::SocketAddr,
}

fn start(dir: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker-under-test"))
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn broker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read port");
    let port: u16 = line
        .trim()
        .strip_prefix("LISTENING ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    Proc { child, addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)) }
}

impl Proc {
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn acknowledged_retained_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path());
    let mut publ = Client::connect(b.addr, "pub", ProtocolVersion::V5);
    for i in 0..20 {
        let qos = if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        assert_eq!(publ.publish(&format!("state/{i}"), format!("v{i}"), qos, true), ReasonCode::Success);
    }
    publ.publish("state/0", "v0-updated", QoS::AtLeastOnce, true);
    publ.publish("state/1", "", QoS::AtLeastOnce, true); // cleared
    b.kill9();

    let b = start(dir.path());
    let mut sub = Client::connect(b.addr, "sub", ProtocolVersion::V3_1_1);
    sub.subscribe("state/#", QoS::AtLeastOnce);
    let mut got: Vec<(String, String)> = drain(&mut sub, Duration::from_millis(500))
        .into_iter()
        .map(|p| (p.topic.to_string(), String::from_utf8(p.payload.to_vec()).unwrap()))
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = (2..20).map(|i| (format!("state/{i}"), format!("v{i}"))).collect();
    want.push(("state/0".into(), "v0-updated".into()));
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn persistent_subscriptions_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path());
    let persistent = ConnectOptions { clean: false, ..Default::default() };
    let (mut c, _) = Client::connect_with(b.addr, "keeper", ProtocolVersion::V3_1_1, persistent.clone());
    c.subscribe("alerts/#", QoS::AtLeastOnce);
    c.disconnect();
    // A clean-session client's subscription must not come back.
    let mut gone = Client::connect(b.addr, "transient", ProtocolVersion::V5);
    gone.subscribe("alerts/#", QoS::AtLeastOnce);
    drop(gone);
    // No sleep: SUBACK came only once the session record was durable.
    b.kill9();

    let b = start(dir.path());
    let mut publ = Client::connect(b.addr, "pub", ProtocolVersion::V5);
    publ.publish("alerts/disk", "full", QoS::AtLeastOnce, false);
    let (mut c, ack) = Client::connect_with(b.addr, "keeper", ProtocolVersion::V3_1_1, persistent);
    assert!(ack.session_present, "the session came back from the log");
    let got = c.next_publish(Duration::from_secs(5)).expect("queued while the client was away");
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("alerts/disk", &b"full"[..]));
    let mut t = Client::connect_with(
        b.addr,
        "transient",
        ProtocolVersion::V5,
        ConnectOptions { clean: false, ..Default::default() },
    );
    assert!(!t.1.session_present);
    assert!(t.0.next_publish(Duration::from_millis(300)).is_none());
}
