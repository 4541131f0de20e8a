//! The load client's TLS settings (`wsbench load --tls …`): which CA to trust, which name
//! to ask for (SNI), and optionally one pinned version and cipher suite, so that two
//! proxies measured in turn negotiate the same thing. rustls (ring) is the client.
//!
//! Every connection does a full handshake unless `--tls-resume` is given: a benchmark of
//! handshakes must not measure a resumption cache by accident. It never trusts anything
//! but the given CA, and never skips certificate verification.

pub mod io;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::client::Resumption;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};

/// TLS options of `wsbench load` (every one of them needs `--tls`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsOptions {
    /// Connect over TLS (wss://): a full TLS handshake before every upgrade (no session
    /// resumption unless --tls-resume), every message through rustls.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA (or CAs) that signed the server's certificate; the only roots
    /// trusted. Required with --tls.
    #[arg(long, value_name = "PEM", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify the certificate against and send as SNI (default: the target's IP
    /// address, checked against the certificate's IP names; no SNI is sent for an IP).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
    /// Offer only this cipher suite, by its rustls name (TLS13_AES_128_GCM_SHA256,
    /// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, …); pins the version too.
    #[arg(long, value_name = "SUITE", requires = "tls")]
    pub tls_cipher: Option<String>,
    /// Offer only this TLS version (1.2 or 1.3).
    #[arg(long, value_name = "1.2|1.3", requires = "tls")]
    pub tls_version: Option<String>,
    /// Resume sessions (tickets or IDs) when the server offers it: measures resumed
    /// handshakes instead of full ones.
    #[arg(long, requires = "tls")]
    pub tls_resume: bool,
}

/// What every TLS connection of a process shares.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The client configuration (roots, suites, resumption).
    pub config: Arc<ClientConfig>,
    /// `--tls-server-name`, if given (else each target's IP).
    pub name: Option<ServerName<'static>>,
}

impl TlsClient {
    /// The name to verify for a connection to `ip`.
    pub fn server_name(&self, ip: IpAddr) -> ServerName<'static> {
        self.name.clone().unwrap_or(ServerName::IpAddress(ip.into()))
    }
}

impl TlsOptions {
    /// The client settings, or None without `--tls`.
    pub fn client(&self) -> Result<Option<TlsClient>> {
        if !self.tls {
            return Ok(None);
        }
        let Some(ca) = &self.tls_ca else {
            bail!("--tls needs --tls-ca PEM: the CA that signed the server's certificate");
        };
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(Iterator::collect)
            .with_context(|| format!("cannot read the CA certificates of {}", ca.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            bail!("{} holds no usable CA certificate", ca.display());
        }
        let mut provider = ring::default_provider();
        let suite = self.tls_cipher.as_deref().map(find_suite).transpose()?;
        if let Some(s) = suite {
            provider.cipher_suites = vec![s];
        }
        let versions = self.versions(suite)?;
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&versions)
            .context("no cipher suite of --tls-cipher fits --tls-version")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if !self.tls_resume {
            config.resumption = Resumption::disabled();
        }
        let name = self
            .tls_server_name
            .as_deref()
            .map(|n| ServerName::try_from(n.to_owned()).with_context(|| format!("bad --tls-server-name {n:?}")))
            .transpose()?;
        Ok(Some(TlsClient { config: Arc::new(config), name }))
    }

    fn versions(&self, suite: Option<SupportedCipherSuite>) -> Result<Vec<&'static SupportedProtocolVersion>> {
        let all = vec![&rustls::version::TLS13, &rustls::version::TLS12];
        let pinned = match self.tls_version.as_deref() {
            None => suite.map(|s| s.version()),
            Some("1.3") => Some(&rustls::version::TLS13),
            Some("1.2") => Some(&rustls::version::TLS12),
            Some(v) => bail!("--tls-version {v}: use 1.2 or 1.3"),
        };
        if let (Some(s), Some(v)) = (suite, pinned)
            && s.version() != v
        {
            bail!("--tls-cipher {:?} is not a suite of --tls-version", s.suite());
        }
        Ok(pinned.map_or(all, |v| vec![v]))
    }

    /// What a report says of the client's TLS: None for plain connections.
    pub fn describe(&self) -> Option<String> {
        self.tls.then(|| {
            let version = self.tls_version.as_deref().map_or_else(String::new, |v| format!(" {v}"));
            let suite = self.tls_cipher.as_deref().unwrap_or("rustls default suites");
            let resume = if self.tls_resume { "resumption allowed" } else { "full handshakes" };
            format!("TLS{version}, {suite}, {resume}")
        })
    }

    /// The same options as command-line arguments (for worker processes).
    pub fn to_args(&self, a: &mut Vec<String>) {
        if !self.tls {
            return;
        }
        a.push("--tls".into());
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(format!("--{k}"));
                a.push(v);
            }
        };
        kv("tls-ca", self.tls_ca.as_ref().map(|p| p.display().to_string()));
        kv("tls-server-name", self.tls_server_name.clone());
        kv("tls-cipher", self.tls_cipher.clone());
        kv("tls-version", self.tls_version.clone());
        if self.tls_resume {
            a.push("--tls-resume".into());
        }
    }
}

/// The ring suite called `name` (rustls's name, any case).
fn find_suite(name: &str) -> Result<SupportedCipherSuite> {
    let known = ring::ALL_CIPHER_SUITES;
    known.iter().copied().find(|s| s.suite().as_str().is_some_and(|n| n.eq_ignore_ascii_case(name))).with_context(
        || {
            let names: Vec<&str> = known.iter().filter_map(|s| s.suite().as_str()).collect();
            format!("unknown --tls-cipher {name:?}; one of {}", names.join(", "))
        },
    )
}
