//! Ground floor: what other commands may ask of, and hand to, a running
//! agent. The agent's front door; it imports nothing of the agent's
//! runtime.
//!
//! - [`RunningAgent`]: is an agent running (its lock), its pid, and a
//!   reload (SIGHUP: services and configuration are read again).
//! - [`read_status`] and [`component_ready`]: what it publishes in
//!   `run/selfnode/agent.json`, by [`Component`] name.
//! - [`ApiBackends`]: the balancer's list of API servers
//!   (`var/lib/selfnode/apiservers`), rendered and parsed in one place for
//!   every writer (init, a restore, join, the agent).
//! - [`NodeIdentity`]: the node's name and address, which `init` or `join`
//!   write and the agent's kubelet and tasks read.
//! - [`HostBundle`]: the bundle this host runs once an upgrade chose it.

use std::net::SocketAddr;
use std::path::Path;

pub mod lock;

use crate::fsutil::write_atomic;
use crate::paths::HostPaths;
use crate::status::{AgentStatus, ComponentState};

/// The agent's own components in `selfnode status` (the temporary control
/// plane's services are named by their service files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Containerd,
    /// The bundle's images, imported into containerd.
    Images,
    Kubelet,
    /// The node-local API load balancer.
    ApiLb,
    /// The checkpointer: which control-plane copy is kept, which serves.
    Checkpoint,
    /// The member controller: this node's etcd member, by its label.
    EtcdMember,
    /// Certificate renewal.
    Certificates,
    /// The balancer's API servers, learned from the cluster.
    ApiServers,
    /// Scheduled etcd snapshots.
    Snapshots,
    /// etcd's upkeep: size, alarms, defragmentation, NOSPACE.
    EtcdUpkeep,
    /// The approver of new nodes' client certificates (control-plane hosts).
    Approver,
    /// The promoter of control-plane nodes (control-plane hosts).
    Promoter,
    /// This host's address, followed when it changes.
    Address,
    /// The bundle an upgrade offers, fetched onto this host.
    Bundles,
    /// An upgrade of several hosts, followed when this host's turn comes.
    Upgrade,
}

impl Component {
    /// The name in `selfnode status` and `agent.json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Component::Containerd => "containerd",
            Component::Images => "images",
            Component::Kubelet => "kubelet",
            Component::ApiLb => "api-lb",
            Component::Checkpoint => "checkpoint",
            Component::EtcdMember => "etcd-member",
            Component::Certificates => "certificates",
            Component::ApiServers => "apiservers",
            Component::Snapshots => "etcd-snapshots",
            Component::EtcdUpkeep => "etcd-upkeep",
            Component::Approver => "approver",
            Component::Promoter => "promoter",
            Component::Address => "address",
            Component::Bundles => "bundles",
            Component::Upgrade => "upgrade",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What asking the agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the selfnode agent is not running on this host; start it first ('selfnode agent', or 'bash scripts/up.sh')")]
    NotRunning,
    #[error("the selfnode agent holds its lock but has not written its pid to {lock} yet; run this again in a moment")]
    PidUnknown { lock: std::path::PathBuf },
    #[error("cannot signal the selfnode agent (pid {pid})")]
    Signal { pid: u32, source: nix::Error },
    #[error("cannot read the agent's status {path}")]
    ReadStatus {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid agent status")]
    ParseStatus {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("{what} is {state}{}", last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotReady {
        what: String,
        state: &'static str,
        last_error: Option<String>,
    },
}

/// A running agent, found by its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningAgent {
    /// `None` while the agent has taken its lock but not written its pid.
    pub pid: Option<u32>,
    lock: std::path::PathBuf,
}

impl RunningAgent {
    /// The agent on this host, if one runs (a probe of its lock).
    pub fn find(paths: &HostPaths) -> Option<RunningAgent> {
        let lock = paths.agent_lock();
        lock::running_agent(&lock).map(|pid| RunningAgent { pid, lock })
    }

    /// The agent on this host, or why a command that needs one cannot go on.
    pub fn require(paths: &HostPaths) -> Result<RunningAgent, ControlError> {
        Self::find(paths).ok_or(ControlError::NotRunning)
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), ControlError> {
        let pid = self
            .pid
            .or_else(|| lock::running_agent(&self.lock).flatten())
            .ok_or_else(|| ControlError::PidUnknown {
                lock: self.lock.clone(),
            })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .map_err(|source| ControlError::Signal { pid, source })
    }

    /// Asks the agent to re-read its services and configuration (SIGHUP).
    pub fn reload(&self) -> Result<(), ControlError> {
        self.signal(nix::sys::signal::Signal::SIGHUP)
    }

    /// Asks the agent to stop its kubelet and containerd and start again
    /// in place, on the bundle recorded now (SIGUSR2; containers keep
    /// running, the pid stays).
    pub fn restart(&self) -> Result<(), ControlError> {
        self.signal(nix::sys::signal::Signal::SIGUSR2)
    }
}

impl std::fmt::Display for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid unknown"),
        }
    }
}

/// The agent's published status (`run/selfnode/agent.json`); `Ok(None)`
/// when it has published none.
pub fn read_status(paths: &HostPaths) -> Result<Option<AgentStatus>, ControlError> {
    let path = paths.agent_status();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ControlError::ReadStatus { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ControlError::ParseStatus { path, source })
}

/// The API load balancer port of this host's agent, from the status it
/// publishes; the agent's default when there is none yet (a sequence
/// refuses to run without an agent anyway, after validating its input).
/// The agent itself knows its port from its options.
pub fn api_lb_port(paths: &HostPaths) -> u16 {
    read_status(paths)
        .ok()
        .flatten()
        .and_then(|s| s.api_lb_port)
        .unwrap_or(bootstrap::plane::DEFAULT_API_LB_PORT)
}

/// Whether the agent reports its component `name` Ready (`false` while it
/// does not list it); [`ControlError::NotReady`] says `what` is in which
/// state, with the component's last error, while it is listed and not Ready.
pub fn component_ready(paths: &HostPaths, name: &str, what: &str) -> Result<bool, ControlError> {
    let Some(st) = read_status(paths)? else {
        return Ok(false);
    };
    match st.components.iter().find(|c| c.name == name) {
        Some(c) if c.state == ComponentState::Ready => Ok(true),
        Some(c) => Err(ControlError::NotReady {
            what: what.to_string(),
            state: c.state.as_str(),
            last_error: c.last_error.clone(),
        }),
        None => Ok(false),
    }
}

/// The node-local balancer's address for a node at `node_ip`: the loopback
/// of the same family, at the agent's port.
pub fn balancer_addr(node_ip: std::net::IpAddr, port: u16) -> SocketAddr {
    let loopback: std::net::IpAddr = if node_ip.is_ipv6() {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    SocketAddr::new(loopback, port)
}

/// Why an API server stays in the balancer's list however long it is not
/// seen in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Keep {
    /// An endpoint of the join string this host joined with.
    Join,
    /// This control-plane host's own API server.
    Own,
}

impl Keep {
    fn as_str(self) -> &'static str {
        match self {
            Keep::Join => "join",
            Keep::Own => "own",
        }
    }
}

/// What the list knows of one API server besides its address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendMark {
    /// Unix seconds it was last seen in the `kubernetes` EndpointSlice.
    pub seen: Option<u64>,
    pub keep: Option<Keep>,
}

/// The node-local balancer's API servers: the file's one renderer and one
/// parser. The file is one `ip:port` a line, optionally followed by
/// `seen=<unix seconds>` and `keep=join|own` (how the agent merges what it
/// learns, `agent::tasks::apiservers`), `#` comments, blank lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiBackends {
    pub addrs: Vec<SocketAddr>,
    /// Marks of some of `addrs`.
    pub marks: std::collections::BTreeMap<SocketAddr, BackendMark>,
}

/// A line of the balancer's list that is not `ip:port` (with its marks).
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {text:?} is not ip:port [seen=<unix seconds>] [keep=join|own]")]
pub struct BackendsParseError {
    pub line: usize,
    pub text: String,
}

impl ApiBackends {
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        ApiBackends {
            addrs: addrs.into_iter().collect(),
            marks: Default::default(),
        }
    }

    /// The same list with every address kept for `why`.
    pub fn kept(mut self, why: Keep) -> Self {
        for a in &self.addrs {
            self.marks.entry(*a).or_default().keep = Some(why);
        }
        self
    }

    pub fn parse(text: &str) -> Result<Self, BackendsParseError> {
        let mut list = ApiBackends::new([]);
        for (i, l) in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
        {
            let err = || BackendsParseError {
                line: i + 1,
                text: l.to_string(),
            };
            let mut words = l.split_whitespace();
            let addr: SocketAddr = words.next().unwrap_or("").parse().map_err(|_| err())?;
            let mut mark = BackendMark::default();
            for w in words {
                match w.split_once('=') {
                    Some(("seen", v)) => mark.seen = Some(v.parse().map_err(|_| err())?),
                    Some(("keep", "join")) => mark.keep = Some(Keep::Join),
                    Some(("keep", "own")) => mark.keep = Some(Keep::Own),
                    _ => return Err(err()),
                }
            }
            list.addrs.push(addr);
            if mark != BackendMark::default() {
                list.marks.insert(addr, mark);
            }
        }
        Ok(list)
    }

    /// The file's text; `writer` says who wrote it (a comment line).
    pub fn render(&self, writer: &str) -> String {
        let mut s = format!("# kube-apiservers for the node-local load balancer; {writer}\n");
        for a in &self.addrs {
            s.push_str(&a.to_string());
            if let Some(m) = self.marks.get(a) {
                if let Some(seen) = m.seen {
                    s.push_str(&format!(" seen={seen}"));
                }
                if let Some(keep) = m.keep {
                    s.push_str(&format!(" keep={}", keep.as_str()));
                }
            }
            s.push('\n');
        }
        s
    }

    /// The list on this host; `None` when there is no readable list.
    pub fn read(paths: &HostPaths) -> Option<ApiBackends> {
        let text = std::fs::read_to_string(paths.apiservers_file()).ok()?;
        ApiBackends::parse(&text).ok()
    }

    /// Writes the list (atomically; the agent re-reads it within seconds).
    /// Returns whether the file changed.
    pub fn write(&self, paths: &HostPaths, writer: &str) -> std::io::Result<bool> {
        let w = write_atomic(
            &paths.apiservers_file(),
            self.render(writer).as_bytes(),
            0o644,
        )?;
        Ok(w != crate::fsutil::Written::Unchanged)
    }
}

/// The bundle this host runs (`var/lib/selfnode/bundle`): written by
/// `selfnode upgrade` (and its rollback) before it asks the agent to start
/// again on it, read by the agent at its start and by everything that
/// renders this host's control plane. Without the record, the agent's
/// `--bundle` and the cluster's recorded one stand.
pub struct HostBundle;

impl HostBundle {
    /// The recorded bundle directory, if there is a record.
    pub fn read(paths: &HostPaths) -> Option<std::path::PathBuf> {
        let text = std::fs::read_to_string(paths.host_bundle_file()).ok()?;
        let dir = text.trim();
        (!dir.is_empty()).then(|| std::path::PathBuf::from(dir))
    }

    /// Records `dir` (absolute) as the bundle this host runs; whether the
    /// record changed.
    pub fn write(paths: &HostPaths, dir: &Path) -> std::io::Result<bool> {
        let dir = std::path::absolute(dir)?;
        let w = write_atomic(
            &paths.host_bundle_file(),
            format!("{}\n", dir.display()).as_bytes(),
            0o644,
        )?;
        Ok(w != crate::fsutil::Written::Unchanged)
    }
}

/// The node's name and address in its cluster, written by `init`/`join`
/// before the kubelet first registers (`var/lib/selfnode/node.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    pub node_name: String,
    pub node_ip: std::net::IpAddr,
    /// The cluster DNS Service IP (kube-dns), for the kubelet's clusterDNS.
    #[serde(default)]
    pub cluster_dns: Option<std::net::IpAddr>,
    /// The cluster's DNS domain, for the kubelet's clusterDomain (pods'
    /// search paths). Files written before it existed mean the default.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
}

fn default_cluster_domain() -> String {
    bootstrap::config::DEFAULT_CLUSTER_DOMAIN.to_string()
}

/// `node.json` cannot be read or is not a node identity.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdentityError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid node identity")]
    Parse {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
}

impl NodeIdentity {
    /// The identity at `path`; `Ok(None)` when there is none yet.
    pub fn read(path: &Path) -> Result<Option<NodeIdentity>, NodeIdentityError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                NodeIdentityError::Parse {
                    path: path.to_path_buf(),
                    source,
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NodeIdentityError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_renders_and_parses_back() {
        let list = ApiBackends::new([
            "10.0.0.1:6443".parse().unwrap(),
            "[fd00::1]:6443".parse().unwrap(),
        ]);
        let text = list.render("written by selfnode init");
        assert!(text.starts_with(
            "# kube-apiservers for the node-local load balancer; written by selfnode init\n"
        ));
        assert_eq!(ApiBackends::parse(&text).unwrap(), list);
        let with_blanks = "# c\n\n 10.0.0.1:6443  # first\n";
        assert_eq!(
            ApiBackends::parse(with_blanks).unwrap().addrs,
            vec!["10.0.0.1:6443".parse::<SocketAddr>().unwrap()]
        );
        let err = ApiBackends::parse("10.0.0.1:6443\nnope\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: \"nope\" is not ip:port [seen=<unix seconds>] [keep=join|own]"
        );
        assert!(ApiBackends::parse("10.0.0.1:6443 seen=soon\n").is_err());
        assert!(ApiBackends::parse("10.0.0.1:6443 keep=always\n").is_err());
    }

    #[test]
    fn marks_render_and_parse_back() {
        let a: SocketAddr = "10.0.0.1:6443".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:6443".parse().unwrap();
        let mut list = ApiBackends::new([a, b]).kept(Keep::Join);
        list.marks.get_mut(&b).unwrap().seen = Some(1_765_000_000);
        let text = list.render("w");
        assert!(text.contains("10.0.0.1:6443 keep=join\n"), "{text}");
        assert!(
            text.contains("10.0.0.2:6443 seen=1765000000 keep=join\n"),
            "{text}"
        );
        assert_eq!(ApiBackends::parse(&text).unwrap(), list);
    }

    #[test]
    fn component_names_are_what_status_shows() {
        assert_eq!(Component::ApiLb.as_str(), "api-lb");
        assert_eq!(Component::EtcdMember.to_string(), "etcd-member");
    }
}
