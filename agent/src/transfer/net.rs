//! The two ends over TCP and TLS.

use std::net::SocketAddr;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    protocol, FleetTls, Job, Progress, SendOptions, Summary, TransferError, HANDSHAKE_TIMEOUT,
};

/// The target side: listens for the sender of a job.
pub struct Receiver {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl Receiver {
    pub async fn bind(tls: &FleetTls, addr: SocketAddr) -> Result<Receiver, TransferError> {
        let listener = TcpListener::bind(addr).await.map_err(TransferError::Bind)?;
        Ok(Receiver {
            listener,
            acceptor: tls.acceptor(),
        })
    }

    /// The address to give the sender (the port, when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransferError> {
        self.listener.local_addr().map_err(TransferError::Bind)
    }

    /// Serves one connection: the TLS handshake (a client certificate from
    /// the fleet CA), then `job`'s token, then the stream into `sink`. Waits
    /// for that connection as long as it takes: bound it with a timeout.
    ///
    /// A refused or failed connection wrote nothing to `sink`
    /// ([`TransferError::Refused`], [`TransferError::Handshake`],
    /// [`TransferError::HandshakeTimeout`], [`TransferError::Accept`]): the
    /// caller may accept again.
    /// After any other error the sink holds a partial or corrupt stream and
    /// the receive must be aborted. On success the sink is flushed but not
    /// shut down.
    pub async fn accept<W>(
        &self,
        job: &Job,
        sink: &mut W,
        progress: Option<&watch::Sender<Progress>>,
    ) -> Result<Summary, TransferError>
    where
        W: AsyncWrite + Unpin,
    {
        let (tcp, _peer) = self
            .listener
            .accept()
            .await
            .map_err(TransferError::Accept)?;
        // The hello, verdict and result are small and awaited: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let (mut tls, hello) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut tls = self
                .acceptor
                .accept(tcp)
                .await
                .map_err(TransferError::Handshake)?;
            let hello = protocol::admit(&mut tls, job).await?;
            Ok::<_, TransferError>((tls, hello))
        })
        .await
        .map_err(|_| TransferError::HandshakeTimeout)??;
        if let Some(progress) = progress {
            progress.send_replace(Progress {
                bytes: 0,
                size_hint: hello.size_hint,
            });
        }
        protocol::stream_in(&mut tls, &hello, sink, progress).await
    }
}

/// The source side: connects to a job's receiver.
pub struct Sender {
    connector: TlsConnector,
}

impl Sender {
    pub fn new(tls: &FleetTls) -> Sender {
        Sender {
            connector: tls.connector(),
        }
    }

    /// Sends `source` to the receiver at `addr`, whose certificate must name
    /// `server_name` (the target node). Returns once the receiver has
    /// confirmed the byte count and hash.
    pub async fn send<R>(
        &self,
        addr: SocketAddr,
        server_name: &str,
        job: &Job,
        source: &mut R,
        opts: &SendOptions,
        progress: Option<&watch::Sender<Progress>>,
    ) -> Result<Summary, TransferError>
    where
        R: AsyncRead + Unpin,
    {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TransferError::ServerName(server_name.to_owned()))?;
        let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| TransferError::Connect { addr, source })?;
            let _ = tcp.set_nodelay(true);
            let mut tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(TransferError::Handshake)?;
            protocol::offer(&mut tls, job, opts).await?;
            Ok::<_, TransferError>(tls)
        })
        .await
        .map_err(|_| TransferError::HandshakeTimeout)??;
        protocol::stream_out(&mut tls, source, opts, progress).await
    }
}
