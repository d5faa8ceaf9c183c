//! The broker killed with SIGKILL at random moments while a persistent publisher sends QoS 1
//! and QoS 2 messages (resending what was in flight after each restart, as the spec asks)
//! and a persistent subscriber receives them. At the end the subscriber must have every
//! message the publisher got an acknowledgement for — QoS 2 exactly once on both hops, QoS 1
//! at least once — and each topic's messages in the order they were published.
//!
//! CI runs 10 cycles; `BROKER_KILL_CYCLES=100 cargo test --release -p promptmq-tests --test
//! broker_kill_loop -- --nocapture` runs more and prints the totals. `BROKER_KILL_SYNC` sets
//! the broker's sync mode, or a list the cycles rotate through (`always,interval,none`);
//! the default is `always`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use promptmq_broker::codec::*;
use promptmq_tests::{BrokerProcess, Client, ConnectOptions};
use rand::{Rng, SeedableRng};

const TOPICS: u64 = 3;
/// The publisher takes its packet ids in turn from 1..=PID_WINDOW, as many clients do: an
/// id comes back every few dozen messages, so a broker that forgets a released id across a
/// kill (or remembers one it released) shows within a few cycles, not after 65 535 messages.
const PID_WINDOW: u16 = 64;
/// Bounds on one cycle's publishing, whatever the kill timing.
const MAX_PER_CYCLE: u64 = 5_000;
const MAX_CYCLE_TIME: Duration = Duration::from_secs(5);

fn cycles() -> usize {
    std::env::var("BROKER_KILL_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

fn persistent() -> ConnectOptions {
    ConnectOptions::persistent(3600)
}

/// A message as the subscriber's application sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Got {
    topic: u64,
    seq: u64,
}

fn parse(p: &Publish) -> Got {
    let topic = p.topic.as_str().strip_prefix("kill/").and_then(|t| t.parse().ok()).expect("topic kill/N");
    let seq = std::str::from_utf8(&p.payload).ok().and_then(|s| s.parse().ok()).expect("payload is a number");
    Got { topic, seq }
}

/// The subscriber's side of the protocol, kept across its connections as a real client's
/// session state would be: QoS 2 messages are handed to the application when the PUBLISH
/// arrives and their packet ids remembered until PUBREL, so a resent PUBLISH (same id) is
/// recognised and not handed over twice.
#[derive(Default)]
struct Subscriber {
    got: Vec<(Got, QoS)>,
    awaiting_pubrel: HashSet<u16>,
}

impl Subscriber {
    /// Receives until the connection ends or `stop` is set with nothing more arriving for
    /// `quiet`.
    fn run(&mut self, c: &mut Client, stop: &AtomicBool, quiet: Duration) {
        loop {
            let Some(p) = c.recv(quiet) else {
                if stop.load(Ordering::Relaxed) || !self.alive(c) {
                    return;
                }
                continue;
            };
            let reply = match p {
                Packet::Publish(p) => match (p.qos, p.packet_id) {
                    (QoS::AtMostOnce, _) => {
                        self.got.push((parse(&p), p.qos));
                        None
                    }
                    (QoS::AtLeastOnce, Some(id)) => {
                        self.got.push((parse(&p), p.qos));
                        Some(Packet::PubAck(PubResp::ok(id)))
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        if self.awaiting_pubrel.insert(id) {
                            self.got.push((parse(&p), p.qos));
                        }
                        Some(Packet::PubRec(PubResp::ok(id)))
                    }
                    _ => panic!("QoS > 0 PUBLISH without a packet id"),
                },
                Packet::PubRel(r) => {
                    self.awaiting_pubrel.remove(&r.packet_id);
                    Some(Packet::PubComp(PubResp::ok(r.packet_id)))
                }
                _ => None,
            };
            if let Some(r) = reply {
                if !c.try_send(&r) {
                    return;
                }
            }
        }
    }

    fn alive(&self, c: &mut Client) -> bool {
        c.try_send(&Packet::PingReq)
    }
}

/// A message the publisher has sent and not seen acknowledged.
#[derive(Clone, Debug)]
struct InFlight {
    got: Got,
    qos: QoS,
    pid: u16,
    /// PUBREC received (QoS 2): only PUBREL is left to send.
    released: bool,
}

/// The publisher's session state, kept across its connections like a real persistent
/// client's: the next sequence number per topic and the message in flight, which is resent
/// (PUBLISH with DUP, or PUBREL) when it reconnects [MQTT-4.4.0-1].
#[derive(Clone, Debug)]
struct Publisher {
    next_seq: Vec<u64>,
    in_flight: Option<InFlight>,
    next_pid: u16,
}

impl Publisher {
    fn new() -> Publisher {
        Publisher { next_seq: vec![0; TOPICS as usize], in_flight: None, next_pid: 1 }
    }

    /// Completes the in-flight message's flow; `None` if the connection broke first.
    fn complete(&mut self, c: &mut Client, dup: bool) -> Option<(Got, QoS)> {
        let f = self.in_flight.clone()?;
        let first = if f.released {
            Packet::PubRel(PubResp::ok(f.pid))
        } else {
            Packet::Publish(Publish {
                dup,
                qos: f.qos,
                retain: false,
                topic: format!("kill/{}", f.got.topic).into(),
                packet_id: Some(f.pid),
                properties: Properties::default(),
                payload: f.got.seq.to_string().into(),
            })
        };
        if !c.try_send(&first) {
            return None;
        }
        loop {
            match c.recv(Duration::from_secs(10))? {
                Packet::PubAck(a) if a.packet_id == f.pid => {
                    assert_eq!(a.code, ReasonCode::Success);
                    break;
                }
                Packet::PubRec(r) if r.packet_id == f.pid => {
                    assert_eq!(r.code, ReasonCode::Success);
                    if let Some(x) = self.in_flight.as_mut() {
                        x.released = true;
                    }
                    if !c.try_send(&Packet::PubRel(PubResp::ok(f.pid))) {
                        return None;
                    }
                }
                Packet::PubComp(r) if r.packet_id == f.pid => {
                    // A PUBREL resent after a restart may find the id already released: the
                    // broker stored the release and sent a PUBCOMP that the kill cut off.
                    // MQTT 5 answers that with 0x92, "not an error during recovery" (3.7.2.1);
                    // whether the message itself arrived exactly once is checked at the end.
                    let resent_release = dup && f.released;
                    assert!(
                        r.code == ReasonCode::Success
                            || (resent_release && r.code == ReasonCode::PacketIdentifierNotFound),
                        "PUBCOMP {:?} for a PUBREL the broker must know",
                        r.code
                    );
                    break;
                }
                _ => {}
            }
        }
        self.in_flight = None;
        Some((f.got, f.qos))
    }

    /// Connects, finishes what was in flight, then publishes until the connection breaks
    /// or a bound is hit; returns what was acknowledged.
    fn run(&mut self, addr: std::net::SocketAddr, rng_seed: u64) -> Vec<(Got, QoS)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed);
        let mut acked = Vec::new();
        let Some((mut c, ack)) = Client::try_connect_with(addr, "publisher", ProtocolVersion::V5, persistent()) else {
            return acked;
        };
        if self.in_flight.is_some() {
            assert!(ack.session_present, "the publisher's session survived");
            match self.complete(&mut c, true) {
                Some(done) => acked.push(done),
                None => return acked,
            }
        }
        let started = Instant::now();
        for _ in 0..MAX_PER_CYCLE {
            if started.elapsed() > MAX_CYCLE_TIME {
                break;
            }
            let topic = rng.gen_range(0..TOPICS);
            let qos = if rng.gen_bool(0.5) { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
            let seq = self.next_seq[topic as usize];
            self.next_seq[topic as usize] += 1;
            let pid = self.next_pid;
            self.next_pid = if self.next_pid >= PID_WINDOW { 1 } else { self.next_pid + 1 };
            self.in_flight = Some(InFlight { got: Got { topic, seq }, qos, pid, released: false });
            match self.complete(&mut c, false) {
                Some(done) => acked.push(done),
                None => break,
            }
        }
        acked
    }
}

#[test]
fn acknowledged_messages_survive_repeated_sigkill() {
    let exe = env!("CARGO_BIN_EXE_broker-under-test");
    let dir = tempfile::tempdir().expect("tempdir");
    let seed: u64 = std::env::var("BROKER_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("seed {seed} (BROKER_KILL_SEED={seed} repeats the kill timing)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut publisher = Publisher::new();
    let mut acked: Vec<(Got, QoS)> = Vec::new();
    let mut sub = Subscriber::default();

    // The persistent subscription, before anything is published.
    {
        let b = BrokerProcess::start(exe, dir.path());
        let (mut c, _) = Client::connect_with(b.addr, "subscriber", ProtocolVersion::V5, persistent());
        assert_eq!(c.subscribe("kill/#", QoS::ExactlyOnce), vec![ReasonCode::GrantedQoS2]);
        // And the only member of a shared subscription on the same topics.
        let (mut w, _) = Client::connect_with(b.addr, "worker", ProtocolVersion::V5, persistent());
        assert_eq!(w.subscribe("$share/pool/kill/#", QoS::ExactlyOnce), vec![ReasonCode::GrantedQoS2]);
        b.kill9();
    }
    let mut worker = Subscriber::default();

    let n = cycles();
    for cycle in 0..n {
        let modes = std::env::var("BROKER_KILL_SYNC").unwrap_or_else(|_| "always".into());
        let modes: Vec<&str> = modes.split(',').collect();
        let b = BrokerProcess::start_with_sync(exe, dir.path(), modes[cycle % modes.len()]);
        let addr = b.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let subscriber = {
            let stop = stop.clone();
            let mut s = std::mem::take(&mut sub);
            std::thread::spawn(move || {
                if let Some((mut c, _)) =
                    Client::try_connect_with(addr, "subscriber", ProtocolVersion::V5, persistent())
                {
                    s.run(&mut c, &stop, Duration::from_millis(200));
                }
                s
            })
        };
        let working = {
            let stop = stop.clone();
            let mut s = std::mem::take(&mut worker);
            std::thread::spawn(move || {
                if let Some((mut c, _)) = Client::try_connect_with(addr, "worker", ProtocolVersion::V5, persistent()) {
                    s.run(&mut c, &stop, Duration::from_millis(200));
                }
                s
            })
        };
        let publishing = {
            let mut p = publisher.clone();
            let seed = rng.gen();
            std::thread::spawn(move || {
                let acked = p.run(addr, seed);
                (acked, p)
            })
        };
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..600)));
        b.kill9();
        stop.store(true, Ordering::Relaxed);
        let (a, p) = publishing.join().expect("publisher thread");
        publisher = p;
        acked.extend(a);
        sub = subscriber.join().expect("subscriber thread");
        worker = working.join().expect("worker thread");
        eprintln!("cycle {cycle}: {} acknowledged so far, {} received so far", acked.len(), sub.got.len());
    }

    // One last start: the publisher finishes what it had in flight, the subscriber collects
    // what is left, then a graceful stop.
    let b = BrokerProcess::start(exe, dir.path());
    if publisher.in_flight.is_some() {
        let (mut c, _) = Client::connect_with(b.addr, "publisher", ProtocolVersion::V5, persistent());
        acked.extend(publisher.complete(&mut c, true));
    }
    {
        let (mut c, ack) = Client::connect_with(b.addr, "subscriber", ProtocolVersion::V5, persistent());
        assert!(ack.session_present, "the subscriber's session survived every kill");
        let stop = AtomicBool::new(true);
        // Generous: after a restart the backlog is read from the log first, which on a
        // loaded machine can take longer than the cycles' 200 ms quiet window.
        sub.run(&mut c, &stop, Duration::from_secs(3));
        let (mut w, _) = Client::connect_with(b.addr, "worker", ProtocolVersion::V5, persistent());
        worker.run(&mut w, &stop, Duration::from_secs(3));
    }
    b.stop_gracefully();

    check(&acked, &sub.got);
    // The shared subscription's member: the same guarantees.
    check(&acked, &worker.got);
    let qos2 = acked.iter().filter(|(_, q)| *q == QoS::ExactlyOnce).count();
    eprintln!(
        "{n} cycles: {} acknowledged ({} QoS 2), {} received, lost 0, QoS 2 duplicates 0; shared member: {} received, lost 0, QoS 2 duplicates 0",
        acked.len(),
        qos2,
        sub.got.len(),
        worker.got.len()
    );
}

/// Every acknowledged message received; QoS 2 ones exactly once; per topic, first
/// deliveries of acknowledged messages in publish order.
fn check(acked: &[(Got, QoS)], got: &[(Got, QoS)]) {
    let mut count: HashMap<&Got, usize> = HashMap::new();
    for (g, _) in got {
        *count.entry(g).or_default() += 1;
    }
    let lost: Vec<&(Got, QoS)> = acked.iter().filter(|(g, _)| !count.contains_key(g)).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    let twice: Vec<&(Got, QoS)> =
        acked.iter().filter(|(g, q)| *q == QoS::ExactlyOnce && count.get(g).copied().unwrap_or(0) > 1).collect();
    assert!(
        twice.is_empty(),
        "{} QoS 2 messages delivered twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    // Order among acknowledged messages: one never acknowledged (the broker died before its
    // PUBACK) may turn up later than its successors, having been stored but not routed.
    let acked_set: HashSet<&Got> = acked.iter().map(|(g, _)| g).collect();
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut seen: HashSet<&Got> = HashSet::new();
    for (g, _) in got {
        if !acked_set.contains(g) || !seen.insert(g) {
            continue; // unacknowledged, or a QoS 1 repeat
        }
        if let Some(&prev) = last.get(&g.topic) {
            assert!(g.seq > prev, "topic {} out of order: {} after {}", g.topic, g.seq, prev);
        }
        last.insert(g.topic, g.seq);
    }
}
