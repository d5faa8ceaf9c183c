//! The byte streams a connection runs over: plain TCP, or any other stream (TLS, WebSocket)
//! behind the same two halves, so `connection` handles MQTT the same way on each.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

/// A bidirectional byte stream other than plain TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection's stream, as a listener accepted it.
pub enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS, WebSocket, or WebSocket over TLS.
    Other(Box<dyn Io>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Transport::Other(_) => f.write_str("Other(..)"),
        }
    }
}

/// The read half.
pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Other(ReadHalf<Box<dyn Io>>),
}

/// The write half.
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

impl Transport {
    pub(crate) fn split(self) -> (Reader, Writer) {
        match self {
            Transport::Tcp(s) => {
                let (r, w) = s.into_split();
                (Reader::Tcp(r), Box::new(w))
            }
            Transport::Other(s) => {
                let (r, w) = tokio::io::split(s);
                (Reader::Other(r), Box::new(w))
            }
        }
    }
}

impl Reader {
    /// Waits until there is something to read. On TCP this holds no buffer while it waits,
    /// which is most of the memory 10 000 idle clients would otherwise pin; other streams
    /// (whose decoders buffer anyway) go straight to the read.
    pub(crate) async fn readable(&mut self) -> io::Result<()> {
        match self {
            Reader::Tcp(r) => r.readable().await,
            Reader::Other(_) => Ok(()),
        }
    }

    /// Reads what is available into `buf` (0: the peer closed the stream).
    pub(crate) async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Reader::Tcp(r) => r.read_buf(buf).await,
            Reader::Other(r) => r.read_buf(buf).await,
        }
    }
}
