//! Docker's container events, narrowed to what triggers a pass. Events are
//! hints ("look again"), never state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};

use super::errors::map_err;
use super::DockerRuntime;
use crate::names::labels;
use crate::runtime::RuntimeError;

/// The actions the stream asks Docker for: those that may mean a container
/// needs attention. Docker matches `health_status` as a prefix (it names
/// `health_status: healthy` and `health_status: unhealthy`). The rest
/// (`create`, `start`, `attach`, ...) is never sent: at a cold start of 200
/// tasks that is 400 events Docker would encode and berth decode for
/// nothing.
pub const ACTIONS: &[&str] = &["die", "oom", "destroy", "kill", "stop", "health_status"];

/// One Docker container event, narrowed to what triggers a reconcile pass.
/// Events are hints ("look again"), never state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Docker's action: `die`, `oom`, `destroy`, `start`, `kill`,
    /// `health_status: unhealthy`, ...
    pub action: String,
    /// Container id.
    pub id: String,
    /// `io.berth.task` of the container, when labelled.
    pub task: Option<String>,
    /// `io.berth.index` of the container, when labelled and numeric.
    pub index: Option<u32>,
}

impl DockerRuntime {
    /// Container events of one namespace (`type=container`,
    /// `label=io.berth.namespace=<ns>`, the [`ACTIONS`] only), as hints for
    /// the watcher.
    ///
    /// The stream ends after an error (Docker went away, the connection
    /// broke): the caller reconnects by calling `events` again, and should
    /// run a full pass since events may have been missed meanwhile.
    pub fn events(
        &self,
        namespace: &str,
    ) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + Send + 'static {
        self.events_since(namespace, None)
    }

    /// Like [`events`](Self::events), but Docker first replays the events
    /// since `since`. The subscription is only made when the stream is first
    /// polled; replaying from a time taken before closes that gap (and the
    /// gap of a reconnect).
    pub fn events_since(
        &self,
        namespace: &str,
        since: Option<SystemTime>,
    ) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + Send + 'static {
        let since = since.map(|t| {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
        });
        let conn = Arc::clone(&self.conn);
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("{}={namespace}", labels::NAMESPACE)],
            ),
            (
                "event".to_string(),
                ACTIONS.iter().map(|a| a.to_string()).collect(),
            ),
        ]);
        stream::once(async move { conn.client().await })
            .map(move |client| match client {
                Ok(docker) => docker
                    .events(Some(EventsOptions {
                        since: since.clone(),
                        filters: Some(filters.clone()),
                        ..Default::default()
                    }))
                    .map_err(map_err)
                    .try_filter_map(|msg| async move { Ok(container_event(msg)) })
                    .boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .flatten()
            // End after the first error so callers see one clear signal.
            .scan(false, |failed, item| {
                let out = if *failed { None } else { Some(item) };
                if let Some(Err(_)) = &out {
                    *failed = true;
                }
                async move { out }
            })
    }
}

fn container_event(msg: EventMessage) -> Option<ContainerEvent> {
    let action = msg.action?;
    let actor = msg.actor?;
    let id = actor.id?;
    let attributes = actor.attributes.unwrap_or_default();
    Some(ContainerEvent {
        action,
        id,
        task: attributes.get(labels::TASK).cloned(),
        index: attributes.get(labels::INDEX).and_then(|i| i.parse().ok()),
    })
}
