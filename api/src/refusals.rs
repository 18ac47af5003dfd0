//! problem+json for what hyper refuses before a request exists: a request line
//! or header it cannot parse (400), a request target over its limit (414),
//! header fields over its limit (431). hyper writes those answers itself, with
//! an empty body, and has no hook to change them (hyperium/hyper#3225), so the
//! connection's stream does: [`ProblemIo`] sees the bytes hyper writes, and an
//! answer of hyper's own (one of those statuses, `content-length: 0`, no
//! `content-type`: every answer of the routes has a problem+json body) goes out
//! as the same head with a problem+json body.
//!
//! The check costs a write a count of its buffers and one comparison of the
//! first one's first ten bytes: answers that are not 4xx never look further.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's stream, which turns hyper's own empty refusals into problem+json.
///
/// Once a refusal is being written in place of hyper's head, every write call
/// goes on with it (never with the caller's bytes) until it is out, and then
/// reports the head written, clamped to what that call offered; a flush or a
/// shutdown pushes it out but leaves that report for the next write.
#[derive(Debug)]
pub(crate) struct ProblemIo<T> {
    inner: T,
    /// A refusal being written in place of hyper's.
    rewriting: Option<Rewriting>,
}

#[derive(Debug)]
struct Rewriting {
    bytes: Vec<u8>,
    written: usize,
    /// How many of hyper's bytes it stands for: reported written once it is.
    replaces: usize,
}

impl<T> ProblemIo<T> {
    pub(crate) fn new(inner: T) -> Self {
        ProblemIo { inner, rewriting: None }
    }
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Write on the refusal in place, if one is under way, until it is all out.
    fn poll_rewriting(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(rewriting) = &mut self.rewriting {
            while rewriting.written < rewriting.bytes.len() {
                let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &rewriting.bytes[rewriting.written..]))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                rewriting.written += written;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// A write call that offers `offered` bytes, the first of which are `first`:
    /// the refusal in place of `first` if it is one of hyper's own (or one is
    /// under way), reported as the bytes of hyper's it stands for; `None` to pass
    /// the call on.
    fn poll_write_refusal(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        offered: usize,
    ) -> Option<Poll<io::Result<usize>>> {
        if self.rewriting.is_none() {
            let bytes = problem_in_place_of(first)?;
            self.rewriting = Some(Rewriting { bytes, written: 0, replaces: first.len() });
        }
        Some(self.poll_rewriting(cx).map_ok(|()| {
            let replaces = self.rewriting.take().map_or(0, |rewriting| rewriting.replaces);
            replaces.min(offered)
        }))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.poll_write_refusal(cx, buf, buf.len()) {
            Some(written) => written,
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's refusal is a head alone, in one buffer.
        let mut written = bufs.iter().filter(|buf| !buf.is_empty());
        let first: &[u8] = match (written.next(), written.next()) {
            (Some(first), None) => first,
            _ => &[],
        };
        let offered = bufs.iter().map(|buf| buf.len()).sum();
        match self.poll_write_refusal(cx, first, offered) {
            Some(written) => written,
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_rewriting(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_rewriting(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How every 4xx head begins (hyper speaks HTTP/1.1 only, here).
const CLIENT_ERROR: &[u8] = b"HTTP/1.1 4";

/// The bytes to write instead of `head` when it is one of hyper's own empty
/// refusals: its status line and headers but the length, then the problem's type
/// and length, then the problem.
fn problem_in_place_of(head: &[u8]) -> Option<Vec<u8>> {
    if !head.starts_with(CLIENT_ERROR) || head.len() > 1024 || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, fields) = text.strip_suffix("\r\n\r\n")?.split_once("\r\n")?;
    let (status, detail) = match status_line.get(9..12)? {
        "400" => (StatusCode::BAD_REQUEST, "the request could not be read: its request line or a header is malformed"),
        "414" => (StatusCode::URI_TOO_LONG, "the request target is longer than the server reads"),
        "431" => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request's header fields are larger than the server reads",
        ),
        _ => return None,
    };
    let fields: Vec<&str> = fields.split("\r\n").collect();
    let named = |field: &str, name: &str| field.get(..name.len()).is_some_and(|start| start.eq_ignore_ascii_case(name));
    let empty = fields.iter().any(|field| named(field, "content-length:") && field[15..].trim() == "0");
    if !empty || fields.iter().any(|field| named(field, "content-type:")) {
        return None;
    }
    let body = crate::error::problem_bytes(status, detail.to_owned());
    let mut bytes = Vec::with_capacity(head.len() + 64 + body.len());
    bytes.extend_from_slice(status_line.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    for field in fields.iter().filter(|field| !named(field, "content-length:")) {
        bytes.extend_from_slice(field.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("content-type: {}\r\n", crate::error::PROBLEM_JSON).as_bytes());
    bytes.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(&body);
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through a pipe that takes 7 bytes at a time (so every write is partial, and
    /// many are `Pending`): the refusal goes out whole in place of hyper's head,
    /// which is reported written whole, once; a flush in between changes nothing;
    /// the bytes after it pass as they are.
    #[tokio::test]
    async fn a_refusal_written_a_few_bytes_at_a_time_goes_out_whole_in_place_of_the_head() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let expected = problem_in_place_of(head).expect("rewritten");
        let (client, server) = tokio::io::duplex(7);
        let mut io = ProblemIo::new(server);
        let reading = tokio::spawn(async move {
            let mut client = client;
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.expect("reads");
            received
        });
        let mut rest = &head[..];
        while !rest.is_empty() {
            let written = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, rest)).await.expect("writes");
            assert!(written == rest.len(), "the head is reported written whole, once: {written} of {}", rest.len());
            rest = &rest[written..];
            io.flush().await.expect("flushes");
        }
        io.write_all(b"after").await.expect("writes on");
        io.shutdown().await.expect("shuts down");
        drop(io);
        let received = reading.await.expect("the reader ends");
        assert_eq!(received, [expected.as_slice(), b"after"].concat());
    }

    #[test]
    fn only_hypers_own_empty_refusals_are_rewritten() {
        let head = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 16:29:01 GMT\r\n\r\n";
        let rewritten = String::from_utf8(problem_in_place_of(head).expect("rewritten")).expect("text");
        let (head, body) = rewritten.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ndate: "), "{head}");
        assert!(head.contains("\r\ncontent-type: application/problem+json\r\n"), "{head}");
        assert!(head.ends_with(&format!("\r\ncontent-length: {}", body.len())), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(problem["status"], 414, "{problem}");

        for other in [
            // An answer of the routes: it has a body and its type.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // A head cut short: written as it is.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ] {
            assert_eq!(problem_in_place_of(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
