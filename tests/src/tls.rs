//! TLS test helpers: certificates made with the `openssl` CLI in a temporary directory, and
//! `openssl s_server` / `s_client` as the peer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `openssl` binary (CI: Debian 12's `openssl` package).
pub const OPENSSL: &str = "openssl";

/// How long a peer process may run before the test kills it and fails.
pub const PEER_GUARD: Duration = Duration::from_secs(30);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(OPENSSL)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OPENSSL}: {e} (install the openssl package)"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throw-away PKI in a temporary directory (removed on drop): a CA, a server certificate
/// for `localhost` and 127.0.0.1 signed by it, a client certificate signed by it, and a second
/// CA with a server certificate of its own (for verification failures).
#[derive(Debug)]
pub struct Pki {
    /// The directory holding every file.
    pub dir: PathBuf,
}

impl Pki {
    /// Makes the certificates (P-256 keys: fast to generate).
    ///
    /// # Panics
    /// If `openssl` is missing or fails.
    pub fn new() -> Pki {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "volley-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
        .expect("write client.ext");
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (k, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=volley test {ca}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(key);
            args.extend(["-keyout", &k, "-out", &pem, "-subj", &subj, "-days", "2"]);
            openssl(&dir, &args);
        }
        for (name, ca, ext, cn) in [
            ("server", "ca", "server.ext", "localhost"),
            ("client", "ca", "client.ext", "volley test client"),
            ("other-server", "other-ca", "server.ext", "localhost"),
        ] {
            let (k, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-new"];
            args.extend(key);
            args.extend(["-keyout", &k, "-out", &csr, "-subj", &subj]);
            openssl(&dir, &args);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                    "-out",
                    &pem,
                ],
            );
        }
        Pki { dir }
    }

    /// A file of the PKI: `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`,
    /// `other-ca.pem`, `other-server.pem`, `other-server.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The path as a `&str` for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (bound, then released: the peer binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Whether something listens on 127.0.0.1:`port`, from `/proc/net/tcp` (so the check opens no
/// connection that a one-connection server would take as its client).
pub fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == want && f[3] == "0A"
            })
        })
        .unwrap_or(false)
}

/// A peer process whose stdout and stderr are collected by threads.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    /// Kept open: `s_server` reads stdin to send it, and must not see EOF.
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// Where it listens (servers).
    pub addr: SocketAddr,
}

/// What a peer process left.
#[derive(Debug)]
pub struct PeerOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (`s_server -quiet`: exactly the bytes it received).
    pub stdout: Vec<u8>,
    /// Its stderr, for messages.
    pub stderr: String,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

impl Peer {
    /// Spawns `openssl` with `args`, collecting its output.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn spawn(args: &[String], addr: SocketAddr) -> Peer {
        let mut child = Command::new(OPENSSL)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl");
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        Peer {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            addr,
        }
    }

    /// `openssl s_server -naccept 1 -quiet` on a free loopback port with the PKI's server
    /// certificate (or `other-server` with `other = true`), plus `extra` (e.g. `-Verify 1`,
    /// `-tls1_2`); returns once it listens. What it receives is written, exactly, to its stdout.
    ///
    /// # Panics
    /// If it does not listen within the guard time.
    pub fn s_server(pki: &Pki, other: bool, extra: &[&str]) -> Peer {
        let port = free_port();
        let (cert, key) = if other {
            ("other-server.pem", "other-server.key")
        } else {
            ("server.pem", "server.key")
        };
        let mut args: Vec<String> = [
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            &pki.arg(cert),
            "-key",
            &pki.arg(key),
            "-CAfile",
            &pki.arg("ca.pem"),
            "-naccept",
            "1",
            "-quiet",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut peer = Peer::spawn(&args, ([127, 0, 0, 1], port).into());
        let start = Instant::now();
        while !listening(port) {
            if let Ok(Some(st)) = peer.child.try_wait() {
                let out = peer.finish();
                panic!("s_server exited ({st}) before listening: {}", out.stderr);
            }
            assert!(start.elapsed() < PEER_GUARD, "s_server never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        peer
    }

    /// Writes to the peer's stdin (what `s_client` sends, or `s_server` sends back).
    pub fn write_stdin(&mut self, data: &[u8]) {
        if let Some(s) = self.stdin.as_mut() {
            s.write_all(data).expect("write to the peer's stdin");
        }
    }

    /// Closes the peer's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the peer to exit (killing it after [`PEER_GUARD`]) and returns its output.
    pub fn finish(mut self) -> PeerOutput {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for openssl") {
                break st;
            }
            if start.elapsed() > PEER_GUARD {
                let _ = self.child.kill();
                let st = self.child.wait().expect("wait for openssl");
                let out = self.outputs(st);
                panic!(
                    "openssl did not exit within {PEER_GUARD:?}: stderr {}",
                    out.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.outputs(status)
    }

    fn outputs(&mut self, status: ExitStatus) -> PeerOutput {
        self.stdin = None;
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout thread"))
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr thread"))
            .unwrap_or_default();
        PeerOutput {
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
