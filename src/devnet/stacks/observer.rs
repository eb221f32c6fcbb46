//! Event observers: after each block the node POSTs `/new_block` to every observer, in block
//! order. Like a stacks-node, a failed POST is retried (backoff doubling to a cap) until it
//! succeeds; unlike one, mining never waits for an observer: each has a bounded queue, and an
//! observer whose queue is full is dropped with an error in the log (it missed blocks; register
//! it again with [`super::StacksNode::add_observer`] once it is back).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;

/// Blocks an observer may fall behind before it is dropped.
pub const DEFAULT_QUEUE: usize = 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const POST_TIMEOUT: Duration = Duration::from_secs(10);

struct Observer {
    url: String,
    queue: tokio::sync::mpsc::Sender<Arc<Json>>,
    task: tokio::task::JoinHandle<()>,
}

/// The registered observers.
pub struct Observers {
    http: reqwest::Client,
    queue_len: usize,
    list: Mutex<Vec<Observer>>,
}

impl Observers {
    pub fn new(queue_len: usize) -> Observers {
        let http = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .build()
            .unwrap_or_default();
        Observers {
            http,
            queue_len: queue_len.max(1),
            list: Mutex::new(Vec::new()),
        }
    }

    /// Registers `url` (`http://host:port`, the node appends `/new_block`). Must run inside a
    /// tokio runtime. Blocks mined from now on are delivered to it.
    pub fn add(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            format!("observer `{url}` is not a URL: {e}; write e.g. http://127.0.0.1:20540")
        })?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(format!("observer `{url}`: use http:// or https://"));
        }
        let target = format!("{}/new_block", url.trim_end_matches('/'));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Json>>(self.queue_len);
        let http = self.http.clone();
        let task = tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                deliver(&http, &target, &body).await;
            }
        });
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.push(Observer {
            url: url.to_string(),
            queue: tx,
            task,
        });
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().map(|o| o.url.clone()).collect()
    }

    /// Queues one block for every observer, never waiting.
    pub fn dispatch(&self, body: Json) {
        let body = Arc::new(body);
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|o| match o.queue.try_send(body.clone()) {
            Ok(()) => true,
            Err(_) => {
                tracing::error!(
                    observer = %o.url,
                    queued = self.queue_len,
                    height = %body["block_height"],
                    "stacks node: an event observer fell too far behind and is dropped; it misses this block and later ones until registered again"
                );
                o.task.abort();
                false
            }
        });
    }
}

impl Drop for Observers {
    fn drop(&mut self) {
        let list = self.list.get_mut().unwrap_or_else(|p| p.into_inner());
        for o in list.iter() {
            o.task.abort();
        }
    }
}

async fn deliver(http: &reqwest::Client, target: &str, body: &Json) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let why = match http.post(target).json(body).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.to_string(),
        };
        if attempt == 1 || attempt % 10 == 0 {
            tracing::warn!(observer = %target, attempt, error = %why, "stacks node: /new_block delivery failed; retrying");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
