//! Server-sent events of a streamed reply, parsed by the `sse-stream` crate.

use std::pin::pin;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use sse_stream::SseByteStream;

use super::error_chain;

/// Feeds every event of `response` that carries data to `on_event(event_type, data)` until it
/// returns `Ok(true)` (the reply is complete) or the body ends.
///
/// # Errors
///
/// A transport or decoding failure, or the first error of `on_event`.
pub(super) async fn read(
    response: reqwest::Response,
    on_event: impl FnMut(Option<&str>, &str) -> Result<bool, String>,
) -> Result<(), String> {
    parse(response.bytes_stream(), on_event).await
}

async fn parse<S, B, E>(
    body: S,
    mut on_event: impl FnMut(Option<&str>, &str) -> Result<bool, String>,
) -> Result<(), String>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut events = pin!(SseByteStream::new(body));
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| error_chain(&e))?;
        let Some(data) = event.data else { continue };
        if on_event(event.event.as_deref(), &data)? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(chunks: &[&'static str]) -> Vec<(Option<String>, String)> {
        let body = futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::io::Error>(c.as_bytes()))
                .collect::<Vec<_>>(),
        );
        let mut out = Vec::new();
        parse(body, |event, data| {
            out.push((event.map(str::to_owned), data.to_owned()));
            Ok(data == "[DONE]")
        })
        .await
        .unwrap();
        out
    }

    #[tokio::test]
    async fn events_split_across_chunks() {
        let got = collect(&[
            ": comment\n\nevent: message_start\nda",
            "ta: {\"a\":1}\r\n\r\ndata: line1\ndata: line2\n",
            "\nid: 7\n\ndata: [DONE]\n\ndata: after\n\n",
        ])
        .await;
        assert_eq!(
            got,
            [
                (Some("message_start".into()), "{\"a\":1}".into()),
                (None, "line1\nline2".into()),
                (None, "[DONE]".into()),
            ]
        );
    }

    #[tokio::test]
    async fn errors_of_the_callback_stop_the_stream() {
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(&b"data: x\n\n"[..])]);
        let err = parse(body, |_, _| Err("bad".into())).await.unwrap_err();
        assert_eq!(err, "bad");
    }
}
