//! Detaching the daemon (fork, setsid, stdio to its log), and a pipe on which
//! the child says it is up, or why not, before the parent exits.

use std::{
    io::Read as _,
    os::fd::FromRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::bail;

use super::{args::IfaceArgs, init_logging, plan::Plan, run::run_daemon};

/// What a daemon starts from: nothing (then `wg` configures it over
/// UAPI), or a wg-quick configuration file.
pub enum Launch {
    Uapi(String),
    Config(PathBuf),
}

/// Runs the daemon, in the foreground or detached. Detached, the parent
/// waits until the child has the interface and the UAPI socket up (or
/// failed) before it exits, so `wg setconf` right after us finds the socket.
pub fn launch(what: Launch, opts: IfaceArgs, foreground: bool) -> anyhow::Result<()> {
    // Everything that can be checked before forking is checked here, so the
    // user sees the error on the terminal.
    let plan = Plan::new(what, &opts)?;
    if foreground {
        init_logging();
        return run_daemon(plan, None);
    }
    let mut fds = [0; 2];
    // SAFETY: pipe with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: single-threaded here (no runtime yet); the child only runs
    // our own code.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: closing our copy of the read end.
            unsafe { libc::close(fds[0]) };
            // SAFETY: detaching from the terminal's session.
            unsafe { libc::setsid() };
            let log = open_log(&plan.ifname);
            redirect_stdio(log.as_ref());
            init_logging();
            // SAFETY: the write end, owned by this process from here on.
            let ready = unsafe { std::fs::File::from_raw_fd(fds[1]) };
            let r = run_daemon(plan, Some(ready));
            if let Err(e) = &r {
                tracing::error!("{e:#}");
            }
            std::process::exit(if r.is_ok() { 0 } else { 1 });
        }
        _child => {
            // SAFETY: closing our copy of the write end.
            unsafe { libc::close(fds[1]) };
            // SAFETY: the read end, owned by this process.
            let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
            let mut msg = String::new();
            let _ = r.read_to_string(&mut msg);
            if msg == "ok" {
                Ok(())
            } else if msg.is_empty() {
                bail!("the daemon exited before the interface came up (see /var/log/wg-appliance/{}.log)", plan.ifname)
            } else {
                bail!("{msg}")
            }
        }
    }
}

fn open_log(ifname: &str) -> Option<std::fs::File> {
    let dir = Path::new("/var/log/wg-appliance");
    std::fs::create_dir_all(dir).ok()?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{ifname}.log")))
        .ok()
}

fn redirect_stdio(log: Option<&std::fs::File>) {
    use std::os::fd::AsRawFd as _;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok();
    let out = log
        .map(|f| f.as_raw_fd())
        .or(null.as_ref().map(|f| f.as_raw_fd()));
    // SAFETY: dup2 onto the standard descriptors.
    unsafe {
        if let Some(n) = &null {
            libc::dup2(n.as_raw_fd(), 0);
        }
        if let Some(o) = out {
            libc::dup2(o, 1);
            libc::dup2(o, 2);
        }
    }
}
