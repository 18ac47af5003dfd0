//! `GET /admin/backup`: an online backup, streamed. The backup ends at the head
//! read when the request came in, while commands go on being accepted; its bytes are
//! produced on a blocking thread and handed to the response a chunk at a time, so
//! memory stays bounded whatever the log's size. A failure midway aborts the
//! response, and the client sees a file without its trailer, which no reader
//! accepts as whole.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use crate::AppState;
use crate::auth::Admin;
use crate::extract::{ApiQuery, NoQuery};
use crate::openapi;

/// Bytes per chunk of the response.
const CHUNK_LEN: usize = 256 * 1024;

/// A backup of the whole log in the backup file format (see `shoplog restore`).
#[utoipa::path(
    get, path = "/admin/backup", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "The backup file, ending at the head position when the request came in",
            content_type = "application/octet-stream", body = Vec<u8>,
            headers(("X-Head-Position" = u64, description = "The last position in the backup"))),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Unprocessable),
    )
)]
pub async fn backup(State(state): State<AppState>, method: Method, _: Admin, _: ApiQuery<NoQuery>) -> Response {
    let head = state.log.head();
    if method == Method::HEAD {
        // The headers a GET would get, and no backup: nothing would read it.
        return with_backup_headers(Body::empty().into_response(), head);
    }
    let (chunks, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let log = state.log.clone();
    // The backup is written after the handler has answered, on a thread of its
    // own: its log lines go in the request's span all the same.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut out = ChunkWriter { buffer: Vec::with_capacity(CHUNK_LEN), chunks: chunks.clone() };
        let written = log.backup_up_to(head, &mut out, &mut |_| {}).and_then(|summary| {
            out.send().map_err(|error| store::StoreError::Storage(error.to_string()))?;
            Ok(summary)
        });
        match written {
            Ok(summary) => tracing::info!(events = summary.events, bytes = summary.bytes, "online backup sent"),
            Err(error) => {
                tracing::warn!(%error, "online backup failed");
                let _ = chunks.blocking_send(Err(std::io::Error::other(error.to_string())));
            }
        }
    });
    let stream =
        futures_util::stream::unfold(body, |mut body| async move { body.recv().await.map(|chunk| (chunk, body)) });
    with_backup_headers(Body::from_stream(stream).into_response(), head)
}

/// The headers of a backup ending at `head`.
fn with_backup_headers(mut response: Response, head: u64) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert("x-head-position", HeaderValue::from(head));
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"shoplog-{head}.backup\"")) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    response
}

/// Hands what the backup writes to the response in chunks; a client that went
/// away makes the next write fail, which ends the backup.
struct ChunkWriter {
    buffer: Vec<u8>,
    chunks: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_LEN)));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_LEN {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
