//! `migrate validate`: check a spec and show the topology it describes.

use anyhow::Result;
use serde_json::json;

use crate::cli::Global;
use crate::exit::Exit;
use crate::spec;
use crate::ui::Ui;

pub fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let spec = spec::load(&super::spec_path(g)?)?;
    for w in &spec.warnings {
        ui.warn(w);
    }
    if ui.json() {
        let nodes: Vec<_> = spec
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "name": n.name, "role": n.role, "upstream": n.upstream,
                    "conninfo": n.conninfo.to_string(), "data_dir": n.data_dir,
                    "host": n.host,
                })
            })
            .collect();
        ui.emit_json(&json!({ "valid": true, "name": spec.name, "state_dir": spec.state_dir, "nodes": nodes, "warnings": spec.warnings }));
        return Ok(Exit::Done);
    }
    ui.line(format!(
        "{}: valid spec for run {:?}",
        spec.path.display(),
        spec.name
    ));
    let rows: Vec<Vec<String>> = spec
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format!("{:?}", n.role).to_lowercase(),
                n.upstream.clone().unwrap_or_else(|| "-".into()),
                format!("{}:{}", n.conninfo.host(), n.conninfo.port()),
                n.host.identity(),
            ]
        })
        .collect();
    ui.table(
        &["node", "role", "upstream", "address", "host control"],
        &rows,
    );
    Ok(Exit::Done)
}
