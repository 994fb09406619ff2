//! Object storage through presigned requests: the source is streamed from its GET into a
//! bounded channel the decoder reads, and the MP3 is streamed from disk into the PUT.

use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use protocol::PresignedRequest;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH};
use reqwest::Method;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::io::ReaderStream;

use crate::controller_client::check_status;
use crate::failure::error_chain;
use crate::retry::{redact, with_retries, HttpError};

/// Maximum wait for the next piece of the source body before the download counts as broken.
const DOWNLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Source bytes buffered between the download and the decoder.
pub const BYTES_IN_FLIGHT: usize = 4 << 20;

/// Download state shared between the body pump, the decoder and progress reports.
#[derive(Default)]
pub struct DownloadState {
    /// Source bytes received so far.
    pub received: AtomicU64,
    /// Reason the download stopped early, if it did.
    pub failure: Mutex<Option<String>>,
}

impl DownloadState {
    /// Returns the download failure, if the transfer broke off.
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

/// Copies the response body into a channel and returns the reader for the decoder. At most
/// [`BYTES_IN_FLIGHT`] bytes wait in the channel, whatever size the body's chunks have.
pub fn stream_body(response: reqwest::Response, state: Arc<DownloadState>) -> ChannelReader {
    let (sender, receiver) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(BYTES_IN_FLIGHT));
    tokio::spawn(pump_body(response, sender, budget, state));
    ChannelReader {
        receiver,
        current: Bytes::new(),
        _permit: None,
    }
}

/// A chunk of the body with its share of the byte budget, released when the decoder is done
/// with the chunk.
type BodyChunk = io::Result<(Bytes, OwnedSemaphorePermit)>;

async fn pump_body(
    response: reqwest::Response,
    sender: mpsc::UnboundedSender<BodyChunk>,
    budget: Arc<Semaphore>,
    state: Arc<DownloadState>,
) {
    let url = redact(response.url().as_str());
    let mut body = response.bytes_stream();
    loop {
        let bytes = match tokio::time::timeout(DOWNLOAD_STALL_TIMEOUT, body.next()).await {
            Ok(None) => return,
            Ok(Some(Ok(bytes))) => bytes,
            Ok(Some(Err(err))) => return fail_download(&sender, &state, &url, &error_chain(&err)),
            Err(_) => {
                let stalled = format!("no data for {} s", DOWNLOAD_STALL_TIMEOUT.as_secs());
                return fail_download(&sender, &state, &url, &stalled);
            }
        };

        let share = bytes.len().clamp(1, BYTES_IN_FLIGHT) as u32;
        let Ok(permit) = Arc::clone(&budget).acquire_many_owned(share).await else {
            return;
        };
        state
            .received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // A closed channel means the decoder stopped reading, so nothing more is needed.
        if sender.send(Ok((bytes, permit))).is_err() {
            return;
        }
    }
}

/// Records why the download stopped and passes the error to the decoder.
fn fail_download(
    sender: &mpsc::UnboundedSender<BodyChunk>,
    state: &DownloadState,
    url: &str,
    cause: &str,
) {
    let received = state.received.load(Ordering::Relaxed);
    tracing::warn!(url, received, error = cause, "source download failed");
    let message = format!("download of {url} broke off after {received} bytes: {cause}");
    if let Ok(mut slot) = state.failure.lock() {
        *slot = Some(message.clone());
    }
    // The decoder may have stopped reading already, and then the error has no reader.
    let _ = sender.send(Err(io::Error::other(message)));
}

/// The decoder's side of the source stream; blocks until the download delivers bytes.
pub struct ChannelReader {
    receiver: mpsc::UnboundedReceiver<BodyChunk>,
    current: Bytes,
    /// Budget held by `current`, released when the next chunk replaces it.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(Ok((bytes, permit))) => {
                    self.current = bytes;
                    self._permit = Some(permit);
                }
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
// TODO-correctness: a PUT that stalls has no timeout of its own, so only the job's deadline
// ends it. A timeout would need to scale with the file size and the link speed.
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
