//! `pagewire watch NAME [--count N]`: a line per commit of NAME as the server
//! publishes it, until `--count` commits were seen (or the stream ends).
//!
//! A Watch stream that never asks for a read lease: the server sends it round ends
//! only, and it never holds a commit back (an Invalidate, which it should not get, is
//! acknowledged at once). Its connection sets no per-call deadline (`--timeout`
//! bounds the connection and the call's start; HTTP/2 keep-alive tells a dead server).

use anyhow::bail;
use pagewire_proto::v1 as pb;
use pb::{watch_event::Event, watch_request::Part};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{connect::Pages, output::Output};

pub async fn run(
    pages: &mut Pages,
    name: &str,
    count: Option<u64>,
    as_json: bool,
) -> anyhow::Result<Output> {
    let (tx, rx) = mpsc::channel(4);
    let start = pb::WatchStart {
        name: name.to_owned(),
        ranges: true,
        incarnation: Default::default(),
    };
    let _ = tx
        .send(pb::WatchRequest {
            part: Some(Part::Start(start)),
        })
        .await;
    let mut events = pages.watch(ReceiverStream::new(rx)).await?.into_inner();
    let (mut seen, mut version) = (0u64, None);
    while count.is_none_or(|n| seen < n) {
        let Some(event) = events.message().await? else {
            bail!("the server ended the watch of {name}");
        };
        match event.event {
            Some(Event::Started(s)) => {
                let state = s.state.unwrap_or_default();
                version = Some(state.version);
                if !as_json {
                    eprintln!("watching {name} from version {}", state.version);
                }
            }
            Some(Event::Invalidate(i)) => {
                let ack = pb::InvalidationAck { round: i.round };
                let _ = tx
                    .send(pb::WatchRequest {
                        part: Some(Part::Ack(ack)),
                    })
                    .await;
            }
            Some(Event::RoundEnd(end)) => {
                let state = end.state.clone().unwrap_or_default();
                // A round whose commit failed leaves the version as it was.
                if version.is_some_and(|v| state.version <= v) {
                    continue;
                }
                version = Some(state.version);
                seen += 1;
                print_commit(name, &end, &state, as_json);
            }
            _ => {}
        }
    }
    Ok(Output::nothing())
}

/// One line: the new version, its size, and how much changed.
fn print_commit(name: &str, end: &pb::RoundEnd, state: &pb::DbState, as_json: bool) {
    let changed = end.changed_pages.len();
    let grown_from = (end.changed_from > 0).then_some(end.changed_from);
    if as_json {
        let line = json!({
            "name": name,
            "version": state.version,
            "pages": state.page_count,
            "page_size": state.page_size,
            "changed_pages": changed,
            "changed_from": grown_from,
            "cache_invalid": end.cache_invalid,
        });
        println!("{line}");
    } else {
        let from = grown_from.map_or(String::new(), |p| format!(", and every page from {p}"));
        println!(
            "version {}  pages {}  changed {changed}{from}",
            state.version, state.page_count
        );
    }
}
