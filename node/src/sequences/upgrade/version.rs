//! Kubernetes versions and the rules between them: which change an
//! upgrade may make, and the version skew policy
//! (<https://kubernetes.io/releases/version-skew-policy/>).

use std::fmt;

/// `vMAJOR.MINOR.PATCH`, as image tags and `kubeletVersion` carry it
/// (anything after the patch, `-rc.1` or `+build`, is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// `v1.37.2`, `1.37.2`, `v1.37.2-rc.0`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Version> {
        let t = text.trim().trim_start_matches('v');
        let core = t.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let v = Version {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
            patch: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(v)
    }

    /// The same minor as `other` (and major).
    pub fn same_minor(&self, other: &Version) -> bool {
        self.major == other.major && self.minor == other.minor
    }

    /// How many minors `self` is behind `newer` (negative when ahead);
    /// `None` across majors.
    pub fn minors_behind(&self, newer: &Version) -> Option<i64> {
        (self.major == newer.major).then(|| i64::from(newer.minor) - i64::from(self.minor))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What going from one version to another is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The same version: nothing to do.
    Same,
    /// A newer patch of the same minor.
    Patch,
    /// The next minor (any patch).
    NextMinor,
    /// An older version: `upgrade apply` never goes back (`upgrade
    /// rollback` does, within its window).
    Downgrade,
    /// More than one minor ahead, or another major: each minor in turn.
    Skip,
}

impl Change {
    pub fn between(current: &Version, target: &Version) -> Change {
        if target == current {
            Change::Same
        } else if target < current {
            Change::Downgrade
        } else if target.same_minor(current) {
            Change::Patch
        } else if current.minors_behind(target) == Some(1) {
            Change::NextMinor
        } else {
            Change::Skip
        }
    }

    /// Whether `upgrade apply` may make it.
    pub fn allowed(self) -> bool {
        matches!(self, Change::Same | Change::Patch | Change::NextMinor)
    }
}

/// The kubelet's skew against the API servers: never newer than the oldest
/// API server, at most three minors older. `Err` says why not.
pub fn kubelet_skew(kubelet: &Version, apiserver: &Version) -> Result<(), String> {
    match kubelet.minors_behind(apiserver) {
        Some(behind) if (0..=3).contains(&behind) && kubelet <= apiserver => Ok(()),
        Some(behind) if behind < 0 || kubelet > apiserver => Err(format!(
            "kubelet {kubelet} is newer than kube-apiserver {apiserver}; a kubelet may not be newer than the API servers"
        )),
        _ => Err(format!(
            "kubelet {kubelet} is more than three minors older than kube-apiserver {apiserver}; upgrade that node's kubelet first"
        )),
    }
}

/// The controller-manager's and scheduler's skew: not newer than the API
/// servers, at most one minor older.
pub fn control_plane_skew(component: &Version, apiserver: &Version) -> Result<(), String> {
    match component.minors_behind(apiserver) {
        Some(0 | 1) if component <= apiserver => Ok(()),
        _ if component > apiserver => Err(format!(
            "{component} is newer than kube-apiserver {apiserver}; upgrade the API servers first"
        )),
        _ => Err(format!(
            "{component} is more than one minor older than kube-apiserver {apiserver}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_as_tags_and_kubelets_write_them() {
        assert_eq!(
            v("v1.37.2"),
            Version {
                major: 1,
                minor: 37,
                patch: 2
            }
        );
        assert_eq!(v("1.36.3"), v("v1.36.3"));
        assert_eq!(v("v1.37.0-rc.1"), v("v1.37.0"));
        for bad in ["", "v1.37", "v1.37.2.1", "latest", "v1.x.2"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert_eq!(v("v1.37.2").to_string(), "v1.37.2");
    }

    #[test]
    fn an_upgrade_goes_to_a_newer_patch_or_the_next_minor_only() {
        let cur = v("v1.36.3");
        assert_eq!(Change::between(&cur, &v("v1.36.3")), Change::Same);
        assert_eq!(Change::between(&cur, &v("v1.36.5")), Change::Patch);
        assert_eq!(Change::between(&cur, &v("v1.37.0")), Change::NextMinor);
        assert_eq!(Change::between(&cur, &v("v1.37.2")), Change::NextMinor);
        assert_eq!(Change::between(&cur, &v("v1.38.0")), Change::Skip);
        assert_eq!(Change::between(&cur, &v("v2.0.0")), Change::Skip);
        assert_eq!(Change::between(&cur, &v("v1.36.1")), Change::Downgrade);
        assert_eq!(Change::between(&cur, &v("v1.35.9")), Change::Downgrade);
        assert!(Change::NextMinor.allowed() && !Change::Skip.allowed());
        assert!(!Change::Downgrade.allowed());
    }

    #[test]
    fn skew_follows_the_policy() {
        let api = v("v1.37.2");
        assert!(kubelet_skew(&v("v1.37.2"), &api).is_ok());
        assert!(kubelet_skew(&v("v1.34.0"), &api).is_ok());
        assert!(kubelet_skew(&v("v1.33.9"), &api)
            .unwrap_err()
            .contains("more than three minors older"));
        assert!(kubelet_skew(&v("v1.37.3"), &api)
            .unwrap_err()
            .contains("newer than kube-apiserver"));
        assert!(kubelet_skew(&v("v1.38.0"), &api).is_err());
        assert!(control_plane_skew(&v("v1.36.3"), &api).is_ok());
        assert!(control_plane_skew(&v("v1.35.0"), &api)
            .unwrap_err()
            .contains("more than one minor older"));
        assert!(control_plane_skew(&v("v1.38.0"), &api)
            .unwrap_err()
            .contains("upgrade the API servers first"));
    }
}
