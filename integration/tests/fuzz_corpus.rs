//! Replays the fuzz corpus and every kept crash on stable, through the same
//! cases the cargo-fuzz targets run (`zdr_integration::fuzz`): a decoder that
//! panics again on a crash once fixed fails here, without nightly. Seeds named
//! `valid-*` must also be accepted, so that a format change that leaves the
//! corpus behind is noticed (regenerate the computed ones with `cargo run -p
//! zdr-integration --example fuzz_seeds`).

use std::path::{Path, PathBuf};

use zdr_integration::fuzz;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files under `dir/<target>/`, per target; a directory that names no
/// target is an error.
fn inputs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(targets) = std::fs::read_dir(dir) else {
        return out;
    };
    for target in targets {
        let target = target.expect("a directory entry").path();
        let name = target.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            fuzz::TARGETS.contains(&name.as_str()),
            "{} names no fuzz target; the targets are {:?}",
            target.display(),
            fuzz::TARGETS
        );
        for file in std::fs::read_dir(&target).expect("a target directory") {
            out.push((name.clone(), file.expect("a directory entry").path()));
        }
    }
    out.sort();
    out
}

#[test]
fn every_target_has_a_corpus_with_valid_seeds() {
    let corpus = inputs(&fuzz_dir().join("corpus"));
    for target in fuzz::TARGETS {
        let valid = corpus
            .iter()
            .filter(|(t, p)| {
                t == target
                    && p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("valid-")
            })
            .count();
        assert!(
            valid > 0,
            "integration/fuzz/corpus/{target}/ has no valid-* seed"
        );
    }
}

#[test]
fn corpus_replays_and_valid_seeds_are_accepted() {
    let corpus = inputs(&fuzz_dir().join("corpus"));
    for (target, path) in &corpus {
        let data = std::fs::read(path).expect("a corpus file");
        let accepted = fuzz::run(target, &data).expect("a known target");
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("valid-") {
            assert!(
                accepted,
                "{} is not accepted by the {target} case",
                path.display()
            );
        }
    }
}

#[test]
fn kept_crashes_replay_without_panic() {
    for (target, path) in inputs(&fuzz_dir().join("regressions")) {
        let data = std::fs::read(&path).expect("a regression file");
        fuzz::run(&target, &data).expect("a known target");
    }
}
