//! The broker: shared state, the accept loop, `$SYS` topics, maintenance, and graceful
//! shutdown (stop accepting, tell every connection to close, wait for them, sync the log).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::codec::{topic, QoS};
use crate::config::BrokerConfig;
use crate::early_delivery::EarlyRoute;
use crate::listener::{self, ListenerConfig, ListenerError, ListenerKind};
use crate::message::Message;
use crate::positions::Positions;
use crate::qos2_store::{self, InboundIntent, OutboundQos2, Qos2State};
use crate::retained::Retained;
use crate::router::Router;
use crate::session::{Delivery, Outbound, Queued, Session};
use crate::session_store::{self, SessionRecord};
use crate::store::{Store, StoreError};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The log could not be opened or recovered.
    #[error("cannot open the data directory's log: {0}")]
    Storage(#[from] StoreError),
    /// The password or ACL file could not be used.
    #[error(transparent)]
    Auth(#[from] crate::AuthError),
    /// A listener could not be set up (address taken, certificate unreadable...).
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// A blocking start-up task failed.
    #[error("start-up task failed: {0}")]
    Startup(String),
}

/// Counters behind `$SYS` (and, later, `/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Currently connected clients.
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent.
    pub messages_sent: AtomicU64,
    /// Bytes received.
    pub bytes_received: AtomicU64,
    /// Bytes sent.
    pub bytes_sent: AtomicU64,
    /// Messages dropped because a client's queue was full.
    pub messages_dropped: AtomicU64,
    /// Connections accepted (CONNACK sent).
    pub connections_total: AtomicU64,
    /// PUBLISH packets received, by QoS.
    pub received_qos: [AtomicU64; 3],
    /// PUBLISH packets sent, by QoS.
    pub sent_qos: [AtomicU64; 3],
    /// Messages not sent because they expired first.
    pub dropped_expired: AtomicU64,
    /// Messages not sent because they exceed the client's maximum packet size.
    pub dropped_too_large: AtomicU64,
    /// PUBLISHes refused (topics the client may not publish to).
    pub publishes_refused: AtomicU64,
    /// Messages queued for a session from the log rather than live: it was away, its queue
    /// was full, or it restarted behind (a steady rise means subscribers fall behind).
    pub messages_from_log: AtomicU64,
}

/// A session, shared between the sessions map and its connection.
pub(crate) type SessionRef = Arc<Mutex<Session>>;

pub(crate) struct Shared {
    pub(crate) cfg: BrokerConfig,
    pub(crate) store: Store,
    pub(crate) router: Mutex<Router>,
    pub(crate) sessions: Mutex<HashMap<String, Arc<Mutex<Session>>>>,
    pub(crate) retained: Mutex<Retained>,
    pub(crate) stats: Stats,
    /// Client ids that have a session record in the log.
    persisted: Mutex<std::collections::HashSet<String>>,
    /// Positions of shared subscription groups in the topic streams, by full filter
    /// (`$share/{group}/{filter}`): which messages the group as a whole has handed to a
    /// member and not had acknowledged, so a kill -9 loses none of them.
    pub(crate) groups: Mutex<HashMap<String, Arc<Mutex<Positions>>>>,
    /// Sessions whose positions moved, to save at the next tick.
    to_save: Mutex<Vec<(Arc<str>, SessionRef)>>,
    pub(crate) started: Instant,
    /// `$SYS` topic state (load averages) and when it was last published.
    sys: Mutex<(crate::sys_topics::SysTopics, Instant)>,
    pub(crate) next_client: AtomicU64,
    pub(crate) timers: crate::monitor::Timers,
    pub(crate) recovery_seconds: f64,
    /// Authentication and ACL in force, and a generation bumped on each reload (connections
    /// recompute their ACL when it moves).
    pub(crate) auth: std::sync::RwLock<Arc<crate::AuthConfig>>,
    pub(crate) auth_generation: AtomicU64,
    /// Per-client limits in force (a reload changes them).
    pub(crate) limits: crate::limits::LiveLimits,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Delivers a message to every matching subscription. Never waits: a message that is in
    /// the log (`offset` is its place in its topic's stream) is left there for a session that
    /// is offline or whose queue is full, and read back later; any other is dropped then.
    pub(crate) fn route(&self, msg: &Arc<Message>, offset: Option<u64>) {
        self.route_durable(msg, offset, EarlyRoute::default());
    }

    /// [`Shared::route`] for messages that are not in the log (QoS 0), in order. One lock of
    /// the router and of the session table serves them all, and each session is locked
    /// once for its run of deliveries: under load one read brings dozens of messages, and
    /// the two workers taking those locks in turn for each of them was most of the cost of
    /// routing (the cache lines of the locks moving between cores).
    pub(crate) fn route_all(&self, msgs: &[Arc<Message>]) {
        if let [m] = msgs {
            return self.route(m, None);
        }
        let routed: Vec<_> = {
            let mut router = lock(&self.router);
            msgs.iter().map(|m| router.route(m.topic.as_str(), &m.publisher)).collect()
        };
        let sessions = lock(&self.sessions);
        // Deliveries per session, each session's in message order.
        let mut runs: Vec<(&Arc<Mutex<Session>>, Vec<Delivery>)> = Vec::new();
        for (m, targets) in msgs.iter().zip(&routed) {
            for (i, t) in targets.iter().enumerate() {
                let Some(s) = sessions.get(&t.client) else { continue };
                // Each message of a topic routes to the same sessions in the same order:
                // look where this target went for the previous message first.
                let at = match runs.get(i) {
                    Some((r, _)) if Arc::ptr_eq(r, s) => Some(i),
                    _ => runs.iter().position(|(r, _)| Arc::ptr_eq(r, s)),
                };
                let d = Delivery::through(m, t, None);
                match at {
                    Some(k) => runs[k].1.push(d),
                    None => runs.push((s, vec![d])),
                }
            }
        }
        let limit = self.limits.queue();
        for (s, deliveries) in runs {
            let mut s = lock(s);
            for d in deliveries {
                if s.offer(d, limit) == Queued::Dropped {
                    self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = ?s.client_id, "queue full; message dropped");
                }
            }
        }
    }

    /// Queues a QoS 1 message whose append is issued but not yet durable for the sessions
    /// that take it early (see [`crate::early_delivery`]); pass the result to
    /// [`Shared::route_durable`] once it is durable, or drop it.
    pub(crate) fn route_early(&self, msg: &Arc<Message>) -> EarlyRoute {
        let mut early = EarlyRoute::default();
        if !self.cfg.deliver_before_durable {
            return early;
        }
        let found = lock(&self.router).route_plain(msg.topic.as_str(), &msg.publisher);
        if found.targets.is_empty() {
            return early;
        }
        let mut all_taken = !found.shared;
        let sessions = lock(&self.sessions);
        for t in found.targets {
            let Some(s) = sessions.get(&t.client) else {
                all_taken = false;
                continue;
            };
            let offered = lock(s).offer_early(Delivery::through(msg, &t, None), self.limits.queue());
            all_taken &= offered == Some(true);
            if let Some(taken) = offered {
                early.record(s, taken);
            }
        }
        if all_taken {
            early.covered_all(found.version);
        }
        early
    }

    /// [`Shared::route`] for a message some sessions took before it was durable.
    pub(crate) fn route_durable(&self, msg: &Arc<Message>, offset: Option<u64>, early: EarlyRoute) {
        let targets = {
            let mut router = lock(&self.router);
            if early.covers(router.version()) {
                // Every subscription took it early and none changed since: nothing left.
                return;
            }
            router.route(msg.topic.as_str(), &msg.publisher)
        };
        if targets.is_empty() {
            return;
        }
        let sessions = lock(&self.sessions);
        for t in targets {
            let Some(s) = sessions.get(&t.client) else { continue };
            if t.shared.is_none() && early.took(s) {
                continue;
            }
            let group = t.shared.as_deref().and_then(|f| self.group(f));
            if let (Some(filter), Some(off), Some(group)) = (t.shared.clone(), offset, group) {
                // A shared subscription: the group's positions say whether the member takes
                // it now or the group reads it from the log later.
                let d = Delivery::through(msg, &t, Some(off));
                let mut member = lock(s);
                let room = member.connected && !member.queue_full(self.limits.queue());
                if lock(&group).offer(msg.topic.as_str(), off, room) == crate::positions::Offer::Take {
                    member.enqueue_unchecked(d);
                } else {
                    drop(member);
                    self.wake_members(&filter, &sessions);
                }
                continue;
            }
            // Shared subscriptions without group positions (QoS 0) are plain copies.
            let pos = if t.shared.is_none() { offset } else { None };
            if lock(s).offer(Delivery::through(msg, &t, pos), self.limits.queue()) == Queued::Dropped {
                self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %t.client, topic = %msg.topic, "queue full; message dropped");
            }
        }
    }

    /// Writes (or, for a session that no longer outlives its connection, clears) the log
    /// record of a session's subscriptions and positions; returns the append to wait for,
    /// if any.
    pub(crate) fn save_session(&self, client: &str, s: &mut Session) -> Option<promptmq_wal::Completion<u64>> {
        if s.persistent() {
            let record = SessionRecord {
                incarnation: s.incarnation,
                expiry: s.expiry,
                subs: s.subs.iter().map(|(f, o)| (f.clone(), *o)).collect(),
                ..Default::default()
            };
            lock(&self.persisted).insert(client.to_string());
            // The cursors first: a record torn off after them names no subscription that
            // lacks its streams' starting points (streams a saved subscription matches but
            // no cursor names are read from their start).
            let mut entries = cursor_entries(client, s.incarnation, &mut s.positions);
            entries.push((client.as_bytes().to_vec(), record.encode()));
            let saved = self.store.save_session_entries(entries);
            // Only after the record whose cursor passed them: records of one stream become
            // durable in order, so a crash never keeps the clearing without the cursor (which
            // would send completed QoS 2 messages again).
            let incarnation = s.incarnation;
            self.clear_passed(client, incarnation, &mut s.positions);
            Some(saved)
        } else {
            self.forget_session(client)
        }
    }

    /// Saves the cursors of a persistent session that moved since its last save (see
    /// `session_store::position_key`), not its record.
    fn save_positions(&self, client: &str, s: &mut Session) {
        if !s.persistent() {
            drop(self.save_session(client, s));
            return;
        }
        let incarnation = s.incarnation;
        self.save_cursors(client, incarnation, &mut s.positions);
    }

    /// [`Shared::save_positions`] for a session or (`incarnation` 0) a shared subscription
    /// group.
    fn save_cursors(&self, key: &str, incarnation: u64, p: &mut Positions) {
        let entries = cursor_entries(key, incarnation, p);
        if !entries.is_empty() {
            drop(self.store.save_session_entries(entries));
        }
        // After the records whose cursors passed them (one stream is durable in order).
        self.clear_passed(key, incarnation, p);
    }

    /// Clears the stored QoS 2 exchanges that the cursors just saved have passed (see
    /// `Positions::take_passed`); call it after the save, never before.
    fn clear_passed(&self, key: &str, incarnation: u64, p: &mut Positions) {
        for (topic, offset) in p.take_passed() {
            drop(self.save_outbound(key, incarnation, &topic, offset, None));
        }
    }

    /// Clears the log record of a session, if it has one.
    pub(crate) fn forget_session(&self, client: &str) -> Option<promptmq_wal::Completion<u64>> {
        // The session's QoS 2 entries stay in the log until compaction, tied to its
        // incarnation, which no later session shares.
        lock(&self.persisted).remove(client).then(|| self.store.save_session(client, None))
    }

    /// Stores (or, with `None`, clears) an inbound QoS 2 intent of a persistent session.
    pub(crate) fn save_inbound(
        &self,
        client: &str,
        incarnation: u64,
        pid: u16,
        intent: Option<&InboundIntent>,
    ) -> promptmq_wal::Completion<u64> {
        let value = intent.map(|i| qos2_store::encode_inbound(incarnation, i)).unwrap_or_default();
        self.store.save_session_entry(qos2_store::inbound_key(client, pid), value)
    }

    /// Stores (or, with `None`, clears) the state of an outbound QoS 2 exchange of a
    /// persistent session for the message at `topic`@`offset`.
    pub(crate) fn save_outbound(
        &self,
        client: &str,
        incarnation: u64,
        topic: &str,
        offset: u64,
        state: Option<(u16, Qos2State)>,
    ) -> promptmq_wal::Completion<u64> {
        self.save_outbound_via(client, incarnation, topic, offset, state, None)
    }

    /// [`Shared::save_outbound`] for a message that came through shared subscription `group`.
    pub(crate) fn save_outbound_via(
        &self,
        client: &str,
        incarnation: u64,
        topic: &str,
        offset: u64,
        state: Option<(u16, Qos2State)>,
        group: Option<&str>,
    ) -> promptmq_wal::Completion<u64> {
        let value =
            state.map(|(pid, st)| qos2_store::encode_outbound_group(incarnation, pid, st, group)).unwrap_or_default();
        self.store.save_session_entry(qos2_store::outbound_key(client, topic, offset), value)
    }

    /// Stores, before the PUBLISHes go out, which QoS 1 message each packet id of a persistent
    /// session now carries (`qos2_store::qos1_key` → `encode_qos1`, one batch per round of
    /// deliveries): after a crash the messages are resent with these ids [MQTT-4.4.0-1]. One
    /// record per delivery and none to clear it: the next use of an id replaces it, and the
    /// cursor passing the message makes it stale.
    pub(crate) fn save_qos1(&self, entries: Vec<(Vec<u8>, Bytes)>) -> promptmq_wal::Completion<u64> {
        self.store.save_session_entries(entries)
    }

    /// An outbound QoS 2 exchange completed (PUBCOMP, or the client refused it): the message
    /// is never sent again, even if the saved cursor is still below it. For a shared
    /// subscription the mark belongs to the group (any member could get it again).
    pub(crate) fn qos2_complete(
        &self,
        client: &str,
        s: &mut Session,
        pid: u16,
        topic: &str,
        offset: u64,
        group: Option<&str>,
    ) {
        let state = Some((pid, Qos2State::Complete));
        match group {
            None => {
                s.positions.complete_qos2(topic, offset);
                drop(self.save_outbound(client, s.incarnation, topic, offset, state));
            }
            Some(filter) => {
                if let Some(g) = self.group(filter) {
                    lock(&g).complete_qos2(topic, offset);
                }
                drop(self.save_outbound(&group_key(filter), 0, topic, offset, state));
                drop(self.save_outbound(client, s.incarnation, topic, offset, None));
            }
        }
    }

    /// Queues a connected persistent session whose acknowledged position moved, for the next
    /// `save_queued_positions`.
    pub(crate) fn queue_position_save(&self, client: &Arc<str>, session: &Arc<Mutex<Session>>, s: &mut Session) {
        if !s.save_queued {
            s.save_queued = true;
            lock(&self.to_save).push((client.clone(), session.clone()));
        }
    }

    /// Saves the positions of the sessions queued by `queue_position_save`.
    fn save_queued_positions(&self) {
        // Groups are few; their moved positions are saved on the same short interval.
        self.save_moved_groups();
        let queued = std::mem::take(&mut *lock(&self.to_save));
        for (client, session) in queued {
            let mut s = lock(&session);
            s.save_queued = false;
            if s.persistent() && s.positions.dirty() {
                self.save_positions(&client, &mut s);
            }
        }
    }

    /// Saves the positions of persistent sessions that moved since they were last saved
    /// (not waited for: a position saved late only means more is delivered again).
    fn save_moved_positions(&self) {
        let sessions: Vec<(String, Arc<Mutex<Session>>)> =
            lock(&self.sessions).iter().map(|(c, s)| (c.clone(), s.clone())).collect();
        for (client, s) in sessions {
            let mut s = lock(&s);
            if s.persistent() && s.positions.dirty() {
                self.save_positions(&client, &mut s);
            }
        }
    }

    /// Starts following, at their current end, the topic streams a new subscription of a
    /// persistent session matches (what was published before it is not the session's).
    pub(crate) fn follow_new_subscription(&self, s: &mut Session, filter: &str) {
        if !s.persistent() || topic::parse_shared(filter).is_some() {
            return;
        }
        for (t, end) in self.store.topics_matching(filter) {
            s.positions.start_at_end(&t, end);
        }
    }

    /// Hands the unacknowledged deliveries a leaving shared-subscription member had to other
    /// members of the same groups (MQTT 5 section 4.8.2); with no other member, logged ones
    /// go back to the group's log position, to be read again when a member comes.
    pub(crate) fn redeliver_shared(&self, leaving: &str, pending: Vec<Delivery>) {
        for d in pending {
            let Some(filter) = d.shared.clone() else { continue };
            if d.qos == QoS::AtMostOnce && d.pos.is_none() {
                continue;
            }
            let picked = lock(&self.router).pick_shared(&filter, leaving);
            let sessions = lock(&self.sessions);
            let target = picked.and_then(|(client, opts)| Some((sessions.get(&client)?.clone(), opts)));
            match target {
                Some((s, opts)) => {
                    let d = Delivery { qos: d.msg.qos.min(opts.qos), ..d };
                    lock(&s).enqueue_unchecked(d);
                }
                None => {
                    if let (Some((topic, off)), Some(group)) = (d.logged(), self.group(&filter)) {
                        lock(&group).return_to_log(topic, off);
                    }
                }
            }
        }
    }

    /// The positions of shared subscription group `filter`, if it exists.
    pub(crate) fn group(&self, filter: &str) -> Option<Arc<Mutex<Positions>>> {
        lock(&self.groups).get(filter).cloned()
    }

    /// Makes sure group `filter` has positions: a new group starts at the end of every
    /// stream it matches.
    pub(crate) fn ensure_group(&self, filter: &str) {
        let Some(Ok(parsed)) = topic::parse_shared(filter) else { return };
        if lock(&self.groups).contains_key(filter) {
            return;
        }
        let mut p = Positions::default();
        for (t, end) in self.store.topics_matching(parsed.filter) {
            p.start_at_end(&t, end);
        }
        // Saved at once, before the member's session record that the SUBACK waits for: one
        // stream is durable in order, so a SUBACK means the group's start is saved too.
        self.save_group(filter, &mut p);
        lock(&self.groups).entry(filter.to_string()).or_insert_with(|| Arc::new(Mutex::new(p)));
    }

    fn save_group(&self, filter: &str, p: &mut Positions) {
        let record = SessionRecord { expiry: u32::MAX, ..Default::default() };
        let key = group_key(filter);
        let mut entries = cursor_entries(&key, 0, p);
        entries.push((key.as_bytes().to_vec(), record.encode()));
        drop(self.store.save_session_entries(entries));
        // After the record whose cursors passed them (one stream is durable in order).
        self.clear_passed(&key, 0, p);
    }

    /// Forgets group `filter` once it has no members left (and its saved positions).
    pub(crate) fn drop_group_if_unused(&self, filter: &str) {
        if topic::parse_shared(filter).is_none() || lock(&self.router).has_shared(filter) {
            return;
        }
        if lock(&self.groups).remove(filter).is_some() {
            drop(self.store.save_session(&group_key(filter), None));
        }
    }

    /// Wakes the connected members of group `filter` (one of them reads the log for it).
    fn wake_members(&self, filter: &str, sessions: &HashMap<String, Arc<Mutex<Session>>>) {
        for m in lock(&self.router).shared_members(filter) {
            if let Some(s) = sessions.get(&m) {
                let s = lock(s);
                if s.connected {
                    s.wake.notify_one();
                }
            }
        }
    }

    /// A delivery is finished with (acknowledged, or never to be sent): its position is no
    /// longer outstanding — the group's for a shared subscription, the session's otherwise.
    pub(crate) fn finished(&self, s: &mut Session, logged: Option<(&str, u64)>, shared: Option<&str>) {
        match (shared, logged) {
            (Some(filter), Some((topic, off))) => {
                if let Some(g) = self.group(filter) {
                    lock(&g).done(topic, off);
                }
            }
            (Some(_), None) => {}
            (None, logged) => s.done(logged),
        }
    }

    /// Saves the positions of shared subscription groups that moved.
    fn save_moved_groups(&self) {
        let groups: Vec<(String, Arc<Mutex<Positions>>)> =
            lock(&self.groups).iter().map(|(f, g)| (f.clone(), g.clone())).collect();
        for (filter, g) in groups {
            let mut p = lock(&g);
            if p.dirty() {
                self.save_cursors(&group_key(&filter), 0, &mut p);
            }
        }
    }

    /// Updates the retained message of a topic in memory (the log write is the caller's).
    pub(crate) fn set_retained(&self, msg: &Arc<Message>) {
        lock(&self.retained).set(msg);
    }

    /// Retained messages matching `filter` (not for shared subscriptions [MQTT-3.8.4-3... v5 3.3.1.3]).
    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        lock(&self.retained).matching(filter, Instant::now())
    }

    /// Publishes a broker-generated retained message (for `$SYS`).
    fn publish_sys(&self, name: &str, value: String) {
        let msg = Arc::new(Message {
            topic: format!("$SYS/broker/{name}").into(),
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            publisher: Arc::from("$SYS"),
            expires_at: None,
        });
        self.set_retained(&msg);
        self.route(&msg, None);
    }

    fn publish_sys_all(&self) {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Read counts into locals first: publish_sys takes these same locks.
        let sessions: Vec<Arc<Mutex<Session>>> = lock(&self.sessions).values().cloned().collect();
        let clients_disconnected = sessions
            .iter()
            .filter(|s| {
                let s = lock(s);
                !s.connected && s.persistent()
            })
            .count() as u64;
        let sample = crate::sys_topics::Sample {
            uptime: self.started.elapsed(),
            clients_connected: get(&s.clients_connected),
            clients_disconnected,
            messages_received: get(&s.messages_received),
            messages_sent: get(&s.messages_sent),
            messages_dropped: get(&s.messages_dropped),
            bytes_received: get(&s.bytes_received),
            bytes_sent: get(&s.bytes_sent),
            connections: get(&s.connections_total),
            retained: lock(&self.retained).len() as u64,
            subscriptions: lock(&self.router).len() as u64,
        };
        let topics = {
            let mut sys = lock(&self.sys);
            let elapsed = sys.1.elapsed();
            sys.1 = Instant::now();
            sys.0.update(sample, elapsed)
        };
        for (name, value) in topics {
            self.publish_sys(&name, value);
        }
    }
}

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
pub struct Broker {
    local_addr: SocketAddr,
    listeners: Vec<(&'static str, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
    accept: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Broker {
    /// Recovers the log, loads retained messages, binds the listener and starts serving.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), promptmq_broker::BrokerError> {
    /// use promptmq_broker::{Broker, BrokerConfig};
    /// let broker = Broker::start(BrokerConfig::new("127.0.0.1:1883".parse().unwrap(), "./data")).await?;
    /// println!("listening on {}", broker.local_addr());
    /// broker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn start(cfg: BrokerConfig) -> Result<Broker, BrokerError> {
        // Listeners first: a taken port or a bad certificate fails at once, not after a long
        // recovery. Connections wait in the backlog until recovery is done.
        let primary = ListenerConfig { bind: cfg.listen, kind: ListenerKind::Tcp, max_connections: None };
        let mut bound = Vec::with_capacity(1 + cfg.listeners.len());
        for l in std::iter::once(&primary).chain(&cfg.listeners) {
            bound.push((l.kind.name(), listener::bind(l).await?));
        }
        let auth = crate::AuthConfig::load(cfg.allow_anonymous, cfg.password_file.as_deref(), cfg.acl_file.as_deref())?;
        let dir = cfg.data_dir.join("log");
        let sync = cfg.sync;
        let storage = cfg.storage.clone();
        let started = Instant::now();
        let (store, retained, saved) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let observer = Arc::new(crate::monitor::WalObserver::new());
            let store = Store::open_configured(&dir, sync, &storage, observer)?;
            let retained = store.load_retained()?;
            let folded = session_store::fold(store.session_records()?);
            for key in &folded.stale {
                // Not waited for: should the broker stop first, they are found stale again.
                drop(store.save_session_entry(key.clone(), bytes::Bytes::new()));
            }
            if !folded.stale.is_empty() {
                tracing::debug!(entries = folded.stale.len(), "cleared stale session entries");
            }
            Ok((store, retained, folded.sessions))
        })
        .await
        .map_err(|e| BrokerError::Startup(e.to_string()))??;
        let recovery_seconds = started.elapsed().as_secs_f64();
        let mut saved = saved;
        let groups = restore_groups(&store, &mut saved);
        let listeners: Vec<(&'static str, SocketAddr)> = bound.iter().map(|(k, b)| (*k, b.addr)).collect();
        let local_addr = listeners[0].1;
        for (kind, addr) in &listeners {
            tracing::info!(%addr, kind, retained = retained.len(), "listening");
        }
        let limits = crate::limits::LiveLimits::new(&cfg);
        let shared = Arc::new(Shared {
            cfg,
            store,
            router: Mutex::new(Router::default()),
            sessions: Mutex::new(HashMap::new()),
            retained: Mutex::new(Retained::from(retained)),
            stats: Stats::default(),
            persisted: Mutex::new(saved.keys().cloned().collect()),
            to_save: Mutex::new(Vec::new()),
            groups: Mutex::new(groups),
            started: Instant::now(),
            sys: Mutex::new((crate::sys_topics::SysTopics::default(), Instant::now())),
            next_client: AtomicU64::new(1),
            timers: crate::monitor::Timers::new(),
            recovery_seconds,
            auth: std::sync::RwLock::new(Arc::new(auth)),
            auth_generation: AtomicU64::new(0),
            limits,
        });
        restore_sessions(&shared, saved);
        // Groups whose members did not come back (clean sessions) are gone.
        let filters: Vec<String> = lock(&shared.groups).keys().cloned().collect();
        for f in filters {
            shared.drop_group_if_unused(&f);
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = mpsc::channel::<()>(1);
        let limit = Arc::new(Semaphore::new(shared.cfg.max_connections));
        let accept = bound
            .into_iter()
            .map(|(_, b)| {
                let l = listener::accept_loop(b, shared.clone(), limit.clone(), shutdown_rx.clone(), done_tx.clone());
                tokio::spawn(l)
            })
            .collect();
        drop(done_tx);
        tokio::spawn(periodic(shared.clone(), shutdown_rx));
        Ok(Broker { local_addr, listeners, shutdown, done, accept, shared })
    }

    /// The address of the primary (plain TCP) listener (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every listener: its kind (tcp, tls, ws, wss) and bound address, primary first.
    pub fn listeners(&self) -> &[(&'static str, SocketAddr)] {
        &self.listeners
    }

    /// The broker's counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Replaces the authentication and ACL settings (e.g. on SIGHUP): new connections use
    /// them at once, connected clients from their next PUBLISH, SUBSCRIBE or delivery.
    pub fn reload_auth(&self, auth: crate::AuthConfig) {
        *self.shared.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(auth);
        self.shared.auth_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Applies the per-client limits of `cfg` (packet size, receive maximum, in-flight and
    /// queue bounds, keep alive, session and message expiry caps, topic aliases, timeouts);
    /// returns the names of those that changed. Other settings need a restart.
    pub fn update_limits(&self, cfg: &BrokerConfig) -> Vec<&'static str> {
        self.shared.limits.set(cfg)
    }

    /// A handle for readiness checks and metrics export.
    pub fn monitor(&self) -> crate::Monitor {
        crate::Monitor { shared: self.shared.clone() }
    }

    /// Stops accepting, sends every client a DISCONNECT (v5: server shutting down), waits up
    /// to 10 s for connections to finish their in-flight appends, then syncs the log.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for a in self.accept.drain(..) {
            let _ = a.await;
        }
        // Every connection task holds a sender; recv returns None once all have ended.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.done.recv()).await;
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            shared.save_moved_positions();
            shared.save_moved_groups();
            shared.store.close()
        })
        .await;
        tracing::info!("broker stopped");
    }
}

/// The sessions-stream key of shared subscription group `filter`'s positions. MQTT strings
/// never contain U+0000, so no client id looks like it.
/// The sessions-stream entries that save `p`'s changes under `key` (see
/// `session_store::position_key`): each cursor that moved, and an empty value for each
/// stream no longer followed.
fn cursor_entries(key: &str, incarnation: u64, p: &mut Positions) -> Vec<(Vec<u8>, Bytes)> {
    let (moved, dropped) = p.take_changes();
    let moved = moved.into_iter().map(|(topic, cursor)| {
        (session_store::position_key(key, &topic), session_store::encode_position(incarnation, cursor))
    });
    let cleared = dropped.into_iter().map(|topic| (session_store::position_key(key, &topic), Bytes::new()));
    moved.chain(cleared).collect()
}

fn group_key(filter: &str) -> String {
    format!("\0share\0{filter}")
}

/// Takes the saved positions of shared subscription groups out of `saved` and restores them
/// (streams created since they were saved are read from the start).
fn restore_groups(store: &Store, saved: &mut HashMap<String, SessionRecord>) -> HashMap<String, Arc<Mutex<Positions>>> {
    let keys: Vec<String> = saved.keys().filter(|k| k.starts_with("\0share\0")).cloned().collect();
    let topics = store.topics();
    let mut out = HashMap::new();
    for key in keys {
        let Some(record) = saved.remove(&key) else { continue };
        let filter = key.trim_start_matches("\0share\0").to_string();
        let Some(Ok(parsed)) = topic::parse_shared(&filter) else { continue };
        let mut p = Positions::restored(record.positions);
        for (t, _) in crate::store::matching(&topics, parsed.filter) {
            p.replay(t, 0);
        }
        for x in record.outbound.iter().filter(|x| x.state == Qos2State::Complete) {
            p.complete_qos2(&x.topic, x.offset);
        }
        out.insert(filter, Arc::new(Mutex::new(p)));
    }
    out
}

/// Recreates the persistent sessions found in the log, disconnected, with their
/// subscriptions, so messages published from now on are queued for them.
fn restore_sessions(shared: &Arc<Shared>, saved: HashMap<String, SessionRecord>) {
    if saved.is_empty() {
        return;
    }
    tracing::info!(sessions = saved.len(), "restoring persistent sessions");
    let topics = shared.store.topics();
    for (client, record) in saved {
        let mut s = Session::new();
        s.expiry = record.expiry;
        s.client_id = Some(Arc::from(client.as_str()));
        s.incarnation = record.incarnation;
        s.inbound_qos2 = restore_inbound_qos2(shared, &client, record.incarnation, &record.inbound);
        s.positions = Positions::restored(record.positions);
        // Streams the record does not name did not exist when it was written: all they hold
        // arrived since, so the session reads them from the start.
        for (f, _) in record.subs.iter().filter(|(f, _)| topic::parse_shared(f).is_none()) {
            for (t, _) in crate::store::matching(&topics, f) {
                s.positions.replay(t, 0);
            }
        }
        {
            let mut router = lock(&shared.router);
            for (filter, opts) in record.subs {
                router.subscribe(&client, &filter, opts);
                s.subs.insert(filter, opts);
            }
        }
        // After the streams and subscriptions: it marks positions and needs the options.
        restore_outbound_qos2(shared, &mut s, &record.outbound);
        let session = Arc::new(Mutex::new(s));
        lock(&shared.sessions).insert(client.clone(), session.clone());
        // The expiry clock restarts at start-up: the time of the last disconnect is not stored.
        crate::connection::end_session_later(shared.clone(), Arc::from(client.as_str()), session, 0, record.expiry);
    }
}

/// The inbound QoS 2 packet ids of a restored session whose messages are stored; the
/// intents of messages that never made it are cleared (see `qos2_store::stored_inbound`).
fn restore_inbound_qos2(
    shared: &Shared,
    client: &str,
    incarnation: u64,
    intents: &[InboundIntent],
) -> std::collections::HashSet<u16> {
    let (stored, forgotten) = qos2_store::stored_inbound(&shared.store, intents);
    for pid in forgotten {
        tracing::info!(client, pid, "inbound QoS 2 message was not stored before the stop; its id is forgotten");
        drop(shared.save_inbound(client, incarnation, pid, None));
    }
    stored
}

/// Puts a restored session's outbound QoS 2 exchanges and unacknowledged QoS 1 messages back
/// in flight (resent with the same packet ids when the client reconnects), and marks
/// completed QoS 2 exchanges as never to send again.
fn restore_outbound_qos2(shared: &Shared, s: &mut Session, exchanges: &[OutboundQos2]) {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    for x in exchanges {
        // A shared subscription's message is the group's to track, not the member's.
        let group = x.group.as_deref().and_then(|f| shared.group(f));
        let handed = |s: &mut Session| match &group {
            Some(g) => lock(g).restore_handed(&x.topic, x.offset),
            None => s.positions.restore_handed(&x.topic, x.offset),
        };
        let via: Option<Arc<str>> = x.group.as_deref().map(Arc::from);
        match x.state {
            Qos2State::Complete => s.positions.complete_qos2(&x.topic, x.offset),
            Qos2State::Released => {
                handed(s);
                let logged = Some((Arc::from(x.topic.as_str()), x.offset));
                s.inflight.push_back((x.pid, Outbound::Released(logged, via)));
            }
            Qos2State::Published | Qos2State::Qos1Published => {
                let qos = if x.state == Qos2State::Published { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
                // A QoS 1 entry stays until its packet id is used again: one whose message
                // the cursor passed was acknowledged. (QoS 2 entries are cleared instead.)
                let cursor = match &group {
                    Some(g) => lock(g).cursor_of(&x.topic),
                    None => s.positions.cursor_of(&x.topic),
                };
                if qos == QoS::AtLeastOnce && cursor.is_none_or(|c| x.offset < c) {
                    continue;
                }
                if s.inflight.iter().any(|(pid, _)| *pid == x.pid) {
                    continue; // an id is in flight once (two entries for one id: old format)
                }
                let rec = match shared.store.read_topic(&x.topic, x.offset, 1) {
                    Ok((recs, _)) => recs.into_iter().find(|r| r.offset == x.offset),
                    Err(e) => {
                        tracing::warn!(topic = %x.topic, offset = x.offset, error = %e, "in-flight QoS 2 message unreadable");
                        None
                    }
                };
                let age = |ts: u64| Duration::from_millis(now_ms.saturating_sub(ts));
                let msg = rec.and_then(|r| Message::from_record(r.payload, age(r.timestamp_ms)));
                let Some(msg) = msg else { continue }; // expired, or removed by retention
                let (retain_as_published, ids) =
                    s.delivery_options(&x.topic, "").map(|(_, rap, ids)| (rap, ids)).unwrap_or_default();
                handed(s);
                let d = Delivery {
                    qos,
                    retain: msg.retain && retain_as_published && via.is_none(),
                    ids,
                    shared: via,
                    pos: Some(x.offset),
                    msg: Arc::new(msg),
                };
                s.inflight.push_back((x.pid, Outbound::Publish(d)));
            }
        }
    }
}

/// How often all persistent sessions are checked for positions to save (offline ones move
/// when messages wait for them; connected ones are saved sooner, see `positions_save_interval`).
const POSITIONS_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

async fn periodic(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut sys = tokio::time::interval(shared.cfg.sys_interval);
    let mut maintain = tokio::time::interval(shared.cfg.storage.maintenance_interval);
    let mut positions = tokio::time::interval(POSITIONS_SWEEP_INTERVAL);
    let mut acked = tokio::time::interval(shared.cfg.positions_save_interval);
    maintain.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = sys.tick() => shared.publish_sys_all(),
            _ = positions.tick() => shared.save_moved_positions(),
            _ = acked.tick() => shared.save_queued_positions(),
            _ = maintain.tick() => {
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || s.store.maintain()).await;
            }
        }
    }
}
