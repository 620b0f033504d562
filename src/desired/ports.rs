//! Host port allocation for port labels.
//!
//! A dynamic port, once given to a (task, index, label), stays with it across
//! replacements and berth restarts while it is free: berth remembers it in
//! memory and, after a restart, reads it back from the container's
//! `io.berth.port.<label>` label. New ports come from the agent's range,
//! skipping ports any task already holds and ports something else has bound.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::PortRange;

/// (task, index, label)
pub type PortKey = (String, u32, String);

/// What one task instance's port label asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    pub key: PortKey,
    /// The manifest file, for error messages.
    pub file: String,
    pub fixed: Option<u16>,
}

/// Remembers dynamic allocations between passes.
#[derive(Debug, Default, Clone)]
pub struct PortAllocator {
    assigned: BTreeMap<PortKey, u16>,
}

/// A task whose ports cannot be allocated this pass (it is held, not removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortError {
    pub task: String,
    pub file: String,
    pub message: String,
}

/// The ports recorded on our containers (`io.berth.port.<label>`), by the
/// (task, index, label) that holds them, from each container's labels.
pub fn recorded_ports<'a>(
    containers: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<PortKey, u16> {
    let mut recorded = BTreeMap::new();
    for labels in containers {
        let task = labels.get(crate::names::labels::TASK);
        let index = labels
            .get(crate::names::labels::INDEX)
            .and_then(|i| i.parse::<u32>().ok());
        let (Some(task), Some(index)) = (task, index) else {
            continue;
        };
        for (name, value) in labels {
            if let Some(label) = name.strip_prefix(crate::names::labels::PORT_PREFIX) {
                if let Ok(port) = value.parse() {
                    recorded.insert((task.clone(), index, label.to_string()), port);
                }
            }
        }
    }
    recorded
}

/// Is `port` free on the host for both tcp and udp (the protocols berth publishes)?
pub fn host_port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

impl PortAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Give `key` another host port from then on (a start-first update,
    /// whose new container runs beside the old one).
    pub fn reassign(&mut self, key: PortKey, port: u16) {
        self.assigned.insert(key, port);
    }

    /// The lowest port of `range` that is neither in `taken` nor bound by
    /// anything on the host.
    pub fn fresh_port(
        range: PortRange,
        taken: &BTreeSet<u16>,
        is_free: impl Fn(u16) -> bool,
    ) -> Option<u16> {
        (range.min..=range.max).find(|p| !taken.contains(p) && is_free(*p))
    }

    /// Give every request a host port. Deterministic for the same inputs:
    /// requests are handled in key order, and new ports are the lowest free.
    pub fn allocate(
        &mut self,
        requests: &[PortRequest],
        recorded: &BTreeMap<PortKey, u16>,
        range: PortRange,
        is_free: impl Fn(u16) -> bool,
    ) -> (BTreeMap<PortKey, u16>, Vec<PortError>) {
        let mut errors = Vec::new();
        let mut out: BTreeMap<PortKey, u16> = BTreeMap::new();
        let mut failed_tasks: BTreeSet<String> = BTreeSet::new();

        // Static ports first: they are not negotiable, and two claims on one
        // port are an error for both tasks.
        let mut fixed_owner: BTreeMap<u16, &PortRequest> = BTreeMap::new();
        for req in requests {
            let Some(port) = req.fixed else { continue };
            if let Some(other) = fixed_owner.get(&port) {
                let msg = |a: &PortRequest, b: &PortRequest| {
                    if a.key.0 == b.key.0 {
                        format!(
                            "static port {port} (label {}) cannot serve {} instances of task {}: use a dynamic port or count: 1",
                            a.key.2, "several", a.key.0
                        )
                    } else {
                        format!(
                            "static port {port} is claimed by task {} ({}) and task {} ({}); each host port can be used by one task",
                            a.key.0, a.file, b.key.0, b.file
                        )
                    }
                };
                for (a, b) in [(req, *other), (*other, req)] {
                    if failed_tasks.insert(a.key.0.clone()) {
                        errors.push(PortError {
                            task: a.key.0.clone(),
                            file: a.file.clone(),
                            message: msg(a, b),
                        });
                    }
                }
                continue;
            }
            fixed_owner.insert(port, req);
            out.insert(req.key.clone(), port);
        }

        let wanted: BTreeSet<&PortKey> = requests.iter().map(|r| &r.key).collect();
        let mut taken: BTreeSet<u16> = fixed_owner.keys().copied().collect();
        // Ports still held by containers that are going away stay taken this
        // pass, so a new task never collides with one being removed.
        for (key, port) in recorded {
            if !wanted.contains(key) {
                taken.insert(*port);
            }
        }

        // Keep what each dynamic request had, if nobody else claims it now.
        let mut pending = Vec::new();
        for req in requests.iter().filter(|r| r.fixed.is_none()) {
            let previous = self
                .assigned
                .get(&req.key)
                .or_else(|| recorded.get(&req.key))
                .copied();
            match previous {
                Some(port) if !taken.contains(&port) => {
                    taken.insert(port);
                    out.insert(req.key.clone(), port);
                }
                _ => pending.push(req),
            }
        }

        // New ports: the lowest free one in range.
        let mut cursor = range.min;
        for req in pending {
            let found = (cursor..=range.max).find(|p| !taken.contains(p) && is_free(*p));
            match found {
                Some(port) => {
                    taken.insert(port);
                    out.insert(req.key.clone(), port);
                    cursor = port.saturating_add(1);
                }
                None => {
                    if failed_tasks.insert(req.key.0.clone()) {
                        errors.push(PortError {
                            task: req.key.0.clone(),
                            file: req.file.clone(),
                            message: format!(
                                "no free host port left in the agent's range {}-{} for port label {}",
                                range.min, range.max, req.key.2
                            ),
                        });
                    }
                }
            }
        }

        out.retain(|key, _| !failed_tasks.contains(&key.0));
        self.assigned = out
            .iter()
            .filter(|(k, _)| requests.iter().any(|r| &r.key == *k && r.fixed.is_none()))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        (out, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::labels;
    use crate::runtime::{ContainerState, Health, ObservedContainer};

    fn req(task: &str, index: u32, label: &str, fixed: Option<u16>) -> PortRequest {
        PortRequest {
            key: (task.into(), index, label.into()),
            file: format!("{task}.yaml"),
            fixed,
        }
    }

    fn range() -> PortRange {
        PortRange {
            min: 20000,
            max: 20010,
        }
    }

    fn container_with_port(task: &str, index: u32, label: &str, port: u16) -> ObservedContainer {
        let mut l = BTreeMap::new();
        l.insert(labels::NAMESPACE.into(), "berth".into());
        l.insert(labels::TASK.into(), task.into());
        l.insert(labels::INDEX.into(), index.to_string());
        l.insert(format!("{}{label}", labels::PORT_PREFIX), port.to_string());
        ObservedContainer {
            id: "x".into(),
            name: format!("berth-{task}-{index}"),
            image: "i".into(),
            labels: l,
            state: ContainerState::Running,
            health: Health::None,
            exit_code: None,
            started_at: None,
            finished_at: None,
            host: Default::default(),
        }
    }

    #[test]
    fn two_tasks_never_share_a_dynamic_port_and_bound_ports_are_skipped() {
        let mut alloc = PortAllocator::new();
        let reqs = [req("a", 0, "http", None), req("b", 0, "http", None)];
        let (ports, errors) = alloc.allocate(&reqs, &BTreeMap::new(), range(), |p| p != 20000);
        assert!(errors.is_empty());
        assert_eq!(ports[&reqs[0].key], 20001);
        assert_eq!(ports[&reqs[1].key], 20002);
    }

    #[test]
    fn a_port_read_back_from_a_label_is_kept_after_a_restart_of_berth() {
        let mut alloc = PortAllocator::new();
        let observed = [container_with_port("a", 0, "http", 20007)];
        let reqs = [req("a", 0, "http", None)];
        // The host probe says 20007 is bound — by our own container; kept anyway.
        let (ports, _) = alloc.allocate(
            &reqs,
            &recorded_ports(observed.iter().map(|c| &c.labels)),
            range(),
            |p| p != 20007,
        );
        assert_eq!(ports[&reqs[0].key], 20007);
    }

    #[test]
    fn a_remembered_port_is_kept_even_when_its_container_is_gone() {
        let mut alloc = PortAllocator::new();
        let reqs = [req("a", 0, "http", None)];
        let (first, _) = alloc.allocate(&reqs, &BTreeMap::new(), range(), |p| p > 20003);
        let (second, _) = alloc.allocate(&reqs, &BTreeMap::new(), range(), |_| true);
        assert_eq!(first, second);
    }

    #[test]
    fn a_static_port_claimed_by_two_tasks_is_an_error_naming_both_files() {
        let mut alloc = PortAllocator::new();
        let reqs = [
            req("a", 0, "web", Some(8080)),
            req("b", 0, "web", Some(8080)),
        ];
        let (ports, errors) = alloc.allocate(&reqs, &BTreeMap::new(), range(), |_| true);
        assert!(ports.is_empty());
        assert_eq!(errors.len(), 2);
        for e in &errors {
            assert!(
                e.message.contains("a.yaml") && e.message.contains("b.yaml"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn an_exhausted_range_fails_only_the_task_that_does_not_fit() {
        let mut alloc = PortAllocator::new();
        let small = PortRange {
            min: 20000,
            max: 20000,
        };
        let reqs = [req("a", 0, "http", None), req("b", 0, "http", None)];
        let (ports, errors) = alloc.allocate(&reqs, &BTreeMap::new(), small, |_| true);
        assert_eq!(ports.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].task, "b");
    }
}
