//! `kiln rm NAME`: delete a model from `$KILN_HOME/models/`, named by its
//! catalog name or its file name.

use anyhow::Result;
use kiln_loaders::hub::Hub;

#[derive(clap::Args)]
pub struct Args {
    /// A catalog name or alias, or the file name of a model in the folder.
    name: String,
}

pub fn run(args: Args) -> Result<()> {
    let path = Hub::from_env().rm(&args.name)?;
    println!("removed {}", path.display());
    Ok(())
}
