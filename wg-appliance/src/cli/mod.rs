//! The `wg-appliance` commands, one file each, as wireguard-tools keeps
//! `show.c`, `set.c`, `genkey.c`: `main.rs` parses and calls [`run`].
//!
//! - `args`: the command line (clap);
//! - `daemonize`: detaching the daemon, and waiting until it is up;
//! - `plan`: what to bring up, from the flags and the configuration file;
//! - `run`: the running daemon: UAPI socket, metrics, stop conditions;
//! - `up`: what `up <config>` adds, as wg-quick: hooks and routes;
//! - `doctor`: the layered troubleshooting walk;
//! - `rotate`: `rotate-psk`, a new preshared key for one peer;
//! - `top`: the live console view;
//! - `tune`: host settings around the data path, applied and reverted;
//! - `health`: one line and an exit status for routing daemons;
//! - `down`, `show`, `keys`, `classify`: the other commands.

mod args;
mod classify;
mod daemonize;
mod doctor;
mod down;
mod health;
mod keys;
mod manpages;
mod plan;
mod rotate;
mod run;
mod show;
mod top;
mod tune;
mod up;

pub use self::args::{command, Cli, Command};
pub use self::daemonize::{launch, Launch};

/// Where the UAPI sockets live, as wireguard-go and wg(8) expect.
const UAPI_DIR: &str = "/var/run/wireguard";

/// Runs one subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run { interface, opts } => launch(Launch::Uapi(interface), opts, true),
        Command::Up { config, opts } => {
            let fg = opts.foreground;
            launch(Launch::Config(config), opts, fg)
        }
        Command::Down { interface } => down::down(&interface),
        Command::Show { interface } => show::show(interface.as_deref()),
        Command::Health {
            interface,
            min_peers,
            max_handshake_age,
            announce,
            dev,
            interval,
        } => {
            let opts = wg_appliance::health::Options {
                ifname: interface,
                min_peers,
                max_handshake_age: max_handshake_age.map(std::time::Duration::from_secs),
            };
            match announce {
                None => health::health(&opts),
                Some(prefix) => health::announce(&opts, prefix, &dev, interval),
            }
        }
        Command::Doctor {
            interface,
            json,
            config,
            no_probe,
        } => doctor::doctor(interface.as_deref(), json, config, !no_probe),
        Command::Top {
            interface,
            interval,
            count,
        } => top::top(interface.as_deref(), interval, count),
        Command::Tune {
            interface,
            apply,
            revert,
            wan,
            cpus,
            keep_queues,
        } => {
            let mode = if apply {
                tune::Mode::Apply
            } else if revert {
                tune::Mode::Revert
            } else {
                tune::Mode::Show
            };
            tune::tune(
                interface.as_deref(),
                &wan,
                cpus.as_deref(),
                keep_queues,
                mode,
            )
        }
        Command::RotatePsk {
            interface,
            peer,
            psk_file,
        } => rotate::rotate_psk(&interface, &peer, psk_file.as_deref()),
        Command::Genkey => keys::genkey(),
        Command::Pubkey => keys::pubkey(),
        Command::Genpsk => keys::genpsk(),
        Command::Classify {
            interface,
            port,
            mode,
            seconds,
            interval,
        } => {
            init_logging();
            classify::classify(&interface, port, mode.into(), seconds, interval)
        }
        Command::Bench(args) => wg_appliance::bench::run(&args).map(|_| ()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut command(),
                "wg-appliance",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpages { dir } => manpages::write(&dir),
    }
}

/// Logs to stderr (the log file once detached) at `RUST_LOG`, or info.
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // journald adds its own timestamps.
    if !ansi && std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
