//! Load generators behind `tessera bench`.

use std::path::PathBuf;
use std::time::Duration;

pub async fn ingest(_url: &str, _paths: &[PathBuf], _clients: usize) -> anyhow::Result<String> {
    anyhow::bail!("not available in this build")
}

pub async fn read(_url: &str, _resource_type: &str, _connections: usize, _duration: Duration) -> anyhow::Result<String> {
    anyhow::bail!("not available in this build")
}
