//! The demo data set loaded by `tessera serve --demo`: a small, realistic record (see
//! `demo/demo-bundle.json`), loaded once per database.

use anyhow::Context;
use tessera_engine::Engine;

const DEMO_BUNDLE: &str = include_str!("../demo/demo-bundle.json");
const MARKER: &str = "demo.loaded";

pub async fn load(engine: &Engine) -> anyhow::Result<()> {
    if engine.store().get_meta(MARKER).await?.is_some() {
        tracing::info!("demo data already loaded");
        return Ok(());
    }
    let bundle: serde_json::Value = serde_json::from_str(DEMO_BUNDLE).context("demo bundle is not JSON")?;
    engine.bundle(bundle, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    engine.store().set_meta(MARKER, "1").await?;
    tracing::info!("demo data loaded");
    Ok(())
}
