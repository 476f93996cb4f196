//! `kiln list [--catalog]`: the models under `$KILN_HOME/models/`, or every
//! model the built-in catalog can pull.

use anyhow::Result;
use indicatif::BinaryBytes;
use kiln_loaders::hub::Hub;

#[derive(clap::Args)]
pub struct Args {
    /// List the catalog (what `kiln pull` knows) instead of what is installed.
    #[arg(long)]
    catalog: bool,
}

pub fn run(args: Args) -> Result<()> {
    let hub = Hub::from_env();
    if args.catalog {
        println!("{:<28} {:>10}  {:<9}  ALIASES", "NAME", "SIZE", "INSTALLED");
        for entry in hub.catalog() {
            let installed = hub.installed(&entry.name)?.is_some();
            println!(
                "{:<28} {:>10}  {:<9}  {}",
                entry.name,
                BinaryBytes(entry.size).to_string(),
                if installed { "yes" } else { "no" },
                entry.aliases.join(", ")
            );
        }
        return Ok(());
    }
    let models = hub.list()?;
    if models.is_empty() {
        eprintln!(
            "no models in {} (`kiln pull` fetches the default one)",
            hub.models_dir().display()
        );
        return Ok(());
    }
    println!("{:<28} {:>10}  PATH", "NAME", "SIZE");
    for model in models {
        println!(
            "{:<28} {:>10}  {}",
            model.name.as_deref().unwrap_or("-"),
            BinaryBytes(model.size).to_string(),
            model.path.display()
        );
    }
    Ok(())
}
