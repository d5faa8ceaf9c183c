//! The open streams by name: hashed for the lookup an append by name makes, and kept in
//! name order for listings by prefix (a scan of every name was most of a broker's SUBSCRIBE
//! with 100 000 streams).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::stream::StreamState;

#[derive(Default)]
pub(crate) struct StreamNames {
    by_name: HashMap<Arc<str>, Arc<StreamState>>,
    ordered: BTreeSet<Arc<str>>,
}

impl StreamNames {
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<StreamState>> {
        self.by_name.get(name)
    }

    /// Adds `state` under its name, replacing the stream held under it, if any.
    pub(crate) fn insert(&mut self, state: Arc<StreamState>) {
        let name: Arc<str> = state.name.clone();
        self.ordered.insert(name.clone());
        self.by_name.insert(name, state);
    }

    /// Adds `state` unless its name holds a stream with a higher id. At open, a name held by
    /// two ids is a creation whose catalogue record failed (its index entry stayed) and the
    /// name created again, with a higher id: that one has the records.
    pub(crate) fn insert_highest(&mut self, state: Arc<StreamState>) {
        if self.get(&state.name).is_none_or(|held| held.id < state.id) {
            self.insert(state);
        }
    }

    /// The streams whose name starts with `prefix`, in name order.
    pub(crate) fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Arc<StreamState>> + 'a {
        self.ordered
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |name| name.starts_with(prefix))
            .filter_map(|name| self.by_name.get(name))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<StreamState>> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::StreamMeta;
    use crate::options::Retention;

    fn state(id: u64, name: &str) -> Arc<StreamState> {
        let meta = StreamMeta {
            id,
            name: name.into(),
            shard: 0,
            first_offset: 0,
            next_offset: 0,
            retention: Retention::default(),
            compacted: false,
        };
        Arc::new(StreamState::from_meta(&meta))
    }

    #[test]
    fn prefixes_list_in_name_order_and_the_higher_id_holds_a_name() {
        let mut n = StreamNames::default();
        for (id, name) in [(1, "t/b"), (2, "t/a"), (3, "u"), (4, "t"), (5, "t/ab"), (6, "s")] {
            n.insert_highest(state(id, name));
        }
        n.insert_highest(state(9, "t/a"));
        n.insert_highest(state(7, "t/a"));
        let listed = |p: &str| n.with_prefix(p).map(|s| (s.name.to_string(), s.id)).collect::<Vec<_>>();
        let pairs = |v: &[(&str, u64)]| v.iter().map(|(s, i)| (s.to_string(), *i)).collect::<Vec<_>>();
        assert_eq!(listed("t/"), pairs(&[("t/a", 9), ("t/ab", 5), ("t/b", 1)]));
        assert_eq!(listed("t"), pairs(&[("t", 4), ("t/a", 9), ("t/ab", 5), ("t/b", 1)]));
        assert_eq!(listed("").len(), 6);
        assert!(listed("v").is_empty());
        assert_eq!(n.get("t/a").map(|s| s.id), Some(9));
        // A creation replaces whatever held the name.
        n.insert(state(10, "u"));
        assert_eq!(n.get("u").map(|s| s.id), Some(10));
        assert_eq!(n.values().count(), 6);
    }
}
