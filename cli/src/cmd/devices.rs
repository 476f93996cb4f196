use anyhow::Result;
use kiln_engine::device::adapter_reports;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object per adapter instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let reports = adapter_reports();
    if reports.is_empty() {
        println!("no GPU adapters found; `--device cpu` runs on the CPU executor");
    }
    for r in &reports {
        let c = &r.caps;
        let coop: Vec<String> = c
            .coop_matrix
            .iter()
            .map(|s| format!("{}x{}x{} {:?}->{:?}", s.m, s.n, s.k, s.ab, s.cr))
            .collect();
        if args.json {
            let v = serde_json::json!({
                "index": r.index, "name": r.name, "backend": r.backend, "type": r.device_type,
                "driver": r.driver, "driver_info": r.driver_info, "features": r.features,
                "subgroup_sizes": [c.subgroup_min_size, c.subgroup_max_size],
                "coop_matrix": coop,
                "limits": {
                    "max_storage_binding_bytes": c.max_storage_binding_bytes,
                    "max_buffer_bytes": c.max_buffer_bytes,
                    "max_workgroup_storage_bytes": c.max_workgroup_storage_bytes,
                    "max_invocations_per_workgroup": c.max_invocations_per_workgroup,
                    "max_workgroups_per_dimension": c.max_workgroups_per_dimension,
                    "max_immediate_size": c.max_immediate_size,
                },
            });
            println!("{v}");
            continue;
        }
        println!("[{}] {}", r.index, r.name);
        println!("    backend      {} ({})", r.backend, r.device_type);
        println!("    driver       {} {}", r.driver, r.driver_info);
        println!("    features     {}", r.features.join(" "));
        println!(
            "    subgroups    {}..{}",
            c.subgroup_min_size, c.subgroup_max_size
        );
        println!(
            "    coop matrix  {}",
            if coop.is_empty() {
                "none".into()
            } else {
                coop.join(", ")
            }
        );
        println!(
            "    limits       binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} invocations, {} workgroups/dim, immediates {} B",
            c.max_storage_binding_bytes >> 20,
            c.max_buffer_bytes >> 20,
            c.max_workgroup_storage_bytes / 1024,
            c.max_invocations_per_workgroup,
            c.max_workgroups_per_dimension,
            c.max_immediate_size
        );
    }
    Ok(())
}
