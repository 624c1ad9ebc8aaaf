//! The `wg-appliance` command.
//!
//! `wg-appliance <ifname>` behaves like wireguard-go and boringtun: it
//! creates the interface, opens `/var/run/wireguard/<ifname>.sock` and
//! daemonizes, so `wg` and `WG_QUICK_USERSPACE_IMPLEMENTATION=wg-appliance
//! wg-quick up` drive it unchanged. `up <config>` does the wg-quick part
//! itself. This file parses and dispatches; the commands are in `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

use cli::{launch, Cli, Launch};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.command, cli.interface) {
        (Some(cmd), _) => cli::run(cmd),
        (None, Some(ifname)) => {
            let fg = cli.opts.foreground
                || std::env::var("WG_PROCESS_FOREGROUND").is_ok_and(|v| v == "1");
            launch(Launch::Uapi(ifname), cli.opts, fg)
        }
        (None, None) => {
            let _ = cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wg-appliance: {e:#}");
            ExitCode::FAILURE
        }
    }
}
