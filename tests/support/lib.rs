//! Helpers shared by PromptMQ's end-to-end tests: an in-process broker on a free loopback
//! port, and a small blocking MQTT client built on the broker's own codec.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use promptmq_broker::codec::*;
use promptmq_broker::{Broker, BrokerConfig};

/// The log's sync mode named by a child process's argument: `always` (also when absent),
/// `interval` (5 ms) or `none`.
pub fn sync_mode_arg(arg: Option<&str>) -> Result<promptmq_wal::SyncMode, String> {
    use promptmq_wal::SyncMode;
    match arg {
        None | Some("always") => Ok(SyncMode::Always),
        Some("interval") => Ok(SyncMode::Interval(Duration::from_millis(5))),
        Some("none") => Ok(SyncMode::None),
        Some(other) => Err(format!("unknown sync mode {other}: use always, interval or none")),
    }
}

/// Runs a crash-test child until it prints `READY`, lets it run for `run_for`, kills it with
/// SIGKILL, and returns every whole line it printed after `READY` (not one the kill cut
/// short). `what` names the child in failures.
pub fn lines_until_killed(cmd: std::process::Command, run_for: Duration, what: &str) -> Vec<String> {
    lines_until_killed_after(cmd, run_for, what, |_| {})
}

/// [`lines_until_killed`], calling `before_kill` with the child just before the kill.
pub fn lines_until_killed_after(
    mut cmd: std::process::Command,
    run_for: Duration,
    what: &str,
    before_kill: impl FnOnce(&mut std::process::Child),
) -> Vec<String> {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn failed: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut out = std::io::BufReader::new(stdout);
        let mut line = String::new();
        // Only lines that end in a newline: one the kill cut short is dropped.
        while matches!(out.read_line(&mut line), Ok(n) if n > 0) && line.ends_with('\n') {
            line.pop();
            if tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{what} never became ready: {e}"));
    assert_eq!(ready, "READY", "{what}");
    let deadline = Instant::now() + run_for;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    before_kill(&mut child);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping the child");
    reader.join().expect("reader thread");
    rx.try_iter().collect()
}

/// Every record a crash-test child acknowledged so far: stream → offset → payload.
pub type Acked = std::collections::HashMap<String, std::collections::HashMap<u64, String>>;

/// Adds the `ACK <stream> <offset> <payload>` lines of a crash-test child to `acked`, and
/// returns how many there were. An offset acknowledged twice is a failure.
pub fn record_acks(lines: Vec<String>, acked: &mut Acked) -> usize {
    let mut n = 0;
    for line in lines {
        let mut parts = line.splitn(4, ' ');
        if let (Some("ACK"), Some(stream), Some(off), Some(payload)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let off: u64 = off.parse().unwrap_or_else(|e| panic!("bad offset in {line:?}: {e}"));
            let prev = acked.entry(stream.to_string()).or_default().insert(off, payload.to_string());
            assert!(prev.is_none(), "offset {off} of {stream} acknowledged twice");
            n += 1;
        }
    }
    n
}

/// Checks that `wal` holds every acknowledged record: each stream dense from offset 0 (so
/// in order, with nothing missing in between) and each payload intact. `what` names the
/// check in failures.
pub fn assert_acked_present(wal: &promptmq_wal::Wal, acked: &Acked, what: &str) {
    for (stream, recs) in acked {
        let s = wal.lookup(stream).unwrap_or_else(|| panic!("{what}: stream {stream} lost"));
        let all = wal.read(&s, 0, usize::MAX).unwrap_or_else(|e| panic!("{what}: reading {stream}: {e}"));
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "{what}: {stream} out of order");
        }
        for (off, payload) in recs {
            let r = all.get(*off as usize).unwrap_or_else(|| panic!("{what}: acknowledged {stream}@{off} lost"));
            assert_eq!(std::str::from_utf8(&r.payload).ok(), Some(payload.as_str()), "{what}: {stream}@{off} damaged");
        }
    }
}

/// A broker running in this process on 127.0.0.1 (port chosen by the OS), with its own
/// tokio runtime so tests stay plain `#[test]` functions.
pub struct TestBroker {
    rt: tokio::runtime::Runtime,
    broker: Option<Broker>,
    /// Address it listens on.
    pub addr: SocketAddr,
}

impl TestBroker {
    /// Starts a broker storing its data in `dir`.
    pub fn start(dir: &std::path::Path) -> TestBroker {
        Self::start_with(dir, |_| {})
    }

    /// Starts a broker after `tweak` adjusts its configuration.
    pub fn start_with(dir: &std::path::Path, tweak: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mut cfg = BrokerConfig::new("127.0.0.1:0".parse().expect("addr"), dir);
        // Two shards whatever the machine (the default depends on its cores): records of one
        // client then span shard logs, the case that needs care. Tests may set their own.
        cfg.storage.shards = Some(2);
        tweak(&mut cfg);
        let broker = rt.block_on(Broker::start(cfg)).expect("broker starts");
        let addr = broker.local_addr();
        TestBroker { rt, broker: Some(broker), addr }
    }

    /// The running broker (for its counters).
    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("running until stopped")
    }

    /// Graceful shutdown.
    pub fn stop(mut self) {
        if let Some(b) = self.broker.take() {
            self.rt.block_on(b.shutdown());
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(b) = self.broker.take() {
            self.rt.block_on(b.shutdown());
        }
    }
}

/// A blocking MQTT client for tests.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    /// Protocol version in use.
    pub version: ProtocolVersion,
    next_id: u16,
    /// Packets received while waiting for another one (a QoS 2 PUBREL), handed out first.
    held: std::collections::VecDeque<Packet>,
}

/// Options for [`Client::connect_with`].
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Clean start / clean session.
    pub clean: bool,
    /// Will message.
    pub will: Option<Will>,
    /// Keep alive, seconds.
    pub keep_alive: u16,
    /// CONNECT properties (v5).
    pub properties: Properties,
    /// Username.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
}

impl ConnectOptions {
    /// A persistent session: no clean start, and (v5) a session expiry of `expiry_secs`
    /// (3.1.1 clients keep the session regardless).
    pub fn persistent(expiry_secs: u32) -> ConnectOptions {
        ConnectOptions {
            clean: false,
            properties: Properties { session_expiry_interval: Some(expiry_secs), ..Default::default() },
            ..Default::default()
        }
    }
}

impl Client {
    /// Connects with clean start and no will; panics if the broker refuses.
    pub fn connect(addr: SocketAddr, client_id: &str, version: ProtocolVersion) -> Client {
        let (c, ack) =
            Self::connect_with(addr, client_id, version, ConnectOptions { clean: true, ..Default::default() });
        assert_eq!(ack.code, ReasonCode::Success, "CONNACK {ack:?}");
        c
    }

    /// Connects and returns the CONNACK, whatever it says.
    pub fn connect_with(
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        o: ConnectOptions,
    ) -> (Client, ConnAck) {
        match Self::try_connect_with(addr, client_id, version, o) {
            Some(c) => c,
            None => panic!("no CONNACK from {addr}"),
        }
    }

    /// [`Client::connect_with`], `None` if the broker cannot be reached or does not answer.
    pub fn try_connect_with(
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        o: ConnectOptions,
    ) -> Option<(Client, ConnAck)> {
        let stream = TcpStream::connect(addr).ok()?;
        stream.set_nodelay(true).ok();
        let mut c = Client { stream, buf: BytesMut::new(), version, next_id: 1, held: Default::default() };
        c.try_send(&Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: o.clean,
            keep_alive: o.keep_alive,
            properties: o.properties,
            client_id: client_id.into(),
            will: o.will,
            username: o.username,
            password: o.password,
        })))
        .then_some(())?;
        match c.recv(Duration::from_secs(5)) {
            Some(Packet::ConnAck(a)) => Some((c, a)),
            _ => None,
        }
    }

    /// Sends one packet.
    pub fn send(&mut self, p: &Packet) {
        assert!(self.try_send(p), "write to the broker failed");
    }

    /// Sends one packet; `false` if the connection is gone.
    pub fn try_send(&mut self, p: &Packet) -> bool {
        let mut out = BytesMut::new();
        encode(p, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).is_ok()
    }

    /// Sends raw bytes (for malformed-input tests).
    pub fn send_raw(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b);
    }

    /// The next packet within `timeout`; `None` on timeout or when the broker closed the
    /// connection.
    pub fn recv(&mut self, timeout: Duration) -> Option<Packet> {
        if let Some(p) = self.held.pop_front() {
            return Some(p);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = Some(self.version);
            if let Ok(Some(p)) = decode(&mut self.buf, v, 1 << 24) {
                return Some(p);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok();
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    /// Whether the broker closed the connection within `timeout` (packets before the close,
    /// such as a DISCONNECT, are returned).
    pub fn closed_within(&mut self, timeout: Duration) -> (bool, Vec<Packet>) {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while Instant::now() < deadline {
            match self.recv(Duration::from_millis(100)) {
                Some(p) => got.push(p),
                None => {
                    let mut probe = [0u8; 1];
                    self.stream.set_read_timeout(Some(Duration::from_millis(50))).ok();
                    match self.stream.read(&mut probe) {
                        Ok(0) => return (true, got),
                        Ok(n) => self.buf.extend_from_slice(&probe[..n]),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        Err(_) => return (true, got),
                    }
                }
            }
        }
        (false, got)
    }

    fn id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Subscribes and returns the SUBACK codes.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<ReasonCode> {
        self.subscribe_with(
            vec![Subscription {
                filter: filter.into(),
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }],
            Properties::default(),
        )
    }

    /// Subscribes with full options.
    pub fn subscribe_with(&mut self, subscriptions: Vec<Subscription>, properties: Properties) -> Vec<ReasonCode> {
        let id = self.id();
        self.send(&Packet::Subscribe(Subscribe { packet_id: id, properties, subscriptions }));
        loop {
            match self.recv(Duration::from_secs(5)) {
                Some(Packet::SubAck(a)) if a.packet_id == id => return a.codes,
                Some(_) => continue,
                None => panic!("no SUBACK"),
            }
        }
    }

    /// Unsubscribes and returns the UNSUBACK codes (empty in 3.1.1).
    pub fn unsubscribe(&mut self, filters: &[&str]) -> Vec<ReasonCode> {
        let id = self.id();
        self.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            properties: Properties::default(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        }));
        loop {
            match self.recv(Duration::from_secs(5)) {
                Some(Packet::UnsubAck(a)) if a.packet_id == id => return a.codes,
                Some(_) => continue,
                None => panic!("no UNSUBACK"),
            }
        }
    }

    /// Publishes and completes the QoS flow; returns the reason code of the PUBACK/PUBREC.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> ReasonCode {
        self.publish_with(topic, payload, qos, retain, Properties::default())
    }

    /// [`Client::publish`] with properties.
    pub fn publish_with(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> ReasonCode {
        match self.try_publish_with(topic, payload, qos, retain, properties) {
            Some(code) => code,
            None => panic!("no acknowledgement for a QoS {qos:?} PUBLISH to {topic}"),
        }
    }

    /// [`Client::publish_with`]; `None` if the connection failed before the flow completed
    /// (the message may or may not have been stored).
    pub fn try_publish_with(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Option<ReasonCode> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.id());
        let sent = self.try_send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            properties,
            payload: payload.into(),
        }));
        if !sent {
            return None;
        }
        let Some(id) = packet_id else { return Some(ReasonCode::Success) };
        loop {
            match self.recv(Duration::from_secs(10))? {
                Packet::PubAck(a) if a.packet_id == id => return Some(a.code),
                Packet::PubRec(r) if r.packet_id == id => {
                    if (r.code as u8) >= 0x80 {
                        return Some(r.code);
                    }
                    if !self.try_send(&Packet::PubRel(PubResp::ok(id))) {
                        return None;
                    }
                }
                Packet::PubComp(c) if c.packet_id == id => return Some(ReasonCode::Success),
                _ => continue,
            }
        }
    }

    /// Sends PINGREQ and waits for the PINGRESP. The broker handles one connection's packets
    /// in order, so a QoS 0 PUBLISH sent before has been taken in when this returns (other
    /// connections can then rely on it). Packets that arrive first are kept for `recv`.
    pub fn ping(&mut self) {
        self.send(&Packet::PingReq);
        let mut other = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.checked_duration_since(Instant::now()).expect("no PINGRESP within 10 s");
            match self.recv(left) {
                Some(Packet::PingResp) => break,
                Some(p) => other.push(p),
                None => panic!("no PINGRESP: the connection closed or timed out"),
            }
        }
        self.held.extend(other);
    }

    /// The next PUBLISH within `timeout`, acknowledging it per its QoS.
    pub fn next_publish(&mut self, timeout: Duration) -> Option<Publish> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.recv(left)? {
                Packet::Publish(p) => {
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(PubResp::ok(id))),
                        (QoS::ExactlyOnce, Some(id)) => {
                            self.send(&Packet::PubRec(PubResp::ok(id)));
                            // Wait for PUBREL and complete, so the flow is exactly once;
                            // what arrives meanwhile (more PUBLISHes) is kept for later.
                            let mut meanwhile = std::mem::take(&mut self.held);
                            loop {
                                match self.recv(Duration::from_secs(5)) {
                                    Some(Packet::PubRel(r)) if r.packet_id == id => {
                                        self.send(&Packet::PubComp(PubResp::ok(id)));
                                        break;
                                    }
                                    Some(other) => meanwhile.push_back(other),
                                    None => panic!("no PUBREL for {id}"),
                                }
                            }
                            self.held = meanwhile;
                        }
                        _ => {}
                    }
                    return Some(p);
                }
                _ => continue,
            }
        }
    }

    /// Sends DISCONNECT and closes.
    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::default()));
    }
}

/// Publishes collected by `next_publish` until `timeout` passes with nothing new.
pub fn drain(c: &mut Client, timeout: Duration) -> Vec<Publish> {
    let mut out = Vec::new();
    while let Some(p) = c.next_publish(timeout) {
        out.push(p);
    }
    out
}

/// How long [`drain_expecting`] waits for each of the messages it expects. A delivery to a
/// persistent session waits for a durable record (an `fdatasync` with `sync = always`), and a
/// busy disk (a build writing back beside the tests) can hold one for hundreds of ms.
pub const EXPECTED_WITHIN: Duration = Duration::from_secs(10);

/// Publishes collected until `n` have arrived (each within [`EXPECTED_WITHIN`]), then any
/// more that come before `quiet` passes with nothing new (so extras are still seen).
pub fn drain_expecting(c: &mut Client, n: usize, quiet: Duration) -> Vec<Publish> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.next_publish(EXPECTED_WITHIN) {
            Some(p) => out.push(p),
            None => return out,
        }
    }
    out.extend(drain(c, quiet));
    out
}

/// The broker as a child process (the `broker-under-test` binary), for tests that kill it.
pub struct BrokerProcess {
    child: std::process::Child,
    /// Address it listens on (127.0.0.1, a free port).
    pub addr: SocketAddr,
}

impl BrokerProcess {
    /// Starts `exe` (pass `env!("CARGO_BIN_EXE_broker-under-test")`) on `dir` and waits
    /// until it listens.
    pub fn start(exe: &str, dir: &std::path::Path) -> BrokerProcess {
        Self::start_with_sync(exe, dir, "always")
    }

    /// [`BrokerProcess::start`] with the log's sync mode: `always`, `interval` (5 ms) or `none`.
    pub fn start_with_sync(exe: &str, dir: &std::path::Path, sync: &str) -> BrokerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(exe)
            .arg(dir)
            .arg(sync)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn broker");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout is piped");
        std::io::BufReader::new(out).read_line(&mut line).expect("read port");
        let port: u16 = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        BrokerProcess { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGINT: the broker drains, saves and syncs, then exits 0.
    pub fn stop_gracefully(mut self) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill").args(["-INT", &pid]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill -INT {pid}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "graceful stop exits 0, got {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("broker did not stop within 20 s of SIGINT");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loop-mounted ext4 filesystem of a few MiB, unmounted when dropped: a disk that really
/// fills up, and that can be made to fail as ext4 does after an I/O error (read-only from
/// then on). Mounting needs root and loop devices (CI has both).
pub struct SmallFs {
    _dir: tempfile::TempDir,
    image: std::path::PathBuf,
    /// Where it is mounted.
    pub mnt: std::path::PathBuf,
}

/// Runs `cmd` with `args`; its stderr if it fails.
fn run_tool(cmd: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = std::process::Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

impl SmallFs {
    /// `None`, with the reason on stderr, where this machine cannot mount one.
    pub fn mount(mib: u64) -> Option<SmallFs> {
        Self::mount_with_inodes(mib, None)
    }

    /// [`SmallFs::mount`] with room for only `inodes` files and directories, if given: a
    /// filesystem that runs out of inodes with blocks to spare.
    pub fn mount_with_inodes(mib: u64, inodes: Option<u32>) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let (image, mnt) = (dir.path().join("fs.img"), dir.path().join("mnt"));
        std::fs::create_dir(&mnt).ok()?;
        std::fs::File::create(&image).ok()?.set_len(mib << 20).ok()?;
        let fs = SmallFs { _dir: dir, image, mnt };
        let inodes = inodes.map(|n| n.to_string());
        let mut args: Vec<&std::ffi::OsStr> = vec!["-q".as_ref(), "-F".as_ref()];
        if let Some(n) = &inodes {
            args.extend([std::ffi::OsStr::new("-N"), std::ffi::OsStr::new(n)]);
        }
        args.push(fs.image.as_os_str());
        match run_tool("mkfs.ext4", &args).and_then(|_| fs.attach()) {
            Ok(()) => Some(fs),
            Err(why) => {
                eprintln!("SKIPPED: cannot mount a small ext4 filesystem here ({why})");
                None
            }
        }
    }

    /// Mounts the image, read-only from the first filesystem error on, as production
    /// systems commonly mount ext4. The journal commits only when asked (a sync) or every
    /// ten minutes, so that nothing is written behind a stopped writer's back (see
    /// [`SmallFs::power_cut_copy`]).
    fn attach(&self) -> Result<(), String> {
        let opts = "loop,errors=remount-ro,commit=600";
        run_tool("mount", &["-o".as_ref(), opts.as_ref(), self.image.as_os_str(), self.mnt.as_os_str()]).map(|_| ())
    }

    /// The loop device it is mounted from (`loop3`).
    fn device(&self) -> String {
        let source = run_tool("findmnt", &["-n".as_ref(), "-o".as_ref(), "SOURCE".as_ref(), self.mnt.as_os_str()])
            .expect("findmnt");
        source.trim().rsplit('/').next().unwrap_or_default().to_string()
    }

    /// Makes ext4 report an error, as after a failed write to the device: the filesystem
    /// turns read-only at once, under whatever has files open on it.
    pub fn fail(&self) {
        std::fs::write(format!("/sys/fs/ext4/{}/trigger_fs_error", self.device()), "test")
            .expect("ext4's trigger_fs_error for this device");
    }

    /// Writes the device has completed, and writes in flight (`/sys/block/DEV/stat`).
    fn device_writes(&self) -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string(format!("/sys/block/{}/stat", self.device())).ok()?;
        let f: Vec<u64> = stat.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        Some((*f.get(4)?, *f.get(8)?))
    }

    /// What a power cut now would leave: a copy of the device as it is (what reached it,
    /// not what the page cache holds), mounted elsewhere after `e2fsck` replayed its
    /// journal. Whoever writes to this filesystem must be stopped first; the copy is taken
    /// again if the device was written meanwhile. Why not, if it cannot be had.
    pub fn power_cut_copy(&self) -> Result<SmallFs, String> {
        for _ in 0..50 {
            let before = self.device_writes().ok_or("no write counts for the device")?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let (image, mnt) = (dir.path().join("fs.img"), dir.path().join("mnt"));
            std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
            std::fs::copy(&self.image, &image).map_err(|e| format!("copying the image: {e}"))?;
            if before.1 == 0 && self.device_writes() == Some(before) {
                let copy = SmallFs { _dir: dir, image, mnt };
                // e2fsck exits 1 when it fixed something, as after a cut it may.
                let _ = std::process::Command::new("e2fsck").arg("-fy").arg(&copy.image).output();
                copy.attach().map_err(|e| format!("mounting the copy: {e}"))?;
                return Ok(copy);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the device was written during every copy".into())
    }

    /// What an operator does after such an error: unmount, `e2fsck -fy`, mount again.
    /// Whatever still has files open there must have closed them.
    pub fn repair(&self) {
        run_tool("umount", &[self.mnt.as_os_str()]).expect("umount");
        // e2fsck exits 1 when it fixed something, which it may well have.
        let _ = std::process::Command::new("e2fsck").arg("-fy").arg(&self.image).output();
        self.attach().expect("mount after e2fsck");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazily if something still holds a file there (a test that failed midway).
        let done = std::process::Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success());
        if !done {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}
