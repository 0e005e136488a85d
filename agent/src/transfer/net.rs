//! The two ends over TCP and TLS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    protocol, FleetTls, Job, Progress, Refusal, SendOptions, Summary, TransferError,
    HANDSHAKE_TIMEOUT,
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
            let (hello, _) = protocol::admit(&mut tls, |id| {
                (id == job.id.as_bytes())
                    .then(|| job.clone())
                    .ok_or(Refusal::WrongJob)
            })
            .await?;
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

/// An agent's one transfer port: serves every job it was told to
/// [`expect`](Listener::expect), each only to the sender that presents the
/// job's token with a certificate naming the job's source node.
pub struct Listener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    expected: Mutex<HashMap<String, Expected>>,
}

struct Expected {
    job: Job,
    peer: String,
    ready: oneshot::Sender<Admitted>,
}

struct Admitted {
    tls: TlsStream<TcpStream>,
    hello: protocol::Hello,
}

/// One expected sender; dropping it forgets the job.
pub struct Pending {
    listener: Arc<Listener>,
    id: String,
    ready: Option<oneshot::Receiver<Admitted>>,
}

impl Listener {
    pub async fn bind(tls: &FleetTls, addr: SocketAddr) -> Result<Arc<Listener>, TransferError> {
        let listener = TcpListener::bind(addr).await.map_err(TransferError::Bind)?;
        Ok(Arc::new(Listener {
            listener,
            acceptor: tls.acceptor(),
            expected: Mutex::new(HashMap::new()),
        }))
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransferError> {
        self.listener.local_addr().map_err(TransferError::Bind)
    }

    /// Registers `job`, whose sender's certificate must name `peer`. A job id
    /// expected twice replaces the older registration.
    pub fn expect(self: &Arc<Self>, job: Job, peer: &str) -> Pending {
        let (ready, rx) = oneshot::channel();
        let id = job.id().to_owned();
        self.table().insert(
            id.clone(),
            Expected {
                job,
                peer: peer.to_owned(),
                ready,
            },
        );
        Pending {
            listener: self.clone(),
            id,
            ready: Some(rx),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expected>> {
        self.expected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts connections until the process ends; each gets its own task.
    pub async fn serve(self: Arc<Self>) {
        loop {
            let tcp = match self.listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a transfer connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, me.admit(tcp)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(?peer, error = %e, "transfer connection refused"),
                    Err(_) => tracing::warn!(?peer, "transfer connection: no hello in time"),
                }
            });
        }
    }

    async fn admit(&self, tcp: TcpStream) -> Result<(), TransferError> {
        let mut tls = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(TransferError::Handshake)?;
        let certified = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned();
        let (hello, job) = protocol::admit(&mut tls, |id| {
            let id = std::str::from_utf8(id).map_err(|_| Refusal::WrongJob)?;
            let table = self.table();
            let e = table.get(id).ok_or(Refusal::WrongJob)?;
            if !names(certified.as_ref(), &e.peer) {
                return Err(Refusal::WrongPeer);
            }
            Ok(e.job.clone())
        })
        .await?;
        let Some(e) = self.table().remove(job.id()) else {
            return Err(TransferError::Refused(Refusal::WrongJob));
        };
        // A receiver that gave up in the meantime drops the connection here.
        let _ = e.ready.send(Admitted { tls, hello });
        Ok(())
    }
}

impl Pending {
    /// Waits up to `wait` for the sender, then writes its stream into `sink`
    /// (see [`Receiver::accept`] for what the sink holds after an error).
    pub async fn receive<W>(
        mut self,
        wait: Duration,
        sink: &mut W,
        progress: Option<&watch::Sender<Progress>>,
    ) -> Result<Summary, TransferError>
    where
        W: AsyncWrite + Unpin,
    {
        let ready = self.ready.take().expect("receive runs once");
        let mut admitted = tokio::time::timeout(wait, ready)
            .await
            .map_err(|_| TransferError::NoSender(wait))?
            .map_err(|_| TransferError::NoSender(wait))?;
        if let Some(progress) = progress {
            progress.send_replace(Progress {
                bytes: 0,
                size_hint: admitted.hello.size_hint,
            });
        }
        protocol::stream_in(&mut admitted.tls, &admitted.hello, sink, progress).await
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        drop(self.ready.take());
        let mut table = self.listener.table();
        // Ours is closed now; a newer registration for the same id is not.
        if table.get(&self.id).is_some_and(|e| e.ready.is_closed()) {
            table.remove(&self.id);
        }
    }
}

/// Whether `cert` is valid for the node id `peer` (a DNS name in the certificate).
fn names(cert: Option<&rustls::pki_types::CertificateDer<'_>>, peer: &str) -> bool {
    let (Some(cert), Ok(name)) = (cert, ServerName::try_from(peer)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
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
