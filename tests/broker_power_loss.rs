//! Power-cut test of the broker: a publisher sends QoS 1 messages to a broker (a child
//! process, `sync = always`) whose data lies on a small ext4 image; at a random moment the
//! broker is stopped and a copy is taken of the device as it is — what a power cut would
//! leave, without the page cache (see `promptmq_tests::SmallFs::power_cut_copy`). A broker
//! started on the copy must deliver to a persistent subscriber every message the publisher
//! got a PUBACK for, in order, and to a new subscriber every retained message that was
//! PUBACKed. `BROKER_POWER_CYCLES` sets the cycles (default 4); the same
//! data goes on from cycle to cycle, the broker killed at the end of each.
//!
//! Needs root and loop devices (CI has both); elsewhere it says so on stderr and checks
//! nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use promptmq_broker::codec::*;
use promptmq_tests::{drain_expecting, BrokerProcess, Client, ConnectOptions, SmallFs, TestBroker};
use rand::{Rng, SeedableRng};

const V5: ProtocolVersion = ProtocolVersion::V5;

#[test]
fn acknowledged_messages_survive_a_power_cut() {
    let cycles: usize = std::env::var("BROKER_POWER_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let Some(fs) = SmallFs::mount(256) else { return };
    let data = fs.mnt.join("data");
    let exe = env!("CARGO_BIN_EXE_broker-under-test");
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    {
        let b = BrokerProcess::start(exe, &data);
        let (mut keeper, _) = Client::connect_with(b.addr, "keeper", V5, ConnectOptions::persistent(3600));
        keeper.subscribe("power/a", QoS::AtLeastOnce);
        keeper.disconnect();
        b.stop_gracefully();
    }
    // Every message acknowledged so far on power/a, in publish order, and every retained
    // topic whose message was acknowledged.
    let mut acked: Vec<String> = Vec::new();
    let mut retained: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        let b = BrokerProcess::start(exe, &data);
        let got_ack = Arc::new(Mutex::new(Vec::new()));
        let publisher = {
            let (addr, got_ack) = (b.addr, got_ack.clone());
            std::thread::spawn(move || {
                let mut p = Client::connect(addr, "pub", V5);
                let start = Instant::now();
                for i in 0..20_000 {
                    let payload = format!("c{cycle}-{i}");
                    // Every fourth message is retained, on a topic of its own.
                    let (topic, retain) = match i % 4 {
                        3 => (format!("power/r/{payload}"), true),
                        _ => ("power/a".to_string(), false),
                    };
                    let code =
                        p.try_publish_with(&topic, payload.clone(), QoS::AtLeastOnce, retain, Properties::default());
                    match code {
                        Some(ReasonCode::Success) => got_ack.lock().unwrap().push((topic, payload)),
                        // Stopped, then killed: no answer is coming.
                        _ => return,
                    }
                    if start.elapsed() > Duration::from_secs(10) {
                        return;
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..500)));
        let stopped = std::process::Command::new("kill").args(["-STOP", &b.pid().to_string()]).status();
        assert!(stopped.is_ok_and(|s| s.success()), "SIGSTOP");
        std::thread::sleep(Duration::from_millis(100));
        let cut = fs.power_cut_copy().unwrap_or_else(|why| panic!("cycle {cycle}: no power-cut copy: {why}"));
        b.kill9();
        publisher.join().expect("publisher thread");
        // A PUBACK read after the copy was sent before the stop: it counts too.
        for (topic, payload) in got_ack.lock().unwrap().drain(..) {
            match topic.as_str() {
                "power/a" => acked.push(payload),
                _ => retained.push(topic),
            }
        }

        let after = TestBroker::start(&cut.mnt.join("data"));
        let (mut keeper, _) = Client::connect_with(after.addr, "keeper", V5, ConnectOptions::persistent(3600));
        let got: Vec<String> = drain_expecting(&mut keeper, acked.len(), Duration::from_millis(700))
            .into_iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        // Every acknowledged message, in order; others (stored but not yet acknowledged
        // when the power went) may come too.
        let mut want = acked.iter().peekable();
        for m in &got {
            if want.peek() == Some(&m) {
                want.next();
            }
        }
        if let Some(missing) = want.next() {
            panic!(
                "cycle {cycle}: acknowledged {missing} not delivered after the power cut ({} of {} delivered)",
                got.len(),
                acked.len()
            );
        }
        // And a new subscriber gets every retained message that was acknowledged.
        let mut fresh = Client::connect(after.addr, "fresh", V5);
        fresh.subscribe("power/r/#", QoS::AtLeastOnce);
        let kept: std::collections::HashSet<String> =
            drain_expecting(&mut fresh, retained.len(), Duration::from_millis(700))
                .into_iter()
                .map(|m| m.topic.as_str().to_string())
                .collect();
        let lost: Vec<_> = retained.iter().filter(|t| !kept.contains(*t)).collect();
        assert!(lost.is_empty(), "cycle {cycle}: acknowledged retained messages lost: {lost:?}");
        drop((keeper, fresh));
        after.stop();
    }
    eprintln!(
        "broker power-cut test: {cycles} cycles, {} QoS 1 messages and {} retained ones acknowledged, 0 lost",
        acked.len(),
        retained.len()
    );
    assert!(!acked.is_empty(), "nothing was acknowledged: the test proved nothing");
}
