//! Subscriptions: a topic-filter trie with `+` and `#`, `$`-topics kept out of root
//! wildcards, and shared subscription groups (`$share/{group}/{filter}`) that deliver each
//! message to one member, round robin.

use std::collections::HashMap;

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

/// One client that a message goes to, with the combined options of all its matching
/// subscriptions (MQTT 5 section 3.3.4: one delivery, the highest QoS, every identifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
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
    /// client → options of its plain subscription ending here.
    subs: HashMap<String, SubOptions>,
    /// group → members (client, options) and the round-robin cursor.
    shared: HashMap<String, (Vec<(String, SubOptions)>, usize)>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// The subscription trie.
#[derive(Default, Debug)]
pub struct Router {
    root: Node,
    count: usize,
}

impl Router {
    /// Adds or replaces `client`'s subscription to `filter` (already validated). Returns
    /// whether it existed before.
    pub fn subscribe(&mut self, client: &str, filter: &str, opts: SubOptions) -> bool {
        let (group, plain) = split_shared(filter);
        let mut node = &mut self.root;
        for level in plain.split('/') {
            node = node.children.entry(level.to_string()).or_default();
        }
        let existed = match group {
            None => node.subs.insert(client.to_string(), opts).is_some(),
            Some(g) => {
                let (members, _) = node.shared.entry(g.to_string()).or_default();
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
        let (group, plain) = split_shared(filter);
        let levels: Vec<&str> = plain.split('/').collect();
        let removed = remove(&mut self.root, &levels, client, group);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The clients a message on `topic` from `publisher` goes to.
    pub fn route(&mut self, topic_name: &str, publisher: &str) -> Vec<Target> {
        let levels: Vec<&str> = topic_name.split('/').collect();
        let mut found: Vec<(String, SubOptions)> = Vec::new();
        let dollar = topic_name.starts_with('$');
        collect(&mut self.root, &levels, 0, dollar, &mut found);
        let mut targets: Vec<Target> = Vec::new();
        for (client, o) in found {
            if o.no_local && client == publisher {
                continue;
            }
            match targets.iter_mut().find(|t| t.client == client) {
                Some(t) => {
                    t.qos = t.qos.max(o.qos);
                    t.retain_as_published |= o.retain_as_published;
                    t.ids.extend(o.id);
                }
                None => targets.push(Target {
                    client,
                    qos: o.qos,
                    retain_as_published: o.retain_as_published,
                    ids: o.id.into_iter().collect(),
                }),
            }
        }
        targets
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
                let Some((members, cursor)) = node.shared.get_mut(g) else { return false };
                let before = members.len();
                members.retain(|(c, _)| c != client);
                let removed = members.len() != before;
                if members.is_empty() {
                    node.shared.remove(g);
                } else if *cursor >= members.len() {
                    *cursor = 0;
                }
                removed
            }
        },
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else { return false };
            let removed = remove(child, rest, client, group);
            if child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

fn collect(node: &mut Node, levels: &[&str], depth: usize, dollar: bool, out: &mut Vec<(String, SubOptions)>) {
    // `#` here matches this level and everything below, including the parent level itself.
    if !(dollar && depth == 0) {
        if let Some(hash) = node.children.get_mut("#") {
            take(hash, out);
        }
    }
    match levels.split_first() {
        None => take(node, out),
        Some((first, rest)) => {
            if let Some(child) = node.children.get_mut(*first) {
                collect(child, rest, depth + 1, dollar, out);
            }
            if !(dollar && depth == 0) {
                if let Some(plus) = node.children.get_mut("+") {
                    collect(plus, rest, depth + 1, dollar, out);
                }
            }
        }
    }
}

fn take(node: &mut Node, out: &mut Vec<(String, SubOptions)>) {
    out.extend(node.subs.iter().map(|(c, o)| (c.clone(), *o)));
    for (members, cursor) in node.shared.values_mut() {
        if members.is_empty() {
            continue;
        }
        let i = *cursor % members.len();
        *cursor = (i + 1) % members.len();
        out.push(members[i].clone());
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
            let ts = r.route("jobs/1", "p");
            assert_eq!(ts.len(), 2, "one group member plus the plain subscriber");
            got.extend(ts.into_iter().map(|t| t.client).filter(|c| c != "other"));
        }
        assert_eq!(got, vec!["w1", "w2", "w1", "w2"]);
        assert!(r.unsubscribe("w1", "$share/g/jobs/+"));
        assert_eq!(clients(&mut r, "jobs/1"), vec!["other", "w2"]);
    }
}
