//! The crate's purity, checked from its manifest and source text: `domain` never
//! does IO, never awaits, never reads the clock and never draws random numbers
//! (ARCHITECTURE.md, Invariants).
//!
//! Features are unified across the workspace, so `uuid`'s `v4` and `v7` (and
//! other crates' `chrono` with `clock`) stay compiled in here; the type system
//! cannot forbid `Uuid::new_v4()`, so these tests do.

use std::fs;
use std::path::{Path, PathBuf};

/// The only crates `domain` may depend on, each for types or pure functions
/// alone: serde derives, `Uuid` inside the id newtypes, `thiserror` for
/// `DomainError`, `icu_normalizer` for an email's Unicode form (its data is
/// compiled in: no file, no clock, no randomness).
const DEPENDENCIES_ALLOWED: [&str; 4] = ["icu_normalizer", "serde", "thiserror", "uuid"];

/// Text that means IO, awaiting, the clock or randomness in non-test source.
const FORBIDDEN: [&str; 15] = [
    "Utc::now",
    "Local::now",
    "SystemTime",
    "Instant::now",
    "new_v4",
    "now_v7",
    "std::fs",
    "std::net",
    "std::env",
    "std::io",
    "std::process",
    "tokio",
    "rand::",
    ".await",
    "async fn",
];

/// The names of the crates a manifest's normal and build dependency tables name
/// (target-specific ones included); dev-dependencies are left out. A line-based
/// reader for the TOML forms Cargo manifests use, so the test needs no parser.
fn dependency_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_table = false;
    for line in manifest.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let segments: Vec<&str> = header.trim_end_matches(']').split('.').map(str::trim).collect();
            let table = segments.iter().position(|segment| matches!(*segment, "dependencies" | "build-dependencies"));
            in_table = false;
            match table.map(|index| segments.get(index + 1)) {
                // `[dependencies.serde]`: the header names the crate.
                Some(Some(name)) => names.push(name.trim_matches(['"', '\'']).to_owned()),
                Some(None) => in_table = true,
                None => {}
            }
            continue;
        }
        if in_table {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            names.push(name.trim_matches(['"', '\'']).to_owned());
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Every `.rs` file under `directory`, skipping the test directory `skip`.
fn source_files(directory: &Path, skip: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(directory).unwrap_or_else(|error| panic!("cannot list {}: {error}", directory.display()));
    for entry in entries {
        let path = entry.expect("a directory entry reads").path();
        if path == skip {
            continue;
        }
        if path.is_dir() {
            source_files(&path, skip, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn the_dependency_reader_sees_every_form_of_dependency() {
    let manifest = r#"
[package]
name = "example"

[dependencies]
serde.workspace = true
uuid = { workspace = true }
"thiserror" = "2"

[dependencies.chrono]
version = "0.4"

[dev-dependencies]
proptest.workspace = true

[build-dependencies]
cc = "1"

[target.'cfg(unix)'.dependencies]
libc = "0.2"

[target.'cfg(unix)'.dev-dependencies]
tempfile = "3"
"#;
    assert_eq!(dependency_names(manifest), ["cc", "chrono", "libc", "serde", "thiserror", "uuid"]);
}

#[test]
fn domain_depends_only_on_crates_for_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let manifest = fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let names = dependency_names(&manifest);
    assert!(names.iter().any(|name| name == "serde"), "the manifest reader found no serde in {names:?}");
    for name in &names {
        assert!(
            DEPENDENCIES_ALLOWED.contains(&name.as_str()),
            "domain/Cargo.toml depends on `{name}`; domain may depend only on {DEPENDENCIES_ALLOWED:?}"
        );
    }
}

#[test]
fn domain_source_does_no_io_and_reads_no_clock_or_randomness() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tests = source.join("tests");
    let mut files = Vec::new();
    source_files(&source, &tests, &mut files);
    assert!(files.iter().any(|file| file.ends_with("order.rs")), "the walk missed src/order.rs: {files:?}");
    assert!(!files.iter().any(|file| file.starts_with(&tests)), "the walk entered src/tests: {files:?}");
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
        for forbidden in FORBIDDEN {
            assert!(!text.contains(forbidden), "{} contains `{forbidden}`; domain must stay pure", file.display());
        }
    }
}
