//! Tolerance for a malformed HTTP/2 `:authority` header from older etcd clients.
//!
//! etcdctl 3.4 dials each endpoint of `endpoint status` and `endpoint hashkv` with the whole
//! URL as its target, so its requests carry `:authority: http://127.0.0.1:2379`. etcd's Go
//! server ignores the field; our HTTP/2 layer rejects the request as malformed. gRPC never
//! routes on `:authority`, so [`AuthorityFix`] replaces every literal `:authority` value a
//! client sends with a one-character placeholder before the bytes reach HTTP/2.
//!
//! It works on the client-to-server byte stream only: it skips the connection preface, and
//! for each HEADERS frame (with its CONTINUATION frames) walks the HPACK block field by field,
//! copying every field as it is except a literal `:authority` value. Values are skipped by
//! their length, so nothing is Huffman-decoded. The placeholder is never longer than the
//! value it replaces, so the server's HPACK dynamic table only ever holds entries no larger
//! than the client's copy: it evicts no earlier than the client does, and every index the
//! client sends still names the same entry.
//!
//! Only header blocks are held whole (at most [`HEADER_BLOCK_MAX`]); every other frame's
//! payload streams through as it arrives, so a connection that announces a large frame and
//! then sends nothing holds nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_BYTES: usize = 24;
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload we emit: HTTP/2's default maximum frame size.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// Largest header block buffered across CONTINUATION frames. Beyond it the connection fails.
const HEADER_BLOCK_MAX: usize = 1024 * 1024;
/// HPACK's static table index of `:authority`.
const AUTHORITY_INDEX: u64 = 1;
const PLACEHOLDER: &[u8] = b"c";

struct PendingHeaders {
    stream_id: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// A client connection whose HTTP/2 header blocks get their `:authority` replaced.
pub struct AuthorityFix<T> {
    inner: T,
    /// Bytes read from the client, not yet processed.
    input: Vec<u8>,
    /// Processed bytes ready for the HTTP/2 server.
    output: Vec<u8>,
    output_at: usize,
    preface_left: usize,
    pending: Option<PendingHeaders>,
    /// Payload bytes of the current non-header frame still to copy through.
    passthrough: usize,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    /// Wraps a freshly accepted client connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            input: Vec::new(),
            output: Vec::new(),
            output_at: 0,
            preface_left: PREFACE_BYTES,
            pending: None,
            passthrough: 0,
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn process(&mut self) -> io::Result<()> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.input.len());
            self.output.extend(self.input.drain(..n));
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        let mut at = 0;
        loop {
            if self.passthrough > 0 {
                let n = self.passthrough.min(self.input.len() - at);
                self.output.extend_from_slice(&self.input[at..at + n]);
                at += n;
                self.passthrough -= n;
                if self.passthrough > 0 {
                    break;
                }
            }
            if self.input.len() - at < FRAME_HEADER_BYTES {
                break;
            }
            let header = &self.input[at..at + FRAME_HEADER_BYTES];
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let kind = header[3];
            let flags = header[4];
            let stream_id: [u8; 4] = header[5..9].try_into().expect("4 bytes");
            let header_block =
                kind == FRAME_HEADERS || (kind == FRAME_CONTINUATION && self.pending.is_some());
            if !header_block {
                // Any other frame goes through as its bytes arrive.
                self.output.extend_from_slice(header);
                at += FRAME_HEADER_BYTES;
                self.passthrough = length;
                continue;
            }
            if length > HEADER_BLOCK_MAX {
                return Err(malformed("header block too large"));
            }
            if self.input.len() - at < FRAME_HEADER_BYTES + length {
                break;
            }
            let payload =
                self.input[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + length].to_vec();
            at += FRAME_HEADER_BYTES + length;
            if kind == FRAME_HEADERS {
                self.headers(flags, stream_id, &payload)?;
            } else {
                self.continuation(flags, &payload)?;
            }
        }
        self.input.drain(..at);
        Ok(())
    }

    fn headers(&mut self, flags: u8, stream_id: [u8; 4], payload: &[u8]) -> io::Result<()> {
        let mut body = payload;
        let mut padding = 0;
        if flags & FLAG_PADDED != 0 {
            let (&pad, rest) = body
                .split_first()
                .ok_or_else(|| malformed("empty padded frame"))?;
            padding = usize::from(pad);
            body = rest;
        }
        let priority = if flags & FLAG_PRIORITY != 0 {
            let bytes: [u8; 5] = body
                .get(..5)
                .ok_or_else(|| malformed("short priority"))?
                .try_into()
                .expect("5 bytes");
            body = &body[5..];
            Some(bytes)
        } else {
            None
        };
        let block_len = body
            .len()
            .checked_sub(padding)
            .ok_or_else(|| malformed("bad padding"))?;
        let pending = PendingHeaders {
            stream_id,
            flags: flags & !(FLAG_PADDED | FLAG_PRIORITY),
            priority,
            block: body[..block_len].to_vec(),
        };
        self.pending = Some(pending);
        if flags & FLAG_END_HEADERS != 0 {
            self.emit()?;
        }
        Ok(())
    }

    fn continuation(&mut self, flags: u8, payload: &[u8]) -> io::Result<()> {
        let pending = self.pending.as_mut().expect("checked by the caller");
        if pending.block.len() + payload.len() > HEADER_BLOCK_MAX {
            return Err(malformed("header block too large"));
        }
        pending.block.extend_from_slice(payload);
        if flags & FLAG_END_HEADERS != 0 {
            self.emit()?;
        }
        Ok(())
    }

    /// Writes the buffered header block, rewritten, as HEADERS plus CONTINUATION frames.
    fn emit(&mut self) -> io::Result<()> {
        let pending = self.pending.take().expect("a header block is pending");
        let block = rewrite_authority(&pending.block)?;
        let mut first = Vec::with_capacity(block.len().min(FRAME_PAYLOAD_MAX) + 5);
        let mut flags = pending.flags & FLAG_END_STREAM;
        if let Some(priority) = pending.priority {
            first.extend_from_slice(&priority);
            flags |= FLAG_PRIORITY;
        }
        let room = FRAME_PAYLOAD_MAX - first.len();
        let (head, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        self.frame(FRAME_HEADERS, flags, pending.stream_id, &first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(FRAME_PAYLOAD_MAX));
            let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.frame(FRAME_CONTINUATION, flags, pending.stream_id, chunk);
            rest = tail;
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream_id: [u8; 4], payload: &[u8]) {
        let length = payload.len();
        self.output.extend_from_slice(&[
            (length >> 16) as u8,
            (length >> 8) as u8,
            length as u8,
            kind,
            flags,
        ]);
        self.output.extend_from_slice(&stream_id);
        self.output.extend_from_slice(payload);
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed HTTP/2 frame: {what}"),
    )
}

/// Reads an HPACK integer with an `prefix`-bit prefix at `block[*at]`.
fn read_integer(block: &[u8], at: &mut usize, prefix: u32) -> io::Result<u64> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *block
        .get(*at)
        .ok_or_else(|| malformed("truncated integer"))?;
    *at += 1;
    let mut value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block
            .get(*at)
            .ok_or_else(|| malformed("truncated integer"))?;
        *at += 1;
        value += u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 56 {
            return Err(malformed("integer overflow"));
        }
    }
}

/// Skips an HPACK string at `block[*at]`; returns its encoded length (0 for empty).
fn skip_string(block: &[u8], at: &mut usize) -> io::Result<usize> {
    let length =
        usize::try_from(read_integer(block, at, 7)?).map_err(|_| malformed("string length"))?;
    let end = at
        .checked_add(length)
        .filter(|end| *end <= block.len())
        .ok_or_else(|| malformed("truncated string"))?;
    *at = end;
    Ok(length)
}

/// Copies an HPACK header block, replacing every literal `:authority` value.
fn rewrite_authority(block: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut at = 0;
    while at < block.len() {
        let start = at;
        let byte = block[at];
        let name_prefix = if byte & 0x80 != 0 {
            read_integer(block, &mut at, 7)?;
            out.extend_from_slice(&block[start..at]);
            continue;
        } else if byte & 0xc0 == 0x40 {
            6
        } else if byte & 0xe0 == 0x20 {
            read_integer(block, &mut at, 5)?;
            out.extend_from_slice(&block[start..at]);
            continue;
        } else {
            4
        };
        let name_index = read_integer(block, &mut at, name_prefix)?;
        if name_index == 0 {
            skip_string(block, &mut at)?;
        }
        let value_start = at;
        let value_length = skip_string(block, &mut at)?;
        out.extend_from_slice(&block[start..value_start]);
        if name_index == AUTHORITY_INDEX && value_length > 0 {
            out.push(PLACEHOLDER.len() as u8);
            out.extend_from_slice(PLACEHOLDER);
        } else {
            out.extend_from_slice(&block[value_start..at]);
        }
    }
    Ok(out)
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.output_at < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.output_at);
                buf.put_slice(&this.output[this.output_at..this.output_at + n]);
                this.output_at += n;
                if this.output_at == this.output.len() {
                    this.output.clear();
                    this.output_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                        // Whatever could not be parsed goes through as it is; HTTP/2 reports it.
                        let rest = std::mem::take(&mut this.input);
                        this.output.extend(rest);
                        continue;
                    }
                    this.input.extend_from_slice(read.filled());
                    this.process()?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the rewrite: a literal :authority (indexed name 1, with incremental indexing)
    // gets the placeholder; other fields and indexed fields are copied byte for byte.
    #[test]
    fn literal_authority_is_replaced_and_the_rest_copied() {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (indexed)
        block.push(0x41); // literal with incremental indexing, name index 1 (:authority)
        block.push(22);
        block.extend_from_slice(b"http://127.0.0.1:24000");
        block.push(0x04); // literal without indexing, name index 4 (:path)
        block.push(5);
        block.extend_from_slice(b"/a/b1");
        block.push(0xbe); // indexed dynamic entry 62
        let out = rewrite_authority(&block).unwrap();
        let mut expected = vec![0x83, 0x86, 0x41, 1, b'c', 0x04, 5];
        expected.extend_from_slice(b"/a/b1");
        expected.push(0xbe);
        assert_eq!(out, expected);
    }

    // Proves frames are reassembled: a header block split over HEADERS and CONTINUATION with
    // padding comes out as one rewritten HEADERS frame, and other frames pass untouched.
    #[test]
    fn continuation_and_padding_are_handled() {
        let mut fix = AuthorityFix::new(());
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let block = [0x41, 3, b'a', b':', b'1', 0x84];
        // HEADERS, padded with 2 bytes, first 3 bytes of the block, no END_HEADERS.
        let payload = [&[2u8][..], &block[..3], &[0, 0]].concat();
        input.extend_from_slice(&[
            0,
            0,
            payload.len() as u8,
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_STREAM,
            0,
            0,
            0,
            1,
        ]);
        input.extend_from_slice(&payload);
        input.extend_from_slice(&[0, 0, 3, FRAME_CONTINUATION, FLAG_END_HEADERS, 0, 0, 0, 1]);
        input.extend_from_slice(&block[3..]);
        input.extend_from_slice(&[0, 0, 1, 0x0, 0x1, 0, 0, 0, 1, b'x']); // DATA
        fix.input = input;
        fix.process().unwrap();
        let mut expected = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        expected.extend_from_slice(&[
            0,
            0,
            4,
            FRAME_HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            0,
            0,
            0,
            1,
        ]);
        expected.extend_from_slice(&[0x41, 1, b'c', 0x84]);
        expected.extend_from_slice(&[0, 0, 1, 0x0, 0x1, 0, 0, 0, 1, b'x']);
        assert_eq!(fix.output, expected);
        assert!(fix.input.is_empty());
    }

    // Proves that only header blocks are held: a DATA frame announcing 16 MiB streams through
    // as its bytes arrive (nothing waits in the input), and a HEADERS frame announcing more
    // than a header block may hold fails the connection at once.
    #[test]
    fn only_header_blocks_are_buffered() {
        let mut fix = AuthorityFix::new(());
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(&[0xff, 0xff, 0xff, 0x0, 0x0, 0, 0, 0, 1]);
        input.extend_from_slice(b"first bytes");
        fix.input = input;
        fix.process().unwrap();
        assert!(fix.input.is_empty(), "a partial DATA frame was held back");
        assert!(fix.output.ends_with(b"first bytes"));
        fix.input.extend_from_slice(b"more");
        fix.process().unwrap();
        assert!(fix.input.is_empty() && fix.output.ends_with(b"more"));
        assert_eq!(fix.passthrough, 0xff_ffff - b"first bytesmore".len());

        let mut fix = AuthorityFix::new(());
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(&[0xff, 0xff, 0xff, FRAME_HEADERS, 0x0, 0, 0, 0, 1]);
        fix.input = input;
        assert!(fix.process().is_err());
    }

    // Proves malformed blocks are errors, not panics.
    #[test]
    fn truncated_blocks_are_errors() {
        assert!(rewrite_authority(&[0x41, 10, b'a']).is_err());
        assert!(rewrite_authority(&[0x7f]).is_err());
        assert!(
            rewrite_authority(&[0x41, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .is_err()
        );
    }
}
