//! `quakestream topics list | create | describe`.

use super::print_out;
use crate::{
    cli::TopicsCommand,
    config::Config,
    error::Result,
    kafka::{
        KafkaSettings, TopicName,
        admin::{Admin, TopicDescription},
    },
};

pub async fn topics(config: &Config, command: TopicsCommand) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    // Validate names before reaching for the network.
    let topic = match &command {
        TopicsCommand::List => None,
        TopicsCommand::Create { topic, .. } | TopicsCommand::Describe { topic } => {
            Some(topic.parse::<TopicName>()?)
        }
    };
    let admin = Admin::connect(&settings).await?;
    match (command, topic) {
        (TopicsCommand::List, _) => {
            let topics = admin.list().await?;
            let mut out = format!("{:<40} {:>10} {:>12}\n", "TOPIC", "PARTITIONS", "MESSAGES");
            for t in topics {
                out.push_str(&format!(
                    "{:<40} {:>10} {:>12}\n",
                    t.name, t.partitions, t.messages
                ));
            }
            print_out(&out)?;
        }
        (
            TopicsCommand::Create {
                partitions,
                replication_factor,
                ..
            },
            Some(topic),
        ) => {
            let partitions = partitions.unwrap_or(settings.partitions);
            let replication = replication_factor.unwrap_or(settings.replication_factor);
            admin.create(&topic, partitions, replication).await?;
            print_out(&format!(
                "created topic {topic} ({partitions} partitions, replication factor {replication})\n"
            ))?;
        }
        (TopicsCommand::Describe { .. }, Some(topic)) => {
            let description = admin.describe(&topic).await?;
            print_out(&render_description(&description))?;
        }
        _ => {}
    }
    Ok(())
}

/// The `topics describe` table.
pub fn render_description(d: &TopicDescription) -> String {
    let mut out = format!("topic {}: {} partitions\n\n", d.name, d.partitions.len());
    out.push_str(&format!(
        "{:<10} {:>8} {:>12} {:>12}\n",
        "PARTITION", "LEADER", "START", "END"
    ));
    for p in &d.partitions {
        out.push_str(&format!(
            "{:<10} {:>8} {:>12} {:>12}\n",
            p.id, p.leader, p.start, p.end
        ));
    }
    out.push('\n');
    if d.groups.is_empty() {
        out.push_str("no consumer group has committed offsets on this topic\n");
        return out;
    }
    out.push_str(&format!(
        "{:<32} {:<10} {:>12} {:>12} {:>10}\n",
        "GROUP", "PARTITION", "COMMITTED", "END", "LAG"
    ));
    for g in &d.groups {
        for p in &g.partitions {
            let committed = p.committed.map_or("-".to_string(), |c| c.to_string());
            out.push_str(&format!(
                "{:<32} {:<10} {:>12} {:>12} {:>10}\n",
                g.group, p.partition, committed, p.end, p.lag
            ));
        }
        out.push_str(&format!(
            "{:<32} {:<10} {:>12} {:>12} {:>10}\n",
            g.group,
            "total",
            "",
            "",
            g.total()
        ));
    }
    out
}
