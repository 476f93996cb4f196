//! `kiln pull [NAME]`: fetch a catalog model (the default one when no name
//! is given) into `$KILN_HOME/models/`, with a progress bar on stderr, and
//! print its path.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_loaders::hub::{Event, Hub, HubError, DEFAULT_MODEL};

#[derive(clap::Args)]
pub struct Args {
    /// A catalog name or alias (see `kiln list --catalog`).
    #[arg(default_value = DEFAULT_MODEL)]
    name: String,
}

pub fn run(args: Args) -> Result<()> {
    let path = pull_model(&Hub::from_env(), &args.name)?;
    println!("{}", path.display());
    Ok(())
}

/// Pulls `name`, drawing progress on stderr; shared with the commands that
/// load a model by name.
pub fn pull_model(hub: &Hub, name: &str) -> Result<PathBuf> {
    let mut bar = Bar::new();
    let path = hub.pull(name, &mut |event| bar.show(event));
    bar.clear();
    Ok(path?)
}

/// Hub events drawn on stderr: a byte bar (bytes, rate, ETA) for transfers
/// and a spinner for steps of unknown length, such as pip running. Where
/// stderr is not a terminal (CI logs) each step is one plain line instead.
struct Bar {
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            bar: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, event: Event<'_>) {
        match event {
            Event::Start { what, total } => {
                self.clear();
                if !self.terminal {
                    eprintln!("kiln: {what}");
                    return;
                }
                let bar = match total {
                    Some(total) => ProgressBar::new(total).with_style(bytes_style()),
                    None => {
                        let bar = ProgressBar::new_spinner().with_style(spinner_style());
                        bar.enable_steady_tick(Duration::from_millis(100));
                        bar
                    }
                };
                self.bar = Some(bar.with_message(what.to_string()));
            }
            Event::Progress { done } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                }
            }
            Event::Finish => self.clear(),
            Event::Fallback { error, next, .. } => {
                self.line(&format!("kiln: note: {}; trying {next}", short(error)));
            }
            Event::Note(note) => self.line(&format!("kiln: note: {note}")),
            _ => {}
        }
    }

    /// One line above the bar, without tearing it.
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// An unreachable host is the expected failure offline: name the host,
/// not the whole pinned URL, so the note fits a terminal line.
fn short(error: &HubError) -> String {
    match error {
        HubError::Unreachable { url, reason } => {
            let host = url.split("://").nth(1).unwrap_or(url);
            let host = host.split('/').next().unwrap_or(host);
            format!("cannot reach {host} ({reason})")
        }
        other => other.to_string(),
    }
}

fn bytes_style() -> ProgressStyle {
    // The template is a constant; a bad one is a bug caught by any test
    // that draws a bar, so fall back to the plain bar rather than fail.
    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}
