//! `tern man DIR` (hidden): the manual pages, generated from the command
//! line's own definitions with clap_mangen, so they say exactly what `--help`
//! says: `tern.1`, and `tern-NAME.1` for each subcommand. The Debian package
//! (`scripts/deb.sh`) installs them.

use std::path::Path;

use anyhow::Context;
use clap::Command;

/// Writes the pages of `tern` (the whole command line) into `dir`.
pub fn write_all(tern: Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tern = tern.bin_name("tern");
    for sub in tern.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        let page = sub
            .clone()
            .display_name(format!("tern-{name}"))
            .bin_name(format!("tern {name}"));
        write(page, &dir.join(format!("tern-{name}.1")))?;
    }
    write(tern, &dir.join("tern.1"))
}

fn write(page: Command, path: &Path) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .source(concat!("tern ", env!("CARGO_PKG_VERSION")))
        .manual("Tern")
        .render(&mut out)?;
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}
