//! A private network of hosts: one Linux network namespace per member, each with its own
//! address on a bridge, so that faults between members are real packet loss.
//!
//! The harness itself stays in the initial namespace and reaches every member through the
//! bridge; partitions are drop rules in the receiving member's own packet filter, so they
//! cut member-to-member traffic (one way or both) while clients can still reach a cut-off
//! member, as clients of a partitioned cluster can.
//!
//! Everything is named after the harness's process id, and dropping a [`Network`] removes
//! it. A harness killed before it could clean up leaves names whose process is gone;
//! [`sweep_stale`] removes those.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context as _};

/// Prefix of every name this module creates (namespaces, links).
const PREFIX: &str = "ch";
/// Networks created by this process so far: each gets names of its own, so that one never
/// trips over what the kernel is still tearing down of the one before.
static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Runs a command, failing with its output if it fails.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One member's host: a namespace and its address.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace's name (for `ip netns exec`).
    pub namespace: String,
    /// The address other hosts and the harness reach it at.
    pub ip: Ipv4Addr,
}

/// The hosts of one run and the bridge between them.
pub struct Network {
    bridge: String,
    hosts: Vec<Host>,
    /// The host-side ends of the hosts' links.
    links: Vec<String>,
    /// Whether a forwarding rule was added for the bridge (see [`Network::create`]).
    forward_rule: bool,
}

impl Network {
    /// Creates `n` hosts on a new bridge. Needs root, `ip` and `nft`.
    ///
    /// # Errors
    /// Any command that fails; what was created so far is removed.
    pub fn create(n: usize) -> anyhow::Result<Network> {
        sweep_stale();
        let pid = std::process::id();
        let seq = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
        // Names stay within the 15 bytes of an interface name: "ch", the pid (at most 7
        // digits), "s", the sequence (at most 2), a letter and the member index.
        let name = format!("{PREFIX}{pid}s{seq}");
        // A /24 per network, so that concurrent runs never share addresses.
        let subnet = ((pid.wrapping_mul(7) + seq) % 250) as u8;
        let mut network = Network {
            bridge: format!("{name}b"),
            hosts: Vec::new(),
            links: Vec::new(),
            forward_rule: false,
        };
        let gateway = format!("10.213.{subnet}.254/24");
        run("ip", &["link", "add", &network.bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &gateway, "dev", &network.bridge])?;
        run("ip", &["link", "set", &network.bridge, "up"])?;
        // Where bridged traffic passes the host's firewall (a container engine sets the
        // forward policy to drop), let this bridge's traffic through; removed on drop.
        if run("iptables", &["-w", "-S", "FORWARD"])
            .is_ok_and(|rules| rules.contains("-P FORWARD DROP"))
        {
            run("iptables", &forward_rule_args("-I", &network.bridge))?;
            network.forward_rule = true;
        }
        for i in 0..n {
            let host = Host {
                namespace: format!("{name}n{i}"),
                ip: Ipv4Addr::new(10, 213, subnet, i as u8 + 1),
            };
            let outside = format!("{name}v{i}");
            let ns = host.namespace.as_str();
            run("ip", &["netns", "add", ns])?;
            network.hosts.push(host.clone());
            run(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            )?;
            network.links.push(outside.clone());
            run(
                "ip",
                &["link", "set", &outside, "master", &network.bridge, "up"],
            )?;
            let address = format!("{}/24", host.ip);
            in_namespace(ns, &["ip", "addr", "add", &address, "dev", "eth0"])?;
            in_namespace(ns, &["ip", "link", "set", "eth0", "up"])?;
            in_namespace(ns, &["ip", "link", "set", "lo", "up"])?;
            in_namespace(ns, &["nft", "add", "table", "inet", "chaos"])?;
            in_namespace(
                ns,
                &[
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    "chaos",
                    "input",
                    "{ type filter hook input priority 0; policy accept; }",
                ],
            )?;
        }
        Ok(network)
    }

    /// The hosts, by member index.
    #[must_use]
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Stops `to` from receiving anything `from` sends (one way).
    ///
    /// # Errors
    /// If the rule cannot be added.
    pub fn cut(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let source = self.hosts[from].ip.to_string();
        in_namespace(
            &self.hosts[to].namespace,
            &[
                "nft", "add", "rule", "inet", "chaos", "input", "ip", "saddr", &source, "drop",
            ],
        )
    }

    /// Cuts every link between a host of `a` and a host of `b`, both ways.
    ///
    /// # Errors
    /// If a rule cannot be added.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> anyhow::Result<()> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Restores every link.
    ///
    /// # Errors
    /// If a host's rules cannot be flushed.
    pub fn heal(&self) -> anyhow::Result<()> {
        for host in &self.hosts {
            in_namespace(
                &host.namespace,
                &["nft", "flush", "chain", "inet", "chaos", "input"],
            )?;
        }
        Ok(())
    }
}

/// iptables arguments that insert (`-I`) or delete (`-D`) the rule accepting traffic
/// forwarded from `bridge` to itself.
fn forward_rule_args<'a>(action: &'a str, bridge: &'a str) -> [&'a str; 9] {
    [
        "-w", action, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
    ]
}

fn in_namespace(namespace: &str, command: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["netns", "exec", namespace];
    args.extend_from_slice(command);
    run("ip", &args).map(drop)
}

impl Drop for Network {
    fn drop(&mut self) {
        // Links first, synchronously: a deleted namespace's devices go away only when the
        // kernel gets round to it.
        for link in &self.links {
            let _ = run("ip", &["link", "delete", link]);
        }
        for host in &self.hosts {
            let _ = run("ip", &["netns", "delete", &host.namespace]);
        }
        let _ = run("ip", &["link", "delete", &self.bridge]);
        if self.forward_rule {
            let _ = run("iptables", &forward_rule_args("-D", &self.bridge));
        }
    }
}

/// Removes namespaces and bridges left by harness processes that no longer exist.
pub fn sweep_stale() {
    let alive = |name: &str| -> bool {
        let digits: String = name
            .trim_start_matches(PREFIX)
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.is_empty() || std::path::Path::new(&format!("/proc/{digits}")).exists()
    };
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(PREFIX) && !alive(name) {
                let _ = run("ip", &["netns", "delete", name]);
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show", "type", "bridge"]) {
        for line in links.lines() {
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(PREFIX) && !alive(name) {
                let _ = run("ip", &["link", "delete", name]);
                let _ = run("iptables", &forward_rule_args("-D", name));
            }
        }
    }
}
