//! One client connection: CONNECT, then a loop that reads and handles packets, writes what
//! the session has queued (within the client's receive maximum), and acknowledges QoS 1/2
//! PUBLISHes once the log has made them durable — in the order they arrived.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::FutureExt;
use promptmq_wal::Completion;
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch, Notify};

use crate::auth::ClientAcl;
use crate::codec::*;
use crate::early_delivery::EarlyRoute;
use crate::message::Message;
use crate::qos2_store::{InboundIntent, Qos2State};
use crate::replay::{self, Batch};
use crate::router::SubOptions;
use crate::server::{lock, Shared};
use crate::session::{Delivery, Outbound, Session};
use crate::topic_alias::OutboundAliases;
use crate::transport::{Reader, Transport, Writer};

/// Bytes gathered before a write to the socket.
const WRITE_BATCH: usize = 64 << 10;
/// Most messages read from the log at once for a session catching up.
const REPLAY_BATCH: usize = 512;
/// Most streams read at once (merged in publish order) for a session catching up.
const REPLAY_STREAMS: usize = 32;

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT (v5: with this reason).
    Graceful(ReasonCode),
    /// The peer closed the socket or it failed.
    Closed(String),
    /// We close it with this reason (protocol error, keep alive, takeover, shutdown...).
    Refused(ReasonCode, String),
}

/// Work waiting for the log: answered, in arrival order, once its appends are durable.
struct PendingAck {
    /// The message's own append: its offset is the message's place in its topic's stream.
    message: Option<MessageAppend>,
    offset: Option<u64>,
    /// Other appends it waits for (retained copy, session records).
    done: Vec<Completion<u64>>,
    /// When the appends were issued (for the append latency histogram).
    issued: Instant,
    then: AfterDurable,
}

/// The append of a received message.
enum MessageAppend {
    /// Issued at once.
    Now(Completion<u64>),
    /// Issued by a task once what must come first is done: the inbound QoS 2 intent is
    /// durable, or the topic's stream is created (off the runtime's threads: it waits for
    /// an fsync). The task lets it go ahead of the pending queue's head, so the appends of
    /// many PUBLISHes still share group commits.
    Chained(tokio::task::JoinHandle<Result<u64, promptmq_wal::Error>>),
}

enum AfterDurable {
    /// A QoS 1/2 PUBLISH: route it, then PUBACK / PUBREC. `intent`: the inbound QoS 2
    /// record of a persistent session, written before the message.
    /// `early`: the sessions offered it before it was durable (QoS 1).
    Publish { msg: Arc<Message>, packet_id: u16, intent: Option<InboundIntent>, early: EarlyRoute },
    /// A SUBSCRIBE or UNSUBSCRIBE of a persistent session: its acknowledgement, and the
    /// retained messages to send after it.
    Reply { packet: Box<Packet>, retained: Vec<Delivery> },
}

struct Conn {
    shared: Arc<Shared>,
    rd: Reader,
    wr: Writer,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: ProtocolVersion,
    client_id: Arc<str>,
    peer: SocketAddr,
    session: Arc<Mutex<Session>>,
    wake: Arc<Notify>,
    generation: u64,
    /// 1.5 × the keep alive: how long the client may stay silent.
    keep_alive: Option<Duration>,
    /// When the client last sent anything: the keep-alive clock runs from here, whatever
    /// else wakes the connection meanwhile.
    last_heard: tokio::time::Instant,
    client_receive_max: usize,
    client_max_packet: usize,
    aliases: HashMap<u16, ByteStr>,
    out_aliases: OutboundAliases,
    pending: VecDeque<PendingAck>,
    /// QoS 0 messages of the current read, routed together once it is handled.
    qos0: Vec<Arc<Message>>,
    /// Appends of the current read's QoS 1/2 messages, submitted together once it is
    /// handled (one write for all of them), or before any other append of this connection
    /// so that the log keeps the publisher's order.
    appends: Option<promptmq_wal::Batch>,
    /// Packets to send, in order, each once the log record it waits for (if any) is durable.
    outbox: VecDeque<(Option<Completion<u64>>, Packet)>,
    /// Fires when the latest chained append (see `chain`) has been issued.
    issue_order: Option<oneshot::Receiver<()>>,
    username: Option<String>,
    /// This client's ACL rules (`None`: no ACL file, everything allowed), as of
    /// `auth_generation`.
    acl: Option<Arc<ClientAcl>>,
    auth_generation: u64,
    /// Boxed: most clients have none, and inline it would be 400 bytes of every connection.
    will: Option<Box<Will>>,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: Transport,
    peer: SocketAddr,
    identity: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The handshake runs boxed: its locals (the first packet, the CONNECT, `accept`'s
    // future: about 3 KB) take heap only while it runs, instead of sizing every connection's
    // task for its whole life (what 10 000 idle clients cost). `finish` likewise.
    let Some((mut conn, mut kick_rx)) = Box::pin(handshake(shared.clone(), stream, peer, identity)).await else {
        return;
    };
    shared.stats.clients_connected.fetch_add(1, Ordering::Relaxed);
    shared.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    let end = conn.run(&mut kick_rx, &mut shutdown).await;
    shared.stats.clients_connected.fetch_sub(1, Ordering::Relaxed);
    Box::pin(conn.finish(end)).await;
}

/// Reads the CONNECT (within the connect timeout) and accepts or refuses it.
async fn handshake(
    shared: Arc<Shared>,
    stream: Transport,
    peer: SocketAddr,
    identity: Option<String>,
) -> Option<(Conn, oneshot::Receiver<ReasonCode>)> {
    let (mut rd, mut wr) = stream.split();
    let mut rbuf = BytesMut::new();
    let max = shared.limits.max_packet_size();
    let connect_timeout = shared.limits.connect_timeout();
    let first = tokio::time::timeout(connect_timeout, async {
        loop {
            match decode(&mut rbuf, None, max) {
                Ok(Some(p)) => return Ok(Some(p)),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            match rd.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    })
    .await;
    let connect = match first {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => {
            tracing::info!(%peer, reason = %e, "connection refused before CONNECT completed");
            if let DecodeError::UnsupportedProtocol { .. } = e {
                refuse_unsupported(&mut wr).await;
            }
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "no complete CONNECT within {connect_timeout:?}; closing");
            return None;
        }
    };
    let mut connect = *connect;
    let certified = identity.is_some();
    if let Some(cn) = identity {
        // The verified certificate names the user; the CONNECT's username does not count.
        connect.username = Some(cn);
    }
    accept(shared, rd, wr, rbuf, peer, connect, certified).await
}

/// Answers a CONNECT for an unsupported protocol level with CONNACK 0x01 (3.1.1) / 0x84 (v5).
async fn refuse_unsupported(wr: &mut Writer) {
    // The client's version is unknown by definition; 3.1.1's form is the one every client
    // version parses (spec 3.1.2.2, Mosquitto does the same).
    let _ = wr.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
}

/// Handles CONNECT: client id rules, session takeover or resumption, CONNACK.
async fn accept(
    shared: Arc<Shared>,
    rd: Reader,
    mut wr: Writer,
    rbuf: BytesMut,
    peer: SocketAddr,
    c: Connect,
    certified: bool,
) -> Option<(Conn, oneshot::Receiver<ReasonCode>)> {
    let v5 = c.protocol.is_v5();
    let refuse = |code: ReasonCode| {
        Packet::ConnAck(ConnAck { session_present: false, code, v3_code: None, properties: Properties::default() })
    };
    let mut out = BytesMut::new();
    if c.properties.authentication_method.is_some() {
        let _ = encode(&refuse(ReasonCode::BadAuthenticationMethod), c.protocol, &mut out);
        let _ = wr.write_all(&out).await;
        return None;
    }
    let mut assigned = None;
    let client_id: Arc<str> = if c.client_id.is_empty() {
        if !v5 && !c.clean_start {
            // 3.1.1: an empty id requires clean session [MQTT-3.1.3-8].
            let _ = encode(&refuse(ReasonCode::ClientIdentifierNotValid), c.protocol, &mut out);
            let _ = wr.write_all(&out).await;
            tracing::info!(%peer, "refused: empty client id without clean session");
            return None;
        }
        let id = format!("auto-{:x}-{}", std::process::id(), shared.next_client.fetch_add(1, Ordering::Relaxed));
        assigned = Some(id.clone());
        Arc::from(id)
    } else {
        Arc::from(c.client_id.as_str())
    };
    // Authentication (the password check is slow on purpose: off the runtime's threads).
    let auth = shared.auth.read().unwrap_or_else(|p| p.into_inner()).clone();
    let auth_generation = shared.auth_generation.load(Ordering::Acquire);
    let username = c.username.clone();
    let refused = match (&username, &auth.passwords) {
        (None, _) if !auth.allow_anonymous => Some((ReasonCode::NotAuthorized, "anonymous clients are not allowed")),
        // The username came from a verified client certificate.
        (Some(_), _) if certified => None,
        (Some(user), Some(_)) => {
            let (a, user, pw) = (auth.clone(), user.clone(), c.password.clone().unwrap_or_default());
            let ok = tokio::task::spawn_blocking(move || a.passwords.as_ref().is_some_and(|p| p.verify(&user, &pw)))
                .await
                .unwrap_or(false);
            (!ok).then_some((ReasonCode::BadUserNameOrPassword, "bad username or password"))
        }
        _ => None,
    };
    let acl = auth.acl.as_ref().map(|a| Arc::new(a.for_client(username.as_deref(), &client_id)));
    let refused = refused.or_else(|| match (&c.will, &acl) {
        (Some(w), Some(acl)) if !acl.may_publish(w.topic.as_str()) => {
            Some((ReasonCode::NotAuthorized, "the will topic is not allowed by the ACL"))
        }
        _ => None,
    });
    if let Some((code, why)) = refused {
        let _ = encode(&refuse(code), c.protocol, &mut out);
        let _ = wr.write_all(&out).await;
        tracing::info!(client = %client_id, %peer, user = username.as_deref().unwrap_or(""), "refused: {why}");
        return None;
    }
    let expiry = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0).min(shared.limits.max_session_expiry())
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };

    // Take over or resume the session.
    let (session, session_present, generation, kick_rx) = {
        let mut sessions = lock(&shared.sessions);
        let existing = sessions.get(client_id.as_ref()).cloned();
        let reuse = existing.filter(|_| !c.clean_start);
        if let Some(old) = sessions.get(client_id.as_ref()) {
            let mut o = lock(old);
            if let Some(k) = o.kick.take() {
                let _ = k.send(ReasonCode::SessionTakenOver);
            }
            if c.clean_start {
                let subs: Vec<String> = o.subs.keys().cloned().collect();
                drop(o);
                let mut router = lock(&shared.router);
                for f in subs {
                    router.unsubscribe(&client_id, &f);
                }
            }
        }
        let present = reuse.is_some();
        let session = reuse.unwrap_or_else(|| Arc::new(Mutex::new(Session::new())));
        // The kick channel is installed under the sessions lock, before CONNACK: a takeover
        // that races with this CONNECT always finds a connection it can close.
        let (kick_tx, kick_rx) = oneshot::channel();
        let generation = {
            let mut s = lock(&session);
            s.generation += 1;
            s.connected = true;
            s.expiry = expiry;
            s.kick = Some(kick_tx);
            s.client_id = Some(client_id.clone());
            s.generation
        };
        sessions.insert(client_id.to_string(), session.clone());
        (session, present, generation, kick_rx)
    };
    // Not awaited: until the client subscribes, the record only holds the expiry.
    drop(shared.save_session(&client_id, &mut lock(&session)));

    let mut keep_alive = c.keep_alive;
    let mut props = Properties::default();
    let max_keep_alive = shared.limits.max_keep_alive();
    if keep_alive > max_keep_alive {
        keep_alive = max_keep_alive;
        props.server_keep_alive = Some(keep_alive);
    }
    if v5 {
        props.receive_maximum = Some(shared.limits.receive_maximum());
        props.maximum_packet_size = u32::try_from(shared.limits.max_packet_size()).ok();
        props.topic_alias_maximum = Some(shared.limits.topic_alias_maximum());
        props.retain_available = Some(1);
        props.wildcard_subscription_available = Some(1);
        props.subscription_identifier_available = Some(1);
        props.shared_subscription_available = Some(1);
        props.assigned_client_identifier = assigned;
        if expiry != c.properties.session_expiry_interval.unwrap_or(0) {
            props.session_expiry_interval = Some(expiry);
        }
    }
    let ack = Packet::ConnAck(ConnAck { session_present, code: ReasonCode::Success, v3_code: None, properties: props });
    if encode(&ack, c.protocol, &mut out).is_err() || wr.write_all(&out).await.is_err() {
        // The client went away before its CONNACK: the session is not connected after all.
        {
            let mut s = lock(&session);
            if s.generation == generation {
                s.connected = false;
                s.kick = None;
            }
        }
        end_session_later(shared.clone(), client_id, session, generation, expiry);
        return None;
    }
    tracing::info!(client = %client_id, %peer, version = ?c.protocol, clean = c.clean_start, session_present, "client connected");
    let wake = lock(&session).wake.clone();
    Some((
        Conn {
            shared: shared.clone(),
            rd,
            wr,
            rbuf,
            wbuf: BytesMut::new(),
            version: c.protocol,
            client_id,
            peer,
            session,
            wake,
            generation,
            keep_alive: (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500)),
            last_heard: tokio::time::Instant::now(),
            client_receive_max: (c.properties.receive_maximum.unwrap_or(u16::MAX) as usize)
                .min(shared.limits.max_inflight().max(1)),
            client_max_packet: c.properties.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
            aliases: HashMap::new(),
            qos0: Vec::new(),
            appends: None,
            out_aliases: OutboundAliases::new(if v5 { c.properties.topic_alias_maximum.unwrap_or(0) } else { 0 }),
            pending: VecDeque::new(),
            outbox: VecDeque::new(),
            issue_order: None,
            username,
            acl,
            auth_generation,
            will: c.will.map(Box::new),
        },
        kick_rx,
    ))
}

impl Conn {
    fn v5(&self) -> bool {
        self.version.is_v5()
    }

    /// The client's ACL, recomputed if the configuration was reloaded since.
    fn acl(&mut self) -> Option<Arc<ClientAcl>> {
        let current = self.shared.auth_generation.load(Ordering::Acquire);
        if current != self.auth_generation {
            let auth = self.shared.auth.read().unwrap_or_else(|p| p.into_inner()).clone();
            self.acl = auth.acl.as_ref().map(|a| Arc::new(a.for_client(self.username.as_deref(), &self.client_id)));
            self.auth_generation = current;
        }
        self.acl.clone()
    }

    fn queue_packet(&mut self, p: &Packet) -> Result<(), End> {
        encode(p, self.version, &mut self.wbuf)
            .map_err(|e| End::Refused(ReasonCode::ImplementationSpecificError, e.to_string()))
    }

    async fn write_out(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.shared.stats.bytes_sent.fetch_add(self.wbuf.len() as u64, Ordering::Relaxed);
        let limit = self.shared.limits.write_timeout();
        let r = tokio::time::timeout(limit, self.wr.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        match r {
            Ok(r) => r.map_err(|e| End::Closed(e.to_string())),
            // Its messages stay in the log (persistent sessions keep their positions).
            Err(_) => Err(End::Refused(
                ReasonCode::QuotaExceeded,
                format!("slow client: it read nothing for {limit:?} (limits.write_timeout_secs)"),
            )),
        }
    }

    async fn run(&mut self, kick: &mut oneshot::Receiver<ReasonCode>, shutdown: &mut watch::Receiver<bool>) -> End {
        // A resumed session first resends what was in flight [MQTT-4.4.0-1].
        if let Err(e) = self.resend_inflight() {
            return e;
        }
        // Packets that came in with the CONNECT: a client need not wait for CONNACK.
        if let Err(e) = self.handle_input() {
            return e;
        }
        loop {
            let more_in_log = match self.replay_step().await {
                Ok(more) => more,
                Err(e) => return e,
            };
            let more_in_log = match self.replay_groups_step().await {
                Ok(more) => more || more_in_log,
                Err(e) => return e,
            };
            let more_queued = match self.fill_from_queue() {
                Ok(more) => more,
                Err(e) => return e,
            };
            if let Err(e) = self.flush_outbox() {
                return e;
            }
            if let Err(e) = self.write_out().await {
                return e;
            }
            let silent_until = self.keep_alive.map(|k| self.last_heard + k);
            let has_pending = !self.pending.is_empty();
            let outbox_waits = self.outbox.front().is_some_and(|(c, _)| c.is_some());
            tokio::select! {
                biased;
                r = &mut *kick => {
                    let code = r.unwrap_or(ReasonCode::SessionTakenOver);
                    return End::Refused(code, "session taken over by a new connection".into());
                }
                _ = shutdown.changed() => return End::Refused(ReasonCode::ServerShuttingDown, "server shutting down".into()),
                res = wait_head(&mut self.pending), if has_pending => {
                    if let Err(e) = self.complete_head(res) {
                        return e;
                    }
                    // A group commit makes many appends durable at once: answer every one
                    // already done in the same write, not one send per acknowledgement.
                    while !self.pending.is_empty() {
                        let Some(res) = wait_head(&mut self.pending).now_or_never() else { break };
                        if let Err(e) = self.complete_head(res) {
                            return e;
                        }
                    }
                }
                failed = wait_outbox(&mut self.outbox), if outbox_waits => {
                    if let Some(e) = failed {
                        // Sent all the same: delivery matters more; only a crash before the
                        // next record could then repeat this QoS 2 message.
                        tracing::warn!(client = %self.client_id, error = %e, "QoS 2 delivery state not stored");
                    }
                }
                _ = self.wake.notified() => {}
                n = read_some(&mut self.rd, &mut self.rbuf, silent_until) => {
                    match n {
                        Ok(0) => return End::Closed("peer closed the connection".into()),
                        Ok(n) => {
                            self.last_heard = tokio::time::Instant::now();
                            self.shared.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            if let Err(e) = self.handle_input() {
                                return e;
                            }
                        }
                        Err(e) => return e,
                    }
                }
                // Catching up from the log, or a full batch written with more queued: go round
                // again at once, after anything ready above.
                _ = std::future::ready(()), if more_in_log || more_queued => {}
            }
        }
    }

    /// Decodes and handles every whole packet in the read buffer.
    fn handle_input(&mut self) -> Result<(), End> {
        let handled = self.handle_packets();
        // Received before whatever ended the connection: stored and routed all the same.
        self.submit_appends();
        self.route_qos0();
        handled
    }

    /// Hands this read's batched appends to the log (see `appends`).
    fn submit_appends(&mut self) {
        if let Some(b) = self.appends.take() {
            b.submit();
        }
    }

    fn handle_packets(&mut self) -> Result<(), End> {
        loop {
            let p = match decode(&mut self.rbuf, Some(self.version), self.shared.limits.max_packet_size()) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::Refused(e.reason_code(), e.to_string())),
            };
            // Any other packet may depend on the QoS 0 messages before it having been
            // routed (a QoS 1 message on the same topic, an UNSUBSCRIBE): route them first.
            if !matches!(&p, Packet::Publish(x) if x.qos == QoS::AtMostOnce && !x.retain) {
                self.route_qos0();
            }
            // Anything but a PUBLISH may append too (session records): the batch goes first.
            if !matches!(&p, Packet::Publish(_)) {
                self.submit_appends();
            }
            self.handle(p)?;
        }
    }

    /// Routes the QoS 0 messages gathered from the read buffer, together (see
    /// [`Shared::route_all`]).
    fn route_qos0(&mut self) {
        if !self.qos0.is_empty() {
            self.shared.route_all(&self.qos0);
            self.qos0.clear();
        }
    }

    fn handle(&mut self, p: Packet) -> Result<(), End> {
        match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(r) => {
                let mut s = lock(&self.session);
                if let Some(Outbound::Publish(d)) = s.take_inflight(r.packet_id) {
                    self.shared.finished(&mut s, d.logged(), d.shared.as_deref());
                }
                Ok(())
            }
            Packet::PubRec(r) => {
                let mut s = lock(&self.session);
                match s.take_inflight(r.packet_id) {
                    Some(Outbound::Publish(d)) if (r.code as u8) < 0x80 => {
                        let logged = d.logged().map(|(t, o)| (Arc::from(t), o));
                        // PUBREL goes out only once "released" is durable: after a restart
                        // the broker then never sends this PUBLISH again.
                        let stored = match (&logged, s.persistent()) {
                            (Some((t, o)), true) => {
                                let state = Some((r.packet_id, Qos2State::Released));
                                let via = d.shared.as_deref();
                                Some(self.shared.save_outbound_via(&self.client_id, s.incarnation, t, *o, state, via))
                            }
                            _ => None,
                        };
                        s.inflight.push_back((r.packet_id, Outbound::Released(logged, d.shared.clone())));
                        drop(s);
                        self.send_after(stored, Packet::PubRel(PubResp::ok(r.packet_id)))?;
                    }
                    // The client refused it: the exchange is over.
                    Some(Outbound::Publish(d)) => {
                        if let (Some((t, o)), true) = (d.logged(), s.persistent()) {
                            self.shared.qos2_complete(&self.client_id, &mut s, r.packet_id, t, o, d.shared.as_deref());
                        }
                        self.shared.finished(&mut s, d.logged(), d.shared.as_deref())
                    }
                    Some(other) => s.inflight.push_front((r.packet_id, other)),
                    None => {}
                }
                Ok(())
            }
            Packet::PubComp(r) => {
                let mut s = lock(&self.session);
                match s.take_inflight(r.packet_id) {
                    Some(Outbound::Released(logged, shared)) => {
                        if let (Some((t, o)), true) = (&logged, s.persistent()) {
                            // Not waited for: if lost, the restarted broker resends PUBREL,
                            // which the client answers whether it remembers the id or not.
                            self.shared.qos2_complete(&self.client_id, &mut s, r.packet_id, t, *o, shared.as_deref());
                        }
                        self.shared.finished(&mut s, logged.as_ref().map(|(t, o)| (t.as_ref(), *o)), shared.as_deref())
                    }
                    Some(other) => s.inflight.push_front((r.packet_id, other)),
                    None => {}
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let (known, released) = {
                    let mut s = lock(&self.session);
                    let known = s.inbound_qos2.remove(&r.packet_id);
                    let released = (known && s.persistent())
                        .then(|| self.shared.save_inbound(&self.client_id, s.incarnation, r.packet_id, None));
                    (known, released)
                };
                let code = if known || !self.v5() { ReasonCode::Success } else { ReasonCode::PacketIdentifierNotFound };
                // PUBCOMP only once the release is durable: with its PUBCOMP the client may use
                // the id again, and a broker restarted with the intent still on record would
                // take the next PUBLISH with that id for a resend and not store it.
                let comp = PubResp { packet_id: r.packet_id, code, properties: Properties::default() };
                self.send_after(released, Packet::PubComp(comp))
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => self.queue_packet(&Packet::PingResp),
            Packet::Disconnect(d) => {
                if self.v5() {
                    if let Some(e) = d.properties.session_expiry_interval {
                        let mut s = lock(&self.session);
                        if s.expiry == 0 && e != 0 {
                            // [MQTT-3.14.2-2]
                            return Err(End::Refused(
                                ReasonCode::ProtocolError,
                                "session expiry set on DISCONNECT after 0 on CONNECT".into(),
                            ));
                        }
                        s.expiry = e.min(self.shared.limits.max_session_expiry());
                        drop(self.shared.save_session(&self.client_id, &mut s));
                    }
                }
                Err(End::Graceful(d.code))
            }
            Packet::Auth(_) => {
                Err(End::Refused(ReasonCode::ProtocolError, "AUTH without an authentication method".into()))
            }
            other => Err(End::Refused(ReasonCode::ProtocolError, format!("{} is not sent by clients", other.name()))),
        }
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), End> {
        self.shared.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.received_qos[p.qos as usize].fetch_add(1, Ordering::Relaxed);
        if !p.properties.subscription_identifiers.is_empty() {
            // [MQTT-3.3.4-6]
            return Err(End::Refused(
                ReasonCode::ProtocolError,
                "PUBLISH from a client with a subscription identifier".into(),
            ));
        }
        let topic = match p.properties.topic_alias {
            Some(a) if a > self.shared.limits.topic_alias_maximum() => {
                return Err(End::Refused(ReasonCode::TopicAliasInvalid, format!("topic alias {a} above the maximum")))
            }
            Some(a) if p.topic.is_empty() => match self.aliases.get(&a) {
                Some(t) => t.clone(),
                None => return Err(End::Refused(ReasonCode::ProtocolError, format!("unknown topic alias {a}"))),
            },
            Some(a) => {
                self.aliases.insert(a, p.topic.clone());
                p.topic.clone()
            }
            None => p.topic.clone(),
        };
        let denied = self.acl().is_some_and(|acl| !acl.may_publish(topic.as_str()));
        // Clients may not publish into the broker's namespace (Mosquitto drops these too).
        if topic.starts_with('$') || denied {
            self.shared.stats.publishes_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %self.client_id, %topic, "PUBLISH not authorized");
            return self.ack_publish(&p, ReasonCode::NotAuthorized);
        }
        let qos = p.qos;
        let packet_id = p.packet_id;
        let retain = p.retain;
        let mut p = p;
        let cap = self.shared.limits.max_message_expiry();
        if cap > 0 {
            // Messages without an expiry get the cap too: nothing waits for a client forever.
            let e = p.properties.message_expiry_interval.get_or_insert(cap);
            *e = (*e).min(cap);
        }
        let msg = Arc::new(Message::from_publish(p, topic, self.client_id.clone()));
        match (qos, packet_id) {
            (QoS::AtMostOnce, _) => {
                // QoS 0 promises nothing: the appends go ahead without anyone waiting for them.
                if retain || self.shared.cfg.persist_qos0 {
                    self.submit_appends();
                }
                if retain {
                    drop(self.shared.store.set_retained(&msg));
                    self.shared.set_retained(&msg);
                }
                if self.shared.cfg.persist_qos0 {
                    drop(self.shared.store.append(&msg));
                }
                if retain {
                    self.shared.route(&msg, None);
                } else {
                    // Routed with the rest of this read's QoS 0 messages (`handle_packets`).
                    self.qos0.push(msg);
                }
                Ok(())
            }
            (_, Some(id)) => {
                if qos == QoS::ExactlyOnce && lock(&self.session).inbound_qos2.contains(&id) {
                    // A resent PUBLISH we already stored: acknowledge again, do not route again.
                    return self.queue_packet(&Packet::PubRec(PubResp::ok(id)));
                }
                let in_flight = self.pending.len() + lock(&self.session).inbound_qos2.len();
                if in_flight >= self.shared.limits.receive_maximum() as usize {
                    return Err(End::Refused(ReasonCode::ReceiveMaximumExceeded, "receive maximum exceeded".into()));
                }
                let mut done = Vec::new();
                if retain {
                    self.submit_appends();
                    done.push(self.shared.store.set_retained(&msg));
                }
                let (incarnation, persistent) = {
                    let s = lock(&self.session);
                    (s.incarnation, s.persistent())
                };
                let (message, intent) = if qos == QoS::ExactlyOnce && persistent {
                    // Exactly once across a crash: an intent naming the message's stamp is
                    // made durable first, the message appended after it. A restarted broker
                    // finds the stamp in the log (the id stands; a resend is acknowledged)
                    // or not (the id is forgotten; the resend is stored).
                    let stamp = crate::message::new_stamp();
                    let intent = InboundIntent {
                        pid: id,
                        topic: msg.topic.to_string(),
                        from: self.shared.store.topic_end(msg.topic.as_str()),
                        stamp,
                        offset: None,
                    };
                    self.submit_appends();
                    let written = self.shared.save_inbound(&self.client_id, incarnation, id, Some(&intent));
                    let (store, m) = (self.shared.store.clone(), msg.clone());
                    let (store2, m2) = (store.clone(), msg.clone());
                    let before = async move {
                        written.await?;
                        ensure_topic(&store, &m).await
                    };
                    (self.chain(before, move || store2.append_stamped(&m2, stamp)), Some(intent))
                } else if let Some(stream) =
                    (!self.chain_pending()).then(|| self.shared.store.topic_stream(msg.topic.as_str())).flatten()
                {
                    let store = &self.shared.store;
                    let batch = self.appends.get_or_insert_with(|| store.batch());
                    (MessageAppend::Now(store.append_to_batch(batch, &stream, &msg)), None)
                } else {
                    self.submit_appends();
                    let (store, m) = (self.shared.store.clone(), msg.clone());
                    let (store2, m2) = (store.clone(), msg.clone());
                    let before = async move { ensure_topic(&store, &m).await };
                    (self.chain(before, move || store2.append(&m2)), None)
                };
                // Issued: live subscribers that would lose nothing in a crash get a QoS 1
                // message now, not once it is durable (see `early_delivery`).
                let early = if qos == QoS::AtLeastOnce { self.shared.route_early(&msg) } else { EarlyRoute::default() };
                let then = AfterDurable::Publish { msg, packet_id: id, intent, early };
                let issued = Instant::now();
                self.pending.push_back(PendingAck { message: Some(message), offset: None, done, issued, then });
                Ok(())
            }
            (_, None) => Err(End::Refused(ReasonCode::ProtocolError, "QoS > 0 without packet id".into())),
        }
    }

    /// The head of the pending queue is durable (or failed): route it and acknowledge.
    fn complete_head(&mut self, res: Result<(), promptmq_wal::Error>) -> Result<(), End> {
        let Some(head) = self.pending.pop_front() else { return Ok(()) };
        let offset = head.offset;
        if matches!(head.then, AfterDurable::Publish { .. }) {
            self.shared.timers.append.record(head.issued.elapsed().as_secs_f64());
        }
        let (msg, packet_id, intent, early) = match head.then {
            AfterDurable::Publish { msg, packet_id, intent, early } => (msg, packet_id, intent, early),
            AfterDurable::Reply { packet, retained } => {
                if let Err(e) = res {
                    // The subscription works now but may not survive a restart: say so.
                    tracing::warn!(client = %self.client_id, error = %e, "session record not stored");
                }
                return self.reply_then_retained(&packet, retained);
            }
        };
        let code = match res {
            Ok(()) => {
                if msg.retain {
                    self.shared.set_retained(&msg);
                }
                self.shared.route_durable(&msg, offset, early);
                if msg.qos == QoS::ExactlyOnce {
                    lock(&self.session).inbound_qos2.insert(packet_id);
                }
                if let Some(mut i) = intent {
                    // Saves a restarted broker the search for the stamp.
                    i.offset = offset;
                    self.save_inbound(packet_id, Some(&i));
                }
                ReasonCode::Success
            }
            Err(e) => {
                if intent.is_some() {
                    // Not stored: a new message reusing the id must not be taken for a resend.
                    self.save_inbound(packet_id, None);
                }
                tracing::warn!(client = %self.client_id, error = %e, "message not stored; refusing it");
                if !self.v5() {
                    // 3.1.1 has no way to say "not stored": close so the client resends.
                    return Err(End::Refused(ReasonCode::UnspecifiedError, format!("storage failed: {e}")));
                }
                if e.is_disk_full() {
                    ReasonCode::QuotaExceeded
                } else {
                    ReasonCode::ImplementationSpecificError
                }
            }
        };
        let resp = PubResp { packet_id, code, properties: Properties::default() };
        self.queue_packet(&publish_ack(msg.qos, resp))
    }

    /// Sends a (UN)SUBACK, then queues the retained messages the subscription brings.
    fn reply_then_retained(&mut self, packet: &Packet, retained: Vec<Delivery>) -> Result<(), End> {
        self.queue_packet(packet)?;
        let mut sess = lock(&self.session);
        for d in retained {
            if !sess.enqueue(d, self.shared.limits.queue()) {
                self.shared.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Answers with `packet` once the session record is durable (persistent sessions), or
    /// at once; in arrival order behind any PUBLISH still waiting for the log.
    fn reply_when_durable(&mut self, packet: Packet, retained: Vec<Delivery>) -> Result<(), End> {
        let saved = self.shared.save_session(&self.client_id, &mut lock(&self.session));
        match saved {
            Some(c) => {
                let packet = Box::new(packet);
                self.pending.push_back(PendingAck {
                    message: None,
                    offset: None,
                    issued: Instant::now(),
                    done: vec![c],
                    then: AfterDurable::Reply { packet, retained },
                });
                Ok(())
            }
            None if self.pending.is_empty() => self.reply_then_retained(&packet, retained),
            None => {
                let packet = Box::new(packet);
                self.pending.push_back(PendingAck {
                    message: None,
                    offset: None,
                    issued: Instant::now(),
                    done: Vec::new(),
                    then: AfterDurable::Reply { packet, retained },
                });
                Ok(())
            }
        }
    }

    /// Whether an append chained behind something (an intent, a stream creation) has not
    /// been issued yet: a later append must then wait for it, or the publisher's messages
    /// would reach the log out of order.
    fn chain_pending(&mut self) -> bool {
        let Some(rx) = self.issue_order.as_mut() else { return false };
        match rx.try_recv() {
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            _ => {
                self.issue_order = None;
                false
            }
        }
    }

    /// An append issued by a task once `before` is done and every earlier chained append of
    /// this connection is issued (the publisher's order is the log's order).
    fn chain<B, A>(&mut self, before: B, append: A) -> MessageAppend
    where
        B: std::future::Future<Output = Result<(), promptmq_wal::Error>> + Send + 'static,
        A: FnOnce() -> Completion<u64> + Send + 'static,
    {
        let previous = self.issue_order.take();
        let (issued, rx) = oneshot::channel();
        self.issue_order = Some(rx);
        MessageAppend::Chained(tokio::spawn(async move {
            let ready = before.await;
            if let Some(p) = previous {
                // Fires when the earlier append is issued, or its task is gone.
                let _ = p.await;
            }
            let completion = ready.map(|()| append());
            let _ = issued.send(());
            completion?.await
        }))
    }

    /// Stores the inbound QoS 2 ids awaiting PUBREL of a persistent session (not waited for:
    /// an id stored late only matters if the broker stops before, and then the client's
    /// PUBREL is answered all the same).
    fn save_inbound(&self, pid: u16, intent: Option<&InboundIntent>) {
        let s = lock(&self.session);
        if s.persistent() {
            drop(self.shared.save_inbound(&self.client_id, s.incarnation, pid, intent));
        }
    }

    /// Reads the next part of the session's backlog from the log into its queue: the streams
    /// it is behind in, merged in publish order (see `positions` and `replay`). Returns
    /// whether more is left to read.
    async fn replay_step(&mut self) -> Result<bool, End> {
        let max = self.shared.limits.queue().messages;
        let (wanted, room) = {
            let s = lock(&self.session);
            // Leave room for what the client is sent live meanwhile.
            if s.queue.len() >= max / 2 {
                return Ok(false);
            }
            let w: Vec<(String, u64)> =
                s.positions.replays(REPLAY_STREAMS).into_iter().map(|(t, f)| (t.to_owned(), f)).collect();
            if w.is_empty() {
                return Ok(false);
            }
            (w, (max - s.queue.len()).min(REPLAY_BATCH))
        };
        let (streams, records, reached) = self.read_backlog(wanted, room, "a session").await?;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut s = lock(&self.session);
        let mut taken: Vec<Vec<u64>> = vec![Vec::new(); streams.len()];
        for (i, r) in records {
            let topic = streams[i].0.as_str();
            if s.positions.handed(topic, r.offset) {
                continue;
            }
            let age = Duration::from_millis(now_ms.saturating_sub(r.timestamp_ms));
            // Expired (or unreadable, which the log's checksum makes a bug, not damage).
            let Some(msg) = Message::from_record(r.payload, age) else { continue };
            let Some((qos, retain_as_published, ids)) = s.delivery_options(topic, &msg.publisher) else { continue };
            taken[i].push(r.offset);
            s.queue_push(Delivery {
                qos: msg.qos.min(qos),
                retain: msg.retain && retain_as_published,
                ids,
                shared: None,
                pos: Some(r.offset),
                msg: Arc::new(msg),
            });
        }
        let queued: usize = taken.iter().map(Vec::len).sum();
        self.shared.stats.messages_from_log.fetch_add(queued as u64, Ordering::Relaxed);
        for (i, (topic, from)) in streams.iter().enumerate() {
            // Taken under the session lock: a message routed after this is offered live.
            let end = self.shared.store.topic_end(topic);
            s.positions.replayed(topic, *from, &taken[i], reached[i], end);
        }
        Ok(s.positions.replaying())
    }

    /// Reads the streams in `wanted` from their offsets (about `budget` records in all) off
    /// the runtime's threads, and merges them in publish order: the streams read (topic,
    /// offset read from), the records in delivery order (by index into the streams), and
    /// where each stream continues. A read error ends the connection; the positions stay, so
    /// a later connection tries again.
    async fn read_backlog(
        &mut self,
        wanted: Vec<(String, u64)>,
        budget: usize,
        whose: &'static str,
    ) -> Result<(Vec<(String, u64)>, Vec<(usize, promptmq_wal::Record)>, Vec<u64>), End> {
        let per_stream = (budget / wanted.len().max(1)).max(16);
        let store = self.shared.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|(topic, from)| {
                    let (records, read_to) = store.read_topic(&topic, from, per_stream)?;
                    let complete = records.len() < per_stream;
                    Ok(Batch { topic, from, records, read_to, complete })
                })
                .collect::<Result<Vec<Batch>, crate::store::StoreError>>()
        })
        .await;
        let batches = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(client = %self.client_id, error = %e, "cannot read the log for {whose}");
                return Err(End::Refused(ReasonCode::UnspecifiedError, format!("cannot read the log: {e}")));
            }
            Err(e) => return Err(End::Refused(ReasonCode::UnspecifiedError, format!("log read task failed: {e}"))),
        };
        let streams: Vec<(String, u64)> = batches.iter().map(|b| (b.topic.clone(), b.from)).collect();
        // Stamps are nanoseconds; records of the first format fall back to the log's time.
        let order = |r: &promptmq_wal::Record| {
            Message::record_stamp(&r.payload).unwrap_or(r.timestamp_ms.saturating_mul(1_000_000))
        };
        let (records, reached) = replay::merge(batches, order);
        Ok((streams, records, reached))
    }

    /// Reads, for the shared subscription groups this client is a member of, messages the
    /// group has waiting in the log into this client's queue.
    async fn replay_groups_step(&mut self) -> Result<bool, End> {
        let limit = self.shared.limits.queue();
        let filters: Vec<(String, SubOptions)> = {
            let s = lock(&self.session);
            if s.queue.len() >= limit.messages / 2 {
                return Ok(false);
            }
            s.subs.iter().filter(|(f, _)| topic::parse_shared(f).is_some()).map(|(f, o)| (f.clone(), *o)).collect()
        };
        let mut more = false;
        for (filter, opts) in filters {
            let Some(group) = self.shared.group(&filter) else { continue };
            let wanted: Vec<(String, u64)> =
                lock(&group).replays(REPLAY_STREAMS).into_iter().map(|(t, f)| (t.to_owned(), f)).collect();
            if wanted.is_empty() {
                continue;
            }
            let (streams, records, reached) = self.read_backlog(wanted, REPLAY_BATCH, "a shared subscription").await?;
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            let shared_filter: Arc<str> = Arc::from(filter.as_str());
            let mut s = lock(&self.session);
            let mut g = lock(&group);
            let mut taken: Vec<Vec<u64>> = vec![Vec::new(); streams.len()];
            for (i, r) in records {
                let topic = streams[i].0.as_str();
                if g.handed(topic, r.offset) {
                    continue;
                }
                let age = Duration::from_millis(now_ms.saturating_sub(r.timestamp_ms));
                let Some(msg) = Message::from_record(r.payload, age) else { continue };
                taken[i].push(r.offset);
                s.queue_push(Delivery {
                    qos: msg.qos.min(opts.qos),
                    retain: false,
                    ids: opts.id.into_iter().collect(),
                    shared: Some(shared_filter.clone()),
                    pos: Some(r.offset),
                    msg: Arc::new(msg),
                });
            }
            let queued: usize = taken.iter().map(Vec::len).sum();
            self.shared.stats.messages_from_log.fetch_add(queued as u64, Ordering::Relaxed);
            for (i, (topic, from)) in streams.iter().enumerate() {
                let end = self.shared.store.topic_end(topic);
                g.replayed(topic, *from, &taken[i], reached[i], end);
            }
            more |= g.replaying();
        }
        Ok(more)
    }

    fn ack_publish(&mut self, p: &Publish, code: ReasonCode) -> Result<(), End> {
        let Some(id) = p.packet_id else { return Ok(()) };
        let code = if self.v5() { code } else { ReasonCode::Success };
        let resp = PubResp { packet_id: id, code, properties: Properties::default() };
        self.queue_packet(&publish_ack(p.qos, resp))
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut retained = Vec::new();
        let acl = self.acl();
        for sub in &s.subscriptions {
            if acl.as_ref().is_some_and(|a| !a.may_subscribe(&sub.filter)) {
                tracing::debug!(client = %self.client_id, filter = %sub.filter, "SUBSCRIBE not authorized");
                codes.push(ReasonCode::NotAuthorized);
                continue;
            }
            let opts =
                SubOptions { qos: sub.qos, no_local: sub.no_local, retain_as_published: sub.retain_as_published, id };
            let existed = lock(&self.shared.router).subscribe(&self.client_id, &sub.filter, opts);
            {
                let mut s = lock(&self.session);
                s.subs.insert(sub.filter.clone(), opts);
                self.shared.follow_new_subscription(&mut s, &sub.filter);
                self.shared.ensure_group(&sub.filter);
            }
            codes.push(match sub.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            let send_retained = match sub.retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscribe => !existed,
                RetainHandling::Never => false,
            };
            // Retained messages are not sent for shared subscriptions (v5 4.8.2).
            if send_retained && topic::parse_shared(&sub.filter).is_none() {
                for m in self.shared.retained_matching(&sub.filter) {
                    retained.push(Delivery {
                        qos: m.qos.min(sub.qos),
                        msg: m,
                        retain: true,
                        ids: id.into_iter().collect(),
                        shared: None,
                        pos: None,
                    });
                }
            }
        }
        let suback = Packet::SubAck(SubAck { packet_id: s.packet_id, properties: Properties::default(), codes });
        self.reply_when_durable(suback, retained)
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), End> {
        let mut codes = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let existed = lock(&self.shared.router).unsubscribe(&self.client_id, f);
            {
                let mut s = lock(&self.session);
                s.subs.remove(f);
                let filters: Vec<String> =
                    s.subs.keys().filter(|f| topic::parse_shared(f).is_none()).cloned().collect();
                s.positions.retain(|t| filters.iter().any(|f| topic::matches(f, t)));
            }
            codes.push(if existed { ReasonCode::Success } else { ReasonCode::NoSubscriptionExisted });
            self.shared.drop_group_if_unused(f);
        }
        let unsuback = Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, properties: Properties::default(), codes });
        self.reply_when_durable(unsuback, Vec::new())
    }

    /// Encodes one delivery, or `None` if it expired or is larger than the client accepts.
    fn publish_packet(&mut self, d: &Delivery, packet_id: Option<u16>, dup: bool) -> Option<Packet> {
        let Some(mut p) = d.msg.to_publish(d.qos, packet_id, d.retain, &d.ids, Instant::now()) else {
            self.shared.stats.dropped_expired.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        p.dup = dup;
        if !self.v5() {
            p.properties = Properties::default();
        }
        if publish_len(&p, self.version) > self.client_max_packet {
            // [MQTT-3.1.2-25]: never send a packet above the client's maximum; drop it.
            self.shared.stats.dropped_too_large.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // Packets are made in the order they go on the wire, so alias assignments made
        // here reach the client in order.
        self.out_aliases.apply(&mut p);
        Some(Packet::Publish(p))
    }

    fn resend_inflight(&mut self) -> Result<(), End> {
        let items: Vec<(u16, Outbound)> = lock(&self.session).inflight.iter().cloned().collect();
        for (pid, state) in items {
            match state {
                Outbound::Publish(d) => {
                    if let Some(p) = self.publish_packet(&d, Some(pid), true) {
                        self.queue_packet(&p)?;
                    }
                }
                Outbound::Released(..) => self.queue_packet(&Packet::PubRel(PubResp::ok(pid)))?,
            }
        }
        Ok(())
    }

    /// Moves queued deliveries into the write buffer, within the client's receive maximum.
    /// Returns whether more could be sent right away (the batch filled up first): the caller
    /// must come back without waiting for a new notification.
    fn fill_from_queue(&mut self) -> Result<bool, End> {
        let acl = self.acl();
        let session = self.session.clone();
        let mut s = lock(&session);
        // QoS 1 packet ids of a persistent session, stored in one batch for this round; the
        // first PUBLISH that needs them waits in the outbox at `q1_first` (and the rest
        // behind it) until the batch is durable.
        let mut q1_batch: Vec<(Vec<u8>, bytes::Bytes)> = Vec::new();
        let mut q1_first: Option<usize> = None;
        while self.wbuf.len() < WRITE_BATCH {
            let Some(front) = s.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && s.inflight.len() >= self.client_receive_max {
                break;
            }
            let Some(d) = s.queue_pop() else { break };
            let qos = d.qos;
            if acl.as_ref().is_some_and(|a| !a.may_receive(d.msg.topic.as_str())) {
                // A deny rule inside what the subscription covers.
                self.shared.finished(&mut s, d.logged(), d.shared.as_deref());
                continue;
            }
            let pid = if d.qos == QoS::AtMostOnce { None } else { s.alloc_pid(self.client_receive_max) };
            if d.qos != QoS::AtMostOnce && pid.is_none() {
                s.queue_push_front(d);
                break;
            }
            let Some(p) = self.publish_packet(&d, pid, false) else {
                // Expired, or too large for the client: it will never be sent.
                self.shared.finished(&mut s, d.logged(), d.shared.as_deref());
                continue;
            };
            // A QoS 1 or 2 PUBLISH of a persistent session goes out once its packet id is
            // stored with the message's position: a restarted broker, even after a crash,
            // resends it with that id [MQTT-4.4.0-1] (for QoS 2 the client then knows it),
            // never as a new message.
            let mut stored = None;
            let mut in_q1_batch = false;
            if let (Some(id), Some((t, o)), true) = (pid, d.logged(), s.persistent()) {
                let via = d.shared.as_deref();
                if d.qos == QoS::ExactlyOnce {
                    let state = Some((id, Qos2State::Published));
                    stored = Some(self.shared.save_outbound_via(&self.client_id, s.incarnation, t, o, state, via));
                } else {
                    q1_batch.push(crate::qos2_store::qos1_entry(&self.client_id, s.incarnation, id, t, o, via));
                    in_q1_batch = true;
                }
            }
            match pid {
                Some(id) => s.inflight.push_back((id, Outbound::Publish(d))),
                None => self.shared.finished(&mut s, d.logged(), d.shared.as_deref()),
            }
            if in_q1_batch && q1_first.is_none() {
                // Held in the outbox whatever is ahead of it; its completion comes below.
                q1_first = Some(self.outbox.len());
                self.outbox.push_back((None, p));
            } else {
                self.send_after(stored, p)?;
            }
            self.shared.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
            self.shared.stats.sent_qos[qos as usize].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(i) = q1_first {
            let stored = self.shared.save_qos1(std::mem::take(&mut q1_batch));
            if let Some(slot) = self.outbox.get_mut(i) {
                slot.0 = Some(stored);
            }
        }
        if s.persistent() && s.positions.dirty() {
            // Acknowledgements moved the position: saved within `positions_save_interval`,
            // which bounds what a crash makes the client receive again.
            self.shared.queue_position_save(&self.client_id, &session, &mut s);
        }
        let more = self.wbuf.len() >= WRITE_BATCH
            && s.queue.front().is_some_and(|f| f.qos == QoS::AtMostOnce || s.inflight.len() < self.client_receive_max);
        Ok(more)
    }

    /// Sends `p` once `stored` (if any) is durable, after everything already waiting.
    fn send_after(&mut self, stored: Option<Completion<u64>>, p: Packet) -> Result<(), End> {
        if stored.is_none() && self.outbox.is_empty() {
            self.queue_packet(&p)
        } else {
            self.outbox.push_back((stored, p));
            Ok(())
        }
    }

    /// Moves the packets at the head of the outbox that wait for nothing into the write buffer.
    fn flush_outbox(&mut self) -> Result<(), End> {
        while self.outbox.front().is_some_and(|(c, _)| c.is_none()) {
            if let Some((_, p)) = self.outbox.pop_front() {
                self.queue_packet(&p)?;
            }
        }
        Ok(())
    }

    /// Ends the connection: DISCONNECT if we close it (v5), will, session expiry.
    async fn finish(mut self, end: End) {
        let (graceful, reason) = match &end {
            End::Graceful(code) => (*code != ReasonCode::DisconnectWithWill, format!("client disconnected ({code:?})")),
            End::Closed(why) => (false, why.clone()),
            End::Refused(code, why) => {
                if self.v5() {
                    self.wbuf.clear();
                    let _ = encode(
                        &Packet::Disconnect(Disconnect { code: *code, properties: Properties::default() }),
                        self.version,
                        &mut self.wbuf,
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.write_all(&self.wbuf)).await;
                }
                (false, format!("{why} ({code:?})"))
            }
        };
        let _ = self.wr.shutdown().await;
        tracing::info!(client = %self.client_id, peer = %self.peer, %reason, "client disconnected");
        // Pending appends may still complete; their messages are durable but unacknowledged,
        // so the client resends them (QoS 1: possibly twice, as QoS 1 allows).
        let shared = self.shared.clone();
        let (still_ours, expiry) = {
            let mut s = lock(&self.session);
            let ours = s.generation == self.generation;
            if ours {
                s.connected = false;
                s.kick = None;
            }
            (ours, s.expiry)
        };
        if !graceful {
            if let Some(w) = self.will.take() {
                let delay = w.properties.will_delay_interval.unwrap_or(0).min(expiry);
                publish_will(shared.clone(), *w, self.client_id.clone(), self.session.clone(), self.generation, delay);
            }
        }
        if still_ours {
            end_session_later(shared, self.client_id.clone(), self.session.clone(), self.generation, expiry);
        }
    }
}

/// The acknowledgement of a received PUBLISH: PUBREC for QoS 2, PUBACK for QoS 1.
fn publish_ack(qos: QoS, resp: PubResp) -> Packet {
    if qos == QoS::ExactlyOnce {
        Packet::PubRec(resp)
    } else {
        Packet::PubAck(resp)
    }
}

/// Reads what the socket has. An idle connection holds no read buffer while it waits: the
/// buffer is released when empty and reserved only once the socket is readable, which is
/// most of the memory 10 000 idle clients would otherwise pin. Nothing by `silent_until`
/// (the keep-alive deadline) ends the connection.
async fn read_some(
    rd: &mut Reader,
    buf: &mut BytesMut,
    silent_until: Option<tokio::time::Instant>,
) -> Result<usize, End> {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
    let ready = match silent_until {
        Some(t) => match tokio::time::timeout_at(t, rd.readable()).await {
            Ok(r) => r,
            Err(_) => return Err(End::Refused(ReasonCode::KeepAliveTimeout, "keep alive timeout".into())),
        },
        None => rd.readable().await,
    };
    ready.map_err(|e| End::Closed(e.to_string()))?;
    buf.reserve(4096);
    // `read_buf` (not `try_read_buf`) so the read counts against tokio's cooperative budget:
    // a connection flooding us must yield to the others, or subscribers starve.
    rd.read_buf(buf).await.map_err(|e| End::Closed(e.to_string()))
}

/// Waits until every append of the oldest pending PUBLISH is durable. This future is
/// dropped and made again whenever another `select!` branch wins, so each completion is
/// removed the moment it resolves: a resolved completion must never be polled again.
async fn wait_head(pending: &mut VecDeque<PendingAck>) -> Result<(), promptmq_wal::Error> {
    let Some(head) = pending.front_mut() else { return Ok(()) };
    if let Some(m) = head.message.as_mut() {
        let r = match m {
            MessageAppend::Now(c) => c.await,
            MessageAppend::Chained(task) => match task.await {
                Ok(r) => r,
                // Cancelled: the runtime is shutting down, and the log with it.
                Err(_) => Err(promptmq_wal::Error::Closed),
            },
        };
        head.message = None;
        head.offset = Some(r?);
    }
    while let Some(c) = head.done.first_mut() {
        let r = c.await;
        head.done.remove(0);
        r?;
    }
    Ok(())
}

/// Waits until the record the outbox's head waits for is durable; returns its error, if any.
/// Like `wait_head`, the completion is cleared the moment it resolves.
async fn wait_outbox(outbox: &mut VecDeque<(Option<Completion<u64>>, Packet)>) -> Option<promptmq_wal::Error> {
    let (slot, _) = outbox.front_mut()?;
    let c = slot.as_mut()?;
    let r = c.await;
    *slot = None;
    r.err()
}

/// Creates the message's topic stream if it is new, off the async runtime.
async fn ensure_topic(store: &crate::store::Store, m: &Message) -> Result<(), promptmq_wal::Error> {
    if store.has_topic(m.topic.as_str()) {
        return Ok(());
    }
    let (store, topic) = (store.clone(), m.topic.to_string());
    // Cancelled only when the runtime shuts down, and the log with it.
    tokio::task::spawn_blocking(move || store.create_topic(&topic)).await.map_err(|_| promptmq_wal::Error::Closed)?
}

fn publish_will(
    shared: Arc<Shared>,
    w: Will,
    client: Arc<str>,
    session: Arc<Mutex<Session>>,
    generation: u64,
    delay: u32,
) {
    let msg = Arc::new(Message::from_publish(
        Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic.clone(),
            packet_id: None,
            properties: w.properties,
            payload: w.payload,
        },
        w.topic,
        client.clone(),
    ));
    tokio::spawn(async move {
        if delay > 0 {
            tokio::time::sleep(Duration::from_secs(delay as u64)).await;
            // A reconnect within the delay cancels the will [MQTT-3.1.3-9].
            if lock(&session).generation != generation {
                return;
            }
        }
        let mut offset = None;
        if msg.qos != QoS::AtMostOnce && ensure_topic(&shared.store, &msg).await.is_ok() {
            offset = shared.store.append(&msg).await.ok();
        }
        if msg.retain {
            let _ = shared.store.set_retained(&msg).await;
            shared.set_retained(&msg);
        }
        tracing::info!(client = %client, topic = %msg.topic, "will published");
        shared.route(&msg, offset);
    });
}

/// Removes the session when it expires, unless a new connection took it meanwhile.
pub(crate) fn end_session_later(
    shared: Arc<Shared>,
    client: Arc<str>,
    session: Arc<Mutex<Session>>,
    generation: u64,
    expiry: u32,
) {
    let remove = move || {
        let mut sessions = lock(&shared.sessions);
        let current = sessions.get(client.as_ref()).is_some_and(|s| Arc::ptr_eq(s, &session));
        let mut s = lock(&session);
        if !current || s.generation != generation || s.connected {
            return;
        }
        let subs: Vec<String> = s.subs.keys().cloned().collect();
        let shared_filters: Vec<String> = subs.iter().filter(|f| topic::parse_shared(f).is_some()).cloned().collect();
        let mut pending: Vec<Delivery> = s
            .inflight
            .drain(..)
            .filter_map(|(_, o)| match o {
                Outbound::Publish(d) => Some(d),
                Outbound::Released(..) => None,
            })
            .collect();
        pending.extend(s.queue_drain());
        drop(s);
        sessions.remove(client.as_ref());
        drop(sessions);
        drop(shared.forget_session(&client));
        {
            let mut router = lock(&shared.router);
            for f in subs {
                router.unsubscribe(&client, &f);
            }
        }
        shared.redeliver_shared(&client, pending);
        for f in shared_filters {
            shared.drop_group_if_unused(&f);
        }
    };
    match expiry {
        0 => remove(),
        u32::MAX => {}
        secs => {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs as u64)).await;
                remove();
            });
        }
    }
}
