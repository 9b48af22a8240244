//! What the gRPC tests share: an in-process server on a real socket, clients with
//! bearer tokens, and commit streams.
#![allow(dead_code)] // each test binary uses its own part

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pagewire_proto::v1 as pb;
use pagewire_server_core::store::conformance::{page, page_one};
use pagewire_server_core::{MemoryStore, PageStore, ServerConfig, serve};
use pb::admin_client::AdminClient;
use pb::commit_request::Part;
use pb::pages_client::PagesClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const PS: u32 = 4096;

/// Adds `authorization: Bearer <token>` when it has a token.
#[derive(Clone)]
pub struct Bearer(pub Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Pages = PagesClient<InterceptedService<Channel, Bearer>>;
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

pub struct TestServer {
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        Self::start_with(config, Arc::new(MemoryStore::new())).await
    }

    pub async fn start_with(
        config: ServerConfig,
        store: Arc<dyn PageStore>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, store, config, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(url)?.connect().await?;
        Ok(Self {
            channel,
            stop: Some(stop),
            task,
        })
    }

    pub fn bearer(token: Option<&str>) -> anyhow::Result<Bearer> {
        Ok(Bearer(
            token.map(|t| format!("Bearer {t}").parse()).transpose()?,
        ))
    }

    pub fn pages(&self, token: Option<&str>) -> anyhow::Result<Pages> {
        let client = PagesClient::with_interceptor(self.channel.clone(), Self::bearer(token)?);
        Ok(client.max_decoding_message_size(64 << 20))
    }

    pub fn admin(&self, token: Option<&str>) -> anyhow::Result<Admin> {
        Ok(AdminClient::with_interceptor(
            self.channel.clone(),
            Self::bearer(token)?,
        ))
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

/// A valid commit stream's parts, to be broken one way at a time.
#[derive(Clone)]
pub struct Parts {
    pub header: pb::CommitHeader,
    pub pages: Vec<pb::Page>,
}

impl Parts {
    pub fn new(
        name: &str,
        lease: &pb::LeaseResponse,
        base: u64,
        page_count: u32,
        fill: u8,
    ) -> Self {
        let header = pb::CommitHeader {
            name: name.into(),
            lease_id: lease.lease_id.clone(),
            epoch: lease.epoch,
            base_version: base,
            commit_id: Bytes::from(rand::random::<[u8; 16]>().to_vec()),
            page_size: PS,
            page_count,
            ..Default::default()
        };
        let mut pages = vec![pb::Page {
            page_no: 1,
            data: page_one(PS, page_count, fill),
        }];
        pages.extend((2..=page_count).map(|page_no| pb::Page {
            page_no,
            data: page(PS, fill),
        }));
        Self { header, pages }
    }

    /// Header, one batch, trailer with the right count.
    pub fn stream(&self) -> Vec<pb::CommitRequest> {
        vec![
            header(&self.header),
            batch(self.pages.clone()),
            trailer(self.pages.len() as u32),
        ]
    }
}

pub fn header(h: &pb::CommitHeader) -> pb::CommitRequest {
    pb::CommitRequest {
        part: Some(Part::Header(h.clone())),
    }
}

pub fn batch(pages: Vec<pb::Page>) -> pb::CommitRequest {
    pb::CommitRequest {
        part: Some(Part::Pages(pb::PageBatch { pages })),
    }
}

pub fn trailer(pages_sent: u32) -> pb::CommitRequest {
    pb::CommitRequest {
        part: Some(Part::Trailer(pb::CommitTrailer { pages_sent })),
    }
}

pub async fn commit(
    client: &mut Pages,
    stream: Vec<pb::CommitRequest>,
) -> Result<pb::CommitResponse, Status> {
    Ok(client
        .commit(tokio_stream::iter(stream))
        .await?
        .into_inner())
}
