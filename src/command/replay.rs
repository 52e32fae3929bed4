//! `quakestream replay-server`: recorded feeds over HTTP, for offline demos.

use tokio_util::sync::CancellationToken;

use super::print_out;
use crate::{
    cli::ReplayArgs,
    error::{Error, Result},
    fake::FakeServer,
};

pub async fn replay_server(args: ReplayArgs, shutdown: CancellationToken) -> Result<()> {
    let steps = FakeServer::steps_from_dir(&args.dir).map_err(Error::io(&args.dir))?;
    if steps.is_empty() {
        return Err(Error::Config {
            origin: args.dir.display().to_string(),
            message: "no .json or .geojson files to replay".into(),
        });
    }
    let count = steps.len();
    let server = FakeServer::start(&args.listen, steps)
        .await
        .map_err(|e| Error::Broker(format!("cannot listen on {}: {e}", args.listen)))?;
    print_out(&format!(
        "replaying {count} feeds from {} at {}\n\
         Poll it with: quakestream up --usgs-url {} --interval 5s\n\
         Press Ctrl+C to stop.\n",
        args.dir.display(),
        server.url("/"),
        server.url("/summary/all_day.geojson"),
    ))?;
    shutdown.cancelled().await;
    server.stop();
    print_out(&format!("served {} requests\n", server.requests()))?;
    Ok(())
}
