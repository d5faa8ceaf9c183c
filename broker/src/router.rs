//! Subscriptions: a topic-filter trie with `+` and `#`, `$`-topics kept out of root
//! wildcards, and shared subscription groups (`$share/{group}/{filter}`) that deliver each
//! message to one member, round robin.

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::{topic, QoS};

/// Options of one subscription, as given in SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// Do not deliver the client's own messages (v5).
    pub no_local: bool,
    /// Keep the RETAIN flag as published (v5).
    pub retain_as_published: bool,
    /// Subscription identifier (v5).
    pub id: Option<u32>,
}

/// One delivery of a message: a client with the combined options of all its matching
/// non-shared subscriptions (MQTT 5 section 3.3.4: one delivery, the highest QoS, every
/// identifier), or the member a shared subscription picked (a separate copy, spec 4.8.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// For a shared subscription: its full filter (`$share/{group}/{filter}`).
    pub shared: Option<Arc<str>>,
    /// Client id.
    pub client: String,
    /// Highest granted QoS among the matching subscriptions.
    pub qos: QoS,
    /// Whether any matching subscription keeps RETAIN as published.
    pub retain_as_published: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub ids: Vec<u32>,
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<String, Node>,
    /// Whether `children` holds `+` / `#`: most nodes have neither, and every routed
    /// message would otherwise hash both names at every level it walks.
    plus: bool,
    hash: bool,
    /// client → options of its plain subscription ending here.
    subs: HashMap<String, SubOptions>,
    /// group → its members, round robin.
    shared: HashMap<String, Group>,
}

#[derive(Debug)]
struct Group {
    /// The full filter, `$share/{group}/{filter}`.
    filter: Arc<str>,
    members: Vec<(String, SubOptions)>,
    cursor: usize,
}

impl Group {
    /// The next member in turn, skipping `exclude`.
    fn pick(&mut self, exclude: Option<&str>) -> Option<(String, SubOptions)> {
        for _ in 0..self.members.len() {
            let i = self.cursor % self.members.len();
            self.cursor = (i + 1) % self.members.len();
            if Some(self.members[i].0.as_str()) != exclude {
                return Some(self.members[i].clone());
            }
        }
        None
    }
}

/// A subscription that matched, before merging per client.
struct Found {
    client: String,
    opts: SubOptions,
    shared: Option<Arc<str>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }

    /// The child for `level`, created if missing.
    fn child(&mut self, level: &str) -> &mut Node {
        self.plus |= level == "+";
        self.hash |= level == "#";
        self.children.entry(level.to_string()).or_default()
    }

    fn remove_child(&mut self, level: &str) {
        self.children.remove(level);
        self.plus &= level != "+";
        self.hash &= level != "#";
    }
}

/// The subscription trie.
#[derive(Default, Debug)]
pub struct Router {
    root: Node,
    count: usize,
    /// Bumped by every subscribe and unsubscribe: two lookups under the same version
    /// find the same subscriptions.
    version: u64,
}

/// [`Router::route_plain`]'s answer.
#[derive(Debug, Default)]
pub struct PlainTargets {
    /// The plain subscriptions' deliveries.
    pub targets: Vec<Target>,
    /// Whether shared subscriptions (left out) match the topic too.
    pub shared: bool,
    /// The router's version at the lookup (see [`Router::version`]).
    pub version: u64,
}

impl Router {
    /// Adds or replaces `client`'s subscription to `filter` (already validated). Returns
    /// whether it existed before.
    pub fn subscribe(&mut self, client: &str, filter: &str, opts: SubOptions) -> bool {
        self.version += 1;
        let (group, plain) = split_shared(filter);
        let mut node = &mut self.root;
        for level in plain.split('/') {
            node = node.child(level);
        }
        let existed = match group {
            None => node.subs.insert(client.to_string(), opts).is_some(),
            Some(g) => {
                let group = node.shared.entry(g.to_string()).or_insert_with(|| Group {
                    filter: Arc::from(filter),
                    members: Vec::new(),
                    cursor: 0,
                });
                let members = &mut group.members;
                match members.iter_mut().find(|(c, _)| c == client) {
                    Some(m) => {
                        m.1 = opts;
                        true
                    }
                    None => {
                        members.push((client.to_string(), opts));
                        false
                    }
                }
            }
        };
        if !existed {
            self.count += 1;
        }
        existed
    }

    /// Removes `client`'s subscription to `filter`; returns whether it existed.
    pub fn unsubscribe(&mut self, client: &str, filter: &str) -> bool {
        self.version += 1;
        let (group, plain) = split_shared(filter);
        let levels: Vec<&str> = plain.split('/').collect();
        let removed = remove(&mut self.root, &levels, client, group);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Changes with every subscribe and unsubscribe.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Another member of the shared subscription `filter` than `exclude`, for redelivering
    /// what a leaving member had not acknowledged.
    pub fn pick_shared(&mut self, filter: &str, exclude: &str) -> Option<(String, SubOptions)> {
        let (Some(group), plain) = split_shared(filter) else { return None };
        let mut node = &mut self.root;
        for level in plain.split('/') {
            node = node.children.get_mut(level)?;
        }
        node.shared.get_mut(group)?.pick(Some(exclude))
    }

    /// Whether the shared subscription `filter` (`$share/{group}/{filter}`) has members.
    pub fn has_shared(&mut self, filter: &str) -> bool {
        let (Some(group), plain) = split_shared(filter) else { return false };
        let mut node = &self.root;
        for level in plain.split('/') {
            match node.children.get(level) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.shared.get(group).is_some_and(|g| !g.members.is_empty())
    }

    /// The members of the shared subscription `filter`.
    pub fn shared_members(&self, filter: &str) -> Vec<String> {
        let (Some(group), plain) = split_shared(filter) else { return Vec::new() };
        let mut node = &self.root;
        for level in plain.split('/') {
            match node.children.get(level) {
                Some(n) => node = n,
                None => return Vec::new(),
            }
        }
        node.shared.get(group).map(|g| g.members.iter().map(|(c, _)| c.clone()).collect()).unwrap_or_default()
    }

    /// The deliveries of a message on `topic` from `publisher` (each shared subscription
    /// picks its next member).
    pub fn route(&mut self, topic_name: &str, publisher: &str) -> Vec<Target> {
        self.targets(topic_name, publisher, true).0
    }

    /// [`Router::route`] without the shared subscriptions (and without moving on their
    /// choice of member).
    pub fn route_plain(&mut self, topic_name: &str, publisher: &str) -> PlainTargets {
        let (targets, shared) = self.targets(topic_name, publisher, false);
        PlainTargets { targets, shared, version: self.version }
    }

    /// The deliveries, and whether shared subscriptions matched (picked from if `shared`).
    fn targets(&mut self, topic_name: &str, publisher: &str, shared: bool) -> (Vec<Target>, bool) {
        let levels: Vec<&str> = topic_name.split('/').collect();
        let mut found: Vec<Found> = Vec::new();
        let dollar = topic_name.starts_with('$');
        let mut walk = Walk { dollar, shared, shared_seen: false };
        collect(&mut self.root, &levels, 0, &mut walk, &mut found);
        let mut targets: Vec<Target> = Vec::new();
        for Found { client, opts: o, shared } in found {
            if o.no_local && client == publisher {
                continue;
            }
            if shared.is_some() {
                targets.push(Target {
                    shared,
                    client,
                    qos: o.qos,
                    retain_as_published: o.retain_as_published,
                    ids: o.id.into_iter().collect(),
                });
                continue;
            }
            match targets.iter_mut().find(|t| t.client == client && t.shared.is_none()) {
                Some(t) => {
                    t.qos = t.qos.max(o.qos);
                    t.retain_as_published |= o.retain_as_published;
                    t.ids.extend(o.id);
                }
                None => targets.push(Target {
                    shared: None,
                    client,
                    qos: o.qos,
                    retain_as_published: o.retain_as_published,
                    ids: o.id.into_iter().collect(),
                }),
            }
        }
        (targets, walk.shared_seen)
    }
}

fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match topic::parse_shared(filter) {
        Some(Ok(s)) => (Some(s.group), s.filter),
        _ => (None, filter),
    }
}

fn remove(node: &mut Node, levels: &[&str], client: &str, group: Option<&str>) -> bool {
    match levels.split_first() {
        None => match group {
            None => node.subs.remove(client).is_some(),
            Some(g) => {
                let Some(group) = node.shared.get_mut(g) else { return false };
                let before = group.members.len();
                group.members.retain(|(c, _)| c != client);
                let removed = group.members.len() != before;
                if group.members.is_empty() {
                    node.shared.remove(g);
                } else if group.cursor >= group.members.len() {
                    group.cursor = 0;
                }
                removed
            }
        },
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else { return false };
            let removed = remove(child, rest, client, group);
            if child.is_empty() {
                node.remove_child(first);
            }
            removed
        }
    }
}

/// How a lookup walks the tree: whether the topic is a `$` topic (wildcards at the root do
/// not match it) and whether shared subscriptions are picked from.
struct Walk {
    dollar: bool,
    shared: bool,
    /// Set when a shared subscription matched (whether picked from or not).
    shared_seen: bool,
}

fn collect(node: &mut Node, levels: &[&str], depth: usize, walk: &mut Walk, out: &mut Vec<Found>) {
    // `#` here matches this level and everything below, including the parent level itself.
    if node.hash && !(walk.dollar && depth == 0) {
        if let Some(hash) = node.children.get_mut("#") {
            take(hash, walk, out);
        }
    }
    match levels.split_first() {
        None => take(node, walk, out),
        Some((first, rest)) => {
            if let Some(child) = node.children.get_mut(*first) {
                collect(child, rest, depth + 1, walk, out);
            }
            if node.plus && !(walk.dollar && depth == 0) {
                if let Some(plus) = node.children.get_mut("+") {
                    collect(plus, rest, depth + 1, walk, out);
                }
            }
        }
    }
}

fn take(node: &mut Node, walk: &mut Walk, out: &mut Vec<Found>) {
    out.extend(node.subs.iter().map(|(c, o)| Found { client: c.clone(), opts: *o, shared: None }));
    walk.shared_seen |= node.shared.values().any(|g| !g.members.is_empty());
    if !walk.shared {
        return;
    }
    for group in node.shared.values_mut() {
        if let Some((client, opts)) = group.pick(None) {
            out.push(Found { client, opts, shared: Some(group.filter.clone()) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(qos: QoS) -> SubOptions {
        SubOptions { qos, no_local: false, retain_as_published: false, id: None }
    }

    fn clients(r: &mut Router, t: &str) -> Vec<String> {
        let mut v: Vec<_> = r.route(t, "publisher").into_iter().map(|t| t.client).collect();
        v.sort();
        v
    }

    proptest::proptest! {
        /// Random subscribes and unsubscribes (wildcards included) against a list checked
        /// with `topic::matches`: the trie routes every topic to exactly the model's clients.
        #[test]
        fn routes_match_a_brute_force_model(
            ops in proptest::collection::vec((proptest::bool::weighted(0.7), 0..4usize, 0..12usize), 1..60),
            topics in proptest::collection::vec(0..8usize, 1..8),
        ) {
            const FILTERS: [&str; 12] =
                ["#", "+", "a/#", "a/+", "+/b", "a/b", "a/b/#", "+/+/c", "a/+/c", "$SYS/#", "b", "+/b/#"];
            const TOPICS: [&str; 8] = ["a", "a/b", "a/b/c", "b", "x/b", "$SYS/up", "a/x/c", "x/b/y"];
            let mut r = Router::default();
            let mut model: std::collections::BTreeSet<(String, &str)> = Default::default();
            for (add, c, f) in ops {
                let client = format!("c{c}");
                if add {
                    r.subscribe(&client, FILTERS[f], o(QoS::AtMostOnce));
                    model.insert((client, FILTERS[f]));
                } else {
                    proptest::prop_assert_eq!(r.unsubscribe(&client, FILTERS[f]), model.remove(&(client.clone(), FILTERS[f])));
                }
            }
            for t in topics {
                let topic = TOPICS[t];
                let mut want: Vec<String> =
                    model.iter().filter(|(_, f)| topic::matches(f, topic)).map(|(c, _)| c.clone()).collect();
                want.dedup();
                proptest::prop_assert_eq!(clients(&mut r, topic), want, "topic {}", topic);
            }
        }
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut r = Router::default();
        r.subscribe("a", "sport/#", o(QoS::AtMostOnce));
        r.subscribe("b", "sport/+/player1", o(QoS::AtMostOnce));
        r.subscribe("c", "#", o(QoS::AtMostOnce));
        r.subscribe("d", "$SYS/#", o(QoS::AtMostOnce));
        assert_eq!(clients(&mut r, "sport/tennis/player1"), vec!["a", "b", "c"]);
        assert_eq!(clients(&mut r, "sport"), vec!["a", "c"]);
        assert_eq!(clients(&mut r, "$SYS/uptime"), vec!["d"]);
        assert_eq!(r.len(), 4);
        assert!(r.unsubscribe("a", "sport/#"));
        assert!(!r.unsubscribe("a", "sport/#"));
        assert_eq!(clients(&mut r, "sport"), vec!["c"]);
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_with_highest_qos_and_all_ids() {
        let mut r = Router::default();
        r.subscribe("a", "x/#", SubOptions { id: Some(1), ..o(QoS::AtMostOnce) });
        r.subscribe("a", "x/+", SubOptions { id: Some(2), ..o(QoS::ExactlyOnce) });
        let t = r.route("x/y", "p");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].qos, QoS::ExactlyOnce);
        let mut ids = t[0].ids.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn no_local_skips_the_publisher() {
        let mut r = Router::default();
        r.subscribe("me", "chat", SubOptions { no_local: true, ..o(QoS::AtMostOnce) });
        assert!(r.route("chat", "me").is_empty());
        assert_eq!(r.route("chat", "other").len(), 1);
    }

    #[test]
    fn shared_groups_deliver_to_one_member_round_robin() {
        let mut r = Router::default();
        r.subscribe("w1", "$share/g/jobs/+", o(QoS::AtLeastOnce));
        r.subscribe("w2", "$share/g/jobs/+", o(QoS::AtLeastOnce));
        r.subscribe("other", "jobs/#", o(QoS::AtMostOnce));
        let mut got = Vec::new();
        for _ in 0..4 {
            // Looking up the plain subscriptions alone does not move the rotation on.
            let plain = r.route_plain("jobs/1", "p");
            assert!(plain.shared, "a shared subscription matches too");
            assert_eq!(plain.targets.into_iter().map(|t| t.client).collect::<Vec<_>>(), vec!["other"]);
            let ts = r.route("jobs/1", "p");
            assert_eq!(ts.len(), 2, "one group member plus the plain subscriber");
            got.extend(ts.into_iter().map(|t| t.client).filter(|c| c != "other"));
        }
        assert_eq!(got, vec!["w1", "w2", "w1", "w2"]);
        assert_eq!(r.pick_shared("$share/g/jobs/+", "w1").map(|(c, _)| c), Some("w2".to_string()));
        assert!(r.unsubscribe("w1", "$share/g/jobs/+"));
        assert_eq!(clients(&mut r, "jobs/1"), vec!["other", "w2"]);
        assert_eq!(r.pick_shared("$share/g/jobs/+", "w2"), None, "no other member left");
    }

    #[test]
    fn every_subscribe_and_unsubscribe_changes_the_version() {
        let mut r = Router::default();
        let v0 = r.version();
        r.subscribe("a", "t/#", o(QoS::AtMostOnce));
        let v1 = r.version();
        assert_ne!(v0, v1);
        let found = r.route_plain("t/x", "p");
        assert_eq!((found.version, found.shared, found.targets.len()), (v1, false, 1));
        r.route("t/x", "p");
        assert_eq!(r.version(), v1, "lookups change nothing");
        r.unsubscribe("b", "t/#");
        assert_ne!(r.version(), v1, "even an unsubscribe that removes nothing");
    }

    #[test]
    fn shared_and_plain_subscriptions_of_one_client_are_separate_copies() {
        let mut r = Router::default();
        r.subscribe("c", "$share/g/t", o(QoS::AtMostOnce));
        r.subscribe("c", "t", o(QoS::AtMostOnce));
        let ts = r.route("t", "p");
        assert_eq!(ts.len(), 2, "spec 4.8.2: one copy per subscription kind");
        assert_eq!(ts.iter().filter(|t| t.shared.is_some()).count(), 1);
    }
}
