//! Reaching the server: the same URL, token and TLS settings as the VFS
//! (`PAGEWIRE_URL`, `PAGEWIRE_TOKEN`, `PAGEWIRE_CA`, `PAGEWIRE_CLIENT_CERT`,
//! `PAGEWIRE_CLIENT_KEY`), each also a flag.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use pagewire_proto::v1::{admin_client::AdminClient, pages_client::PagesClient};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// How to reach the server (flags, else the VFS's environment variables).
#[derive(Args, Debug)]
pub struct Server {
    /// The server, `http://host:port` or `https://host:port` [default:
    /// http://127.0.0.1:7878].
    #[arg(long, env = "PAGEWIRE_URL", global = true)]
    url: Option<String>,
    /// The bearer token that selects the tenant (prefer the environment variable:
    /// a flag shows in `ps`).
    #[arg(long, env = "PAGEWIRE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A CA certificate (PEM) trusted besides the system's roots, for `https://`.
    #[arg(long, env = "PAGEWIRE_CA", global = true)]
    ca: Option<PathBuf>,
    /// Mutual TLS: this client's certificate (PEM); needs --client-key.
    #[arg(
        long,
        env = "PAGEWIRE_CLIENT_CERT",
        requires = "client_key",
        global = true
    )]
    client_cert: Option<PathBuf>,
    /// Mutual TLS: this client's private key (PEM); needs --client-cert.
    #[arg(
        long,
        env = "PAGEWIRE_CLIENT_KEY",
        requires = "client_cert",
        global = true
    )]
    client_key: Option<PathBuf>,
    /// How long to wait for the connection and for each answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
}

/// A connection to the server that sends the token with every call.
pub type Authed = InterceptedService<Channel, Bearer>;
pub type Admin = AdminClient<Authed>;
pub type Pages = PagesClient<Authed>;

impl Server {
    /// A connection made now (so an unreachable server is said before anything
    /// else), whose every call carries the token and must be answered within
    /// `--timeout` plus `waits` (a call the server may hold that long, e.g. a
    /// restore waiting for a writer's lease); `None`: calls without a deadline (a
    /// watch; HTTP/2 keep-alive still tells a dead server).
    pub async fn connect(&self, waits: Option<Duration>) -> anyhow::Result<Authed> {
        // The server's own default address when none is given.
        let url = self.url.as_deref().unwrap_or("http://127.0.0.1:7878");
        let tls = pagewire_vfs::TlsFiles {
            ca: self.ca.clone(),
            client: self.client_cert.clone().zip(self.client_key.clone()),
        };
        let mut endpoint = pagewire_vfs::endpoint(url, self.timeout, &tls)?;
        if let Some(waits) = waits {
            endpoint = endpoint.timeout(self.timeout + waits);
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the server at {url}"))?;
        let token = match &self.token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("the token has characters a header cannot carry")?,
            ),
        };
        Ok(InterceptedService::new(channel, Bearer(token)))
    }
}

/// Adds `authorization: Bearer <token>` to each call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}
