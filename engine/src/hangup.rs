//! A plain client connection's stream as io serves it: glommio's
//! `TcpStream`, watched for a hang-up while a call is in flight
//! (`switchboard_io::Hangup`) by a one-byte `MSG_PEEK`, which consumes
//! nothing, so dropping it when the answer comes first loses no byte of a
//! pipelined request. A client that closes during a held poll is noticed
//! at once: io drops the call, and the runtime frees the poll
//! (`runtime::Abandoned`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A client connection's socket, as io serves it.
pub struct Watched(pub TcpStream);

impl switchboard_io::Hangup for Watched {
    async fn hung_up(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.0.peek(&mut byte).await {
            // Input waits: a next request, read after the answer.
            Ok(n) if n > 0 => false,
            // End of stream: the peer closed (or shut its side down, as
            // nginx's 499 takes it: a client that half-closes during a
            // held poll is taken as gone).
            Ok(_) => true,
            Err(e) => match e.raw_os_error() {
                Some(libc::ECONNRESET | libc::ETIMEDOUT | libc::EPIPE | libc::ENOTCONN) => true,
                // Anything else says nothing about the peer: the answer's
                // write will tell.
                _ => std::future::pending().await,
            },
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
