//! A throwaway `redis-server` speaking TLS, with a certificate authority made for it by the
//! `openssl` command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::redis_server::{RedisServer, free_port};

/// A `redis-server` with a TLS port (server certificate for `127.0.0.1` and `localhost`,
/// signed by a CA made for the test) beside its plain port. Killed on drop.
#[derive(Debug)]
pub struct TlsRedisServer {
    server: RedisServer,
    tls_port: u16,
    certificates: tempfile::TempDir,
}

impl TlsRedisServer {
    /// Starts a server. With `require_client_certificate`, the TLS port refuses clients
    /// without a certificate signed by the CA (mutual TLS).
    ///
    /// Panics with a clear message when `openssl` or a TLS-capable `redis-server` is missing.
    pub fn start(require_client_certificate: bool) -> Self {
        let certificates = tempfile::tempdir().expect("temp dir for certificates");
        make_certificates(certificates.path());
        let tls_port = free_port();
        let file = |name: &str| certificates.path().join(name).display().to_string();
        let auth_clients = if require_client_certificate { "yes" } else { "no" };
        let args = [
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            auth_clients.into(),
        ];
        let server = RedisServer::start_with_args(args.to_vec());
        Self { server, tls_port, certificates }
    }

    /// The TLS port.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The same server's plain port and test helpers.
    pub fn plain(&self) -> &RedisServer {
        &self.server
    }

    /// The folder holding `ca.pem`, `client.pem` and `client.key` (and the server's files).
    pub fn certificates(&self) -> &Path {
        self.certificates.path()
    }

    /// A file of [`Self::certificates`].
    pub fn certificate_file(&self, name: &str) -> PathBuf {
        self.certificates.path().join(name)
    }
}

/// A CA (`ca.pem`), a server certificate for `127.0.0.1`/`localhost` (`server.pem`,
/// `server.key`) and a client certificate (`client.pem`, `client.key`), P-256 keys, valid
/// for a day.
pub(crate) fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output =
            Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|err| {
                panic!("cannot run openssl ({err}); install it (Debian: apt-get install openssl)")
            });
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"],
            &key[..],
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=Broadcaster test CA"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=broadcaster")] {
        let (key_file, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(&[&["req", "-new"], &key[..], &["-keyout", &key_file, "-out", &csr, "-subj", subject]].concat());
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }
}
