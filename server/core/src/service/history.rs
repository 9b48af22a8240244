//! History as a feature: branches (ForkDatabase) and restore points. Restore, which
//! commits, is [`super::restore`]. Every call here needs the `write` role, not `admin`:
//! a client with its database's token alone (an agent through the VFS's pragmas) can
//! branch and mark points.

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use crate::auth::Role;
use crate::quota;
use crate::store::{DbKey, ReadAt, RestorePoint, StoreError, Version};
use crate::validate;

/// Where in `key`'s history `point` is (`None`: the newest version); a restore point is
/// looked up by its label.
pub async fn resolve(
    cx: &Context,
    key: &DbKey,
    point: Option<&pb::HistoryPoint>,
) -> Result<ReadAt, Status> {
    use pb::history_point::At;
    match point.and_then(|p| p.at.as_ref()) {
        None => Ok(ReadAt::Newest),
        Some(At::Version(0)) => Err(StoreError::InvalidArgument(
            "version 0 is the empty database; name a version from 1".into(),
        )
        .into()),
        Some(At::Version(v)) => Ok(ReadAt::Version(Version(*v))),
        Some(At::UnixMs(t)) => Ok(ReadAt::UnixMs(*t)),
        Some(At::RestorePoint(label)) => {
            validate::restore_point_label(label)?;
            let points = cx.store.restore_points(key).await?;
            let point = points.into_iter().find(|p| &p.label == label);
            let point = point.ok_or_else(|| StoreError::NoSuchPoint {
                db: key.name.clone(),
                label: label.clone(),
            })?;
            Ok(ReadAt::Version(point.version))
        }
    }
}

#[tracing::instrument(skip_all, fields(source = %request.get_ref().source, db = %request.get_ref().name))]
pub async fn fork(
    cx: &Context,
    request: Request<pb::ForkDatabaseRequest>,
) -> Result<Response<pb::DatabaseInfo>, Status> {
    let r = request.get_ref();
    let source = cx.key(&request, &r.source, Role::Write, "ForkDatabase")?;
    let new = DbKey::new(source.tenant.clone(), r.name.clone());
    validate::new_db_name(&new.name)?;
    let at = resolve(cx, &source, r.at.as_ref()).await?;
    // A missing source is NOT_FOUND whatever the quota says.
    cx.store.open(&source, false).await?;
    let quotas = cx.quotas(&new.tenant);
    let _creating = cx
        .usage
        .check_new_database(&*cx.store, &new.tenant, &quotas)
        .await?;
    let info = cx.store.fork(&source, at, &new).await?;
    tracing::info!(tenant = %new.tenant, version = info.state.version.0, "forked database");
    Ok(Response::new(info.into()))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, label = %request.get_ref().label))]
pub async fn create_point(
    cx: &Context,
    request: Request<pb::CreateRestorePointRequest>,
) -> Result<Response<pb::RestorePoint>, Status> {
    let r = request.get_ref();
    let key = cx.key(&request, &r.name, Role::Write, "CreateRestorePoint")?;
    validate::restore_point_label(&r.label)?;
    let at = resolve(cx, &key, r.at.as_ref()).await?;
    check_points_quota(cx, &key.tenant).await?;
    let point = cx.store.add_restore_point(&key, &r.label, at).await?;
    tracing::info!(tenant = %key.tenant, version = point.version.0, "created restore point");
    Ok(Response::new(point_proto(point)))
}

/// Restore points keep history like time-travel pins do: the tenant's restore points
/// (over all its databases) count against its `max_pinned_versions` quota.
async fn check_points_quota(cx: &Context, tenant: &str) -> Result<(), Status> {
    let Some(max) = cx.quotas(tenant).max_pinned_versions else {
        return Ok(());
    };
    let mut points = 0u64;
    for db in cx.store.list(tenant).await? {
        let key = DbKey::new(tenant, db.name);
        match cx.store.restore_points(&key).await {
            Ok(p) => points += p.len() as u64,
            Err(e) if e.is_not_found() => {} // deleted meanwhile
            Err(e) => return Err(e.into()),
        }
    }
    if points >= max {
        return Err(quota::exceeded(
            tenant,
            "max_pinned_versions",
            format!("{points} restore points"),
            max.to_string(),
        ));
    }
    Ok(())
}

pub async fn list_points(
    cx: &Context,
    request: Request<pb::ListRestorePointsRequest>,
) -> Result<Response<pb::ListRestorePointsResponse>, Status> {
    let name = &request.get_ref().name;
    let key = cx.key(&request, name, Role::Read, "ListRestorePoints")?;
    let points = cx.store.restore_points(&key).await?;
    Ok(Response::new(pb::ListRestorePointsResponse {
        points: points.into_iter().map(point_proto).collect(),
    }))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, label = %request.get_ref().label))]
pub async fn delete_point(
    cx: &Context,
    request: Request<pb::DeleteRestorePointRequest>,
) -> Result<Response<pb::DeleteRestorePointResponse>, Status> {
    let r = request.get_ref();
    let key = cx.key(&request, &r.name, Role::Write, "DeleteRestorePoint")?;
    validate::restore_point_label(&r.label)?;
    cx.store.remove_restore_point(&key, &r.label).await?;
    tracing::info!(tenant = %key.tenant, "deleted restore point");
    Ok(Response::new(pb::DeleteRestorePointResponse {}))
}

fn point_proto(p: RestorePoint) -> pb::RestorePoint {
    pb::RestorePoint {
        label: p.label,
        version: p.version.0,
        tag: p.tag.to_wire(),
        created_unix_ms: p.created_unix_ms,
    }
}
