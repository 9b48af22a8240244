//! Hand-written gRPC servers of the tests (a fake `Pages` service that misbehaves on
//! cue, one that records the headers it is sent): serving one on a free loopback port.

use std::net::SocketAddr;

use tonic::transport::server::Router;

/// Serves `router` (`tonic::transport::Server::builder().add_service(...)`) on a free
/// loopback port, in `rt`, until `rt` is dropped; its URL. Accepted connections have
/// no Nagle delay (many small replies).
pub fn serve(rt: &tokio::runtime::Runtime, router: Router) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let incoming = futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        let accepted = accepted.and_then(|s| s.set_nodelay(true).map(|()| s));
        Some((accepted, l))
    });
    rt.spawn(router.serve_with_incoming(incoming));
    format!("http://{addr}")
}
