use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The prompt.
    prompt: Vec<String>,
}

pub fn run(_args: Args) -> Result<()> {
    // Generation lands with the LLaMA end-to-end issue; until then say so
    // plainly instead of pretending.
    println!("no model yet: kiln can load and tokenize models, generation is not built yet (see ROADMAP.md)");
    Ok(())
}
