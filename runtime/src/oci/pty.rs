//! A terminal for `kubectl exec -t`. runc makes the container's own pty
//! and copies between it and runc's stdio, which must be a terminal that
//! is runc's controlling one (runc opens `/dev/tty`, and follows its size
//! on SIGWINCH). So the node opens a pty pair, gives runc the slave end
//! (under `setsid --ctty`), and keeps the master: what the command shows
//! comes out of it, input goes into it, and resizing it resizes the
//! container's terminal through runc.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustix::pty::OpenptFlags;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Opens a pty pair: the master end, and the slave end to hand to a
/// process as its stdio.
pub(crate) fn open() -> io::Result<(Pty, OwnedFd)> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    Ok((Pty::new(master)?, slave))
}

/// The master end of a pty: what the command writes to its terminal comes
/// out of it, what is written to it is the command's input. Clones share
/// it; the terminal hangs up (SIGHUP to its shell) when the last goes.
#[derive(Clone)]
pub(crate) struct Pty(Arc<AsyncFd<OwnedFd>>);

impl Pty {
    fn new(fd: OwnedFd) -> io::Result<Pty> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        // Deprecated because a `T` may change the fd it names behind the
        // reactor's back; an `OwnedFd` names one fd for all its life, which
        // is exactly what `register`'s (unsafe) contract asks.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Pty(Arc::new(fd)))
    }

    /// Sets the terminal's size; the command gets SIGWINCH.
    pub(crate) fn resize(&self, columns: u16, rows: u16) {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if let Err(e) = rustix::termios::tcsetwinsize(self.0.get_ref(), size) {
            tracing::debug!(error = %e, "resizing an exec terminal");
        }
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: the terminal's other end is closed, every process on
                // it has exited. That is this stream's end.
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
