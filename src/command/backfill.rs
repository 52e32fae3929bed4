//! `quakestream backfill`: history from the FDSN event service, with a progress bar.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::print_out;
use crate::{
    cli::BackfillArgs,
    config::Config,
    error::{Error, Result},
    kafka::KafkaSettings,
    metrics::SourceMetrics,
    source::backfill::{self, Request, Target, describe, parse_time},
};

pub async fn backfill(
    config: &Config,
    args: BackfillArgs,
    shutdown: CancellationToken,
) -> Result<()> {
    let time = |origin: &str, text: &str| {
        parse_time(text).map_err(|message| Error::Config {
            origin: origin.into(),
            message,
        })
    };
    let request = Request {
        start_ms: time("--start", &args.start)?,
        end_ms: match &args.end {
            Some(end) => time("--end", end)?,
            None => chrono::Utc::now().timestamp_millis(),
        },
        min_magnitude: args.min_magnitude,
        updated_after_ms: args
            .updated_after
            .as_deref()
            .map(|t| time("--updated-after", t))
            .transpose()?,
    };
    let settings = KafkaSettings::from_config(config);
    eprintln!(
        "backfilling {} .. {} from {} into {} at {}",
        describe(request.start_ms),
        describe(request.end_ms),
        config.backfill.url,
        config.backfill.topic,
        settings.bootstrap
    );
    let bar = ProgressBar::new(1_000);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {percent:>3}% {elapsed_precise} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let metrics = Arc::new(SourceMetrics::new("backfill"));
    let report = backfill::run(
        &config.backfill,
        request,
        Target {
            settings: &settings,
            dlq: &config.topics.dlq,
            data_dir: &config.data_dir,
            metrics,
            checks: config.checks,
        },
        shutdown,
        |report, done| {
            bar.set_position((done * 1_000.0) as u64);
            bar.set_message(format!(
                "{} windows, {} events, {} published",
                report.windows, report.events, report.published
            ));
        },
    )
    .await;
    bar.finish_and_clear();
    let report = report?;
    print_out(&format!(
        "{}: {} windows, {} events read, {} published, {} already in the topic\n",
        if report.complete {
            "backfill complete"
        } else {
            "backfill interrupted (run the same command again to resume)"
        },
        report.windows,
        report.events,
        report.published,
        report.duplicates
    ))?;
    Ok(())
}
