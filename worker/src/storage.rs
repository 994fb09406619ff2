//! Object storage through presigned requests: the source is streamed from its GET into a
//! bounded channel the decoder reads, and the MP3 is streamed from disk into the PUT.

use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use protocol::PresignedRequest;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH};
use reqwest::Method;
use tokio::sync::mpsc;
use tokio_util::io::ReaderStream;

use crate::controller_client::check_status;
use crate::retry::{redact, with_retries, HttpError};

/// Chunks of the source body buffered between the download and the decoder.
const CHUNKS_IN_FLIGHT: usize = 16;

/// Download state shared between the body pump, the decoder and progress reports.
#[derive(Default)]
pub struct DownloadState {
    /// Source bytes received so far.
    pub received: AtomicU64,
    /// Why the download stopped early, if it did.
    pub failure: Mutex<Option<String>>,
}

impl DownloadState {
    /// The download failure, if the transfer broke off.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|slot| slot.clone())
    }
}

/// Starts the source GET, retrying transient failures until the response headers arrive.
pub async fn open_source(
    http: &reqwest::Client,
    request: &PresignedRequest,
) -> Result<reqwest::Response, HttpError> {
    with_retries("get source", || async {
        let response = build(http, request)?
            .send()
            .await
            .map_err(|source| HttpError::Send {
                method: "GET",
                url: redact(&request.url),
                source,
            })?;
        check_status("GET", &request.url, response).await
    })
    .await
}

/// Copies the response body into a channel and returns the reader for the decoder.
pub fn stream_body(response: reqwest::Response, state: Arc<DownloadState>) -> ChannelReader {
    let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let url = redact(response.url().as_str());
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let item = match chunk {
                Ok(bytes) => {
                    state
                        .received
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Ok(bytes)
                }
                Err(err) => {
                    let received = state.received.load(Ordering::Relaxed);
                    let message =
                        format!("download of {url} broke off after {received} bytes: {err}");
                    tracing::warn!(url = %url, received, error = %err, "source download failed");
                    if let Ok(mut slot) = state.failure.lock() {
                        *slot = Some(message.clone());
                    }
                    Err(io::Error::other(message))
                }
            };
            let failed = item.is_err();
            // A closed channel means the decoder stopped reading; nothing more is needed.
            if sender.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    ChannelReader {
        receiver,
        current: Bytes::new(),
    }
}

/// The decoder's side of the source stream; blocks until the download delivers bytes.
pub struct ChannelReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
            }
        }
        let count = buf.len().min(self.current.len());
        buf[..count].copy_from_slice(&self.current.split_to(count));
        Ok(count)
    }
}

/// Uploads the file at `path` (`len` bytes) with the presigned PUT, retrying transient failures.
pub async fn upload(
    http: &reqwest::Client,
    request: &PresignedRequest,
    path: &Path,
    len: u64,
) -> Result<(), HttpError> {
    with_retries("put output", || async {
        let file = tokio::fs::File::open(path).await.map_err(HttpError::File)?;
        let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(file, 1 << 16));
        let mut builder = build(http, request)?;
        if !request
            .headers
            .keys()
            .any(|name| name.eq_ignore_ascii_case("content-length"))
        {
            // A presigned S3 PUT rejects chunked uploads, so the length must be stated.
            builder = builder.header(CONTENT_LENGTH, len);
        }
        let response = builder
            .body(body)
            .send()
            .await
            .map_err(|source| HttpError::Send {
                method: "PUT",
                url: redact(&request.url),
                source,
            })?;
        check_status("PUT", &request.url, response).await.map(drop)
    })
    .await
}

/// A request with exactly the presigned method, URL and headers.
fn build(
    http: &reqwest::Client,
    request: &PresignedRequest,
) -> Result<reqwest::RequestBuilder, HttpError> {
    let method =
        Method::from_str(&request.method.to_ascii_uppercase()).map_err(|_| HttpError::Header {
            name: format!("method {}", request.method),
        })?;
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpError::Header { name: name.clone() })?;
        let header_value =
            HeaderValue::from_str(value).map_err(|_| HttpError::Header { name: name.clone() })?;
        headers.insert(header_name, header_value);
    }
    Ok(http.request(method, &request.url).headers(headers))
}
