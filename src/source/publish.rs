//! Writing a source's records to Kafka: the output profiles, the headers that let the source
//! rebuild its state, and the dead-letter topic.
//!
//! Delivery semantics: every record goes through the idempotent producer and counts as
//! published only once the broker acknowledged it; the caller updates its dedupe state only
//! for acknowledged records, so a failed send is retried at the next poll.

use futures::future::join_all;
use rdkafka::{
    Message,
    message::{BorrowedMessage, Headers},
};
use serde::{Deserialize, Serialize};

use super::{
    dedupe::{Decision, Dedupe, Published, Revision},
    outlet::Outlet,
};
use crate::{error::Result, kafka::producer::Delivery, record::Quake};

/// Header: every id of the event, comma-separated, preferred first.
pub const H_IDS: &str = "qs-ids";
/// Header: the revision's `updated`, epoch ms.
pub const H_UPDATED: &str = "qs-updated";
/// Header: origin time, epoch ms.
pub const H_TIME: &str = "qs-time";
/// Header: on a `deleted` record written for a merge, the logical id it was merged into.
pub const H_MERGED_INTO: &str = "qs-merged-into";
/// Header: `metadata.generated` of the feed the record came from, epoch ms.
pub const H_GENERATED: &str = "qs-generated";

/// What a source writes to its topic (docs/architecture.md, compatibility profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The `Quake` record, one message per revision (topic `earthquakes`).
    #[default]
    Quakes,
    /// The course's Spanish layout `{id, magnitud, lugar, latitud, longitud, profundidad_km,
    /// timestamp, tsunami}`, plus the revision's `updated` and `status` (so that a consumer
    /// can tell a revision, and a deletion, from a new event) (topic `sismos`).
    Sismos,
    /// Each polled FeatureCollection whole, one message per new feed (topic `earthquake`, as
    /// the Snowflake tutorial's producer writes it).
    RawFeed,
}

impl Profile {
    pub fn default_topic(self) -> &'static str {
        match self {
            Profile::Quakes => "earthquakes",
            Profile::Sismos => "sismos",
            Profile::RawFeed => "earthquake",
        }
    }
}

/// The course's record.
#[derive(Debug, Serialize)]
struct Sismo<'a> {
    id: &'a str,
    magnitud: Option<f64>,
    lugar: Option<&'a str>,
    latitud: f64,
    longitud: f64,
    profundidad_km: f64,
    timestamp: String,
    tsunami: bool,
    updated: String,
    status: &'a str,
}

/// One record to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The logical id (the Kafka key).
    pub key: String,
    pub quake: Quake,
    pub revision: Revision,
    pub merged_into: Option<String>,
    pub generated_ms: Option<i64>,
}

/// Writes normalized quakes under an output profile, through the source's [`Outlet`].
pub struct Publisher {
    outlet: Outlet,
    profile: Profile,
}

impl Publisher {
    pub fn new(outlet: Outlet, profile: Profile) -> Publisher {
        Publisher { outlet, profile }
    }

    pub fn topic(&self) -> &str {
        self.outlet.topic()
    }

    pub fn outlet(&self) -> &Outlet {
        &self.outlet
    }

    pub fn outlet_mut(&mut self) -> &mut Outlet {
        &mut self.outlet
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The message value of a record under this publisher's profile.
    pub fn render(&self, quake: &Quake) -> Vec<u8> {
        let rendered = match self.profile {
            Profile::Sismos => serde_json::to_vec(&Sismo {
                id: &quake.id,
                magnitud: quake.mag,
                lugar: quake.place.as_deref(),
                latitud: quake.lat,
                longitud: quake.lon,
                profundidad_km: quake.depth_km,
                timestamp: quake.time.rfc3339().unwrap_or_default(),
                tsunami: quake.tsunami,
                updated: quake.updated.rfc3339().unwrap_or_default(),
                status: &quake.status,
            }),
            Profile::Quakes | Profile::RawFeed => serde_json::to_vec(quake),
        };
        // Serializing plain structs of strings and numbers cannot fail.
        rendered.unwrap_or_default()
    }

    /// Publishes records concurrently and counts each one acknowledged (with its delays since
    /// the origin time and the revision); the first failure, once every send has settled.
    pub async fn publish(&self, items: &[Outgoing]) -> Result<()> {
        let results = join_all(items.iter().map(|item| self.publish_one(item))).await;
        let metrics = self.outlet.metrics();
        let now = chrono::Utc::now().timestamp_millis();
        let mut failure = None;
        for (item, result) in items.iter().zip(results) {
            match result {
                Ok(_) => {
                    metrics.published.inc();
                    metrics.origin_delay.observe_ms(now - item.revision.time_ms);
                    metrics
                        .update_delay
                        .observe_ms(now - item.revision.updated_ms);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn publish_one(&self, item: &Outgoing) -> Result<Delivery> {
        let value = self.render(&item.quake);
        let ids = item.revision.ids.join(",");
        let updated = item.revision.updated_ms.to_string();
        let time = item.revision.time_ms.to_string();
        let generated = item.generated_ms.map(|g| g.to_string());
        let mut headers: Vec<(&str, &[u8])> = vec![
            (H_IDS, ids.as_bytes()),
            (H_UPDATED, updated.as_bytes()),
            (H_TIME, time.as_bytes()),
        ];
        if let Some(target) = &item.merged_into {
            headers.push((H_MERGED_INTO, target.as_bytes()));
        }
        if let Some(g) = &generated {
            headers.push((H_GENERATED, g.as_bytes()));
        }
        self.outlet
            .send(
                Some(&item.key),
                &value,
                Some(item.revision.time_ms),
                &headers,
            )
            .await
    }

    /// Publishes a whole feed body (the `raw-feed` profile).
    pub async fn publish_raw(&self, key: &str, body: &[u8], generated_ms: i64) -> Result<Delivery> {
        let generated = generated_ms.to_string();
        self.outlet
            .send(
                Some(key),
                body,
                Some(generated_ms),
                &[(H_GENERATED, generated.as_bytes())],
            )
            .await
    }
}

/// What a batch of normalized records comes to after dedupe.
#[derive(Debug, Default)]
pub struct Plan {
    /// Records to publish: new revisions, and a `deleted` record for every event merged away.
    pub outgoing: Vec<Outgoing>,
    /// Revisions already published.
    pub duplicates: u64,
}

/// Decides, record by record, what to publish, and records it in `dedupe` at once, so that two
/// records of one batch sharing an alias agree on a key. If publishing then fails, the caller
/// must rebuild `dedupe` from the topic.
pub fn plan(dedupe: &mut Dedupe, quakes: Vec<Quake>, generated_ms: Option<i64>) -> Plan {
    let mut plan = Plan::default();
    for mut quake in quakes {
        let revision = Revision {
            ids: quake.ids.clone(),
            updated_ms: quake.updated.0,
            time_ms: quake.time.0,
        };
        let Decision::Publish { key, merged } = dedupe.check(&revision) else {
            plan.duplicates += 1;
            continue;
        };
        dedupe.record(&key, &revision, &merged);
        for old in merged {
            let mut gone = quake.clone();
            gone.id = old.clone();
            gone.ids = vec![old.clone()];
            gone.status = "deleted".into();
            plan.outgoing.push(Outgoing {
                key: old.clone(),
                quake: gone,
                revision: Revision {
                    ids: vec![old],
                    ..revision.clone()
                },
                merged_into: Some(key.clone()),
                generated_ms,
            });
        }
        quake.id = key.clone();
        plan.outgoing.push(Outgoing {
            key,
            quake,
            revision,
            merged_into: None,
            generated_ms,
        });
    }
    plan
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The feed generation time a record carries, if any.
pub fn generated_of(message: &BorrowedMessage<'_>) -> Option<i64> {
    header(message, H_GENERATED).and_then(|g| g.parse().ok())
}

/// What a record already in the topic says about the dedupe state: from its headers, or from
/// its value when it is a `Quake` written by another producer.
pub fn published_of(message: &BorrowedMessage<'_>) -> Option<Published> {
    let key = std::str::from_utf8(message.key()?).ok()?.to_string();
    if let (Some(ids), Some(updated), Some(time)) = (
        header(message, H_IDS),
        header(message, H_UPDATED),
        header(message, H_TIME),
    ) {
        return Some(Published {
            key,
            revision: Revision {
                ids: ids
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                updated_ms: updated.parse().ok()?,
                time_ms: time.parse().ok()?,
            },
            merged_into: header(message, H_MERGED_INTO).map(str::to_string),
        });
    }
    let quake: Quake = serde_json::from_slice(message.payload()?).ok()?;
    Some(Published {
        key,
        revision: Revision {
            updated_ms: quake.updated.0,
            time_ms: quake.time.0,
            ids: quake.ids,
        },
        merged_into: None,
    })
}

/// The dedupe state of everything already in `topic`, the newest feed generation time any
/// record carries, and how many records were read.
pub async fn rebuild_dedupe(
    settings: &crate::kafka::KafkaSettings,
    topic: &str,
) -> Result<(Dedupe, Option<i64>, u64)> {
    let (settings, topic) = (settings.clone(), topic.to_string());
    let (published, generated, read) = tokio::task::spawn_blocking(move || {
        let mut published = Vec::new();
        let mut generated: Option<i64> = None;
        let read = crate::kafka::reader::scan(&settings, &topic, |message| {
            if let Some(g) = generated_of(message) {
                generated = Some(generated.map_or(g, |max| max.max(g)));
            }
            if let Some(p) = published_of(message) {
                published.push(p);
            }
        })?;
        Ok::<_, crate::Error>((published, generated, read))
    })
    .await
    .map_err(|e| crate::Error::Broker(format!("rebuild task failed: {e}")))??;
    let mut dedupe = Dedupe::new();
    dedupe.rebuild(published);
    Ok((dedupe, generated, read))
}
