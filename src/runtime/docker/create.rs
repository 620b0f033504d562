//! The create body for a resolved spec: every `ContainerSpec` field has its
//! place in Docker's API here and nowhere else.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, PortBinding as DockerPortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};

use crate::desired::spec::ContainerSpec;

/// The full create body for a resolved spec. Every `ContainerSpec` field has
/// a place here; Docker's restart policy is always `no` because berth itself
/// restarts (with backoff) and must see every exit.
pub(super) fn create_body(
    spec: &ContainerSpec,
    labels: &BTreeMap<String, String>,
) -> ContainerCreateBody {
    let mut exposed = BTreeSet::new();
    let mut bindings: HashMap<String, Option<Vec<DockerPortBinding>>> = HashMap::new();
    for port in &spec.ports {
        for proto in ["tcp", "udp"] {
            let key = format!("{}/{proto}", port.container_port);
            exposed.insert(key.clone());
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(DockerPortBinding {
                    host_ip: None,
                    host_port: Some(port.host_port.to_string()),
                });
        }
    }
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let host_config = HostConfig {
        network_mode: Some(spec.network_mode.clone()),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        dns: non_empty(&spec.dns_servers),
        dns_search: non_empty(&spec.dns_search_domains),
        privileged: Some(spec.privileged),
        ipc_mode: spec.ipc_mode.clone(),
        pid_mode: spec.pid_mode.clone(),
        uts_mode: spec.uts_mode.clone(),
        binds: non_empty(&spec.volumes),
        cpu_shares: spec.cpu_shares,
        memory: spec.memory_bytes,
        // memory + swap = memory: a hard limit with no swap, as Nomad does.
        memory_swap: spec.memory_bytes,
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    let ns = |v: Option<u64>| v.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(
            spec.env
                .iter()
                .map(|(k, v)| format!("{k}={}", v.value))
                .collect(),
        ),
        labels: Some(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        hostname: spec.hostname.clone(),
        exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().collect()),
        healthcheck: spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: ns(h.interval_ns),
            timeout: ns(h.timeout_ns),
            retries: h.retries.map(i64::from),
            start_period: ns(h.start_period_ns),
            start_interval: None,
        }),
        stop_timeout: spec.stop_timeout_secs,
        host_config: Some(host_config),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::spec::{EnvEntry, HealthcheckSpec, PortBinding};
    #[test]
    fn every_spec_field_reaches_the_create_body() {
        let mut spec = ContainerSpec::for_image("berth-fixture:1");
        spec.cmd = Some(vec!["sleep".into(), "forever".into()]);
        spec.entrypoint = Some(vec!["/fixture".into()]);
        spec.env.insert(
            "A".into(),
            EnvEntry {
                value: "1".into(),
                secret: false,
            },
        );
        spec.ports.push(PortBinding {
            label: "http".into(),
            host_port: 20001,
            container_port: 80,
        });
        spec.hostname = Some("web1".into());
        spec.dns_servers = vec!["1.1.1.1".into()];
        spec.dns_search_domains = vec!["lan".into()];
        spec.volumes = vec!["/srv:/srv:ro".into()];
        spec.cpu_shares = Some(250);
        spec.memory_bytes = Some(64 << 20);
        spec.ipc_mode = Some("host".into());
        spec.healthcheck = Some(HealthcheckSpec {
            test: vec!["CMD".into(), "/fixture".into(), "probe".into(), "80".into()],
            interval_ns: Some(1_000_000_000),
            timeout_ns: Some(500_000_000),
            retries: Some(3),
            start_period_ns: None,
        });
        spec.stop_timeout_secs = Some(5);
        let labels = BTreeMap::from([("io.berth.namespace".to_string(), "t".to_string())]);
        let body = create_body(&spec, &labels);
        assert_eq!(body.env.unwrap(), vec!["A=1".to_string()]);
        assert_eq!(
            body.exposed_ports.unwrap(),
            vec!["80/tcp".to_string(), "80/udp".to_string()]
        );
        let hc = body.host_config.unwrap();
        let bindings = hc.port_bindings.unwrap();
        for key in ["80/tcp", "80/udp"] {
            let b = bindings[key].as_ref().unwrap();
            assert_eq!(b[0].host_port.as_deref(), Some("20001"));
        }
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.memory_swap, Some(64 << 20));
        assert_eq!(hc.cpu_shares, Some(250));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
        assert_eq!(hc.ipc_mode.as_deref(), Some("host"));
        assert_eq!(hc.binds.unwrap(), vec!["/srv:/srv:ro".to_string()]);
        assert_eq!(hc.dns.unwrap(), vec!["1.1.1.1".to_string()]);
        assert_eq!(hc.dns_search.unwrap(), vec!["lan".to_string()]);
        let health = body.healthcheck.unwrap();
        assert_eq!(health.interval, Some(1_000_000_000));
        assert_eq!(health.retries, Some(3));
        assert_eq!(body.stop_timeout, Some(5));
        assert_eq!(body.hostname.as_deref(), Some("web1"));
        assert_eq!(body.labels.unwrap()["io.berth.namespace"], "t");
    }
}
