//! Manual pages and shell completion scripts, generated from the clap definition in
//! `cli` plus the hand-written sections in `sections` and `config_page`.
//!
//! Pages and completions follow `Cli::command()`, so a new subcommand or flag gets
//! its page and its completions without an edit here. The committed copies under
//! `man/` are written by `scripts/gen-docs.sh`, and a test fails when they differ
//! from what [`generate`] returns. Nothing here touches the HSM, the ledger or a file.

mod config_page;
mod sections;

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;
use roff::Roff;

use crate::cli::Cli;

/// Shells that get a completion script, in `man/completions/`.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Returns every generated file: its path relative to `man/` and its contents.
///
/// The output depends only on the clap definition, the crate version and the text
/// in this module, never on the environment or the clock, so it is reproducible.
pub fn generate() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let command = Cli::command().disable_help_subcommand(true);
    let mut built = command.clone();
    built.build();

    files.push((PathBuf::from("keyrot.1"), main_page(&built)));
    for sub in visible_subcommands(&built) {
        let name = page_name(sub);
        files.push((PathBuf::from(format!("{name}.1")), subcommand_page(sub)));
    }
    files.push((
        PathBuf::from("keyrot.toml.5"),
        config_page::render(&title_line("keyrot.toml", "5")),
    ));

    for shell in SHELLS {
        let mut command = command.clone();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "keyrot", &mut script);
        let file_name = clap_complete::Generator::file_name(&shell, "keyrot");
        files.push((PathBuf::from("completions").join(file_name), script));
    }
    files
}

/// Collects every subcommand below `command` that has a page, depth first, parents first.
fn visible_subcommands(command: &clap::Command) -> Vec<&clap::Command> {
    let mut found = Vec::new();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        found.push(sub);
        found.extend(visible_subcommands(sub));
    }
    found
}

/// Page name of a built subcommand, such as `keyrot-rotate`.
fn page_name(command: &clap::Command) -> String {
    command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_string()
}

fn main_page(command: &clap::Command) -> Vec<u8> {
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    render_generated(&man, command, &mut page);

    let mut roff = Roff::new();
    sections::output(&mut roff);
    sections::exit_status(&mut roff);
    sections::environment(&mut roff);
    sections::files(&mut roff);
    sections::signals(&mut roff);
    sections::examples(&mut roff);
    let mut see_also: Vec<String> = visible_subcommands(command)
        .into_iter()
        .map(|sub| format!("{}(1)", page_name(sub)))
        .collect();
    see_also.push("keyrot.toml(5)".into());
    sections::see_also(&mut roff, &see_also);
    append_roff(&mut page, &roff);
    page
}

fn subcommand_page(command: &clap::Command) -> Vec<u8> {
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    render_generated(&man, command, &mut page);

    let mut roff = Roff::new();
    sections::subcommand_exit_status(&mut roff);
    sections::see_also(&mut roff, &["keyrot(1)".into(), "keyrot.toml(5)".into()]);
    append_roff(&mut page, &roff);
    page
}

/// Writes the title line and the sections that clap_mangen derives from the command.
fn render_generated(man: &clap_mangen::Man, command: &clap::Command, page: &mut Vec<u8>) {
    let preamble = Roff::new().render();
    page.extend_from_slice(preamble.as_bytes());
    page.extend_from_slice(title_line(&page_name(command), "1").as_bytes());

    let mut sections: Vec<Vec<u8>> = Vec::new();
    let mut render = |f: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let mut section = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = f(&mut section);
        sections.push(section);
    };
    render(&|w| man.render_name_section(w));
    render(&|w| man.render_synopsis_section(w));
    render(&|w| man.render_description_section(w));
    if command.get_arguments().any(|arg| !arg.is_hide_set()) {
        render(&|w| man.render_options_section(w));
    }
    if command.has_subcommands() {
        render(&|w| man.render_subcommands_section(w));
    }
    if command.get_version().is_some() {
        render(&|w| man.render_version_section(w));
    }
    // Each clap_mangen call starts with the apostrophe preamble; the page needs it once.
    for section in sections {
        let body = section
            .strip_prefix(preamble.as_bytes())
            .unwrap_or(&section);
        page.extend_from_slice(body);
    }
}

/// Formats the `.TH` line with an explicit empty date field. clap_mangen 0.3.3 writes an
/// empty date as nothing, which shifts the source into the date's place.
fn title_line(name: &str, section: &str) -> String {
    let version = env!("CARGO_PKG_VERSION");
    format!(".TH {name} {section} \"\" \"keyrot {version}\" \"keyrot manual\"\n")
}

/// Appends hand-written sections without repeating the apostrophe preamble that
/// every rendered `Roff` starts with.
fn append_roff(page: &mut Vec<u8>, roff: &Roff) {
    let preamble = Roff::new().render();
    let text = roff.render();
    let body = text.strip_prefix(&preamble).unwrap_or(&text);
    page.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_is_deterministic() {
        assert_eq!(generate(), generate());
    }

    #[test]
    fn every_subcommand_has_a_page() {
        let files = generate();
        for sub in Cli::command().get_subcommands() {
            let name = PathBuf::from(format!("keyrot-{}.1", sub.get_name()));
            assert!(
                files.iter().any(|(path, _)| *path == name),
                "no page {}",
                name.display()
            );
        }
    }

    #[test]
    fn main_page_has_written_sections() {
        let files = generate();
        let (_, page) = files
            .iter()
            .find(|(path, _)| path == &PathBuf::from("keyrot.1"))
            .unwrap();
        let page = String::from_utf8_lossy(page);
        for heading in [
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            ".SH FILES",
            ".SH SIGNALS",
            ".SH EXAMPLES",
        ] {
            assert!(page.contains(heading), "keyrot.1 lacks {heading}");
        }
        assert_eq!(
            page.matches(".ie \\n(.g").count(),
            1,
            "apostrophe preamble repeated"
        );
    }
}
