//! `cargo xtask bench SCENARIO --tls`: one test CA and one certificate (ECDSA P-256, for
//! `localhost` and 127.0.0.1) made for the run under its output directory, given to
//! wsgate, nginx and HAProxy; one cipher suite pinned on the client (and configured on
//! nginx and HAProxy), so that every proxy negotiates the same version, suite and key
//! exchange.
//!
//! Writes only under the run's output directory; the key is a throwaway made per run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// The run's certificate files and the suite every TLS connection uses.
#[derive(Debug, Clone)]
pub(super) struct TlsFiles {
    /// The CA the load client trusts.
    pub(super) ca: PathBuf,
    /// The chain the proxies present (leaf, CA).
    pub(super) cert: PathBuf,
    /// Its private key.
    pub(super) key: PathBuf,
    /// rustls's name of the pinned suite (`--tls-cipher`).
    pub(super) cipher: String,
}

/// How OpenSSL (nginx) names a rustls suite: (TLS 1.3 `Ciphersuites` name or None,
/// TLS 1.2 `ssl_ciphers` name or None). Only ECDSA suites: the certificate is ECDSA.
fn openssl_name(rustls: &str) -> Option<(Option<&'static str>, Option<&'static str>)> {
    Some(match rustls.to_ascii_uppercase().as_str() {
        "TLS13_AES_128_GCM_SHA256" => (Some("TLS_AES_128_GCM_SHA256"), None),
        "TLS13_AES_256_GCM_SHA384" => (Some("TLS_AES_256_GCM_SHA384"), None),
        "TLS13_CHACHA20_POLY1305_SHA256" => (Some("TLS_CHACHA20_POLY1305_SHA256"), None),
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => (None, Some("ECDHE-ECDSA-AES128-GCM-SHA256")),
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => (None, Some("ECDHE-ECDSA-AES256-GCM-SHA384")),
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => (None, Some("ECDHE-ECDSA-CHACHA20-POLY1305")),
        _ => return None,
    })
}

impl TlsFiles {
    /// Makes a CA and a certificate for localhost / 127.0.0.1 under `out/tls/`.
    pub(super) fn make(out: &Path, cipher: &str) -> Result<Self> {
        if openssl_name(cipher).is_none() {
            bail!(
                "--tls-cipher {cipher}: use a TLS 1.3 suite (TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, \
                 TLS13_CHACHA20_POLY1305_SHA256) or an ECDHE-ECDSA TLS 1.2 one (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, …)"
            );
        }
        let dir = out.join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "wsgate bench CA");
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &ca, &ca_key)?;
        let files = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            cipher: cipher.into(),
        };
        std::fs::write(&files.ca, ca.pem())?;
        std::fs::write(&files.cert, format!("{}{}", leaf.pem(), ca.pem()))?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    /// `wsbench load` arguments for a TLS target.
    pub(super) fn load_args(&self) -> Vec<String> {
        let ca = self.ca.display().to_string();
        ["--tls", "--tls-ca", &ca, "--tls-server-name", "localhost", "--tls-cipher", &self.cipher]
            .map(str::to_string)
            .to_vec()
    }

    /// The `ssl` lines of nginx's `server` block: the recipe's protocols, the certificate
    /// and the pinned suite.
    pub(super) fn nginx_lines(&self) -> String {
        let (tls13, tls12) = openssl_name(&self.cipher).unwrap_or((None, None));
        let mut s = format!(
            "        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n",
            self.cert.display(),
            self.key.display()
        );
        if let Some(c) = tls12 {
            let _ = writeln!(s, "        ssl_ciphers {c};");
        }
        if let Some(c) = tls13 {
            let _ = writeln!(s, "        ssl_conf_command Ciphersuites {c};");
        }
        s
    }

    /// HAProxy's certificate file under `dir`: the chain, then the key, in one PEM
    /// (`bind … ssl crt FILE`).
    pub(super) fn haproxy_pem(&self, dir: &Path) -> Result<PathBuf> {
        let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
        let pem = dir.join("haproxy.pem");
        std::fs::write(&pem, read(&self.cert)? + &read(&self.key)?)
            .with_context(|| format!("cannot write {}", pem.display()))?;
        Ok(pem)
    }

    /// The TLS lines of HAProxy's `global` section: the pinned suite, as nginx gets it.
    pub(super) fn haproxy_global_lines(&self) -> String {
        let (tls13, tls12) = openssl_name(&self.cipher).unwrap_or((None, None));
        let mut s = String::new();
        if let Some(c) = tls12 {
            let _ = writeln!(s, "    ssl-default-bind-ciphers {c}");
        }
        if let Some(c) = tls13 {
            let _ = writeln!(s, "    ssl-default-bind-ciphersuites {c}");
        }
        s
    }

    /// What the table's header says of the TLS targets.
    pub(super) fn describe(&self) -> String {
        format!("{}, ECDSA P-256 certificate, full handshakes (no resumption)", self.cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_and_haproxy_get_the_pinned_suite_under_its_openssl_names() {
        let out = std::env::temp_dir().join(format!("xtask-bench-tls-{}", std::process::id()));
        let t13 = TlsFiles::make(&out, "TLS13_AES_128_GCM_SHA256").unwrap();
        let lines = t13.nginx_lines();
        assert!(lines.contains("ssl_protocols TLSv1.2 TLSv1.3;"), "{lines}");
        assert!(lines.contains("ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;"), "{lines}");
        assert!(!lines.contains("ssl_ciphers"), "{lines}");
        let t12 = TlsFiles::make(&out, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256").unwrap();
        assert!(t12.nginx_lines().contains("ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256;"));
        assert_eq!(t13.haproxy_global_lines(), "    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n");
        assert_eq!(t12.haproxy_global_lines(), "    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256\n");
        let pem = std::fs::read_to_string(t13.haproxy_pem(&out).unwrap()).unwrap();
        assert!(pem.find("BEGIN CERTIFICATE").unwrap() < pem.find("PRIVATE KEY").unwrap(), "chain, then key:\n{pem}");
        assert!(t12.load_args().windows(2).any(|w| w == ["--tls-cipher", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]));
        // An RSA suite cannot work with the ECDSA certificate: refused up front.
        assert!(TlsFiles::make(&out, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").is_err());
        let pem = std::fs::read_to_string(&t13.cert).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "leaf then CA");
        let _ = std::fs::remove_dir_all(&out);
    }

    /// nginx itself accepts the TLS server block (when nginx is installed).
    #[test]
    fn nginx_accepts_the_ssl_config() {
        let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).is_file()) else {
            eprintln!("nginx is not installed: skipped");
            return;
        };
        let dir = std::env::temp_dir().join(format!("xtask-bench-nginx-{}", std::process::id()));
        let tls = TlsFiles::make(&dir, "TLS13_AES_128_GCM_SHA256").unwrap();
        let conf = dir.join("nginx.conf");
        let (a, b) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        std::fs::write(&conf, super::super::nginx::nginx_conf(&dir, a, b, 1, Some(&tls))).unwrap();
        let out = std::process::Command::new(nginx)
            .arg("-t")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
