//! Who is subscribed to what, indexed both ways.
//!
//! Each topic keeps a contiguous `Vec` of subscriber ids (what fan-out walks); each client
//! keeps the list of its subscriptions (what a disconnect walks). Every entry on one side
//! records its index on the other side, so removing a subscription is two `swap_remove`s and
//! two index fix-ups: O(1), whatever the topic's size. Disconnecting N subscribers of a topic
//! is therefore O(N), not O(N^2).
//!
//! A client without subscriptions has no entry at all, and a topic without subscribers is
//! freed, so idle connections cost the hub nothing. The tables themselves shrink when they fall
//! to a quarter of their capacity, and the allocator is asked to return freed pages to the
//! system when they do (see [`Registry::compact`]): a churn of short-lived topics does not
//! ratchet the server's resident memory up to its peak.

use std::collections::HashMap;
use std::rc::Rc;

use slab::Slab;

use super::ClientId;

type TopicKey = usize;

struct Topic {
    name: Rc<str>,
    /// The subscribers, in no particular order; fan-out iterates this.
    subscribers: Vec<ClientId>,
    /// Parallel to `subscribers`: where this topic's entry sits in that subscriber's list.
    /// Kept apart so the fan-out loop reads only ids.
    entry_index: Vec<usize>,
}

/// One subscription of one client.
#[derive(Clone, Copy, Debug)]
struct Subscription {
    topic: TopicKey,
    /// Where the client sits in the topic's `subscribers`.
    slot: usize,
}

/// What `subscribe` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeOutcome {
    Added,
    AlreadySubscribed,
    /// The client already has `max` subscriptions.
    LimitReached,
    /// The topic is new and the server already has `max_topics` topics.
    TopicLimitReached,
}

/// Tables smaller than this (in entries) are never shrunk: not worth a reallocation.
const SHRINK_FLOOR: usize = 64;

#[derive(Default)]
pub struct Registry {
    topics: Slab<Topic>,
    by_name: HashMap<Rc<str>, TopicKey>,
    clients: HashMap<ClientId, Vec<Subscription>>,
}

impl Registry {
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    pub fn subscription_count(&self, client: ClientId) -> usize {
        self.clients.get(&client).map_or(0, Vec::len)
    }

    /// The current subscribers of `topic` (empty for an unknown topic).
    pub fn subscribers(&self, topic: &str) -> &[ClientId] {
        self.by_name.get(topic).and_then(|&key| self.topics.get(key)).map_or(&[], |t| &t.subscribers)
    }

    /// The topics `client` is subscribed to.
    pub fn topics_of(&self, client: ClientId) -> impl Iterator<Item = &str> {
        let subs = self.clients.get(&client).map_or(&[][..], Vec::as_slice);
        subs.iter().filter_map(|s| self.topics.get(s.topic)).map(|t| &*t.name)
    }

    /// Subscribes `client` to `topic` unless it already is, has `max` subscriptions, or the
    /// topic is new and there are `max_topics` already. Checking the client's own list is
    /// O(its subscriptions), bounded by `max`.
    pub fn subscribe(
        &mut self,
        client: ClientId,
        topic: &str,
        max: usize,
        max_topics: usize,
    ) -> SubscribeOutcome {
        let existing_key = self.by_name.get(topic).copied();
        let subs = self.clients.get(&client).map_or(&[][..], Vec::as_slice);
        if let Some(key) = existing_key {
            if subs.iter().any(|s| s.topic == key) {
                return SubscribeOutcome::AlreadySubscribed;
            }
        }
        if subs.len() >= max {
            return SubscribeOutcome::LimitReached;
        }
        if existing_key.is_none() && self.topics.len() >= max_topics {
            return SubscribeOutcome::TopicLimitReached;
        }
        let key = match existing_key {
            Some(key) => key,
            None => {
                let name: Rc<str> = Rc::from(topic);
                let key = self.topics.insert(Topic {
                    name: Rc::clone(&name),
                    subscribers: Vec::new(),
                    entry_index: Vec::new(),
                });
                self.by_name.insert(name, key);
                key
            }
        };
        let Some(topic) = self.topics.get_mut(key) else {
            // The key came from `by_name` or was just inserted; the maps never disagree.
            log::error!("hub registry: topic key {key} missing");
            return SubscribeOutcome::AlreadySubscribed;
        };
        let subs = self.clients.entry(client).or_default();
        topic.subscribers.push(client);
        topic.entry_index.push(subs.len());
        subs.push(Subscription { topic: key, slot: topic.subscribers.len() - 1 });
        SubscribeOutcome::Added
    }

    /// Unsubscribes `client` from `topic`; false when it was not subscribed.
    pub fn unsubscribe(&mut self, client: ClientId, topic: &str) -> bool {
        let Some(&key) = self.by_name.get(topic) else {
            return false;
        };
        let Some(subs) = self.clients.get_mut(&client) else {
            return false;
        };
        let Some(position) = subs.iter().position(|s| s.topic == key) else {
            return false;
        };
        let removed = subs.swap_remove(position);
        // The client's last entry moved into `position`: tell its topic where it went.
        if let Some(moved) = subs.get(position) {
            if let Some(index) =
                self.topics.get_mut(moved.topic).and_then(|t| t.entry_index.get_mut(moved.slot))
            {
                *index = position;
            }
        }
        if subs.is_empty() {
            self.clients.remove(&client);
        } else {
            shrink_if_sparse(subs);
        }
        self.detach(removed);
        self.compact();
        true
    }

    /// Drops `client` from every topic: O(its subscriptions). (The hub always wants to hear of
    /// emptied topics; this form is for the registry's own tests.)
    #[cfg(test)]
    pub fn remove_client(&mut self, client: ClientId) {
        self.remove_client_with(client, |_| {});
    }

    /// Drops `client` from every topic: O(its subscriptions); `emptied` hears the name of each
    /// topic this leaves without subscribers.
    pub fn remove_client_with(&mut self, client: ClientId, mut emptied: impl FnMut(&str)) {
        let Some(subs) = self.clients.remove(&client) else {
            return;
        };
        for sub in subs {
            if let Some(name) = self.detach(sub) {
                emptied(&name);
            }
        }
        self.compact();
    }

    /// Shrinks the tables that fell to a quarter of their capacity, and when any did, asks the
    /// allocator to hand freed pages back to the system. Freed topic names and subscriber lists
    /// are scattered small chunks: without the trim, the heap keeps its peak size after a
    /// churn even though nothing uses it. Shrinking halves at most, so growing back is
    /// amortized O(1), and the trim (O(heap)) runs only at these rare halvings.
    fn compact(&mut self) {
        let mut shrunk = false;
        if self.topics.is_empty() && self.topics.capacity() > SHRINK_FLOOR {
            // A slab cannot move live entries (their keys are in use), but an empty one can go.
            self.topics = Slab::new();
            shrunk = true;
        } else if self.topics.capacity() > SHRINK_FLOOR && self.topics.len() < self.topics.capacity() / 4 {
            // Only trailing vacant entries can be dropped; the holes stay reusable.
            let before = self.topics.capacity();
            self.topics.shrink_to_fit();
            shrunk |= self.topics.capacity() < before;
        }
        shrunk |= shrink_map_if_sparse(&mut self.by_name);
        shrunk |= shrink_map_if_sparse(&mut self.clients);
        if shrunk {
            crate::sys::release_free_memory();
        }
    }

    /// Removes one subscriber slot from a topic, fixing the entry of the subscriber that moved
    /// into it, and frees the topic when it empties. The departing client's own list has
    /// already been updated (or dropped) by the caller. Returns the topic's name if freed.
    fn detach(&mut self, sub: Subscription) -> Option<Rc<str>> {
        let Some(topic) = self.topics.get_mut(sub.topic) else {
            log::error!("hub registry: subscription to missing topic {}", sub.topic);
            return None;
        };
        if sub.slot >= topic.subscribers.len() || sub.slot >= topic.entry_index.len() {
            log::error!("hub registry: slot {} out of range for topic {:?}", sub.slot, topic.name);
            return None;
        }
        topic.subscribers.swap_remove(sub.slot);
        topic.entry_index.swap_remove(sub.slot);
        if let (Some(&moved_client), Some(&moved_entry)) =
            (topic.subscribers.get(sub.slot), topic.entry_index.get(sub.slot))
        {
            if let Some(entry) = self.clients.get_mut(&moved_client).and_then(|s| s.get_mut(moved_entry)) {
                entry.slot = sub.slot;
            }
        }
        if topic.subscribers.is_empty() {
            let topic = self.topics.remove(sub.topic);
            self.by_name.remove(&topic.name);
            Some(topic.name)
        } else {
            shrink_if_sparse(&mut topic.subscribers);
            shrink_if_sparse(&mut topic.entry_index);
            None
        }
    }

    /// Checks that both indexes agree (tests only).
    #[cfg(test)]
    pub fn assert_consistent(&self) {
        assert_eq!(self.topics.len(), self.by_name.len());
        for (key, topic) in &self.topics {
            assert_eq!(self.by_name.get(&topic.name), Some(&key));
            assert!(!topic.subscribers.is_empty(), "empty topic {:?} kept", topic.name);
            assert_eq!(topic.subscribers.len(), topic.entry_index.len());
            for (slot, (&client, &entry)) in topic.subscribers.iter().zip(&topic.entry_index).enumerate() {
                let sub = self.clients[&client][entry];
                assert_eq!((sub.topic, sub.slot), (key, slot));
            }
        }
        for (client, subs) in &self.clients {
            assert!(!subs.is_empty(), "empty list kept for client {client}");
            for (entry, sub) in subs.iter().enumerate() {
                let topic = &self.topics[sub.topic];
                assert_eq!((topic.subscribers[sub.slot], topic.entry_index[sub.slot]), (*client, entry));
            }
        }
    }
}

/// Halves a map that fell to a quarter of its capacity; true when it did.
fn shrink_map_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) -> bool {
    let capacity = map.capacity();
    if capacity > SHRINK_FLOOR && map.len() < capacity / 4 {
        map.shrink_to(capacity / 2);
        return map.capacity() < capacity;
    }
    false
}

/// Gives memory back once a list has shrunk to a quarter of its capacity (halving keeps the
/// amortized cost O(1) when it grows again).
fn shrink_if_sparse<T>(list: &mut Vec<T>) {
    if list.capacity() > 16 && list.len() < list.capacity() / 4 {
        list.shrink_to(list.capacity() / 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_twice_is_harmless() {
        let mut r = Registry::default();
        assert_eq!(r.subscribe(1, "t", 10, usize::MAX), SubscribeOutcome::Added);
        assert_eq!(r.subscribe(1, "t", 10, usize::MAX), SubscribeOutcome::AlreadySubscribed);
        assert_eq!(r.subscribers("t"), &[1]);
        assert_eq!(r.subscription_count(1), 1);
        r.assert_consistent();
    }

    #[test]
    fn limit_counts_distinct_topics_and_resubscribing_at_the_limit_is_fine() {
        let mut r = Registry::default();
        assert_eq!(r.subscribe(1, "a", 2, usize::MAX), SubscribeOutcome::Added);
        assert_eq!(r.subscribe(1, "b", 2, usize::MAX), SubscribeOutcome::Added);
        assert_eq!(r.subscribe(1, "c", 2, usize::MAX), SubscribeOutcome::LimitReached);
        assert_eq!(r.subscribe(1, "a", 2, usize::MAX), SubscribeOutcome::AlreadySubscribed);
        assert_eq!(r.topic_count(), 2, "a refused subscription creates no topic");
        assert_eq!(r.subscribe(2, "x", 0, usize::MAX), SubscribeOutcome::LimitReached);
        assert_eq!(r.subscription_count(2), 0);
        r.assert_consistent();
    }

    #[test]
    fn unsubscribe_frees_empty_topics_and_clients() {
        let mut r = Registry::default();
        r.subscribe(1, "a", 10, usize::MAX);
        r.subscribe(2, "a", 10, usize::MAX);
        r.subscribe(1, "b", 10, usize::MAX);
        assert!(!r.unsubscribe(3, "a"));
        assert!(!r.unsubscribe(1, "zzz"));
        assert!(r.unsubscribe(1, "b"));
        assert!(!r.unsubscribe(1, "b"));
        assert_eq!(r.topic_count(), 1);
        assert!(r.unsubscribe(1, "a"));
        assert_eq!(r.subscription_count(1), 0);
        assert!(!r.clients.contains_key(&1), "a client without subscriptions has no entry");
        assert_eq!(r.subscribers("a"), &[2]);
        r.assert_consistent();
    }

    #[test]
    fn remove_client_frees_empty_topics() {
        let mut r = Registry::default();
        r.subscribe(1, "solo", 10, usize::MAX);
        r.subscribe(1, "shared", 10, usize::MAX);
        r.subscribe(2, "shared", 10, usize::MAX);
        r.remove_client(1);
        assert_eq!(r.topic_count(), 1);
        assert!(r.subscribers("solo").is_empty());
        assert_eq!(r.subscribers("shared"), &[2]);
        r.remove_client(1); // twice: nothing happens
        r.remove_client(2);
        assert_eq!(r.topic_count(), 0);
        assert!(r.by_name.is_empty() && r.clients.is_empty());
        r.assert_consistent();
    }

    #[test]
    fn indexes_stay_consistent_under_mixed_churn() {
        // A deterministic pseudo-random walk over a few clients and topics.
        let mut r = Registry::default();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let client = (state % 13) as usize;
            let topic = ["a", "b", "c", "d", "e"][(state >> 8) as usize % 5];
            match (state >> 16) % 7 {
                0..=3 => {
                    r.subscribe(client, topic, 4, usize::MAX);
                }
                4 | 5 => {
                    r.unsubscribe(client, topic);
                }
                _ => r.remove_client(client),
            }
            r.assert_consistent();
        }
    }

    #[test]
    fn disconnecting_many_subscribers_is_linear() {
        // 20,000 clients on two topics, removed from the middle outwards: with O(n) removals
        // this would take ~10^8 steps per topic; it must finish instantly and stay consistent.
        let mut r = Registry::default();
        let n = 20_000;
        for c in 0..n {
            r.subscribe(c, "big", 4, usize::MAX);
            r.subscribe(c, "other", 4, usize::MAX);
        }
        for c in (0..n).step_by(2).chain((1..n).step_by(2)) {
            r.remove_client(c);
        }
        assert_eq!(r.topic_count(), 0);
        assert!(r.clients.is_empty());
    }

    #[test]
    fn topic_limit_refuses_only_new_topics() {
        let mut r = Registry::default();
        assert_eq!(r.subscribe(1, "a", 10, 2), SubscribeOutcome::Added);
        assert_eq!(r.subscribe(1, "b", 10, 2), SubscribeOutcome::Added);
        assert_eq!(r.subscribe(1, "c", 10, 2), SubscribeOutcome::TopicLimitReached);
        assert_eq!(r.subscribe(2, "a", 10, 2), SubscribeOutcome::Added, "existing topics stay open");
        assert_eq!(r.topic_count(), 2);
        r.remove_client(1);
        assert_eq!(r.subscribe(1, "c", 10, 2), SubscribeOutcome::Added, "a freed topic frees a place");
        r.assert_consistent();
    }

    #[test]
    fn tables_shrink_after_a_churn() {
        let mut r = Registry::default();
        for c in 0..200 {
            for t in 0..50 {
                r.subscribe(c, &format!("topic-{c}-{t}"), 64, usize::MAX);
            }
        }
        let peak = (r.topics.capacity(), r.by_name.capacity(), r.clients.capacity());
        assert!(peak.0 >= 10_000 && peak.1 >= 10_000 && peak.2 >= 200);
        for c in 0..199 {
            r.remove_client(c);
        }
        r.assert_consistent();
        assert!(r.by_name.capacity() < peak.1 / 8, "{} of {}", r.by_name.capacity(), peak.1);
        assert!(r.clients.capacity() <= peak.2 / 4, "{} of {}", r.clients.capacity(), peak.2);
        r.remove_client(199);
        assert!(r.topics.capacity() <= SHRINK_FLOOR && r.by_name.capacity() <= SHRINK_FLOOR * 2);
        // And the tables grow again as usual.
        r.subscribe(1, "again", 4, usize::MAX);
        assert_eq!(r.subscribers("again"), &[1]);
        r.assert_consistent();
    }

    #[test]
    fn lists_give_memory_back() {
        let mut r = Registry::default();
        for c in 0..1000 {
            r.subscribe(c, "t", 4, usize::MAX);
        }
        for c in 1..1000 {
            r.remove_client(c);
        }
        let key = r.by_name["t"];
        assert!(r.topics[key].subscribers.capacity() < 100);
    }
}
