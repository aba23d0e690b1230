//! The appliance node's configuration: what role it takes and how it
//! reaches the network, from the image's file and the kernel command line.
//!
//! The file (`/etc/selfnode/appliance.yaml` in the image, from `selfnode
//! image build --config`):
//!
//! ```yaml
//! apiVersion: selfnode.dev/v1alpha1
//! kind: ApplianceConfiguration
//! role: init                 # init | join | control-plane-join
//! joinString: ""             # for join and control-plane-join ('selfnode token create' prints it)
//! hostname: node-1           # default: selfnode-<last 3 bytes of the first card's MAC>
//! allowWorkloads: false      # init only: pods may run on this control-plane node
//! network:                   # default: DHCP on the first card with a link
//!   interface: eth0
//!   address: 192.0.2.10/24   # static; leave out for DHCP
//!   gateway: 192.0.2.1
//!   dns: [192.0.2.53]
//! dataDevice: /dev/sdb       # default: the GPT partition named selfnode-data, or a blank disk
//! ```
//!
//! Kernel parameters override the file, one field each: `selfnode.role`,
//! `selfnode.join`, `selfnode.hostname`, `selfnode.allow_workloads`,
//! `selfnode.interface`, `selfnode.ip` (an address with its prefix, or
//! `dhcp`), `selfnode.gateway`, `selfnode.dns` (comma-separated),
//! `selfnode.data`. An unknown `selfnode.*` parameter is an error, as is an
//! unknown field in the file: a typo never goes unnoticed.

use serde::Deserialize;
use std::net::IpAddr;

/// The file's apiVersion and kind.
pub const API_VERSION: &str = "selfnode.dev/v1alpha1";
/// The file's kind.
pub const KIND: &str = "ApplianceConfiguration";

/// What the node does once its agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `selfnode init`: the first control-plane host of a new cluster.
    Init,
    /// `selfnode join STRING`: a worker.
    Join(String),
    /// `selfnode join --control-plane STRING`.
    ControlPlaneJoin(String),
}

/// How the node gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// DHCP (address, router, name servers).
    Dhcp,
    /// A fixed address and prefix, with an optional gateway.
    Static {
        /// The address.
        address: IpAddr,
        /// Its prefix length.
        prefix: u8,
        /// The default route's gateway.
        gateway: Option<IpAddr>,
    },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceConfig {
    /// The role.
    pub role: Role,
    /// The host name, or `None` for the default.
    pub hostname: Option<String>,
    /// Whether pods may run on an init node.
    pub allow_workloads: bool,
    /// The network card, or `None` for the first one with a link.
    pub interface: Option<String>,
    /// DHCP or static.
    pub addressing: Addressing,
    /// Name servers (added to DHCP's).
    pub dns: Vec<IpAddr>,
    /// The persistent storage device, or `None` to look for one.
    pub data_device: Option<String>,
}

/// A configuration field is wrong: which one, where it came from, the
/// value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("appliance configuration: {field} ({source_name}) = {value:?}: {why}")]
pub struct ConfigError {
    /// The field, as the file names it (`role`, `network.address`).
    pub field: String,
    /// Where it came from: the file's path or `kernel command line`.
    pub source_name: String,
    /// The value as given.
    pub value: String,
    /// The rule it breaks.
    pub why: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    role: Option<String>,
    join_string: Option<String>,
    hostname: Option<String>,
    allow_workloads: Option<bool>,
    network: Option<Network>,
    data_device: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Network {
    interface: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    dns: Vec<String>,
}

/// One raw value and where it came from.
#[derive(Debug, Clone)]
struct Raw {
    value: String,
    from: String,
}

/// Every field as given, before validation; the command line wins.
#[derive(Debug, Default)]
struct Fields {
    role: Option<Raw>,
    join_string: Option<Raw>,
    hostname: Option<Raw>,
    allow_workloads: Option<Raw>,
    interface: Option<Raw>,
    address: Option<Raw>,
    gateway: Option<Raw>,
    dns: Option<Raw>,
    data_device: Option<Raw>,
}

const CMDLINE: &str = "kernel command line";

/// Parses and validates the file's text (`file_name` names it in errors)
/// and the kernel command line (`cmdline`, `/proc/cmdline`'s text).
/// Everything is checked from the input alone; the first error is returned.
pub fn parse(file: Option<(&str, &str)>, cmdline: &str) -> Result<ApplianceConfig, ConfigError> {
    let mut f = Fields::default();
    if let Some((name, text)) = file {
        let err = |field: &str, value: &str, why: String| ConfigError {
            field: field.into(),
            source_name: name.into(),
            value: value.into(),
            why,
        };
        let parsed: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default().to_string();
                // An unknown field is quoted in backticks; a bad value's
                // field is the key on the line the parser names.
                let quoted = msg.split('`').nth(1).map(str::to_string);
                let on_line = msg
                    .split("line ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| text.lines().nth(n.saturating_sub(1)))
                    .and_then(|l| l.split_once(':'))
                    .map(|(k, v)| {
                        (
                            k.trim().trim_start_matches("- ").to_string(),
                            v.trim().to_string(),
                        )
                    });
                match (quoted, on_line) {
                    (Some(field), _) => err(&field, "", format!("not a field of {KIND}: {first}")),
                    (None, Some((field, value))) => {
                        err(&field, &value, format!("not a valid value: {first}"))
                    }
                    (None, None) => err("(file)", "", format!("not a valid {KIND}: {first}")),
                }
            })?
        };
        if let Some(v) = &parsed.api_version {
            if v != API_VERSION {
                return Err(err("apiVersion", v, format!("must be {API_VERSION}")));
            }
        }
        if let Some(k) = &parsed.kind {
            if k != KIND {
                return Err(err("kind", k, format!("must be {KIND}")));
            }
        }
        let raw = |v: Option<String>| {
            v.map(|value| Raw {
                value,
                from: name.into(),
            })
        };
        f.role = raw(parsed.role);
        f.join_string = raw(parsed.join_string);
        f.hostname = raw(parsed.hostname);
        f.allow_workloads = raw(parsed.allow_workloads.map(|b| b.to_string()));
        f.data_device = raw(parsed.data_device);
        if let Some(n) = parsed.network {
            f.interface = raw(n.interface);
            f.address = raw(n.address);
            f.gateway = raw(n.gateway);
            if !n.dns.is_empty() {
                f.dns = raw(Some(n.dns.join(",")));
            }
        }
    }
    for word in cmdline.split_whitespace() {
        let Some(rest) = word.strip_prefix("selfnode.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let raw = Some(Raw {
            value: value.to_string(),
            from: CMDLINE.into(),
        });
        match key {
            "role" => f.role = raw,
            "join" => f.join_string = raw,
            "hostname" => f.hostname = raw,
            "allow_workloads" => f.allow_workloads = raw,
            "interface" => f.interface = raw,
            "ip" => f.address = raw,
            "gateway" => f.gateway = raw,
            "dns" => f.dns = raw,
            "data" => f.data_device = raw,
            _ => {
                return Err(ConfigError {
                    field: format!("selfnode.{key}"),
                    source_name: CMDLINE.into(),
                    value: value.into(),
                    why: "unknown parameter; known: selfnode.role, selfnode.join, selfnode.hostname, selfnode.allow_workloads, selfnode.interface, selfnode.ip, selfnode.gateway, selfnode.dns, selfnode.data".into(),
                })
            }
        }
    }
    validate(f)
}

/// A join string with its token's secret blanked: `abcdef.****@...`.
pub fn redact_join_string(s: &str) -> String {
    match s.split_once('@') {
        Some((token, rest)) => {
            let id = token.split('.').next().unwrap_or_default();
            format!("{id}.****@{rest}")
        }
        None if s.len() > 6 => format!("{}…", &s[..6]),
        None => s.to_string(),
    }
}

fn bad(field: &str, raw: &Raw, why: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        source_name: raw.from.clone(),
        value: raw.value.clone(),
        why: why.into(),
    }
}

fn validate(f: Fields) -> Result<ApplianceConfig, ConfigError> {
    let missing = |field: &str, why: &str| ConfigError {
        field: field.into(),
        source_name: "the file and the kernel command line".into(),
        value: String::new(),
        why: why.into(),
    };
    let join = |field_role: &Raw| -> Result<String, ConfigError> {
        let Some(js) = &f.join_string else {
            return Err(missing(
                "joinString",
                &format!(
                    "role {} needs the join string that 'selfnode token create' prints (selfnode.join= on the kernel command line)",
                    field_role.value
                ),
            ));
        };
        js.value
            .parse::<bootstrap::join::JoinString>()
            .map_err(|e| {
                // The message names the field and the rule, never the token:
                // the console is read by whoever stands at the machine.
                let mut err = bad("joinString", js, e.to_string());
                err.value = redact_join_string(&js.value);
                err
            })?;
        Ok(js.value.clone())
    };
    let role = match &f.role {
        None => {
            return Err(missing(
                "role",
                "set it to init, join or control-plane-join",
            ))
        }
        Some(r) => match r.value.as_str() {
            "init" => Role::Init,
            "join" => Role::Join(join(r)?),
            "control-plane-join" => Role::ControlPlaneJoin(join(r)?),
            _ => return Err(bad("role", r, "must be init, join or control-plane-join")),
        },
    };
    if let (Role::Init, Some(js)) = (&role, &f.join_string) {
        return Err(bad(
            "joinString",
            js,
            "role init makes a new cluster and takes no join string",
        ));
    }
    let hostname = match &f.hostname {
        None => None,
        Some(h) => {
            if !bootstrap::config::is_dns_label(&h.value) {
                return Err(bad(
                    "hostname",
                    h,
                    "must be a DNS label: 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit (it becomes the Node's name and its kubernetes.io/hostname label)",
                ));
            }
            Some(h.value.clone())
        }
    };
    let allow_workloads = match &f.allow_workloads {
        None => false,
        Some(a) => match a.value.as_str() {
            "true" | "1" | "yes" | "" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad("allowWorkloads", a, "must be true or false")),
        },
    };
    if allow_workloads && role != Role::Init {
        let a = f.allow_workloads.as_ref().expect("set");
        return Err(bad(
            "allowWorkloads",
            a,
            "only role init decides it (a joining node follows the cluster's setting)",
        ));
    }
    let interface = match &f.interface {
        None => None,
        Some(i) => {
            let ok = !i.value.is_empty()
                && i.value.len() < 16
                && !i.value.contains(['/', ' '])
                && i.value != "."
                && i.value != "..";
            if !ok {
                return Err(bad(
                    "network.interface",
                    i,
                    "must be a network interface name (1 to 15 characters, no '/')",
                ));
            }
            Some(i.value.clone())
        }
    };
    let addressing = match &f.address {
        None => Addressing::Dhcp,
        Some(a) if a.value == "dhcp" => Addressing::Dhcp,
        Some(a) => {
            let net: ipnet::IpNet = a.value.parse().map_err(|_| {
                bad(
                    "network.address",
                    a,
                    "must be an address with its prefix length (192.0.2.10/24), or dhcp",
                )
            })?;
            let gateway = match &f.gateway {
                None => None,
                Some(g) => {
                    let ip: IpAddr = g
                        .value
                        .parse()
                        .map_err(|_| bad("network.gateway", g, "must be an IP address"))?;
                    if !net.contains(&ip) || ip == net.addr() {
                        return Err(bad(
                            "network.gateway",
                            g,
                            format!("must be another address in {}", net.trunc()),
                        ));
                    }
                    Some(ip)
                }
            };
            if net.addr().is_loopback() || net.addr().is_unspecified() || net.addr().is_multicast()
            {
                return Err(bad(
                    "network.address",
                    a,
                    "must be a unicast address of this host, not loopback",
                ));
            }
            Addressing::Static {
                address: net.addr(),
                prefix: net.prefix_len(),
                gateway,
            }
        }
    };
    if let (Addressing::Dhcp, Some(g)) = (&addressing, &f.gateway) {
        return Err(bad(
            "network.gateway",
            g,
            "DHCP gives the gateway; set network.address too for a static one",
        ));
    }
    let mut dns = Vec::new();
    if let Some(d) = &f.dns {
        for part in d.value.split(',').filter(|s| !s.is_empty()) {
            dns.push(
                part.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| bad("network.dns", d, format!("{part:?} is not an IP address")))?,
            );
        }
    }
    let data_device = match &f.data_device {
        None => None,
        Some(d) => {
            if !d.value.starts_with("/dev/") || d.value.contains("..") || d.value.len() <= 5 {
                return Err(bad(
                    "dataDevice",
                    d,
                    "must be a block device path under /dev (e.g. /dev/sdb or /dev/nvme0n1p3)",
                ));
            }
            Some(d.value.clone())
        }
    };
    Ok(ApplianceConfig {
        role,
        hostname,
        allow_workloads,
        interface,
        addressing,
        dns,
        data_device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "appliance.yaml";

    fn file(text: &str) -> Result<ApplianceConfig, ConfigError> {
        parse(Some((FILE, text)), "")
    }

    #[test]
    fn init_with_dhcp_is_the_smallest_configuration() {
        let c = file("apiVersion: selfnode.dev/v1alpha1\nkind: ApplianceConfiguration\nrole: init\nallowWorkloads: true\n").unwrap();
        assert_eq!(c.role, Role::Init);
        assert!(c.allow_workloads);
        assert_eq!(c.addressing, Addressing::Dhcp);
        assert_eq!(c.hostname, None);
    }

    #[test]
    fn the_kernel_command_line_overrides_the_file_field_by_field() {
        let c = parse(
            Some((FILE, "role: init\nhostname: from-file\n")),
            "console=ttyS0 selfnode.hostname=from-cmdline selfnode.ip=192.0.2.10/24 selfnode.gateway=192.0.2.1 selfnode.dns=192.0.2.53,192.0.2.54",
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("from-cmdline"));
        assert_eq!(
            c.addressing,
            Addressing::Static {
                address: "192.0.2.10".parse().unwrap(),
                prefix: 24,
                gateway: Some("192.0.2.1".parse().unwrap())
            }
        );
        assert_eq!(c.dns.len(), 2);
    }

    #[test]
    fn each_bad_field_is_named_with_its_source_and_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("role: master\n", "", "role"),
            ("", "", "role"),
            ("role: join\n", "", "joinString"),
            ("role: join\njoinString: nonsense\n", "", "joinString"),
            ("role: init\nhostname: Node_1\n", "", "hostname"),
            ("role: init\nhostname: a-very-long-name-that-goes-on-and-on-beyond-the-sixty-three-char-limit\n", "", "hostname"),
            ("role: init\nnetwork:\n  address: 192.0.2.10\n", "", "network.address"),
            ("role: init\nnetwork:\n  address: 192.0.2.10/24\n  gateway: 198.51.100.1\n", "", "network.gateway"),
            ("role: init\nnetwork:\n  gateway: 192.0.2.1\n", "", "network.gateway"),
            ("role: init\nnetwork:\n  dns: [one.one]\n", "", "network.dns"),
            ("role: init\nnetwork:\n  interface: a/b\n", "", "network.interface"),
            ("role: init\ndataDevice: sdb\n", "", "dataDevice"),
            ("role: init\nallowWorkloads: maybe\n", "", "allowWorkloads"),
            ("role: init\nrole2: x\n", "", "role2"),
            ("apiVersion: v1\nrole: init\n", "", "apiVersion"),
            ("role: init\n", "selfnode.rol=init", "selfnode.rol"),
            ("role: init\n", "selfnode.ip=10.0.0.1", "network.address"),
        ];
        for (text, cmdline, field) in cases {
            let err = parse(Some((FILE, text)), cmdline).unwrap_err();
            assert_eq!(&err.field, field, "{text:?} {cmdline:?}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(field), "{msg}");
        }
        let err = parse(Some((FILE, "role: init\nhostname: Node_1\n")), "").unwrap_err();
        assert_eq!(err.source_name, FILE);
        assert_eq!(err.value, "Node_1");
        let err = parse(None, "selfnode.role=boss").unwrap_err();
        assert_eq!(err.source_name, "kernel command line");
    }
}
