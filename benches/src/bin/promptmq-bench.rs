//! `promptmq-bench`: an MQTT load generator for any broker.
//!
//! N publishers and M subscribers (each its own TCP connection), payloads stamped with the
//! publisher, a sequence number and the send time, so the subscribers measure
//! publish-to-receive latency (HDR histogram), loss and duplicates. Stops by itself after
//! `--duration` or `--count` messages per publisher, whichever comes first, and prints a
//! human summary and one JSON line. It only ever connects to `--host:--port`.
//!
//! ```text
//! promptmq-bench --port 1883 --publishers 4 --subscribers 1 --qos 1 --duration 10
//! promptmq-bench --port 1883 --publishers 1 --subscribers 100 --qos 1 --rate 1000   # fan-out
//! promptmq-bench --port 1883 --subscribers 4 --shared --qos 1                         # shared
//! promptmq-bench --port 1883 --publishers 0 --subscribers 0 --idle 10000              # idle conns
//! promptmq-bench --port 1883 --publishers 4 --qos 1 --rate 11000 --latency-log lat.txt # every latency
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Parser;
use hdrhistogram::Histogram;
use promptmq_benches::percentile;
use promptmq_broker::codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(name = "promptmq-bench", about = "MQTT load generator: throughput, latency, loss and duplicates")]
struct Args {
    /// Broker host (use a loopback address for tests).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// MQTT version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4)]
    version: u8,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Topics per publisher (messages round-robin over them).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Payload bytes (at least 20: the stamp).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Messages per second per publisher (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Most unacknowledged QoS 1/2 publishes per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Most messages per publisher.
    #[arg(long, default_value_t = 10_000_000)]
    count: u64,
    /// Subscribers join one shared subscription group instead of each getting every message.
    #[arg(long)]
    shared: bool,
    /// Extra idle connections to open and hold (connection-count test).
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Connect with persistent sessions (3.1.1: clean session 0; v5: session expiry 1 h),
    /// which makes the broker keep QoS 2 state durably for them.
    #[arg(long)]
    persistent: bool,
    /// Seconds to wait after publishing stops for the last messages to arrive.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Also write every received message as a `sent_ns latency_ns` line (nanoseconds since
    /// the start) to this file, sorted by send time: shows whether a tail is spread over
    /// the run or stalls at moments.
    #[arg(long)]
    latency_log: Option<std::path::PathBuf>,
    /// Before the run, store this many retained messages (topics `bench/retained/K/J`, 1 000
    /// per K) from one connection, with QoS 0, or QoS 1 when `--qos` is 1 or 2 (a log
    /// keeping messages then has a stream per topic); `--persistent` makes that connection's
    /// session persistent for the subscribe rounds.
    #[arg(long, default_value_t = 0)]
    retained: usize,
    /// Then time this many SUBSCRIBE → SUBACK round trips against them, alternately to one
    /// topic and to `bench/retained/K/+` (1 000 matches), each followed by its retained
    /// messages and an UNSUBSCRIBE: what a subscription costs with many retained messages.
    #[arg(long, default_value_t = 0)]
    subscribe_rounds: usize,
}

/// Longest wait for a subscriber's CONNACK and SUBACK.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

const STAMP: usize = 20; // publisher u32, seq u64, nanos since start u64

struct Conn {
    s: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    v: ProtocolVersion,
}

impl Conn {
    async fn open(a: &Args, id: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect((a.host.as_str(), a.port)).await?;
        s.set_nodelay(true)?;
        let v = if a.version == 5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
        let mut c = Conn { s, rbuf: BytesMut::with_capacity(1 << 16), wbuf: BytesMut::with_capacity(1 << 16), v };
        let props = if a.version == 5 {
            let expiry = a.persistent.then_some(3600);
            Properties { receive_maximum: Some(65_535), session_expiry_interval: expiry, ..Properties::default() }
        } else {
            Properties::default()
        };
        c.send(&Packet::Connect(Box::new(Connect {
            protocol: v,
            // A persistent session starts clean in v5 (expiry keeps it); 3.1.1 has no other way.
            clean_start: !a.persistent || a.version == 5,
            keep_alive: 0,
            properties: props,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })));
        c.flush().await?;
        match c.recv().await? {
            Packet::ConnAck(a) if a.code == ReasonCode::Success => Ok(c),
            other => Err(std::io::Error::other(format!("connect refused: {other:?}"))),
        }
    }

    fn send(&mut self, p: &Packet) {
        // Packets built here are always encodable.
        let _ = encode(p, self.v, &mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.s.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    async fn recv(&mut self) -> std::io::Result<Packet> {
        loop {
            match decode(&mut self.rbuf, Some(self.v), 1 << 28) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            if self.s.read_buf(&mut self.rbuf).await? == 0 {
                return Err(std::io::Error::other("broker closed the connection"));
            }
        }
    }
}

fn qos(a: &Args) -> QoS {
    QoS::from_u8(a.qos).unwrap_or(QoS::AtMostOnce)
}

/// A histogram of latencies in nanoseconds, 1 ns to 60 s, 3 significant digits (the
/// subscribers' own and the run's total, which they are added into).
fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
}

/// What the subscribers measured: every latency, and with `--latency-log` each message's.
struct Measured {
    hist: Mutex<Histogram<u64>>,
    /// `(sent_ns, latency_ns)` per received message.
    log: Option<Mutex<Vec<(u64, u64)>>>,
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    dups: AtomicU64,
    errors: AtomicU64,
}

async fn publisher(
    a: Arc<Args>,
    idx: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
) -> std::io::Result<()> {
    let mut c = Conn::open(&a, &format!("bench-pub-{idx}")).await?;
    let q = qos(&a);
    let topics: Vec<String> = (0..a.topics).map(|k| format!("bench/{idx}/{k}")).collect();
    let mut payload = vec![0u8; a.payload.max(STAMP)];
    let mut inflight = 0usize;
    let mut next_id: u16 = 1;
    let interval = (a.rate > 0).then(|| Duration::from_secs_f64(1.0 / a.rate as f64));
    let mut seq = 0u64;
    while seq < a.count && !stop.load(Ordering::Relaxed) {
        if let Some(iv) = interval {
            let due = start + iv * seq as u32;
            let now = Instant::now();
            if due > now {
                c.flush().await?;
                tokio::time::sleep(due - now).await;
            }
        }
        while q != QoS::AtMostOnce && inflight >= a.inflight {
            c.flush().await?;
            match c.recv().await? {
                Packet::PubAck(_) | Packet::PubComp(_) => {
                    inflight -= 1;
                    t.acked.fetch_add(1, Ordering::Relaxed);
                }
                Packet::PubRec(r) => c.send(&Packet::PubRel(PubResp::ok(r.packet_id))),
                _ => {}
            }
        }
        let mut stamp = &mut payload[..STAMP];
        stamp.put_u32(idx as u32);
        stamp.put_u64(seq);
        stamp.put_u64(start.elapsed().as_nanos() as u64);
        let packet_id = (q != QoS::AtMostOnce).then(|| {
            let id = next_id;
            next_id = next_id.checked_add(1).unwrap_or(1);
            id
        });
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: q,
            retain: false,
            topic: topics[(seq as usize) % topics.len()].as_str().into(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(&payload),
        }));
        if q != QoS::AtMostOnce {
            inflight += 1;
        }
        seq += 1;
        t.sent.fetch_add(1, Ordering::Relaxed);
        if c.wbuf.len() > 32 << 10 || interval.is_some() {
            c.flush().await?;
        }
    }
    c.flush().await?;
    // Collect the remaining acknowledgements (bounded by the drain time).
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    while inflight > 0 && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), c.recv()).await {
            Ok(Ok(Packet::PubAck(_) | Packet::PubComp(_))) => {
                inflight -= 1;
                t.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(Packet::PubRec(r))) => {
                c.send(&Packet::PubRel(PubResp::ok(r.packet_id)));
                c.flush().await?;
            }
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    Ok(())
}

async fn subscriber(
    a: Arc<Args>,
    idx: usize,
    start: Instant,
    ready: Arc<tokio::sync::Barrier>,
    done: Arc<AtomicBool>,
    t: Arc<Totals>,
    measured: Arc<Measured>,
) -> std::io::Result<()> {
    let setup = tokio::time::timeout(SETUP_TIMEOUT, subscribe(&a, idx)).await;
    // Every subscriber reaches the barrier, subscribed or not: one that failed must not hold
    // the run (and the publishers) forever.
    ready.wait().await;
    let mut c = setup.map_err(|_| std::io::Error::other("no SUBACK in time"))??;
    let mut local = latency_histogram().map_err(std::io::Error::other)?;
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); a.publishers];
    let mut logged = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let p = match tokio::time::timeout(Duration::from_millis(100), c.recv()).await {
            Ok(r) => r?,
            Err(_) => continue,
        };
        if let Packet::Publish(p) = p {
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => c.send(&Packet::PubAck(PubResp::ok(id))),
                (QoS::ExactlyOnce, Some(id)) => c.send(&Packet::PubRec(PubResp::ok(id))),
                _ => {}
            }
            if p.payload.len() >= STAMP {
                let mut b = &p.payload[..STAMP];
                let (pubi, seq, sent) = (b.get_u32() as usize, b.get_u64(), b.get_u64());
                let now = start.elapsed().as_nanos() as u64;
                let latency = now.saturating_sub(sent).max(1);
                let _ = local.record(latency);
                if measured.log.is_some() {
                    logged.push((sent, latency));
                }
                if let Some(bits) = seen.get_mut(pubi) {
                    let (w, bit) = ((seq / 64) as usize, seq % 64);
                    if bits.len() <= w {
                        bits.resize(w + 1, 0);
                    }
                    if bits[w] & (1 << bit) != 0 {
                        t.dups.fetch_add(1, Ordering::Relaxed);
                    }
                    bits[w] |= 1 << bit;
                }
                t.received.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Packet::PubRel(r) = p {
            c.send(&Packet::PubComp(PubResp::ok(r.packet_id)));
        }
        if c.wbuf.len() > 16 << 10 || c.rbuf.is_empty() {
            c.flush().await?;
        }
    }
    let _ = measured.hist.lock().map(|mut h| h.add(&local));
    if let Some(log) = &measured.log {
        let _ = log.lock().map(|mut l| l.append(&mut logged));
    }
    Ok(())
}

/// `--retained` and `--subscribe-rounds`: stores the retained messages, then times the
/// subscriptions; `{"exact": {p50, p99, max}, "wildcard": {...}}` in ms (null without rounds).
async fn retained_scenario(a: &Args) -> std::io::Result<serde_json::Value> {
    if a.retained == 0 {
        return Ok(serde_json::Value::Null);
    }
    let topic = |i: usize| format!("bench/retained/{}/{}", i / 1000, i % 1000);
    let mut c = Conn::open(a, "bench-retainer").await?;
    let payload = Bytes::from(vec![b'r'; a.payload.max(1)]);
    // `--qos 1` (or 2) stores them with QoS 1: a broker that logs messages then has a stream
    // per topic, which a persistent session (`--persistent`) subscribing has to look through.
    let q = if a.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let mut inflight = 0usize;
    for i in 0..a.retained {
        while q == QoS::AtLeastOnce && inflight >= a.inflight.max(1) {
            c.flush().await?;
            if matches!(c.recv().await?, Packet::PubAck(_)) {
                inflight -= 1;
            }
        }
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: q,
            retain: true,
            topic: topic(i).as_str().into(),
            packet_id: (q == QoS::AtLeastOnce).then(|| (i % 65_000 + 1) as u16),
            properties: Properties::default(),
            payload: payload.clone(),
        }));
        inflight += usize::from(q == QoS::AtLeastOnce);
        if c.wbuf.len() > 32 << 10 {
            c.flush().await?;
        }
    }
    // A broker handles one connection's packets in order: after the PINGRESP (and the last
    // PUBACK) every retained message has been taken in.
    c.send(&Packet::PingReq);
    c.flush().await?;
    tokio::time::timeout(SETUP_TIMEOUT, async {
        let mut ponged = false;
        while !ponged || inflight > 0 {
            match c.recv().await? {
                Packet::PingResp => ponged = true,
                Packet::PubAck(_) => inflight -= 1,
                _ => {}
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|_| std::io::Error::other("no PINGRESP or PUBACKs after storing the retained messages"))??;
    if a.subscribe_rounds == 0 {
        return Ok(serde_json::Value::Null);
    }
    let groups = a.retained.div_ceil(1000);
    let (mut exact, mut wildcard) = (Vec::new(), Vec::new());
    for round in 0..a.subscribe_rounds {
        let k = (round / 2 * 7919) % a.retained;
        let (filter, expect) = if round % 2 == 0 {
            (topic(k), 1)
        } else {
            let g = (round / 2) % groups;
            (format!("bench/retained/{g}/+"), (a.retained - g * 1000).min(1000))
        };
        let id = (round % 60_000 + 1) as u16;
        let started = Instant::now();
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: id,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: filter.clone(),
                qos: QoS::AtMostOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }],
        }));
        c.flush().await?;
        let (mut took, mut got) = (None, 0);
        tokio::time::timeout(SETUP_TIMEOUT, async {
            while took.is_none() || got < expect {
                match c.recv().await? {
                    Packet::SubAck(_) => took = Some(started.elapsed()),
                    Packet::Publish(_) => got += 1,
                    _ => {}
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|_| std::io::Error::other(format!("{filter}: SUBACK and {expect} retained messages not in time")))??;
        if let Some(d) = took {
            if round % 2 == 0 { &mut exact } else { &mut wildcard }.push(d);
        }
        c.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            properties: Properties::default(),
            filters: vec![filter],
        }));
        c.flush().await?;
        tokio::time::timeout(SETUP_TIMEOUT, async {
            while !matches!(c.recv().await?, Packet::UnsubAck(_)) {}
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|_| std::io::Error::other("no UNSUBACK in time"))??;
    }
    let summary = |v: &mut Vec<Duration>| {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if v.is_empty() {
            return serde_json::Value::Null;
        }
        let max = v.iter().max().copied().unwrap_or_default();
        serde_json::json!({"p50": ms(percentile(v, 50.0)), "p99": ms(percentile(v, 99.0)), "max": ms(max), "rounds": v.len()})
    };
    Ok(serde_json::json!({"exact": summary(&mut exact), "wildcard": summary(&mut wildcard)}))
}

/// Connects subscriber `idx` and subscribes it; returns once the broker acknowledged.
async fn subscribe(a: &Args, idx: usize) -> std::io::Result<Conn> {
    let mut c = Conn::open(a, &format!("bench-sub-{idx}")).await?;
    let filter = if a.shared { "$share/bench/bench/#".to_string() } else { "bench/#".to_string() };
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter,
            qos: qos(a),
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::Never,
        }],
    }));
    c.flush().await?;
    loop {
        if let Packet::SubAck(_) = c.recv().await? {
            return Ok(c);
        }
    }
}

/// Writes the `(sent_ns, latency_ns)` pairs, sorted by send time, one line each.
fn write_latency_log(path: &std::path::Path, log: &Mutex<Vec<(u64, u64)>>) -> std::io::Result<()> {
    use std::io::Write;
    // The subscribers are done: take the pairs instead of copying them (a million at 50 k/s).
    let mut all = log.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
    all.sort_unstable();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (sent, lat) in all {
        writeln!(out, "{sent} {lat}")?;
    }
    out.flush()
}

fn main() {
    let a = Args::parse();
    if a.payload < STAMP && (a.publishers > 0) {
        eprintln!("--payload must be at least {STAMP} bytes (the stamp)");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let code = rt.block_on(run(a));
    std::process::exit(code);
}

async fn run(a: Args) -> i32 {
    let a = Arc::new(a);
    let t = Arc::new(Totals::default());
    let measured = Arc::new(Measured {
        hist: Mutex::new(latency_histogram().expect("histogram")),
        log: a.latency_log.as_ref().map(|_| Mutex::new(Vec::new())),
    });
    let start = Instant::now();

    let mut idle = Vec::with_capacity(a.idle);
    for i in 0..a.idle {
        match Conn::open(&a, &format!("bench-idle-{i}")).await {
            Ok(c) => idle.push(c),
            Err(e) => {
                eprintln!("idle connection {i} failed: {e}");
                t.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }

    let subscribe_ms = match retained_scenario(&a).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("retained scenario: {e}");
            t.errors.fetch_add(1, Ordering::Relaxed);
            serde_json::Value::Null
        }
    };

    let ready = Arc::new(tokio::sync::Barrier::new(a.subscribers + 1));
    let sub_done = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for i in 0..a.subscribers {
        let (a, ready, done, t, measured) = (a.clone(), ready.clone(), sub_done.clone(), t.clone(), measured.clone());
        subs.push(tokio::spawn(async move {
            if let Err(e) = subscriber(a, i, start, ready.clone(), done, t.clone(), measured).await {
                eprintln!("subscriber {i}: {e}");
                t.errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    ready.wait().await;
    let pub_start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut pubs = Vec::new();
    for i in 0..a.publishers {
        let (a, stop, t) = (a.clone(), stop.clone(), t.clone());
        pubs.push(tokio::spawn(async move {
            if let Err(e) = publisher(a, i, start, stop, t.clone()).await {
                eprintln!("publisher {i}: {e}");
                t.errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Publishing ends at --duration, or earlier once every publisher has sent --count: the
    // rates are over the time actually spent publishing.
    let stopper = {
        let (stop, duration) = (stop.clone(), Duration::from_secs_f64(a.duration));
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    for p in pubs {
        let _ = p.await;
    }
    stopper.abort();
    let pub_elapsed = pub_start.elapsed();
    // Let the last messages arrive, then stop the subscribers.
    let expected_per_sub = if a.shared { 0 } else { t.sent.load(Ordering::Relaxed) };
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    while Instant::now() < deadline {
        let got = t.received.load(Ordering::Relaxed);
        let want = if a.shared { t.sent.load(Ordering::Relaxed) } else { expected_per_sub * a.subscribers as u64 };
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recv_elapsed = pub_start.elapsed();
    sub_done.store(true, Ordering::Relaxed);
    for s in subs {
        let _ = s.await;
    }

    if let (Some(path), Some(log)) = (&a.latency_log, &measured.log) {
        if let Err(e) = write_latency_log(path, log) {
            eprintln!("--latency-log {}: {e}", path.display());
            t.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let sent = t.sent.load(Ordering::Relaxed);
    let received = t.received.load(Ordering::Relaxed);
    let want = if a.shared || a.subscribers == 0 {
        sent.min(if a.subscribers == 0 { 0 } else { sent })
    } else {
        sent * a.subscribers as u64
    };
    let lost = want.saturating_sub(received.saturating_sub(t.dups.load(Ordering::Relaxed)));
    let h = measured.hist.lock().map(|h| h.clone()).unwrap_or_else(|_| Histogram::new(3).expect("histogram"));
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    let rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    println!(
        "sent {sent} in {:.2} s = {:.0} msg/s; received {received} = {:.0} msg/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; lost {lost}; duplicates {}; errors {}; idle connections held {}",
        pub_elapsed.as_secs_f64(),
        sent as f64 / pub_elapsed.as_secs_f64(),
        received as f64 / recv_elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1e6,
        t.dups.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
        idle.len()
    );
    let json = serde_json::json!({
        "host": a.host, "port": a.port, "version": a.version, "qos": a.qos,
        "publishers": a.publishers, "subscribers": a.subscribers, "shared": a.shared, "payload": a.payload,
        "sent": sent, "acked": t.acked.load(Ordering::Relaxed), "received": received,
        "send_rate": sent as f64 / pub_elapsed.as_secs_f64(),
        "receive_rate": received as f64 / recv_elapsed.as_secs_f64(),
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1e6},
        "lost": lost, "duplicates": t.dups.load(Ordering::Relaxed), "errors": t.errors.load(Ordering::Relaxed),
        "idle_connections": idle.len(), "bench_rss_kb": rss_kb,
        "retained": a.retained, "subscribe_ms": subscribe_ms,
    });
    println!("{json}");
    i32::from(t.errors.load(Ordering::Relaxed) > 0)
}
