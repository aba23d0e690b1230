//! Unit tests of the module above.

mod node_reason_tests {
    use super::super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};

    #[test]
    fn a_node_under_disk_pressure_says_so() {
        let cond = |t: &str, st: &str, reason: &str, msg: &str| NodeCondition {
            type_: t.into(),
            status: st.into(),
            reason: Some(reason.into()),
            message: Some(msg.into()),
            ..Default::default()
        };
        let n = Node {
            status: Some(NodeStatus {
                conditions: Some(vec![
                    cond(
                        "MemoryPressure",
                        "False",
                        "KubeletHasSufficientMemory",
                        "ok",
                    ),
                    cond(
                        "DiskPressure",
                        "True",
                        "KubeletHasDiskPressure",
                        "kubelet has disk pressure",
                    ),
                    cond(
                        "Ready",
                        "False",
                        "KubeletNotReady",
                        "container runtime network not ready",
                    ),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let why = node_not_ready_reason(&n);
        assert!(
            why.contains("DiskPressure=True KubeletHasDiskPressure"),
            "{why}"
        );
        assert!(why.contains("container runtime network not ready"), "{why}");
        assert!(!why.contains("MemoryPressure"), "{why}");
        assert_eq!(
            node_not_ready_reason(&Node::default()),
            "the Node has no Ready condition yet"
        );
    }
}

mod pod_tests {
    use super::super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a valid Pod")
    }

    fn ready_pod(name: &str) -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": name},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
    }

    #[test]
    fn a_node_is_ready_only_with_a_true_ready_condition() {
        let node = |conds: serde_json::Value| -> Node {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "n"}, "status": {"conditions": conds}}),
            )
            .unwrap()
        };
        assert!(node_ready(&node(serde_json::json!([
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": "True"}
        ]))));
        assert!(!node_ready(&node(
            serde_json::json!([{"type": "Ready", "status": "False"}])
        )));
        assert!(!node_ready(&node(
            serde_json::json!([{"type": "Ready", "status": "Unknown"}])
        )));
        assert!(!node_ready(
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "n"}})).unwrap()
        ));
    }

    #[test]
    fn too_few_pods_is_not_ready_and_says_how_many() {
        let err = all_ready(&[ready_pod("a")], 4, "tier=control-plane", None, |_| {
            String::new()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "1 of 4 pods (tier=control-plane) exist");
        assert!(
            all_ready(&[ready_pod("a"), ready_pod("b")], 2, "x", None, |_| {
                String::new()
            })
            .unwrap()
        );
    }

    #[test]
    fn a_crash_looping_container_is_named_with_its_last_exit() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "kube-apiserver-cp1"},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "kube-apiserver", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "bad flag --foo\n"}}
                }]
            }
        }));
        let err = all_ready(&[p, ready_pod("b")], 2, "x", None, |_| String::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not Ready yet: kube-apiserver-cp1 (kube-apiserver: CrashLoopBackOff: back-off 40s, \
             kube-apiserver: restarted 3 times, last exit 1: bad flag --foo)"
        );
    }

    #[test]
    fn a_running_container_failing_readiness_and_an_unscheduled_pod_say_so() {
        let running = pod(serde_json::json!({
            "metadata": {"name": "coredns-1"},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "coredns", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"running": {}}
            }]}
        }));
        assert_eq!(
            pod_not_ready_reason(&running),
            "coredns: running, readiness probe not passing"
        );
        let pending = pod(serde_json::json!({
            "metadata": {"name": "coredns-2"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False",
                "message": "0/1 nodes are available: 1 node(s) had untolerated taint"
            }]}
        }));
        assert_eq!(
            pod_not_ready_reason(&pending),
            "not scheduled: 0/1 nodes are available: 1 node(s) had untolerated taint"
        );
    }

    #[test]
    fn a_pod_whose_status_says_nothing_gets_its_newest_warning() {
        let creating = pod(serde_json::json!({
            "metadata": {"name": "coredns-3"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "coredns", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}
            }]}
        }));
        assert_eq!(pod_not_ready_reason(&creating), "");
        let events: Vec<Event> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "e1"}, "involvedObject": {}, "reason": "FailedCreatePodSandBox",
             "message": "old", "lastTimestamp": "2026-11-30T10:00:00Z"},
            {"metadata": {"name": "e2"}, "involvedObject": {}, "reason": "FailedCreatePodSandBox",
             "message": " bridge has 10.244.0.1/24 \n", "lastTimestamp": "2026-11-30T10:00:05Z"}
        ]))
        .unwrap();
        let w = newest_warning(&events);
        assert_eq!(w, "FailedCreatePodSandBox: bridge has 10.244.0.1/24");
        let err = all_ready(&[creating], 1, "k8s-app=kube-dns", None, |name| {
            assert_eq!(name, "coredns-3");
            w.clone()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "not Ready yet: coredns-3 (FailedCreatePodSandBox: bridge has 10.244.0.1/24)"
        );
        assert_eq!(newest_warning(&[]), "");
    }

    #[test]
    fn a_ready_status_naming_containers_that_do_not_run_here_is_not_believed() {
        let running = |id: &str| RunningContainer {
            id: id.to_string(),
            container: "kube-apiserver".to_string(),
            created: None,
        };
        let restored = pod(serde_json::json!({
            "metadata": {"name": "kube-apiserver-x", "uid": "u1"},
            "spec": {"nodeName": "cp1", "containers": []},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "kube-apiserver", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": "containerd://0123456789abcdef0123",
                    "state": {"running": {}}
                }]
            }
        }));
        let check = |node: &str, here: &[RunningContainer]| {
            all_ready(
                std::slice::from_ref(&restored),
                1,
                "x",
                Some((node, here)),
                |_| String::new(),
            )
        };
        // The snapshot's status, after a reset: its container is gone.
        let new = [running("fedcba9876543210")];
        assert_eq!(
            check("cp1", &new).unwrap_err().to_string(),
            "not Ready yet: kube-apiserver-x (its status names container kube-apiserver \
             0123456789abc, which does not run on this node (a status from before the \
             kubelet's next report))"
        );
        // The kubelet's own report: the container runs.
        let same = [running("0123456789abcdef0123")];
        assert!(check("cp1", &same).unwrap());
        // A pod on another node is not checked against this node's containers.
        assert!(check("cp2", &new).unwrap());
        // A Ready status without container statuses is not a kubelet's report.
        let bare = ready_pod("b");
        assert_eq!(
            status_is_current(&bare, &same).unwrap_err().0,
            "the kubelet has not reported its containers yet"
        );
        assert_eq!(status_is_current(&restored, &same), Ok(()));
    }
}

mod rollout_tests {
    use super::super::*;
    use k8s_openapi::api::apps::v1::{DaemonSetStatus, DeploymentSpec, DeploymentStatus};

    fn ds(generation: i64, observed: i64, desired: i32, updated: i32, available: i32) -> DaemonSet {
        let mut d = DaemonSet::default();
        d.metadata.generation = Some(generation);
        d.status = Some(DaemonSetStatus {
            observed_generation: Some(observed),
            desired_number_scheduled: desired,
            updated_number_scheduled: Some(updated),
            number_available: Some(available),
            ..DaemonSetStatus::default()
        });
        d
    }

    fn deploy(
        generation: i64,
        observed: i64,
        total: i32,
        updated: i32,
        available: i32,
    ) -> Deployment {
        Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(1),
                ..DeploymentSpec::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(total),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ..DeploymentStatus::default()
            }),
        }
    }

    #[test]
    fn a_daemonset_has_rolled_once_every_pod_is_updated_and_available() {
        assert!(daemonset_rolled(&ds(3, 3, 1, 1, 1)).is_ok());
        assert!(daemonset_rolled(&ds(4, 3, 1, 1, 1))
            .unwrap_err()
            .0
            .contains("not seen the change"));
        assert_eq!(
            daemonset_rolled(&ds(4, 4, 2, 1, 2)).unwrap_err().0,
            "1 of 2 pods updated"
        );
        assert_eq!(
            daemonset_rolled(&ds(4, 4, 1, 1, 0)).unwrap_err().0,
            "0 of 1 updated pods available"
        );
        assert!(
            daemonset_rolled(&DaemonSet::default()).is_ok(),
            "no pods wanted"
        );
    }

    #[test]
    fn a_deployment_has_rolled_once_no_old_replica_is_left() {
        assert!(deployment_rolled(&deploy(2, 2, 1, 1, 1)).is_ok());
        assert!(deployment_rolled(&deploy(3, 2, 1, 1, 1)).is_err());
        // A surge pod next to the old one: not yet.
        assert_eq!(
            deployment_rolled(&deploy(3, 3, 2, 1, 1)).unwrap_err().0,
            "1 old replicas still terminating"
        );
        assert_eq!(
            deployment_rolled(&deploy(3, 3, 1, 0, 1)).unwrap_err().0,
            "0 of 1 replicas updated"
        );
        assert_eq!(
            deployment_rolled(&deploy(3, 3, 1, 1, 0)).unwrap_err().0,
            "0 of 1 updated replicas available"
        );
    }
}
