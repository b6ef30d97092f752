//! What opening a database would migrate, found without migrating it (for `tessera upgrade
//! --dry-run`): the tables and indexes this build creates that the database lacks, and the
//! one-off backfills it has not had. Also reads one `tessera_meta` value the same way (the
//! domain, to honour a freeze before anything is migrated).

use crate::{Result, StoreError};
use std::path::Path;

/// A backfill done once, when its marker is absent from `tessera_meta`.
const BACKFILLS: [(&str, &str); 2] = [
    ("type_count", "count the live resources of each type (type_count)"),
    ("token_count", "count the coded values of each search parameter (token_count)"),
];

/// The names of the relations a schema script creates (`CREATE TABLE|INDEX … IF NOT EXISTS name`).
fn created(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let words: Vec<&str> = script.split_whitespace().collect();
    for w in words.windows(6) {
        if w[0].eq_ignore_ascii_case("CREATE") && w[2..5].iter().map(|s| s.to_ascii_uppercase()).collect::<Vec<_>>() == ["IF", "NOT", "EXISTS"] {
            out.push(w[5].trim_end_matches('(').to_string());
        }
    }
    out
}

/// The migrations opening this database would run (empty: up to date).
pub async fn pending_migrations(data_dir: &Path, database_url: Option<&str>) -> Result<Vec<String>> {
    match database_url {
        None => sqlite_pending(data_dir),
        Some(url) => postgres_pending(url).await,
    }
}

/// A `tessera_meta` value, read without migrating (`None` for a new database).
pub async fn read_meta(data_dir: &Path, database_url: Option<&str>, key: &str) -> Result<Option<String>> {
    match database_url {
        None => {
            let Some(c) = sqlite_read_only(data_dir)? else { return Ok(None) };
            let table: bool = c.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'tessera_meta'", [], |r| r.get(0)).map_err(sq)?;
            if !table {
                return Ok(None);
            }
            use rusqlite::OptionalExtension;
            c.query_row("SELECT value FROM tessera_meta WHERE key = ?1", [key], |r| r.get(0)).optional().map_err(sq)
        }
        Some(url) => {
            let client = pg_client(url).await?;
            let exists: bool = client.query_one("SELECT to_regclass('tessera_meta') IS NOT NULL", &[]).await.map_err(pg)?.get(0);
            if !exists {
                return Ok(None);
            }
            Ok(client.query_opt("SELECT value FROM tessera_meta WHERE key = $1", &[&key]).await.map_err(pg)?.map(|r| r.get(0)))
        }
    }
}

fn sq(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn sqlite_read_only(data_dir: &Path) -> Result<Option<rusqlite::Connection>> {
    let path = data_dir.join("tessera.db");
    if !path.exists() {
        return Ok(None);
    }
    rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX).map(Some).map_err(sq)
}

fn sqlite_pending(data_dir: &Path) -> Result<Vec<String>> {
    let Some(c) = sqlite_read_only(data_dir)? else {
        return Ok(vec!["a new database: every table is created".to_string()]);
    };
    let mut out = Vec::new();
    for name in created(crate::sqlite::SCHEMA) {
        let exists: bool = c.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = ?1", [&name], |r| r.get(0)).map_err(sq)?;
        if !exists {
            out.push(format!("create {name}"));
        }
    }
    let meta: bool = c.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'tessera_meta'", [], |r| r.get(0)).map_err(sq)?;
    for (key, what) in BACKFILLS {
        let done: bool = meta && c.query_row("SELECT count(*) > 0 FROM tessera_meta WHERE key = ?1", [key], |r| r.get(0)).map_err(sq)?;
        if !done {
            out.push(what.to_string());
        }
    }
    Ok(out)
}

async fn pg_client(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn postgres_pending(url: &str) -> Result<Vec<String>> {
    let client = pg_client(url).await?;
    let mut out = Vec::new();
    for name in crate::postgres::SCHEMA_OBJECTS {
        let exists: bool = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await.map_err(pg)?.get(0);
        if !exists {
            out.push(format!("create {name}"));
        }
    }
    let meta: bool = client.query_one("SELECT to_regclass('tessera_meta') IS NOT NULL", &[]).await.map_err(pg)?.get(0);
    for (key, what) in BACKFILLS {
        let done = meta && client.query_opt("SELECT 1 FROM tessera_meta WHERE key = $1", &[&key]).await.map_err(pg)?.is_some();
        if !done {
            out.push(what.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_schema_scripts_name_what_they_create() {
        let names = super::created(crate::sqlite::SCHEMA);
        for t in ["resource_version", "resource_current", "tessera_meta", "audit_log", "type_count", "token_count"] {
            assert!(names.iter().any(|n| n == t), "{t} in {names:?}");
        }
    }
}
