//! What every handler needs: the store, the settings, and the caller's database key.

use std::sync::Arc;

use pagewire_proto::v1 as pb;
use tonic::{Request, Status};

use crate::auth::{self, Role};
use crate::quota::{Quotas, Usage};
use crate::server::ServerConfig;
use crate::store::{DbKey, PageStore, PinTtl};
use crate::validate;
use crate::watch::{Hub, HubConfig};

/// Shared by all handlers of one server.
pub struct Context {
    pub store: Arc<dyn PageStore>,
    pub config: ServerConfig,
    /// Watchers, read leases and commit rounds.
    pub hub: Arc<Hub>,
    /// Each tenant's usage, for its quotas.
    pub usage: Usage,
}

impl Context {
    pub fn new(store: Arc<dyn PageStore>, config: ServerConfig) -> Self {
        let limits = &config.limits;
        let hub = Hub::new(HubConfig {
            read_lease_ttl: config.read_lease_ttl,
            pin: config.pin(),
            history_retention: config.history_retention,
            max_watchers_per_db: limits.max_watchers_per_db,
            max_watchers_per_tenant: limits.max_watchers_per_tenant,
            max_change_list: limits.max_change_list,
        });
        Self {
            store,
            config,
            hub,
            usage: Usage::default(),
        }
    }

    /// The caller's database `name` (checked), in the caller's tenant, for the call
    /// `what`, which needs the role `need`.
    pub fn key<T>(
        &self,
        request: &Request<T>,
        name: &str,
        need: Role,
        what: &str,
    ) -> Result<DbKey, Status> {
        let tenant = auth::tenant_of(request, need, what)?;
        validate::db_name(name)?;
        Ok(DbKey::new(tenant.name, name))
    }

    /// `tenant`'s quotas: its `[[tenant]]` section, the `--tenant-max-*` defaults, and
    /// the server's per-tenant limits (a quota never raises one).
    pub fn quotas(&self, tenant: &str) -> Quotas {
        let limits = &self.config.limits;
        let mut q = self
            .config
            .credentials
            .quotas(tenant)
            .or(limits.tenant_quotas);
        q.max_commit_bytes = Some(
            q.max_commit_bytes
                .map_or(limits.max_commit_bytes, |m| m.min(limits.max_commit_bytes)),
        );
        let watchers = limits.max_watchers_per_tenant as u64;
        q.max_watchers = Some(q.max_watchers.map_or(watchers, |m| m.min(watchers)));
        q
    }

    /// How long `tenant`'s readers' pins last (its pin-age quota included).
    pub fn pin(&self, tenant: &str) -> PinTtl {
        let mut pin = self.config.pin();
        if let Some(max) = self.quotas(tenant).max_pin_age {
            pin.max_age = pin.max_age.min(max);
        }
        pin
    }

    /// The limits told to `tenant`'s clients on Open (its commit-bytes quota included).
    pub fn limits(&self, tenant: &str) -> pb::Limits {
        let max_commit_bytes = self
            .quotas(tenant)
            .max_commit_bytes
            .unwrap_or(self.config.limits.max_commit_bytes);
        pb::Limits {
            max_pages_per_read: self.config.advertised_pages_per_read(),
            max_message_bytes: self.config.limits.max_message_bytes as u64,
            max_commit_bytes,
        }
    }
}
