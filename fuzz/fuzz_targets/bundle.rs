//! Any bytes posted as a batch/transaction Bundle to an engine over a real SQLite store.
//! Must never panic; a refused bundle must store nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: tessera_engine::Engine,
    _dir: std::path::PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tessera-fuzz-{}", std::process::id()));
        let store = tessera_store::sqlite::SqliteStore::open(&dir).expect("store");
        let engine = tessera_engine::Engine::new(Arc::new(store), Default::default());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Fixture { runtime, engine, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.runtime.block_on(async {
        let before = f.engine.store().stats().await.unwrap().versions;
        if f.engine.bundle_json(&tessera_engine::Access::system("tessera"), data, None).await.is_err() {
            let is_transaction = std::str::from_utf8(data).map(|s| s.contains("\"transaction\"")).unwrap_or(false);
            if is_transaction {
                assert_eq!(f.engine.store().stats().await.unwrap().versions, before, "a refused transaction stored something");
            }
        }
    });
});
