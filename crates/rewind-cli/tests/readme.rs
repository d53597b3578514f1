//! README.md's first steps work from anywhere: the tour runs as written in a fresh
//! directory with `rewind` on PATH, every relative link stays inside the repository, and
//! the recipes a new user copies create what they need.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The first ```sh block after `heading`.
fn sh_block_after(text: &str, heading: &str) -> String {
    let rest = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"))..];
    let start = rest.find("```sh\n").unwrap() + 6;
    let len = rest[start..].find("```").unwrap();
    rest[start..start + len].to_string()
}

#[test]
fn the_tour_runs_as_written_from_a_fresh_directory() {
    let tour = sh_block_after(&readme(), "## A tour");
    assert!(
        tour.contains("--in-place"),
        "the tour restores in place:\n{tour}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = run_timeout(
        Command::new("sh")
            .args(["-ec", &tour])
            .current_dir(dir.path())
            .env("PATH", path)
            .env_remove("REWIND_VAULT"),
        std::time::Duration::from_secs(300),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "the tour failed ({}):\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("Undo with: rewind restore --vault"), "{out}");
    assert!(dir.path().join("vm-before.img").exists());
}

#[test]
fn links_stay_inside_the_repository() {
    let text = readme();
    let root = std::fs::canonicalize(repo()).unwrap();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let target = &rest[..rest.find(')').unwrap()];
        if target.starts_with('#') || target.contains("://") {
            continue;
        }
        let file = target.split('#').next().unwrap();
        let p = std::fs::canonicalize(root.join(file))
            .unwrap_or_else(|e| panic!("README links {target}, which is missing: {e}"));
        assert!(
            p.starts_with(&root),
            "README links {target}, outside the repository"
        );
    }
}

#[test]
fn first_steps_say_what_a_new_user_needs() {
    let text = readme();
    let tour = text.find("## A tour").unwrap();
    let path_note = text
        .find("cargo install --path crates/rewind-cli")
        .expect("how to get `rewind` on PATH");
    assert!(
        path_note < tour,
        "`rewind` on PATH is spelled out before the tour"
    );
    assert!(text[..tour].contains("cargo run --release --"));
    // Every nbdfuse line makes its mount point first.
    for line in text.lines().filter(|l| l.contains("nbdfuse ")) {
        if line.trim_start().starts_with('|') || !line.contains("socket=") {
            continue;
        }
        assert!(
            line.contains("mkdir -p"),
            "nbdfuse without its mount point: {line}"
        );
    }
    assert!(
        text.contains("fsfreeze --freeze"),
        "quiesce before a snapshot"
    );
    assert!(text.contains("`--app-consistent` does not quiesce anything"));
    assert!(text.contains("undo-restore-at-seq-"), "the undo snapshot");
}
