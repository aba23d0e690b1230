//! Ground floor: waiting for a state, by polling it under a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` every `every` until it returns `Ok(true)`, at most
/// `deadline`; the timeout error says what was awaited and the last reason.
pub async fn until<F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let end = Instant::now() + deadline;
    let mut last = String::from("no answer yet");
    loop {
        match probe().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(err) => last = format!("{err:#}"),
        }
        if Instant::now() >= end {
            anyhow::bail!(
                "timed out after {}s waiting for {what} (last: {last})",
                deadline.as_secs()
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits up to `deadline` until the API answers `/readyz` through `client`
/// (this host's balancer): after etcd or an API server restarted.
pub async fn api_ready(client: &kube::Client, deadline: Duration) -> anyhow::Result<()> {
    until(
        "the API to answer /readyz again",
        deadline,
        Duration::from_secs(1),
        || async { Ok(api_answers(client).await) },
    )
    .await
}

/// Whether the API answers `/readyz` through `client` now.
pub async fn api_answers(client: &kube::Client) -> bool {
    match http::Request::get("/readyz").body(Vec::new()) {
        Ok(req) => client.request_text(req).await.is_ok(),
        Err(_) => false,
    }
}
