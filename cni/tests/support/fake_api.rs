//! A fake Kubernetes API for Nodes behind a real `kube::Client`: list
//! (`GET /api/v1/nodes`) and watch (`?watch=true&resourceVersion=N`),
//! enough for kube-runtime's watcher. A watch answers as soon as there are
//! events newer than its resource version (or after 2 s with none), then
//! ends; the watcher re-watches from the last version it saw.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::client::Body;
use serde_json::json;
use tokio::sync::watch;

struct State {
    nodes: Vec<Node>,
    /// (resource version, ADDED/MODIFIED/DELETED, object).
    events: Vec<(u64, &'static str, Node)>,
    version: u64,
}

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    version: watch::Sender<u64>,
}

impl FakeApi {
    pub fn new(nodes: Vec<Node>) -> FakeApi {
        let api = FakeApi {
            state: Arc::new(Mutex::new(State {
                nodes: Vec::new(),
                events: Vec::new(),
                version: 1,
            })),
            version: watch::channel(1).0,
        };
        for n in nodes {
            api.apply(n);
        }
        api
    }

    /// Creates or replaces a Node (by name), as an ADDED/MODIFIED event.
    pub fn apply(&self, mut node: Node) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        node.metadata.resource_version = Some(v.to_string());
        let name = node.metadata.name.clone();
        let kind = match s.nodes.iter_mut().find(|n| n.metadata.name == name) {
            Some(existing) => {
                *existing = node.clone();
                "MODIFIED"
            }
            None => {
                s.nodes.push(node.clone());
                "ADDED"
            }
        };
        s.events.push((v, kind, node));
        drop(s);
        self.version.send_replace(v);
    }

    pub fn delete(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        let pos = s
            .nodes
            .iter()
            .position(|n| n.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no node {name}"));
        let mut node = s.nodes.remove(pos);
        node.metadata.resource_version = Some(v.to_string());
        s.events.push((v, "DELETED", node));
        drop(s);
        self.version.send_replace(v);
    }

    /// A client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: http::Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.answer(req).await) }
        });
        kube::Client::new(service, "default")
    }

    async fn answer(&self, req: http::Request<Body>) -> http::Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        if path != "/api/v1/nodes" {
            return respond(
                404,
                json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "NotFound", "code": 404,
                "message": format!("{path} not found")}),
            );
        }
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        if param("watch").as_deref() == Some("true") || param("watch").as_deref() == Some("1") {
            let since: u64 = param("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut rx = self.version.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|v| *v > since)).await;
            let s = self.state.lock().unwrap();
            let mut body = String::new();
            for (v, kind, node) in &s.events {
                if *v > since {
                    body.push_str(&json!({"type": kind, "object": node}).to_string());
                    body.push('\n');
                }
            }
            return http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(body.into_bytes()))
                .unwrap();
        }
        let s = self.state.lock().unwrap();
        respond(
            200,
            json!({
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": s.version.to_string()},
                "items": s.nodes,
            }),
        )
    }
}

fn respond(status: u16, body: serde_json::Value) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string().into_bytes()))
        .unwrap()
}
