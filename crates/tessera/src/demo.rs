//! `tessera serve --demo`: loads the demo shared domain of `tessera_domain::demo` (three
//! trusts, their sites and wards, users for every role, each trust's part of a small
//! clinical record; see docs/demo-domain.md). Loaded once per database.

use anyhow::Context;
use tessera_domain::demo;
use tessera_engine::{Access, Engine};

const MARKER: &str = "demo.loaded";

pub async fn load(engine: &Engine) -> anyhow::Result<()> {
    if engine.setting(MARKER).await?.is_some() {
        tracing::info!("demo domain already loaded");
        return Ok(());
    }
    let mut domain = (*engine.domain()).clone();
    domain.apply_file(demo::DOMAIN_FILE).context("the demo domain file is not valid")?;
    engine.apply_domain(&Access::system("tessera"), domain).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    for (site, bundle) in demo::RECORDS {
        let bundle = demo::relative_dates(bundle, now);
        engine
            .bundle_json(&Access::system(site), bundle.as_bytes(), None)
            .await
            .map_err(|e| anyhow::anyhow!("demo record of {site}: {e}"))?;
    }
    load_content(engine).await?;
    engine.set_setting(MARKER, "1").await?;
    tracing::info!("demo domain loaded: see docs/demo-domain.md for users and passwords");
    Ok(())
}

/// The model content Tessera ships (the model layer, written by the server itself) and the
/// demo trusts' localisations of it (docs/content.md).
pub async fn load_content(engine: &Engine) -> anyhow::Result<()> {
    engine
        .bundle_json(&Access::bootstrap(), tessera_content::MODEL_CONTENT.as_bytes(), None)
        .await
        .map_err(|e| anyhow::anyhow!("the model content: {e}"))?;
    for (trust, bundle) in tessera_content::DEMO_LOCALISATIONS {
        engine
            .bundle_json(&Access::system(trust), bundle.as_bytes(), None)
            .await
            .map_err(|e| anyhow::anyhow!("the demo localisations of {trust}: {e}"))?;
    }
    Ok(())
}
