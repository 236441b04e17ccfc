//! The committed manual pages and shell completions under `man/` are exactly what
//! `keyrot::docs::generate` produces from the current command-line definition.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const REGENERATE: &str = "run scripts/gen-docs.sh and commit man/";

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man")
}

fn committed_files(root: &Path, relative: &Path, found: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(relative)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = relative.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            committed_files(root, &path, found);
        } else {
            found.insert(path);
        }
    }
}

#[test]
fn man_files_are_up_to_date() {
    let man = man_dir();
    let mut stale = Vec::new();
    for (path, expected) in keyrot::docs::generate() {
        match std::fs::read(man.join(&path)) {
            Ok(committed) if committed == expected => {}
            Ok(_) => stale.push(format!("man/{} differs", path.display())),
            Err(_) => stale.push(format!("man/{} is missing", path.display())),
        }
    }
    assert!(stale.is_empty(), "{}: {REGENERATE}", stale.join(", "));
}

#[test]
fn man_has_no_orphan_files() {
    let generated: BTreeSet<PathBuf> = keyrot::docs::generate()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    let mut committed = BTreeSet::new();
    committed_files(&man_dir(), Path::new(""), &mut committed);
    let orphans: Vec<String> = committed
        .difference(&generated)
        .map(|path| format!("man/{}", path.display()))
        .collect();
    assert!(
        orphans.is_empty(),
        "{} no longer generated: {REGENERATE}",
        orphans.join(", ")
    );
}

#[test]
fn completions_cover_each_shell() {
    let names: BTreeSet<PathBuf> = keyrot::docs::generate()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    for name in ["keyrot.bash", "_keyrot", "keyrot.fish"] {
        let path = Path::new("completions").join(name);
        assert!(names.contains(&path), "{} not generated", path.display());
    }
}
