//! Revision-aware dedupe: one message per (event, revision).
//!
//! **The key.** An event is known by every id in its `ids` list; the preferred id can change
//! (USGS switches from an `ak…` to a `us…` id when networks' solutions are associated). The
//! Kafka key is the event's *logical id*: the first id under which quakestream published it.
//! Later revisions that list that id among their aliases are published under the same key, so
//! a change of preferred id never creates a second event. When a feature's aliases join two
//! events published separately (a merge), the smaller logical id (in byte order) is kept and
//! the other gets a `deleted` record, so downstream counts the event once.
//!
//! **The version.** `updated` (epoch ms): a revision is published when it is newer than the
//! newest one published for the event; the same or an older one is a duplicate.
//!
//! **Restarts.** The state is rebuilt from the records the source already wrote (their headers
//! carry the key, the aliases and the version), in version order, so a `kill -9` at any point
//! neither republishes nor misses a revision.
//!
//! **Memory.** Events whose origin time is older than the polled feed's window (plus a margin)
//! can no longer appear in it and are forgotten; "now" is the feed's own `generated` time, so
//! replays of old feeds behave as live ones did.

use std::collections::{HashMap, hash_map::Entry};

/// A revision as the dedupe state sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// Every id of the event, preferred first.
    pub ids: Vec<String>,
    pub updated_ms: i64,
    pub time_ms: i64,
}

/// What to do with a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish under `key`; `merged` are logical ids of events this one absorbs (each gets a
    /// `deleted` record).
    Publish { key: String, merged: Vec<String> },
    /// Already published (or older than what was).
    Duplicate,
}

/// A record the source wrote earlier, as read back from the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The record's key: the logical id.
    pub key: String,
    pub revision: Revision,
    /// Set on the `deleted` record written when this event was merged into another.
    pub merged_into: Option<String>,
}

#[derive(Debug, Clone)]
struct Event {
    updated_ms: i64,
    time_ms: i64,
    aliases: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Dedupe {
    /// Logical id → newest published revision.
    events: HashMap<String, Event>,
    /// Any id → logical id.
    aliases: HashMap<String, String>,
}

impl Dedupe {
    pub fn new() -> Dedupe {
        Dedupe::default()
    }

    /// Events remembered.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The logical id an id belongs to, if known.
    pub fn logical(&self, id: &str) -> Option<&str> {
        self.aliases.get(id).map(String::as_str)
    }

    /// Decides without changing state; call [`Dedupe::record`] once the record is published.
    pub fn check(&self, revision: &Revision) -> Decision {
        let mut known: Vec<&str> = revision
            .ids
            .iter()
            .filter_map(|id| self.aliases.get(id).map(String::as_str))
            .collect();
        known.sort_unstable();
        known.dedup();
        let Some(&key) = known.first() else {
            return match revision.ids.first() {
                Some(id) => Decision::Publish {
                    key: id.clone(),
                    merged: Vec::new(),
                },
                None => Decision::Duplicate,
            };
        };
        let newest = self.events.get(key).map_or(i64::MIN, |e| e.updated_ms);
        if revision.updated_ms <= newest && known.len() == 1 {
            return Decision::Duplicate;
        }
        Decision::Publish {
            key: key.to_string(),
            merged: known[1..].iter().map(|k| k.to_string()).collect(),
        }
    }

    /// Remembers a published revision under `key`; ids of `merged` events become its aliases.
    pub fn record(&mut self, key: &str, revision: &Revision, merged: &[String]) {
        for old in merged {
            if let Some(event) = self.events.remove(old) {
                for alias in event.aliases {
                    self.aliases.insert(alias, key.to_string());
                }
            }
            self.aliases.insert(old.clone(), key.to_string());
        }
        let event = match self.events.entry(key.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Event {
                updated_ms: i64::MIN,
                time_ms: revision.time_ms,
                aliases: vec![key.to_string()],
            }),
        };
        if revision.updated_ms >= event.updated_ms {
            event.updated_ms = revision.updated_ms;
            event.time_ms = revision.time_ms;
        }
        for id in &revision.ids {
            if !event.aliases.contains(id) {
                event.aliases.push(id.clone());
            }
        }
        self.aliases.insert(key.to_string(), key.to_string());
        for id in &revision.ids {
            self.aliases.insert(id.clone(), key.to_string());
        }
    }

    /// Rebuilds from what was already published, in any order.
    pub fn rebuild(&mut self, mut published: Vec<Published>) {
        published.sort_by_key(|p| p.revision.updated_ms);
        for p in published {
            match &p.merged_into {
                Some(target) => {
                    let anchor = Revision {
                        ids: Vec::new(),
                        ..p.revision.clone()
                    };
                    self.record(target, &anchor, std::slice::from_ref(&p.key));
                }
                None => {
                    let merged: Vec<String> = match self.check(&p.revision) {
                        Decision::Publish { merged, .. } => {
                            merged.into_iter().filter(|m| *m != p.key).collect()
                        }
                        Decision::Duplicate => Vec::new(),
                    };
                    self.record(&p.key, &p.revision, &merged);
                }
            }
        }
    }

    /// Forgets events whose origin time is before `cutoff_ms`.
    pub fn forget_before(&mut self, cutoff_ms: i64) -> usize {
        let before = self.events.len();
        let aliases = &mut self.aliases;
        self.events.retain(|_, event| {
            let keep = event.time_ms >= cutoff_ms;
            if !keep {
                for alias in &event.aliases {
                    aliases.remove(alias);
                }
            }
            keep
        });
        before - self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(ids: &[&str], updated_ms: i64) -> Revision {
        Revision {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            updated_ms,
            time_ms: 1_000,
        }
    }

    fn publish(d: &mut Dedupe, r: &Revision) -> Option<(String, Vec<String>)> {
        match d.check(r) {
            Decision::Publish { key, merged } => {
                d.record(&key, r, &merged);
                Some((key, merged))
            }
            Decision::Duplicate => None,
        }
    }

    #[test]
    fn one_message_per_revision() {
        let mut d = Dedupe::new();
        assert_eq!(
            publish(&mut d, &rev(&["a1"], 10)),
            Some(("a1".into(), vec![]))
        );
        assert_eq!(publish(&mut d, &rev(&["a1"], 10)), None);
        assert_eq!(publish(&mut d, &rev(&["a1"], 9)), None, "older revision");
        assert_eq!(
            publish(&mut d, &rev(&["a1"], 11)),
            Some(("a1".into(), vec![]))
        );
    }

    #[test]
    fn a_new_preferred_id_keeps_the_logical_key() {
        let mut d = Dedupe::new();
        publish(&mut d, &rev(&["ak1", "us1"], 10));
        // The preferred id changes to us1; the event is the same.
        assert_eq!(
            publish(&mut d, &rev(&["us1", "ak1", "at1"], 20)),
            Some(("ak1".into(), vec![]))
        );
        assert_eq!(publish(&mut d, &rev(&["at1"], 20)), None);
        assert_eq!(d.logical("at1"), Some("ak1"));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_merge_of_two_published_events_keeps_one() {
        let mut d = Dedupe::new();
        publish(&mut d, &rev(&["us9"], 10));
        publish(&mut d, &rev(&["at3"], 11));
        assert_eq!(
            publish(&mut d, &rev(&["us9", "at3"], 12)),
            Some(("at3".into(), vec!["us9".into()]))
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d.logical("us9"), Some("at3"));
        assert_eq!(publish(&mut d, &rev(&["us9"], 12)), None);
    }

    #[test]
    fn rebuild_in_any_order_equals_the_live_state() {
        let stream = vec![
            rev(&["ak1"], 10),
            rev(&["us9"], 11),
            rev(&["us1", "ak1"], 12),
            rev(&["us9", "ak1", "us1"], 13),
            rev(&["nc5"], 14),
        ];
        let mut live = Dedupe::new();
        let mut published = Vec::new();
        for r in &stream {
            if let Some((key, merged)) = publish(&mut live, r) {
                for m in merged {
                    published.push(Published {
                        key: m.clone(),
                        revision: Revision {
                            ids: vec![m],
                            ..r.clone()
                        },
                        merged_into: Some(key.clone()),
                    });
                }
                published.push(Published {
                    key,
                    revision: r.clone(),
                    merged_into: None,
                });
            }
        }
        assert!(
            published.iter().any(|p| p.merged_into.is_some()),
            "the stream merges"
        );
        for order in [published.clone(), published.iter().rev().cloned().collect()] {
            let mut rebuilt = Dedupe::new();
            rebuilt.rebuild(order);
            assert_rebuilt(&rebuilt, &live, &stream);
        }
    }

    fn assert_rebuilt(rebuilt: &Dedupe, live: &Dedupe, stream: &[Revision]) {
        for r in stream {
            assert_eq!(rebuilt.check(r), Decision::Duplicate, "{r:?}");
            let newer = Revision {
                updated_ms: 99,
                ..r.clone()
            };
            assert_eq!(rebuilt.check(&newer), live.check(&newer), "{r:?}");
        }
        assert_eq!(rebuilt.len(), live.len());
    }

    #[test]
    fn old_events_are_forgotten() {
        let mut d = Dedupe::new();
        publish(
            &mut d,
            &Revision {
                ids: vec!["old".into(), "old2".into()],
                updated_ms: 5,
                time_ms: 100,
            },
        );
        publish(
            &mut d,
            &Revision {
                ids: vec!["new".into()],
                updated_ms: 5,
                time_ms: 500,
            },
        );
        assert_eq!(d.forget_before(200), 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d.logical("old2"), None);
        assert_eq!(d.logical("new"), Some("new"));
    }
}
