//! Each command: one or two Admin calls and what they answered, as an [`Output`].

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use pagewire_proto::v1 as pb;
use pb::operator_client::OperatorClient;
use serde_json::{Value, json};

use crate::{
    Cli, Command, DbCommand, PointCommand,
    connect::{Admin, Pages},
    export, import,
    output::Output,
    watch,
};

pub async fn run(cli: &Cli) -> anyhow::Result<Output> {
    let waits = match &cli.command {
        Command::Restore { wait, .. } => *wait,
        // One call carries the whole file: a second per 8 MiB on top of --timeout.
        Command::Import { file, .. } => {
            let bytes = std::fs::metadata(file).map_or(0, |m| m.len());
            Duration::from_secs(bytes >> 23)
        }
        _ => Duration::ZERO,
    };
    // A watch is one call that lasts: no deadline on it.
    let waits = match &cli.command {
        Command::Watch { .. } => None,
        _ => Some(waits),
    };
    let channel = cli.server.connect(waits).await?;
    let a = &mut Admin::new(channel.clone());
    Ok(match &cli.command {
        Command::Db(DbCommand::List) => {
            let list = a
                .list_databases(pb::ListDatabasesRequest {})
                .await?
                .into_inner();
            let rows = list
                .databases
                .iter()
                .map(|d| info_fields(d).into_iter().map(|f| f.1).collect());
            Output::list(info_columns(), rows.collect())
        }
        Command::Db(DbCommand::Info { name }) => {
            let request = pb::GetDatabaseInfoRequest { name: name.clone() };
            Output::one(info_fields(
                &a.get_database_info(request).await?.into_inner(),
            ))
        }
        Command::Db(DbCommand::Create { name }) => {
            let request = pb::CreateDatabaseRequest { name: name.clone() };
            Output::one(info_fields(&a.create_database(request).await?.into_inner()))
        }
        Command::Db(DbCommand::Delete { name }) => {
            let request = pb::DeleteDatabaseRequest { name: name.clone() };
            a.delete_database(request).await?;
            Output::one(vec![("deleted", json!(name))])
        }
        Command::Fork { source, name, at } => {
            let request = pb::ForkDatabaseRequest {
                source: source.clone(),
                name: name.clone(),
                at: at.as_deref().map(history_point).transpose()?,
            };
            Output::one(info_fields(&a.fork_database(request).await?.into_inner()))
        }
        Command::Restore { name, to, wait } => {
            let request = pb::RestoreDatabaseRequest {
                name: name.clone(),
                to: Some(history_point(to)?),
                wait_ms: wait_ms(*wait)?,
            };
            let r = a.restore_database(request).await?.into_inner();
            Output::one(vec![
                ("name", json!(name)),
                ("version", json!(r.version)),
                ("restored_from", json!(r.restored_from)),
                ("pages_written", json!(r.pages_written)),
            ])
        }
        Command::RestorePoint(PointCommand::Add { name, label, at }) => {
            let request = pb::CreateRestorePointRequest {
                name: name.clone(),
                label: label.clone(),
                at: at.as_deref().map(history_point).transpose()?,
            };
            Output::one(point_fields(
                &a.create_restore_point(request).await?.into_inner(),
            ))
        }
        Command::RestorePoint(PointCommand::List { name }) => {
            let request = pb::ListRestorePointsRequest { name: name.clone() };
            let list = a.list_restore_points(request).await?.into_inner();
            let rows = list
                .points
                .iter()
                .map(|p| point_fields(p).into_iter().map(|f| f.1).collect());
            Output::list(vec!["label", "version", "created"], rows.collect())
        }
        Command::Export {
            name,
            file,
            at,
            force,
        } => {
            let at = at.as_deref().map(history_point).transpose()?;
            let pages = &mut Pages::new(channel);
            export::run(pages, a, name, file, at, *force).await?
        }
        Command::Gc => {
            let mut operator = OperatorClient::new(channel);
            let r = operator.run_gc(pb::RunGcRequest {}).await?.into_inner();
            Output::one(vec![
                ("databases", json!(r.databases)),
                ("versions_collected", json!(r.versions_collected)),
                ("writes_removed", json!(r.writes_removed)),
                ("bytes_freed", json!(r.bytes_freed)),
            ])
        }
        Command::Watch { name, count } => {
            let pages = &mut Pages::new(channel);
            watch::run(pages, name, *count, cli.json).await?
        }
        Command::Import { name, file } => {
            let pages = &mut Pages::new(channel);
            import::run(pages, a, name, file).await?
        }
        Command::RestorePoint(PointCommand::Rm { name, label }) => {
            let request = pb::DeleteRestorePointRequest {
                name: name.clone(),
                label: label.clone(),
            };
            a.delete_restore_point(request).await?;
            Output::one(vec![("name", json!(name)), ("removed", json!(label))])
        }
    })
}

fn info_columns() -> Vec<&'static str> {
    info_fields(&pb::DatabaseInfo::default())
        .into_iter()
        .map(|f| f.0)
        .collect()
}

fn info_fields(d: &pb::DatabaseInfo) -> Vec<(&'static str, Value)> {
    let state = d.state.clone().unwrap_or_default();
    vec![
        ("name", json!(d.name)),
        ("version", json!(state.version)),
        ("page_size", json!(state.page_size)),
        ("pages", json!(state.page_count)),
        ("stored_bytes", json!(d.stored_bytes)),
        ("oldest_version", json!(d.oldest_version)),
        ("updated", time(d.updated_unix_ms)),
        ("lease_held", json!(d.lease_held)),
    ]
}

fn point_fields(p: &pb::RestorePoint) -> Vec<(&'static str, Value)> {
    vec![
        ("label", json!(p.label)),
        ("version", json!(p.version)),
        ("created", time(p.created_unix_ms)),
    ]
}

/// A Unix-ms time as RFC 3339 (UTC), or null when unset.
fn time(unix_ms: i64) -> Value {
    match u64::try_from(unix_ms) {
        Ok(ms) if ms > 0 => {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            json!(humantime::format_rfc3339_millis(t).to_string())
        }
        _ => Value::Null,
    }
}

/// `--at`/`--to`: a version number, an RFC 3339 time (`2026-12-07T10:00:00Z`) or a
/// restore point's label (labels are never all digits).
pub fn history_point(s: &str) -> anyhow::Result<pb::HistoryPoint> {
    use pb::history_point::At;
    let at = if let Ok(v) = s.parse::<u64>() {
        At::Version(v)
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .context("a time before 1970")?
            .as_millis();
        At::UnixMs(i64::try_from(ms).context("a time too far ahead")?)
    } else {
        At::RestorePoint(s.to_owned())
    };
    Ok(pb::HistoryPoint { at: Some(at) })
}

fn wait_ms(wait: Duration) -> anyhow::Result<u32> {
    let ms = u32::try_from(wait.as_millis())
        .ok()
        .filter(|ms| *ms <= 60_000);
    // 0 means "the default" on the wire: ask for 1 ms instead.
    ms.map(|ms| ms.max(1)).context("--wait is at most 60s")
}
