//! What every handler needs: the store, the settings, and the caller's database key.

use std::sync::Arc;

use pagewire_proto::v1 as pb;
use tonic::{Request, Status};

use crate::auth::{self, Role};
use crate::server::ServerConfig;
use crate::store::{DbKey, PageStore};
use crate::validate;
use crate::watch::{Hub, HubConfig};

/// Shared by all handlers of one server.
pub struct Context {
    pub store: Arc<dyn PageStore>,
    pub config: ServerConfig,
    /// Watchers, read leases and commit rounds.
    pub hub: Arc<Hub>,
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
        Self { store, config, hub }
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

    /// The limits told to clients on Open.
    pub fn limits(&self) -> pb::Limits {
        pb::Limits {
            max_pages_per_read: self.config.advertised_pages_per_read(),
            max_message_bytes: self.config.limits.max_message_bytes as u64,
            max_commit_bytes: self.config.limits.max_commit_bytes,
        }
    }
}
