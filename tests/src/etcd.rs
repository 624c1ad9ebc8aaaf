//! Debian's etcd-server, started by a test inside one of its namespaces,
//! and etcdctl against it. The data directory is the test's own (removed
//! on drop), so a killed and restarted member keeps its keys.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{proc::Bg, wait_until, Netns};

/// Whether etcd and etcdctl are installed (`cargo xtask setup` installs
/// them); the reason to skip otherwise.
pub fn etcd_unavailable() -> Option<String> {
    for tool in ["etcd", "etcdctl"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!(
                "`{tool}` not installed (Debian packages etcd-server and etcd-client); run `cargo xtask setup`"
            ));
        }
    }
    None
}

/// TLS files of a member with client-certificate authentication: a CA,
/// the server's certificate for `ip`, and a client certificate.
pub struct Tls {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Tls {
    /// Makes the files with the openssl command (EC P-256, one day).
    pub fn generate(dir: &Path, ip: &str, client_cn: &str) -> Result<Tls> {
        std::fs::create_dir_all(dir)?;
        let p = |n: &str| dir.join(n);
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .context("openssl")?;
            if !out.status.success() {
                bail!(
                    "openssl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        let s = |p: &PathBuf| p.display().to_string();
        let (ca, ca_key) = (p("ca.pem"), p("ca.key"));
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=wg-appliance test CA",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
        ])?;
        let leaf = |name: &str, cn: &str, ext: &str| -> Result<(PathBuf, PathBuf)> {
            let (cert, key, csr, extf) = (
                p(&format!("{name}.pem")),
                p(&format!("{name}.key")),
                p(&format!("{name}.csr")),
                p(&format!("{name}.ext")),
            );
            std::fs::write(&extf, ext)?;
            run(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ])?;
            run(&[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&ca),
                "-CAkey",
                &s(&ca_key),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &s(&extf),
                "-out",
                &s(&cert),
            ])?;
            Ok((cert, key))
        };
        let (server_cert, server_key) = leaf(
            "server",
            ip,
            &format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )?;
        let (client_cert, client_key) = leaf("client", client_cn, "extendedKeyUsage=clientAuth\n")?;
        Ok(Tls {
            dir: dir.to_owned(),
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }
}

/// One etcd member in a namespace, listening for clients on `ip:port`.
pub struct Etcd {
    ns_name: String,
    ip: String,
    port: u16,
    data: PathBuf,
    tls: Option<(PathBuf, PathBuf, PathBuf, PathBuf, PathBuf)>,
    /// (user, password) once auth is on.
    auth: Option<(String, String)>,
    proc: Option<Bg>,
}

impl Etcd {
    /// Starts a member (TLS with client certificates when `tls` is given)
    /// and waits until it answers.
    pub fn start(ns: &Netns, ip: &str, port: u16, tls: Option<&Tls>) -> Result<Etcd> {
        let data = std::env::temp_dir().join(format!(
            "wgt-etcd-{}-{}-{port}",
            std::process::id(),
            ns.name()
        ));
        let _ = std::fs::remove_dir_all(&data);
        let mut e = Etcd {
            ns_name: ns.name().to_owned(),
            ip: ip.to_owned(),
            port,
            data,
            tls: tls.map(|t| {
                (
                    t.ca.clone(),
                    t.server_cert.clone(),
                    t.server_key.clone(),
                    t.client_cert.clone(),
                    t.client_key.clone(),
                )
            }),
            auth: None,
            proc: None,
        };
        e.resume(ns)?;
        Ok(e)
    }

    /// The URL for `PeerSource` (`etcd://ip:port/prefix`).
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}:{}{prefix}", self.ip, self.port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Starts the member again on the same data (after [`Etcd::kill`]) in
    /// its namespace `ns`.
    pub fn resume(&mut self, ns: &Netns) -> Result<()> {
        let client = format!("{}://{}:{}", self.scheme(), self.ip, self.port);
        let peer = format!("http://127.0.0.1:{}", self.port + 1);
        let data = self.data.display().to_string();
        let mut args: Vec<String> = [
            "--name",
            "m1",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("m1={peer}"),
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some((ca, cert, key, _, _)) = &self.tls {
            for (k, v) in [
                ("--cert-file", cert),
                ("--key-file", key),
                ("--trusted-ca-file", ca),
            ] {
                args.push(k.into());
                args.push(v.display().to_string());
            }
            args.push("--client-cert-auth".into());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.proc = Some(Bg::spawn(ns, "etcd", &a)?);
        wait_until(Duration::from_secs(20), "etcd to answer", || {
            self.ctl(&["endpoint", "health"]).is_ok()
        })
    }

    /// SIGKILL, as a crashed member or a cut-off host.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// `etcdctl <args>` against this member; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_input(args, None)
    }

    /// `etcdctl <args>` with `input` on stdin.
    pub fn ctl_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        use std::io::Write as _;
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns_name,
            "etcdctl",
            "--dial-timeout=2s",
            "--command-timeout=20s",
        ])
        .arg(format!(
            "--endpoints={}://{}:{}",
            self.scheme(),
            self.ip,
            self.port
        ));
        if let Some((ca, _, _, cert, key)) = &self.tls {
            cmd.arg(format!("--cacert={}", ca.display()))
                .arg(format!("--cert={}", cert.display()))
                .arg(format!("--key={}", key.display()));
        }
        if let Some((u, p)) = &self.auth {
            cmd.arg(format!("--user={u}:{p}"));
        }
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("etcdctl")?;
        if let Some(text) = input {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "etcdctl {}: {}",
                args.first().copied().unwrap_or(""),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        // `--` so that a value is never read as a flag.
        self.ctl(&["put", "--", key, value]).map(drop)
    }

    pub fn del(&self, key: &str) -> Result<()> {
        self.ctl(&["del", "--", key]).map(drop)
    }

    /// Writes many keys fast: transactions of 100 puts (etcd's default
    /// limit is 128 operations per transaction).
    pub fn put_many(&self, kvs: &[(String, String)]) -> Result<()> {
        for chunk in kvs.chunks(100) {
            // No compare (a blank line), the puts on success, a blank line,
            // nothing on failure.
            let mut txn = String::from("\n");
            for (k, v) in chunk {
                // etcdctl's txn syntax: each op on one line, values quoted.
                txn.push_str(&format!("put {k} {}\n", quote(v)));
            }
            txn.push_str("\n\n");
            let out = self.ctl_input(&["txn"], Some(&txn))?;
            if !out.starts_with("SUCCESS") {
                bail!("etcdctl txn: {out}");
            }
        }
        Ok(())
    }

    /// Creates user root with `password`, grants it, turns auth on; etcdctl
    /// from here on authenticates.
    pub fn enable_auth(&mut self, password: &str) -> Result<()> {
        self.ctl(&["user", "add", &format!("root:{password}")])?;
        self.ctl(&["auth", "enable"])?;
        self.auth = Some(("root".into(), password.into()));
        Ok(())
    }
}

/// A value as etcdctl's txn reads it: double-quoted, escapes for `"`, `\`
/// and newlines.
fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
