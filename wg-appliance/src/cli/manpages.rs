//! `manpages <dir>` (hidden): man pages generated from the command line
//! itself (clap_mangen), so they never drift from `--help`: one page for
//! `wg-appliance`, one per subcommand (`wg-appliance-up.8`, ...).

use std::path::Path;

use anyhow::Context as _;

/// Writes `wg-appliance.8` and `wg-appliance-<sub>.8` into `dir`.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = super::command().version(wg_appliance::build_info::VERSION);
    render(dir, "wg-appliance", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("wg-appliance-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .version(wg_appliance::build_info::VERSION);
        render(dir, &name, page)?;
    }
    Ok(())
}

fn render(dir: &Path, name: &str, cmd: clap::Command) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section("8")
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.8"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}
