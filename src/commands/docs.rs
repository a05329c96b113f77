//! `migrate completions SHELL` and `migrate man`: generated from the command-line definition
//! itself (clap_complete, clap_mangen), so they cannot drift from `--help`.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit::Exit;
use crate::ui::Ui;

pub fn completions(shell: clap_complete::Shell, ui: &Ui) -> Result<Exit> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "migrate", &mut out);
    ui.raw(&out);
    Ok(Exit::Done)
}

pub fn man(ui: &Ui) -> Result<Exit> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    ui.raw(&out);
    Ok(Exit::Done)
}
