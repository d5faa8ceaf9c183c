//! Topic aliases the broker assigns towards a v5 client (MQTT 5 section 3.3.2.3.4): the
//! first PUBLISH on a topic carries the topic and a new alias, later ones only the alias.
//! The client says how many it accepts (Topic Alias Maximum in CONNECT); when all are in use
//! the oldest assignment is reused for the new topic (sent again with its full name, which
//! remaps the alias at the client). Aliases live as long as the network connection.

use std::collections::HashMap;

use crate::codec::{ByteStr, Publish};

/// Outbound topic aliases of one connection.
#[derive(Debug, Default)]
pub(crate) struct OutboundAliases {
    max: u16,
    by_topic: HashMap<ByteStr, u16>,
    /// Topic of alias `i + 1`.
    by_alias: Vec<ByteStr>,
    /// Next alias to reuse once all are taken (round robin, 0-based).
    evict: u16,
}

impl OutboundAliases {
    /// Aliases for a client that accepts `max` of them (0: none).
    pub(crate) fn new(max: u16) -> OutboundAliases {
        OutboundAliases { max, ..Default::default() }
    }

    /// Puts an alias on `p`: a known topic is replaced by its alias, a new one gets one.
    pub(crate) fn apply(&mut self, p: &mut Publish) {
        if self.max == 0 || p.topic.is_empty() {
            return;
        }
        if let Some(&a) = self.by_topic.get(&p.topic) {
            p.properties.topic_alias = Some(a);
            p.topic = ByteStr::default();
            return;
        }
        let alias = if self.by_alias.len() < self.max as usize {
            self.by_alias.push(p.topic.clone());
            self.by_alias.len() as u16
        } else {
            let i = self.evict as usize;
            self.evict = (self.evict + 1) % self.max;
            let old = std::mem::replace(&mut self.by_alias[i], p.topic.clone());
            self.by_topic.remove(&old);
            i as u16 + 1
        };
        self.by_topic.insert(p.topic.clone(), alias);
        p.properties.topic_alias = Some(alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn publish(topic: &str) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: Default::default(),
            payload: Default::default(),
        }
    }

    fn send(a: &mut OutboundAliases, topic: &str) -> (String, Option<u16>) {
        let mut p = publish(topic);
        a.apply(&mut p);
        (p.topic.to_string(), p.properties.topic_alias)
    }

    #[test]
    fn first_use_sends_topic_and_alias_then_alias_only() {
        let mut a = OutboundAliases::new(2);
        assert_eq!(send(&mut a, "a"), ("a".into(), Some(1)));
        assert_eq!(send(&mut a, "a"), ("".into(), Some(1)));
        assert_eq!(send(&mut a, "b"), ("b".into(), Some(2)));
        // Full: the oldest alias (1) is remapped to "c" with the full name.
        assert_eq!(send(&mut a, "c"), ("c".into(), Some(1)));
        assert_eq!(send(&mut a, "c"), ("".into(), Some(1)));
        assert_eq!(send(&mut a, "a"), ("a".into(), Some(2)), "a lost its alias; b's is reused next");
        assert_eq!(send(&mut a, "b"), ("b".into(), Some(1)));
    }

    #[test]
    fn a_client_without_aliases_gets_full_topics() {
        let mut a = OutboundAliases::new(0);
        assert_eq!(send(&mut a, "a"), ("a".into(), None));
        assert_eq!(send(&mut a, "a"), ("a".into(), None));
    }
}
