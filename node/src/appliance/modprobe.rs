//! `modprobe` in the appliance: `/usr/sbin/modprobe` is a link to
//! selfnode, and the kernel's `/proc/sys/kernel/modprobe` names it, so the
//! modules the kernel asks for on demand (a crypto algorithm such as
//! `crc32c` for ext4, a netfilter match, a file system) load as on any
//! distribution, and so do the ones selfnode's own code asks for.
//!
//! It resolves a name the way modprobe does: a module's own name first,
//! then the aliases in `modules.alias` (shell globs: `*`, `?`, `[...]`),
//! loading each module's `softdep ... pre:` modules (`modules.softdep`)
//! before it and its `modules.dep` dependencies with it
//! ([`cni::kernel::load_module_direct`]).

use std::path::Path;

use anyhow::Context;

/// True if this process was started as `modprobe`.
pub fn invoked_as_modprobe() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n == "modprobe"))
        .unwrap_or(false)
}

/// `modprobe [-q] [-b] [--] NAME [PARAMS...]`: 0 when NAME is loaded (or
/// built in), 1 when it cannot be.
pub fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quiet = args.iter().any(|a| a == "-q" || a == "--quiet");
    let Some(name) = args.iter().find(|a| !a.starts_with('-')) else {
        eprintln!("usage: modprobe [-q] NAME");
        return std::process::ExitCode::from(1);
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/usr/lib/modules").join(release.trim());
    match load(&dir, name, 0) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if !quiet {
                eprintln!("modprobe: {e}");
            }
            std::process::ExitCode::from(1)
        }
    }
}

/// Loads `name` (a module or an alias) from the modules directory `dir`.
pub fn load(dir: &Path, name: &str, depth: usize) -> anyhow::Result<()> {
    if depth > 8 {
        anyhow::bail!("{name}: soft dependencies nest too deep");
    }
    let norm = |s: &str| s.replace('-', "_");
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("cannot read {}", dir.join("modules.dep").display()))?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let module_name = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        norm(file.split(".ko").next().unwrap_or(file))
    };
    let known = |n: &str| {
        dep.lines()
            .any(|l| l.split(':').next().map(module_name).as_deref() == Some(n))
    };
    let is_builtin = |n: &str| builtin.lines().any(|l| module_name(l) == n);
    let mut targets = Vec::new();
    let wanted = norm(name);
    if known(&wanted) || is_builtin(&wanted) {
        targets.push(wanted.clone());
    } else {
        let aliases = std::fs::read_to_string(dir.join("modules.alias")).unwrap_or_default();
        for line in aliases.lines() {
            let mut parts = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (parts.next(), parts.next(), parts.next())
            {
                if glob(pattern, name) && !targets.contains(&norm(module)) {
                    targets.push(norm(module));
                }
            }
        }
    }
    if targets.is_empty() {
        anyhow::bail!("{name}: no such module or alias in {}", dir.display());
    }
    let softdep = std::fs::read_to_string(dir.join("modules.softdep")).unwrap_or_default();
    let mut last_err = None;
    for t in &targets {
        if is_builtin(t) {
            return Ok(());
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") || words.next().map(norm).as_deref() != Some(t) {
                continue;
            }
            let mut pre = false;
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    m if pre => {
                        let _ = load(dir, m, depth + 1);
                    }
                    _ => {}
                }
            }
        }
        match cni::kernel::load_module_direct(
            t,
            Path::new("/proc/sys"),
            dir.parent().unwrap_or(dir),
        ) {
            Ok(_) => return Ok(()),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("{name}: nothing to load")))
}

/// Shell glob match (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`) as modules.alias uses.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn m(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') => (0..=t.len()).any(|i| m(&p[1..], &t[i..])),
            Some(b'?') => !t.is_empty() && m(&p[1..], &t[1..]),
            Some(b'[') => {
                let Some(end) = p.iter().skip(2).position(|c| *c == b']').map(|i| i + 2) else {
                    return !t.is_empty() && t[0] == b'[' && m(&p[1..], &t[1..]);
                };
                let Some(&c) = t.first() else { return false };
                let mut set = &p[1..end];
                let negate = matches!(set.first(), Some(b'!') | Some(b'^'));
                if negate {
                    set = &set[1..];
                }
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == b'-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && m(&p[end + 1..], &t[1..])
            }
            Some(&c) => t.first() == Some(&c) && m(&p[1..], &t[1..]),
        }
    }
    m(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_match_as_shell_globs() {
        assert!(glob("crypto-crc32c", "crypto-crc32c"));
        assert!(glob(
            "pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!glob(
            "pci:v00001AF4d00001000sv*",
            "pci:v00001AF4d00001001sv0"
        ));
        assert!(glob("fs-ext[234]", "fs-ext4"));
        assert!(!glob("fs-ext[!4]", "fs-ext4"));
        assert!(glob("a?c", "abc"));
        assert!(glob("x[a-c]y", "xby"));
    }

    #[test]
    fn an_unknown_name_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), "kernel/lib/libcrc32c.ko:\n").unwrap();
        std::fs::write(
            dir.path().join("modules.alias"),
            "alias crypto-crc32c crc32c_generic\n",
        )
        .unwrap();
        let err = load(dir.path(), "nothing-like-it", 0).unwrap_err();
        assert!(err.to_string().contains("nothing-like-it"), "{err}");
    }
}
