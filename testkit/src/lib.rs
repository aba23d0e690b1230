//! Test support shared by the workspace's tests (a dev-dependency only):
//! golden files and the pinned upstream bundle. It depends on no workspace
//! crate, so any crate's unit tests can use it.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// The environment variable that turns golden comparisons into rewrites.
pub const UPDATE_GOLDEN: &str = "UPDATE_GOLDEN";

/// Whether this run rewrites golden files (`UPDATE_GOLDEN=1`).
pub fn updating_golden() -> bool {
    std::env::var_os(UPDATE_GOLDEN).is_some()
}

/// Compares `actual` with the golden file `<crate_dir>/tests/golden/<name>`
/// (`crate_dir`: the calling crate's `env!("CARGO_MANIFEST_DIR")`); with
/// `UPDATE_GOLDEN=1` it writes `actual` there instead.
///
/// # Panics
/// When the file is missing or differs, naming the file and how to accept.
pub fn golden(crate_dir: &str, name: &str, actual: &str) {
    let path = golden_dir(crate_dir).join(name);
    if updating_golden() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create the golden directory");
        }
        std::fs::write(&path, actual).expect("write the golden file");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "golden file {} differs (UPDATE_GOLDEN=1 to accept)",
        path.display()
    );
}

/// `<crate_dir>/tests/golden`.
pub fn golden_dir(crate_dir: &str) -> PathBuf {
    Path::new(crate_dir).join("tests/golden")
}

/// The pinned bundle: `$SELFNODE_BUNDLE`, or `/var/cache/selfnode/bundle`
/// where `fixtures/build-bundle.sh` puts it.
///
/// # Panics
/// When it has no `VERSION` file: a test that needs the bundle fails
/// without it, it never skips.
pub fn bundle_dir() -> PathBuf {
    let dir = std::env::var_os("SELFNODE_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/selfnode/bundle"));
    assert!(
        dir.join("VERSION").is_file(),
        "no selfnode bundle at {} (set SELFNODE_BUNDLE to use another one): build it with fixtures/build-bundle.sh",
        dir.display()
    );
    dir
}

/// A binary of the pinned bundle (`bin/<name>`).
///
/// # Panics
/// When the bundle or the binary is missing.
pub fn bundle_bin(name: &str) -> PathBuf {
    let bin = bundle_dir().join("bin").join(name);
    assert!(
        bin.is_file(),
        "no {} in the bundle: rebuild it with fixtures/build-bundle.sh",
        bin.display()
    );
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matching_golden_file_passes_and_a_different_one_names_the_file() {
        let dir = std::env::temp_dir().join(format!("testkit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tests/golden")).unwrap();
        std::fs::write(dir.join("tests/golden/a.txt"), "one\n").unwrap();
        let crate_dir = dir.to_str().unwrap();
        if !updating_golden() {
            golden(crate_dir, "a.txt", "one\n");
            let err = std::panic::catch_unwind(|| golden(crate_dir, "a.txt", "two\n"))
                .expect_err("a different text fails");
            let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("a.txt differs"), "{msg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
