//! A private PostgreSQL server with `ssl = on` on 127.0.0.1, its certificate issued by a test CA
//! made here with rcgen (keys from p256), for the TLS tests. Started from the test (initdb and
//! pg_ctl as the `postgres` user when we are root, as scripts/pg.sh does), stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use p256::{
    ecdsa::{signature::Signer as _, Signature, SigningKey},
    pkcs8::{der::pem::LineEnding, EncodePrivateKey as _},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyUsagePurpose, PublicKeyData,
    SerialNumber, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};

/// A P-256 key as rcgen wants it.
struct Key {
    key: SigningKey,
    point: Vec<u8>,
}

impl Key {
    fn new() -> Key {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let point = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Key { key, point }
    }

    fn pkcs8_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8")
            .to_string()
    }
}

impl PublicKeyData for Key {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig: Signature = self.key.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// rcgen without its own crypto needs the serial number given.
fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

fn pem(label: &str, der: &[u8]) -> String {
    p256::pkcs8::der::pem::encode_string(label, LineEnding::LF, der).expect("PEM")
}

/// A certificate authority for tests.
pub struct TestCa {
    key: Key,
    params: CertificateParams,
    /// Its certificate, PEM.
    pub cert_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = Key::new();
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(serial());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: pem("CERTIFICATE", cert.der()),
            key,
            params,
        }
    }

    /// A server certificate for `names` (IP addresses or DNS names): (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = Key::new();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "sbtc test postgres");
        params.serial_number = Some(serial());
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        (pem("CERTIFICATE", cert.der()), key.pkcs8_pem())
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem).expect("write CA file");
    }
}

/// The newest PostgreSQL server binaries (SBTC_PG_BIN, else /usr/lib/postgresql/*/bin).
pub fn pg_bin() -> Option<PathBuf> {
    if let Ok(b) = std::env::var("SBTC_PG_BIN") {
        return Some(PathBuf::from(b));
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a server binary as `postgres` when we are root.
fn as_pg(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn chown_pg(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown postgres {}", path.display());
    }
}

/// A running server with TLS; its certificate was issued by `ca` for `names`.
pub struct TlsServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl TlsServer {
    /// None when no PostgreSQL binaries are installed (the caller skips or fails).
    pub fn start(ca: &TestCa, names: &[&str]) -> Option<TlsServer> {
        let bin = pg_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("sbtc-pg-tls-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        chown_pg(dir.path());
        let data = dir.path().join("data");
        let out = as_pg(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (cert, key) = ca.issue(names);
        let (cert_path, key_path) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        chown_pg(&cert_path);
        chown_pg(&key_path);
        // A free port now; if someone takes it before the server binds, try another (bounded).
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = format!(
                "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                 ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                dir.path().display(),
                cert_path.display(),
                key_path.display()
            );
            std::fs::write(data.join("postgresql.auto.conf"), conf).unwrap();
            chown_pg(&data.join("postgresql.auto.conf"));
            let log = dir.path().join("server.log");
            let started = as_pg(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "60", "-l"])
                .arg(&log)
                .arg("start")
                .output()
                .expect("run pg_ctl");
            if started.status.success() {
                return Some(TlsServer { dir, bin, port });
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(text.contains("could not bind"), "pg_ctl start: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the TLS test server found no free port in 5 tries");
    }

    /// `postgresql://postgres@HOST:PORT/postgres` with `query` appended.
    pub fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgresql://postgres@{host}:{}/postgres?{query}",
            self.port
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
    }
}
