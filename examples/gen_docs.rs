//! Writes the manual pages and shell completions that `keyrot::docs::generate`
//! returns into `man/`, and removes files there that it no longer produces (such as
//! the page of a removed subcommand). Run it through `scripts/gen-docs.sh`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let files = keyrot::docs::generate();
    let wanted: BTreeSet<PathBuf> = files.iter().map(|(path, _)| path.clone()).collect();

    for existing in list_files(&man, Path::new(""))? {
        if !wanted.contains(&existing) {
            std::fs::remove_file(man.join(&existing))?;
            println!("removed man/{}", existing.display());
        }
    }
    for (path, contents) in &files {
        let target = man.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::read(&target).ok().as_deref() != Some(contents.as_slice()) {
            std::fs::write(&target, contents)?;
            println!("wrote man/{}", path.display());
        }
    }
    Ok(())
}

/// Files under `root/relative`, as paths relative to `root`.
fn list_files(root: &Path, relative: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(root.join(relative)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = relative.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            found.extend(list_files(root, &path)?);
        } else {
            found.push(path);
        }
    }
    Ok(found)
}
