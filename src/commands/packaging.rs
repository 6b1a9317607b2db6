//! The hidden `completions` and `man` commands: what `scripts/package` ships, generated
//! from the clap definitions in `cli.rs` so they cannot drift from the binary.

use super::*;

use clap::CommandFactory;

pub(super) fn completions(shell: clap_complete::Shell) -> Result<Exit> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dirsync", &mut out);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(Exit::Ok)
}

pub(super) fn man(dir: &Path) -> Result<Exit> {
    std::fs::create_dir_all(dir).map_err(|e| Error::BadInput(format!("{}: {e}", dir.display())))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .map_err(|e| Error::BadInput(format!("{}: {e}", dir.display())))?;
    Ok(Exit::Ok)
}
