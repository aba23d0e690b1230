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
    check_golden(&golden_dir(crate_dir).join(name), actual, updating_golden());
}

/// [`golden`] on one file, with the mode given rather than read from the
/// environment: when `update`, writes `actual` to `path` (creating its
/// directory) first; then compares, so a rewrite that did not land fails too.
///
/// # Panics
/// When the file is missing or differs, naming the file and how to accept.
fn check_golden(path: &Path, actual: &str, update: bool) {
    if update {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create the golden directory");
        }
        std::fs::write(path, actual).expect("write the golden file");
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
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
    bundle_from(
        "SELFNODE_BUNDLE",
        "/var/cache/selfnode/bundle",
        "fixtures/build-bundle.sh",
    )
}

/// The bundle `env` names, else the one at `default`; panics, naming the
/// script that builds it, when there is none.
fn bundle_from(env: &str, default: &str, script: &str) -> PathBuf {
    let dir = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        dir.join("VERSION").is_file(),
        "no bundle at {} (set {env} to use another one): build it with {script}",
        dir.display()
    );
    dir
}

/// The bundle of the previous Kubernetes minor (`versions-previous.env`),
/// which upgrade tests start from: `SELFNODE_PREVIOUS_BUNDLE`, else
/// `/var/cache/selfnode/previous/bundle` (`fixtures/build-previous-bundle.sh`).
pub fn previous_bundle_dir() -> PathBuf {
    // scripts/test.sh builds it beside the tests and names the build's lock
    // here: wait for that build to let go of it.
    if let Some(lock) = std::env::var_os("SELFNODE_PREVIOUS_BUNDLE_LOCK") {
        if let Ok(f) = std::fs::OpenOptions::new().append(true).open(&lock) {
            eprintln!(
                "waiting for the previous bundle's build (lock {})",
                PathBuf::from(&lock).display()
            );
            let _ = f.lock();
        }
    }
    bundle_from(
        "SELFNODE_PREVIOUS_BUNDLE",
        "/var/cache/selfnode/previous/bundle",
        "fixtures/build-previous-bundle.sh",
    )
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

    /// The panic message of `f`, which must panic.
    fn panic_of(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).expect_err("it must fail");
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    /// Both modes are tested whatever `UPDATE_GOLDEN` says, so this test
    /// fails under either if a mode breaks.
    #[test]
    fn comparing_passes_or_names_the_file_and_updating_rewrites_it() {
        let dir = fresh_dir();
        let path = dir.join("tests/golden/a.txt");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "one\n").unwrap();

        // Comparing: the same text passes; another one fails naming the
        // file and how to accept, and leaves the file alone.
        check_golden(&path, "one\n", false);
        let msg = panic_of(|| check_golden(&path, "two\n", false));
        assert!(msg.contains("a.txt differs"), "{msg}");
        assert!(msg.contains("UPDATE_GOLDEN=1"), "{msg}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        // A missing file fails too, saying how to create it.
        let missing = dir.join("tests/golden/none.txt");
        let msg = panic_of(|| check_golden(&missing, "one\n", false));
        assert!(
            msg.contains("none.txt") && msg.contains("to create"),
            "{msg}"
        );
        assert!(!missing.exists());

        // Updating: the file takes the new text (a missing one and its
        // directory are created), and comparing then passes.
        check_golden(&path, "two\n", true);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        check_golden(&path, "two\n", false);
        let nested = dir.join("tests/golden/new/b.txt");
        check_golden(&nested, "three\n", true);
        assert_eq!(std::fs::read_to_string(&nested).unwrap(), "three\n");

        // `golden` finds the file under the crate's tests/golden, in the
        // mode the environment chose (either passes with the same text).
        let crate_dir = dir.to_str().unwrap();
        assert_eq!(golden_dir(crate_dir), dir.join("tests/golden"));
        golden(crate_dir, "a.txt", "two\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh directory of this test's own (testkit has no dependencies,
    /// so no tempfile crate).
    fn fresh_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("testkit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
