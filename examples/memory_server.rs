//! A pagewire server with the memory store, embedded in your own program.
//!
//!     cargo run --release -p pagewire-server-core --example memory_server -- 127.0.0.1:7878
//!
//! Then, in `sqlite3`: `.load ./target/release/libpagewire_vfs` and `.open demo.db`.

use std::sync::Arc;

use pagewire_server_core::{MemoryStore, ServerConfig, serve};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into());
    let listener = TcpListener::bind(&addr).await?;
    println!(
        "pagewire-server listening on http://{}",
        listener.local_addr()?
    );
    let config = ServerConfig {
        lease_ttl: std::time::Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, Arc::new(MemoryStore::new()), config, shutdown).await
}
