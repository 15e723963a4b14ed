//! Serves the mock upstream for manual use (curl, an SDK, a local proxy):
//!
//! ```text
//! cargo run -p sluice-mock --example mock_upstream -- [ADDR] [--latency-ms N]
//!     [--chunk-delay-ms N] [--tokens N] [--dims N] [--model NAME]...
//! ```
//!
//! `ADDR` defaults to `127.0.0.1:8081`. Stops on Ctrl-C.

use std::time::Duration;

use sluice_mock::{MockConfig, serve};
use tokio::net::TcpListener;

const USAGE: &str = "usage: mock_upstream [ADDR] [--latency-ms N] [--chunk-delay-ms N] \
                     [--tokens N] [--dims N] [--model NAME]... [--controls]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = String::from("127.0.0.1:8081");
    let mut config = MockConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--latency-ms" => config.latency = Duration::from_millis(value()?.parse()?),
            "--chunk-delay-ms" => config.chunk_delay = Duration::from_millis(value()?.parse()?),
            "--tokens" => config.default_completion_tokens = value()?.parse()?,
            "--controls" => config.controls = true,
            "--dims" => config.embedding_dims = value()?.parse()?,
            "--model" => config.models.push(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            a if !a.starts_with('-') => addr = arg,
            _ => return Err(format!("unknown option {arg}\n{USAGE}").into()),
        }
    }
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("mock upstream listening on http://{}/v1", listener.local_addr()?);
    serve(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
