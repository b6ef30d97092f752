//! HL7 v2 over MLLP, the transport beside HTTP: a listener per interface
//! ([`serve`]), MLLP framing ([`frame`]), acknowledgements ([`ack`]) and the mapping of
//! messages to engine calls ([`inbound`]). Every message is applied through the engine as
//! the interface's organisation — the patient index, the `Gate` and the audit apply — and
//! acknowledged `AA` only after the engine's durable commit; `AE` with an `ERR` segment
//! naming the segment, field and problem for a message it cannot apply; `AR` for one it
//! cannot read or does not support. A message resent with the same control id from the same
//! sender is acknowledged again and applied once.
//!
//! Supported now: ADT A01, A04, A05, A08, A28 and A31 (the patient: registered through the
//! patient index — a known NHS number or a matched person links, the organisation's MRN is
//! added).

pub mod ack;
pub mod frame;
pub mod inbound;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::collections::BTreeMap;
use tessera_domain::{Domain, Hl7Interface};
use tessera_engine::{Access, Engine};
use tessera_hl7v2::IdentifierMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// One interface: who owns what it brings, and how its identifiers and places read.
#[derive(Clone)]
pub struct Interface {
    /// Its id (`[[interfaces]]` of the domain file): the audit names it `hl7v2:{id}`.
    pub id: String,
    /// The organisation whose data the messages are (the writer of everything applied).
    pub organisation: String,
    /// MSH-4 the sender must give; none: any.
    pub sending_facility: Option<String>,
    /// How PID-3 (and MRG-1) identifiers become identifier systems.
    pub identifiers: IdentifierMap,
    /// Point of care (PL.1) → location id.
    pub wards: BTreeMap<String, String>,
    /// Results must name an order the record has.
    pub require_order: bool,
    /// A connection idle this long is closed.
    pub read_timeout: Duration,
    /// The largest message accepted (bytes).
    pub max_message: usize,
    /// TLS: connections are TLS sessions (the domain file's `tls_cert`/`tls_key`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interface")
            .field("id", &self.id)
            .field("organisation", &self.organisation)
            .field("sending_facility", &self.sending_facility)
            .field("wards", &self.wards)
            .field("require_order", &self.require_order)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Interface {
    /// An interface of `organisation` with the defaults: its MRN system for local
    /// identifiers, places named by their location ids.
    pub fn new(domain: &Domain, organisation: impl Into<String>) -> Interface {
        let organisation = organisation.into();
        Interface {
            id: organisation.clone(),
            identifiers: IdentifierMap::new(domain.mrn_system(&organisation)),
            organisation,
            sending_facility: None,
            wards: BTreeMap::new(),
            require_order: false,
            read_timeout: Duration::from_secs(300),
            max_message: 4 << 20,
            tls: None,
        }
    }

    /// The same interface over TLS, with the certificate chain and private key of these PEM
    /// files.
    pub fn with_tls(mut self, cert: &std::path::Path, key: &std::path::Path) -> Result<Interface, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("{}: {e}", cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        let provider = Arc::new(crypto_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("the TLS certificate and key do not go together: {e}"))?;
        self.tls = Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)));
        Ok(self)
    }

    /// The interface the domain file declares.
    pub fn from_domain(domain: &Domain, declared: &Hl7Interface) -> Interface {
        let mut identifiers = IdentifierMap::new(domain.mrn_system(&declared.organisation));
        identifiers.by_authority = declared.identifier_systems.clone();
        Interface {
            id: declared.id.clone(),
            organisation: declared.organisation.clone(),
            sending_facility: declared.sending_facility.clone(),
            identifiers,
            wards: declared.wards.clone(),
            require_order: declared.require_order,
            read_timeout: Duration::from_secs(declared.read_timeout_seconds),
            max_message: declared.max_message_bytes,
            tls: None,
        }
    }

    /// The engine access messages are applied with.
    pub fn access(&self) -> Access {
        Access::interface(&self.organisation, &self.id)
    }

    /// `Organization/{organisation}`.
    pub fn organisation_ref(&self) -> String {
        format!("Organization/{}", self.organisation)
    }

    /// The `Location/{id}` of a place a message names: through the ward table; with no
    /// table, a point of care that is itself a location id of the organisation's trust.
    pub fn location(&self, domain: &Domain, place: &tessera_hl7v2::visit::Location) -> Option<String> {
        let poc = place.point_of_care.as_deref()?;
        let id = if self.wards.is_empty() {
            let l = domain.location(poc)?;
            (domain.trust_of(&l.organisation) == domain.trust_of(&self.organisation)).then_some(poc)?
        } else {
            self.wards.get(poc).or_else(|| self.wards.iter().find(|(k, _)| k.eq_ignore_ascii_case(poc)).map(|(_, v)| v))?.as_str()
        };
        Some(format!("Location/{id}"))
    }
}

/// The TLS implementation: rustls on *ring* (TLS 1.2 and 1.3, X25519 and the NIST curves),
/// which builds quickly everywhere; it has no post-quantum key exchange, which rustls now
/// offers only on aws-lc-rs.
#[allow(deprecated)]
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Serves `interface` on `listener` until the task is dropped: each connection in its own
/// task, messages one after another on it, each acknowledged before the next is read.
pub async fn serve(engine: Engine, interface: Interface, listener: tokio::net::TcpListener) {
    let interface = Arc::new(interface);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "MLLP: cannot accept a connection now");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let engine = engine.clone();
        let interface = interface.clone();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let result = match &interface.tls {
                None => connection(engine, &interface, stream, peer).await,
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => connection(engine, &interface, tls, peer).await,
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake in time")),
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "MLLP connection closed");
            }
        });
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(engine: Engine, interface: &Interface, mut stream: S, peer: SocketAddr) -> std::io::Result<()> {
    let mut reader = frame::FrameReader::new(interface.max_message);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(item) = reader.next_frame() {
            let replies = match item {
                Ok(bytes) => inbound::handle(&engine, interface, &String::from_utf8_lossy(&bytes)).await,
                Err(problem) => vec![ack::reject_unreadable(&problem)],
            };
            for reply in replies {
                stream.write_all(&frame::wrap(reply.as_bytes())).await?;
            }
        }
        let n = match tokio::time::timeout(interface.read_timeout, stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                tracing::debug!(%peer, "MLLP: idle connection closed");
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        reader.push(&buf[..n]);
    }
}

/// Sends each message over one MLLP connection and returns, for each, the
/// acknowledgements it drew: one in original mode; in enhanced mode (MSH-15/16 given) the
/// commit acknowledgement and/or the application acknowledgement the message asked for —
/// none when it asked for none (`NE`). When whether a reply comes depends on the outcome
/// (`ER`, `SU`) and none has come, the wait after the last possible reply is `grace`.
pub async fn send(addr: &str, messages: &[String], timeout: Duration) -> std::io::Result<Vec<Vec<String>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    exchange(stream, messages, timeout).await
}

/// [`send`] over TLS, trusting the certificates of the PEM file `ca` (the server's own
/// certificate, or the authority that signed it); `server_name` is checked against the
/// certificate (a DNS name or an IP address).
pub async fn send_tls(addr: &str, server_name: &str, ca: &std::path::Path, messages: &[String], timeout: Duration) -> std::io::Result<Vec<Vec<String>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| invalid(format!("{}: {e}", ca.display())))? {
        roots.add(cert.map_err(|e| invalid(format!("{}: {e}", ca.display())))?).map_err(|e| invalid(e.to_string()))?;
    }
    let provider = Arc::new(crypto_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| invalid(format!("{server_name}: {e}")))?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await?;
    exchange(tls, messages, timeout).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, messages: &[String], timeout: Duration) -> std::io::Result<Vec<Vec<String>>> {
    let mut reader = frame::FrameReader::new(16 << 20);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let grace = Duration::from_secs(2).min(timeout);
    for m in messages {
        stream.write_all(&frame::wrap(m.as_bytes())).await?;
        let (accept, application) = ack_conditions(m);
        let mut replies: Vec<String> = Vec::new();
        loop {
            // What may still come, given what has.
            let code = replies.last().map(|r| msa_code(r));
            let expect = match (accept.as_str(), application.as_str(), code.as_deref()) {
                ("", "", None) => Some(timeout),
                ("", "", Some(_)) => None,
                (_, _, Some("AA" | "AE" | "AR")) => None,
                (_, app, Some(commit)) => match app {
                    "AL" => Some(timeout),
                    "ER" if commit != "CA" => Some(timeout),
                    "SU" if commit == "CA" => Some(timeout),
                    _ => None,
                },
                (acc, app, None) => match (acc, app) {
                    ("NE", "NE" | "") => None,
                    ("AL" | "", _) | (_, "AL") => Some(timeout),
                    _ => Some(grace),
                },
            };
            let Some(wait) = expect else { break };
            if let Some(item) = reader.next_frame() {
                let bytes = item.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                replies.push(String::from_utf8_lossy(&bytes).into_owned());
                continue;
            }
            let n = match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                Ok(r) => r?,
                Err(_) if wait == grace && wait != timeout => break,
                Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no acknowledgement in time")),
            };
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed the connection before acknowledging"));
            }
            reader.push(&buf[..n]);
        }
        out.push(replies);
    }
    Ok(out)
}

/// MSH-15 and MSH-16 of a message (upper case; empty when absent or unreadable).
fn ack_conditions(message: &str) -> (String, String) {
    match tessera_hl7v2::Message::parse(message) {
        Ok(m) => (
            m.msh().value(15).unwrap_or("").trim().to_ascii_uppercase(),
            m.msh().value(16).unwrap_or("").trim().to_ascii_uppercase(),
        ),
        Err(_) => (String::new(), String::new()),
    }
}

/// MSA-1 of an acknowledgement.
pub fn msa_code(ack: &str) -> String {
    ack.split(['\r', '\n']).find(|l| l.starts_with("MSA")).and_then(|l| l.get(4..)).and_then(|l| l.split(|c: char| !c.is_ascii_alphabetic()).next()).unwrap_or("").to_string()
}
