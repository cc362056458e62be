//! The upstream side of a bodiless `GET` or `HEAD`, spoken directly on the pooled
//! socket by the request's own future.
//!
//! hyper's client runs every connection as a separate task fed through channels: the
//! request, the response head and each body chunk cross a channel and wake a task.
//! Measured with callgrind, that machinery was a third of idgate's CPU per proxied
//! request, and it kept idgate below the throughput target against nginx. For
//! requests without a body (the bulk of an app's traffic) this module writes the head
//! itself and reads the answer inline; everything else (bodies, upgrades) still goes
//! through hyper.
//!
//! Parsing is httparse's, as in hyper. The framing on top of it is strict, because a
//! pooled connection is shared by many clients and a misread response boundary would
//! hand one client's answer to the next (RFC 9112 §6.3, §11.2):
//! - `Transfer-Encoding` is accepted only as exactly `chunked`, and never together with
//!   `Content-Length`: both are refused as an error, as RFC 9112 §6.3 advises;
//! - several `Content-Length` values must all agree;
//! - a message without either is read until the upstream closes, and the connection is
//!   not reused;
//! - a connection goes back to the pool only when its message ended exactly at the end
//!   of what was read, on HTTP/1.1, without `Connection: close`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::mem::MaybeUninit;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest response head accepted: eight times nginx's default `proxy_buffer_size`
/// limit, below hyper's 400 KiB.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one response head.
const MAX_HEADERS: usize = 128;
/// Interim (1xx) responses tolerated before the final one.
pub(crate) const MAX_INTERIM: usize = 8;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes of trailer fields after the last chunk (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// Room made before each read.
const READ_RESERVE: usize = 16 * 1024;

/// Why an exchange or a body failed. Messages are for the log; the client sees 502 or
/// a cut-off body.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The socket failed.
    #[error("upstream i/o: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed before sending any byte of a response: on a reused
    /// connection this is the keep-alive race, and the request may be sent again.
    #[error("upstream closed the connection before responding")]
    ClosedBeforeResponse,
    /// The upstream closed in the middle of a message.
    #[error("upstream closed the connection mid-message")]
    Truncated,
    /// The response was not HTTP/1.x that idgate can frame safely.
    #[error("invalid upstream response: {0}")]
    Invalid(&'static str),
}

/// A kept-alive upstream connection with its read buffer and its reusable write buffer.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
}

impl Conn {
    /// Wraps a fresh connection.
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// Sends a bodiless request and reads the final response head. The request target
    /// must be origin-form and the headers already cleaned: what is given is what is
    /// sent, in order, `headers` then `extra`.
    pub async fn exchange(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        extra: &[&[(HeaderName, HeaderValue)]],
    ) -> Result<Head, H1Error> {
        self.out.clear();
        encode_head(&mut self.out, method, target, headers, extra);
        if let Err(e) = self.stream.write_all(&self.out).await {
            // A reused connection that the upstream has closed fails here or at the
            // first read (the caller decides whether to send again).
            return Err(match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                    H1Error::ClosedBeforeResponse
                }
                _ => H1Error::Io(e),
            });
        }
        let head_request = method == Method::HEAD;
        let mut interim = 0;
        let mut received = !self.buf.is_empty();
        loop {
            match parse_head(&mut self.buf, head_request)? {
                Some(Parsed::Final(head)) => return Ok(head),
                Some(Parsed::Interim) => {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(H1Error::Invalid("too many interim (1xx) responses"));
                    }
                    continue;
                }
                None => {}
            }
            self.buf.reserve(READ_RESERVE);
            let n = match tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.buf).await {
                Ok(n) => n,
                Err(e) if !received && e.kind() == io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(H1Error::Io(e)),
            };
            if n == 0 {
                return Err(if received {
                    H1Error::Truncated
                } else {
                    H1Error::ClosedBeforeResponse
                });
            }
            received = true;
        }
    }

    /// Whether nothing is left unread: only such a connection may carry another
    /// request, since stray bytes would be taken for the next response.
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether the socket became readable while it sat idle: the upstream closed it, or
    /// sent bytes that belong to no request. Either way it must not carry a request.
    /// Reads clear readiness once the socket is drained (tokio does so on a short read),
    /// so this costs no system call.
    pub fn stirred_while_idle(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Outside tokio's cooperative budget: with the budget spent, the readiness poll
        // answers Pending whatever the socket holds, and a stirred socket would pass.
        let check = std::future::poll_fn(|cx| Poll::Ready(self.stream.poll_read_ready(cx)));
        let mut check = std::pin::pin!(tokio::task::unconstrained(check));
        match check.as_mut().poll(&mut cx) {
            Poll::Ready(ready) => ready.is_ready(),
            Poll::Pending => true,
        }
    }

    /// Reads more of the response body into the buffer; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_RESERVE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }
}

/// Writes `METHOD target HTTP/1.1`, the fields and the blank line. Header names and
/// values cannot hold CR or LF (`http` refuses them when they are made), and the
/// target comes from a parsed `Uri`, so nothing here can split the head.
pub fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    extra: &[&[(HeaderName, HeaderValue)]],
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers
        .iter()
        .chain(extra.iter().copied().flatten().map(|(n, v)| (n, v)))
    {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes (no length given).
    Close,
}

/// A final response head.
#[derive(Debug)]
pub struct Head {
    /// Status code (never 1xx).
    pub status: StatusCode,
    /// Header fields as received, framing fields included.
    pub headers: HeaderMap,
    /// How the body ends.
    pub framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// What `parse_head` found at the front of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// An interim (1xx) response, consumed and dropped.
    Interim,
    /// The final response head, consumed.
    Final(Head),
}

/// Parses one response head off the front of `buf`. `Ok(None)` means more bytes are
/// needed; what was consumed is removed from `buf`, the body bytes stay.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, H1Error> {
    // Where each field's name and value lie in `buf`, so the values can share one
    // frozen copy of the head instead of an allocation each.
    let (len, code, minor, spans) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut fields)
            .map_err(|e| {
                H1Error::Invalid(match e {
                    httparse::Error::TooManyHeaders => "too many header fields",
                    httparse::Error::Version => "not HTTP/1.x",
                    httparse::Error::Status => "invalid status line",
                    _ => "malformed response head",
                })
            })?;
        let len = match status {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() > MAX_HEAD => {
                return Err(H1Error::Invalid("response head too large"));
            }
            httparse::Status::Partial => return Ok(None),
        };
        let base = buf.as_ptr() as usize;
        let spans: Vec<(usize, usize, usize, usize)> = resp
            .headers
            .iter()
            .map(|field| {
                let name = field.name.as_ptr() as usize - base;
                let value = field.value.as_ptr() as usize - base;
                (
                    name,
                    name + field.name.len(),
                    value,
                    value + field.value.len(),
                )
            })
            .collect();
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(0),
            spans,
        )
    };
    let head = buf.split_to(len).freeze();
    if (100..200).contains(&code) {
        if code == 101 {
            // Only upgrade requests (which never come here) may be switched.
            return Err(H1Error::Invalid("unrequested protocol switch (101)"));
        }
        return Ok(Some(Parsed::Interim));
    }
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("invalid status code"))?;

    // Room for what the gateway adds (`X-Request-Id`) without a rehash, and more: hyper
    // keeps a response's emptied map for the connection's next request, which then
    // needs no growing either for a typical request plus what idgate adds to it.
    let mut headers = HeaderMap::with_capacity((spans.len() + 2).max(16));
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = minor == 0;
    for &(n0, n1, v0, v1) in &spans {
        let name = HeaderName::from_bytes(&head[n0..n1])
            .map_err(|_| H1Error::Invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| H1Error::Invalid("invalid header value"))?;
        if name == CONTENT_LENGTH {
            for item in value.as_bytes().split(|&b| b == b',') {
                let n = parse_length(item.trim_ascii())
                    .ok_or(H1Error::Invalid("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(H1Error::Invalid("conflicting Content-Length values"));
                }
                length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            // Exactly one coding, `chunked`: anything else (`gzip, chunked`, a repeated
            // `chunked`) is a framing idgate will not guess at.
            if chunked
                || !value
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked")
            {
                return Err(H1Error::Invalid("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name == CONNECTION
            && value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            close = true;
        }
        headers.append(name, value);
    }

    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        // An app that writes a body anyway (to HEAD, or to a 204 or 304 that announces
        // one with a transfer coding or a 204 with a length) would have it read as the
        // next response: such a connection carries no other request. These are rare
        // enough that a new connection costs nothing.
        if head_request
            || chunked
            || (status == StatusCode::NO_CONTENT && length.is_some_and(|l| l > 0))
        {
            close = true;
        }
        Framing::Empty
    } else if chunked && length.is_some() {
        return Err(H1Error::Invalid(
            "both Transfer-Encoding and Content-Length",
        ));
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => {
                close = true;
                Framing::Close
            }
        }
    };
    Ok(Some(Parsed::Final(Head {
        status,
        headers,
        framing,
        keep_alive: !close,
    })))
}

/// A decimal `Content-Length` of at most 18 digits (so it cannot overflow).
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// Where a body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `n` more bytes of a `Content-Length` body.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// `n` more bytes of the current chunk.
    ChunkData(u64),
    /// Expecting the CRLF that ends a chunk.
    ChunkEnd,
    /// Reading (and dropping) trailer fields; `n` bytes of them seen so far.
    Trailers(usize),
    /// Everything until the upstream closes.
    Close,
    /// The body has ended.
    Done,
}

/// One step of decoding.
#[derive(Debug)]
pub(crate) enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The body ended.
    End,
    /// More bytes are needed.
    More,
}

/// Decodes a response body out of the connection's buffer.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    /// A decoder for `framing`.
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Whether the body ends only when the upstream closes (no length given), so that
    /// the end of the stream is the end of the body rather than a truncation.
    pub(crate) fn reads_until_close(&self) -> bool {
        self.state == State::Close
    }

    /// Decodes what `buf` holds of the body, consuming it.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, H1Error> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::ChunkEnd,
                        (_, l) => State::ChunkData(l),
                    };
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = line_len(buf, MAX_CHUNK_LINE, "chunk-size line too long")?
                    else {
                        return Ok(Step::More);
                    };
                    // httparse reads the size and skips extensions; it would take an
                    // empty line for size 0, so a digit must come first.
                    if !buf[0].is_ascii_hexdigit() {
                        return Err(H1Error::Invalid("invalid chunk size"));
                    }
                    let size = match httparse::parse_chunk_size(&buf[..line]) {
                        Ok(httparse::Status::Complete((used, size))) if used == line => size,
                        _ => return Err(H1Error::Invalid("invalid chunk size")),
                    };
                    let _ = buf.split_to(line);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Invalid("chunk not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(line) = line_len(buf, MAX_TRAILERS - seen, "trailers too large")?
                    else {
                        return Ok(Step::More);
                    };
                    let _ = buf.split_to(line);
                    // Trailers are dropped, like request trailers: a trailer can carry
                    // any field name and some clients merge them into the headers.
                    self.state = if line == 2 {
                        State::Done
                    } else {
                        State::Trailers(seen + line)
                    };
                }
            }
        }
    }
}

/// Length of the CRLF-terminated line at the front of `buf`, CRLF included; `None` if
/// it is not complete yet. A bare LF is refused: a line's end must not be a guess.
fn line_len(buf: &[u8], max: usize, too_long: &'static str) -> Result<Option<usize>, H1Error> {
    match buf.iter().take(max).position(|&b| b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i + 1)),
        Some(_) => Err(H1Error::Invalid("bare LF in chunked framing")),
        None if buf.len() >= max => Err(H1Error::Invalid(too_long)),
        None => Ok(None),
    }
}

/// A response body being read off its connection.
pub struct BodyReader {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
}

impl BodyReader {
    /// Reads the body of `head` from `conn`.
    pub fn new(conn: Conn, head: &Head) -> BodyReader {
        BodyReader {
            conn: Some(conn),
            decoder: Decoder::new(head.framing),
            keep_alive: head.keep_alive,
        }
    }

    /// Whether the body has ended (or failed).
    pub fn is_end(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    /// Bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        if self.conn.is_none() {
            return Some(0);
        }
        self.decoder.remaining()
    }

    /// Once the body has ended: the connection, if it may carry another request.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if !self.decoder.is_done() || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(Conn::is_clean)
    }

    /// The next piece of the body; `None` at its end. After an error the connection
    /// is gone and the body stays ended.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.step(&mut conn.buf) {
                Ok(Step::Data(bytes)) => return Poll::Ready(Some(Ok(bytes))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if self.decoder.reads_until_close() => {
                    self.decoder.state = State::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(H1Error::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(H1Error::Io(e))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, head_request: bool) -> Result<Option<Parsed>, H1Error> {
        parse_head(&mut BytesMut::from(raw), head_request)
    }

    fn final_head(raw: &str) -> Head {
        match parse(raw, false) {
            Ok(Some(Parsed::Final(h))) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn refused(raw: &str) -> &'static str {
        match parse(raw, false) {
            Err(H1Error::Invalid(why)) => why,
            other => panic!("{raw:?} should be refused: {other:?}"),
        }
    }

    /// Decodes all of `body` fed in `step`-byte pieces, as reads would deliver it.
    fn decode(framing: Framing, body: &[u8], step: usize) -> Result<(Vec<u8>, usize), H1Error> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::End => return Ok((out, buf.len() + body.len() - fed)),
                Step::More if fed == body.len() => return Err(H1Error::Truncated),
                Step::More => {
                    let n = step.min(body.len() - fed);
                    buf.extend_from_slice(&body[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn the_head_is_written_as_given() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("app"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let extra = [(
            HeaderName::from_static("x-idgate-user-id"),
            HeaderValue::from_static("u1"),
        )];
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, "/p?q=1", &headers, &[&extra]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: app\r\nx-a: 1\r\nx-a: 2\r\nx-idgate-user-id: u1\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = final_head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (StatusCode::OK, Framing::Length(5), true)
        );
        assert_eq!(h.headers["x-a"], "b");
        let h = final_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = final_head("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(7));
        let h = final_head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = final_head("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h = final_head("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, false));
        let h = final_head("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, false));
        let h = final_head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = final_head("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = final_head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive, "HTTP/1.0 connections are not reused");
        let h = final_head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(!h.keep_alive);
        match parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true) {
            Ok(Some(Parsed::Final(h))) => {
                assert_eq!((h.framing, h.keep_alive), (Framing::Empty, false));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert_eq!(
            refused("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "both Transfer-Encoding and Content-Length"
        );
        assert_eq!(
            refused("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            "conflicting Content-Length values"
        );
        for cl in ["-1", "+3", "3x", "", "5,", "0x10", "1234567890123456789"] {
            assert_eq!(
                refused(&format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\n")),
                "invalid Content-Length",
                "{cl:?}"
            );
        }
        for te in [
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "chunked;q=1",
        ] {
            assert_eq!(
                refused(&format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n"
                )),
                "unsupported Transfer-Encoding",
                "{te:?}"
            );
        }
        assert_eq!(
            refused(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            "unsupported Transfer-Encoding"
        );
        assert_eq!(
            refused("HTTP/1.1 101 Switching\r\n\r\n"),
            "unrequested protocol switch (101)"
        );
        assert_eq!(refused("HTTP/2.0 200 OK\r\n\r\n"), "not HTTP/1.x");
        assert_eq!(
            refused("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"),
            "malformed response head"
        );
        assert_eq!(
            refused("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"),
            "malformed response head"
        );
    }

    #[test]
    fn interim_responses_are_skipped_and_partial_heads_wait() {
        let mut buf =
            BytesMut::from("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n");
        assert!(matches!(
            parse_head(&mut buf, false),
            Ok(Some(Parsed::Interim))
        ));
        assert!(matches!(parse_head(&mut buf, false), Ok(None)));
        buf.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        match parse_head(&mut buf, false) {
            Ok(Some(Parsed::Final(h))) => assert_eq!(h.framing, Framing::Empty),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
        let mut big = BytesMut::from("HTTP/1.1 200 OK\r\n");
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        assert!(matches!(
            parse_head(&mut big, false),
            Err(H1Error::Invalid(
                "response head too large" | "too many header fields"
            ))
        ));
    }

    #[test]
    fn bodies_decode_whatever_the_read_sizes() {
        let chunked = b"5;ext=1\r\nhello\r\n1 ; a=\"b\"\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n";
        for step in [1, 2, 3, 7, 1000] {
            let (body, left) = decode(Framing::Chunked, chunked, step).unwrap();
            assert_eq!(body, b"hello 0123456789abcdef", "step {step}");
            assert_eq!(left, 0);
            let (body, left) = decode(Framing::Length(5), b"hellonext", step).unwrap();
            assert_eq!((body.as_slice(), left), (&b"hello"[..], 4), "step {step}");
        }
        // Bytes after the end stay unread, so the pool can see them and drop the
        // connection.
        let (_, left) = decode(Framing::Chunked, b"0\r\n\r\nHTTP/1.1 200 OK\r\n", 4).unwrap();
        assert_eq!(left, 17);
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        for bad in [
            &b"\r\n"[..],
            b"z\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"10000000000000000\r\n",
            b"-1\r\n",
            b"0\r\nX: a\nY: b\r\n\r\n",
        ] {
            assert!(
                matches!(decode(Framing::Chunked, bad, 3), Err(H1Error::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            decode(Framing::Chunked, b"5\r\nhel", 2),
            Err(H1Error::Truncated)
        ));
        let long_ext = format!("1;{}\r\n", "a".repeat(MAX_CHUNK_LINE));
        assert!(matches!(
            decode(Framing::Chunked, long_ext.as_bytes(), 512),
            Err(H1Error::Invalid("chunk-size line too long"))
        ));
        let many_trailers = format!("0\r\n{}", "X-T: 1\r\n".repeat(MAX_TRAILERS));
        assert!(matches!(
            decode(Framing::Chunked, many_trailers.as_bytes(), 4096),
            Err(H1Error::Invalid("trailers too large"))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: mutations of valid responses must parse or fail,
        // never panic, and a body decoder must never claim more than it was given.
        let seeds: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 103 Hints\r\n\r\nHTTP/1.1 204 No\r\n\r\n",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let seed = seeds[(next() % 3) as usize];
            let mut bytes = seed.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[i] = next() as u8,
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, b"\r\n:;0 ,"[(next() % 7) as usize]),
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            while let Ok(Some(parsed)) = parse_head(&mut buf, false) {
                if let Parsed::Final(head) = parsed {
                    let mut d = Decoder::new(head.framing);
                    let mut body = 0;
                    while let Ok(Step::Data(b)) = d.step(&mut buf) {
                        body += b.len();
                    }
                    assert!(body <= before);
                    break;
                }
            }
        }
    }
}
