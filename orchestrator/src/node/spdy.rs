//! SPDY/3.1 framing, as much as `kubectl port-forward` speaks: kubectl
//! (Go's spdystream) opens streams with SYN_STREAM, carries bytes in data
//! frames, and ends them with FIN or RST_STREAM. Header blocks are
//! zlib-compressed with one stream per direction for the connection's
//! life, primed with the dictionary from the SPDY/3 draft.
//!
//! Flow control is not enforced either way: spdystream never sends
//! WINDOW_UPDATE, so a sender honouring the 64 KiB initial window would
//! stall.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes this side sends.
pub const PROTOCOL_ERROR: u32 = 1;
pub const CANCEL: u32 = 5;

/// Frames bigger than this are refused: port-forward sends at most 32 KiB
/// of data at a time, and a header block is a few dozen bytes.
const MAX_FRAME: usize = 1 << 20;
/// A header block may not grow past this once inflated.
const MAX_HEADERS: usize = 64 << 10;

/// One frame, decoded. Header names are lower case, as SPDY requires.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: BTreeMap<String, String>,
    },
    SynReply {
        stream: u32,
        fin: bool,
    },
    Headers {
        stream: u32,
        fin: bool,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// SETTINGS, WINDOW_UPDATE and control types this side has no use for.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY version {0} (only 3 is spoken)")]
    Version(u16),
    #[error("SPDY frame of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("malformed SPDY {0} frame")]
    Malformed(&'static str),
    #[error("SPDY header block: {0}")]
    Headers(String),
}

/// The SPDY/3 header dictionary: 65 length-prefixed words, then a run of
/// text, 1,423 bytes in all.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: [&str; 65] = [
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TEXT: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412",
            "413414415416417502504505",
            "203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found",
            "500 Internal Server Error501 Not Implemented503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,publicprivate",
            "max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TEXT.as_bytes());
        d
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn stream_at(b: &[u8], at: usize) -> Option<u32> {
    u32_at(b, at).map(|v| v & 0x7fff_ffff)
}

/// Reads frames out of the bytes a peer sends, however they are split.
pub struct Decoder {
    buf: Vec<u8>,
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: Vec::new(),
            inflate: Decompress::new(true),
        }
    }
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32_at(&self.buf, 4).unwrap_or(0) & 0x00ff_ffff) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::TooLarge(len));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..8 + len).collect();
        let flags = frame[4];
        let fin = flags & FLAG_FIN != 0;
        let body = &frame[8..];
        if frame[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream: stream_at(&frame, 0).unwrap_or(0),
                fin,
                data: body.to_vec(),
            }));
        }
        let version = u16::from_be_bytes([frame[0] & 0x7f, frame[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([frame[2], frame[3]]);
        let stream = |name| stream_at(body, 0).ok_or(SpdyError::Malformed(name));
        Ok(Some(match kind {
            SYN_STREAM => {
                let id = stream("SYN_STREAM")?;
                let block = body.get(10..).ok_or(SpdyError::Malformed("SYN_STREAM"))?;
                let headers = self.headers(block)?;
                Frame::SynStream {
                    stream: id,
                    fin,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                let id = stream("SYN_REPLY")?;
                // Read only to keep the shared zlib stream in step.
                self.headers(body.get(4..).unwrap_or_default())?;
                if kind == SYN_REPLY {
                    Frame::SynReply { stream: id, fin }
                } else {
                    Frame::Headers { stream: id, fin }
                }
            }
            RST_STREAM => Frame::RstStream {
                stream: stream("RST_STREAM")?,
                status: u32_at(body, 4).ok_or(SpdyError::Malformed("RST_STREAM"))?,
            },
            PING => Frame::Ping(u32_at(body, 0).ok_or(SpdyError::Malformed("PING"))?),
            GOAWAY => Frame::GoAway,
            SETTINGS | WINDOW_UPDATE => Frame::Ignored,
            _ => Frame::Ignored,
        }))
    }

    fn headers(&mut self, block: &[u8]) -> Result<BTreeMap<String, String>, SpdyError> {
        let raw = self.inflate(block)?;
        let bad = || SpdyError::Headers("truncated name/value block".into());
        let count = u32_at(&raw, 0).ok_or_else(bad)? as usize;
        let mut at = 4;
        let mut out = BTreeMap::new();
        for _ in 0..count {
            let mut field = || -> Result<String, SpdyError> {
                let n = u32_at(&raw, at).ok_or_else(bad)? as usize;
                let bytes = raw.get(at + 4..at + 4 + n).ok_or_else(bad)?;
                at += 4 + n;
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| SpdyError::Headers("a header is not UTF-8".into()))
            };
            let name = field()?;
            let value = field()?;
            out.insert(name.to_ascii_lowercase(), value);
        }
        Ok(out)
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(256);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADERS {
                    return Err(SpdyError::Headers("header block too large".into()));
                }
                out.reserve(out.len());
            }
            let (before_in, before_out) = (self.inflate.total_in(), out.len());
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) if used == 0 && out.len() == before_out => {
                    if input.is_empty() {
                        break;
                    }
                    return Err(SpdyError::Headers("truncated compressed block".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::Headers(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Headers(e.to_string())),
            }
            // All in, and the output had room: nothing is held back.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out)
    }
}

/// Writes frames; header blocks share one compression stream.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Fails only for a stream that has started already.
        let _ = deflate.set_dictionary(dictionary());
        Encoder { deflate }
    }
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.extend_from_slice(&((u32::from(flags) << 24) | body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

impl Encoder {
    pub fn syn_reply(&mut self, stream: u32, fin: bool) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend(self.header_block(&[]));
        control(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &body)
    }

    /// Opens a stream: what a client does (and this side's tests).
    pub fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend(self.header_block(headers));
        control(SYN_STREAM, 0, &body)
    }

    pub fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        control(RST_STREAM, 0, &body)
    }

    pub fn ping(id: u32) -> Vec<u8> {
        control(PING, 0, &id.to_be_bytes())
    }

    pub fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(8 + data.len());
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        let flags = if fin { FLAG_FIN } else { 0 };
        f.extend_from_slice(&((u32::from(flags) << 24) | data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.len() == out.capacity() {
                out.reserve(64);
            }
            let before = self.deflate.total_in();
            let res = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done once the input is in and the flush left room to spare.
            if res.is_err() || (input.is_empty() && out.len() < out.capacity()) {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_drafts() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn frames_round_trip_however_the_bytes_are_split() {
        let mut enc = Encoder::default();
        let mut bytes = enc.syn_stream(1, &[("streamtype", "error"), ("port", "80")]);
        bytes.extend(enc.syn_stream(3, &[("streamtype", "data"), ("port", "80")]));
        bytes.extend(Encoder::data(3, false, b"GET / HTTP/1.1\r\n\r\n"));
        bytes.extend(Encoder::data(1, true, b""));
        bytes.extend(Encoder::ping(7));
        bytes.extend(Encoder::rst_stream(3, CANCEL));
        bytes.extend(enc.syn_reply(5, true));
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(5) {
            dec.push(chunk);
            while let Some(f) = dec.next_frame().expect("valid frames") {
                got.push(f);
            }
        }
        let headers = |t: &str| {
            BTreeMap::from([
                ("port".to_string(), "80".to_string()),
                ("streamtype".to_string(), t.to_string()),
            ])
        };
        assert_eq!(
            got,
            vec![
                Frame::SynStream {
                    stream: 1,
                    fin: false,
                    headers: headers("error")
                },
                Frame::SynStream {
                    stream: 3,
                    fin: false,
                    headers: headers("data")
                },
                Frame::Data {
                    stream: 3,
                    fin: false,
                    data: b"GET / HTTP/1.1\r\n\r\n".to_vec()
                },
                Frame::Data {
                    stream: 1,
                    fin: true,
                    data: vec![]
                },
                Frame::Ping(7),
                Frame::RstStream {
                    stream: 3,
                    status: CANCEL
                },
                Frame::SynReply {
                    stream: 5,
                    fin: true
                },
            ]
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut dec = Decoder::default();
        dec.push(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]);
        assert!(matches!(dec.next_frame(), Err(SpdyError::Version(2))));
        let mut dec = Decoder::default();
        dec.push(&[
            0x80, 0x03, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2,
        ]);
        assert!(dec.next_frame().is_err());
        let mut dec = Decoder::default();
        dec.push(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(dec.next_frame(), Err(SpdyError::TooLarge(_))));
    }
}
