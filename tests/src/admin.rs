//! The server's Admin service from a test that has no runtime of its own: each call
//! blocks until it is answered.

use pagewire_proto::v1 as pb;
use pb::admin_client::AdminClient;
use tonic::transport::Channel;

/// An Admin client with a runtime to run its calls on.
pub struct Admin {
    rt: tokio::runtime::Runtime,
    client: AdminClient<Channel>,
}

impl Admin {
    pub fn connect(url: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt
            .block_on(AdminClient::connect(url.to_owned()))
            .expect("connect");
        Self { rt, client }
    }

    pub fn database_info(&mut self, name: &str) -> pb::DatabaseInfo {
        let request = pb::GetDatabaseInfoRequest { name: name.into() };
        self.rt
            .block_on(self.client.get_database_info(request))
            .expect("info")
            .into_inner()
    }

    pub fn create_database(&mut self, name: &str) {
        let request = pb::CreateDatabaseRequest { name: name.into() };
        self.rt
            .block_on(self.client.create_database(request))
            .expect("create");
    }

    pub fn delete_database(&mut self, name: &str) {
        let request = pb::DeleteDatabaseRequest { name: name.into() };
        self.rt
            .block_on(self.client.delete_database(request))
            .expect("delete");
    }

    /// The names of the databases the server holds.
    pub fn database_names(&mut self) -> Vec<String> {
        let list = self
            .rt
            .block_on(
                self.client
                    .list_databases(pb::ListDatabasesRequest::default()),
            )
            .expect("list");
        list.into_inner()
            .databases
            .into_iter()
            .map(|d| d.name)
            .collect()
    }

    pub fn metrics(&mut self) -> pb::Metrics {
        self.rt
            .block_on(self.client.get_metrics(pb::GetMetricsRequest {}))
            .expect("GetMetrics")
            .into_inner()
    }
}

/// A channel to `url` whose every call carries `authorization: Bearer <token>`, for a
/// client of any service (`AdminClient::new(channel)`, `OperatorClient::new(channel)`).
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Adds the bearer token to each call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// Connects to `url` as `token` (see [`Authed`]).
pub async fn authed(url: &str, token: &str) -> anyhow::Result<Authed> {
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    let value = format!("Bearer {token}").parse()?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer(value),
    ))
}

/// Runs `f` with an Admin client for `token` on `url`, on a runtime of its own.
pub fn with_admin<T>(
    url: &str,
    token: &str,
    f: impl AsyncFnOnce(&mut AdminClient<Authed>) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = authed(url, token).await.expect("connect");
        f(&mut AdminClient::new(channel)).await
    })
}
