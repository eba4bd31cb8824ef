//! HTTPS: rustls with the certificate chain and key from PEM files, swapped in place when the
//! files change or on SIGHUP. Connections keep the certificate they were opened with; a new
//! pair that does not load (unreadable, not PEM, key not matching the certificate) is refused
//! with a log line and the previous one keeps serving.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use zeroize::Zeroizing;

use crate::config::TlsFiles;

/// The serving certificate, replaceable while connections are open.
pub struct Tls {
    files: TlsFiles,
    /// Registered at load, before the server says it listens: a SIGHUP from then on
    /// reloads (and never kills the process).
    #[cfg(unix)]
    hangup: std::sync::Mutex<Option<tokio::signal::unix::Signal>>,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// What was read from the two files, to tell a change (contents, not only mtime: a copy
/// may keep the time).
#[derive(PartialEq, Eq)]
pub struct Snapshot {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

impl Tls {
    /// Loads the pair; an error stops the start. Needs the runtime (for the SIGHUP handler).
    pub fn load(files: &TlsFiles) -> anyhow::Result<(Tls, Snapshot)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let snapshot = read(files)?;
        let key = certified_key(&snapshot, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Tls {
            files: files.clone(),
            #[cfg(unix)]
            hangup: std::sync::Mutex::new(Some(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .context("cannot handle SIGHUP")?,
            )),
            provider,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        Ok((tls, snapshot))
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reloads when the files changed since `last` (or always, when `force`); a pair that does
    /// not load is logged and refused. Returns what was read.
    pub fn reload(&self, last: &mut Option<Snapshot>, force: bool) {
        let snapshot = match read(&self.files) {
            Ok(s) => s,
            Err(e) => {
                // Logged once per failure, not on every poll.
                if force || last.is_some() {
                    tracing::warn!(error = %format!("{e:#}"), "TLS certificate reload refused; still serving the previous certificate");
                }
                *last = None;
                return;
            }
        };
        if !force && last.as_ref() == Some(&snapshot) {
            return;
        }
        match certified_key(&snapshot, &self.provider) {
            Ok(key) => {
                *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                cert = %self.files.cert.display(),
                key = %self.files.key.display(),
                "TLS certificate reload refused; still serving the previous certificate"
            ),
        }
        // A refused pair is not tried again until the files change once more (or SIGHUP).
        *last = Some(snapshot);
    }

    /// Polls the files every `watch_interval` and reloads on SIGHUP, until aborted.
    pub async fn watch(self: Arc<Self>, mut last: Option<Snapshot>) {
        #[cfg(unix)]
        let mut hangup = self.hangup.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut tick = tokio::time::interval(self.files.watch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            #[cfg(not(unix))]
            let force = {
                tick.tick().await;
                false
            };
            if force {
                tracing::info!("SIGHUP: reloading the TLS certificate");
            }
            self.reload(&mut last, force);
        }
    }
}

fn read(files: &TlsFiles) -> anyhow::Result<Snapshot> {
    check_private(&files.key)?;
    let cert = std::fs::read(&files.cert)
        .with_context(|| format!("cannot read TLS certificate {}", files.cert.display()))?;
    let key = Zeroizing::new(
        std::fs::read(&files.key)
            .with_context(|| format!("cannot read TLS key {}", files.key.display()))?,
    );
    Ok(Snapshot { cert, key })
}

fn certified_key(s: &Snapshot, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(&s.cert)
        .collect::<Result<Vec<_>, _>>()
        .context("TLS certificate file is not PEM")?;
    if chain.is_empty() {
        bail!("TLS certificate file holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(&s.key).context("TLS key file holds no PEM key")?;
    CertifiedKey::from_der(chain, key, provider)
        .context("TLS key does not load or does not match the certificate")
}

#[cfg(unix)]
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read TLS key {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "TLS key {} is readable by group or others; chmod 600 it",
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> anyhow::Result<()> {
    Ok(())
}
