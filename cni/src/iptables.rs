//! Running `iptables` (`ip6tables`) and reading its rules back: the piece
//! that selfnode's masquerade rule ([`crate::masq`]) and the reset's
//! cleanup ([`crate::cleanup`]) share.

use std::process::Command;

/// An `iptables` command cannot be run, or it failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The binary cannot be started (not installed, not executable).
    #[error("cannot run {program}")]
    Spawn {
        /// `iptables` or `ip6tables`.
        program: &'static str,
        /// Why it cannot be started.
        source: std::io::Error,
    },
    /// It ran and exited with an error.
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        /// `iptables` or `ip6tables`.
        program: &'static str,
        /// Its arguments, space-separated.
        args: String,
        /// Its exit status, e.g. `exit status: 4`.
        status: String,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
}

/// `iptables` for IPv4, `ip6tables` for IPv6.
fn binary(ipv6: bool) -> &'static str {
    if ipv6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// Runs `iptables` (`ip6tables` with `ipv6`) with `args`; its stdout.
pub(crate) fn run(ipv6: bool, args: &[&str]) -> Result<String, IptablesError> {
    let program = binary(ipv6);
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| IptablesError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            program,
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Splits an `iptables -S` rule into words, honouring double quotes.
pub(crate) fn split_rule(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = rule.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_stay_whole() {
        assert_eq!(
            split_rule(
                r#"-s 10.0.0.0/8 -m comment --comment "name: \"selfnode\" id: \"a b\"" -j X"#
            ),
            [
                "-s",
                "10.0.0.0/8",
                "-m",
                "comment",
                "--comment",
                "name: \"selfnode\" id: \"a b\"",
                "-j",
                "X"
            ]
        );
    }

    #[test]
    fn a_failure_names_the_command_and_its_answer() {
        let e = IptablesError::Failed {
            program: "iptables",
            args: "-w -t nat -S POSTROUTING".into(),
            status: "exit status: 3".into(),
            stderr: "iptables v1.8.9 (nf_tables): table `nat' is incompatible".into(),
        };
        assert_eq!(
            e.to_string(),
            "iptables -w -t nat -S POSTROUTING failed (exit status: 3): iptables v1.8.9 (nf_tables): table `nat' is incompatible"
        );
    }
}
