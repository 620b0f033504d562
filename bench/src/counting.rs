//! A [`ContainerRuntime`] that forwards to another and counts every call, so
//! the benchmark can prove what a pass asks of Docker (idempotence: a pass
//! over a converged host performs no mutating call).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth::desired::registry::RegistryCredentials;
use berth::runtime::{ContainerRuntime, CreateRequest, ObservedContainer, ProgressFn, Result};

/// Calls made so far, per trait method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub list: u64,
    pub inspect: u64,
    pub create: u64,
    pub start: u64,
    pub stop: u64,
    pub remove: u64,
    pub rename: u64,
    pub image_present: u64,
    pub pull: u64,
    pub remove_image: u64,
    pub version: u64,
}

impl Calls {
    /// Calls that change the host.
    pub fn mutating(&self) -> u64 {
        self.create
            + self.start
            + self.stop
            + self.remove
            + self.rename
            + self.pull
            + self.remove_image
    }

    pub fn total(&self) -> u64 {
        self.mutating() + self.list + self.inspect + self.image_present + self.version
    }

    pub fn since(&self, earlier: &Calls) -> Calls {
        Calls {
            list: self.list - earlier.list,
            inspect: self.inspect - earlier.inspect,
            create: self.create - earlier.create,
            start: self.start - earlier.start,
            stop: self.stop - earlier.stop,
            remove: self.remove - earlier.remove,
            rename: self.rename - earlier.rename,
            image_present: self.image_present - earlier.image_present,
            pull: self.pull - earlier.pull,
            remove_image: self.remove_image - earlier.remove_image,
            version: self.version - earlier.version,
        }
    }
}

#[derive(Default)]
struct Counters {
    list: AtomicU64,
    inspect: AtomicU64,
    create: AtomicU64,
    start: AtomicU64,
    stop: AtomicU64,
    remove: AtomicU64,
    rename: AtomicU64,
    image_present: AtomicU64,
    pull: AtomicU64,
    remove_image: AtomicU64,
    version: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// `inner`, with every call counted.
pub struct CountingRuntime<R> {
    inner: R,
    counters: Counters,
}

impl<R: ContainerRuntime> CountingRuntime<R> {
    pub fn new(inner: R) -> Self {
        CountingRuntime {
            inner,
            counters: Counters::default(),
        }
    }

    pub fn calls(&self) -> Calls {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Calls {
            list: get(&c.list),
            inspect: get(&c.inspect),
            create: get(&c.create),
            start: get(&c.start),
            stop: get(&c.stop),
            remove: get(&c.remove),
            rename: get(&c.rename),
            image_present: get(&c.image_present),
            pull: get(&c.pull),
            remove_image: get(&c.remove_image),
            version: get(&c.version),
        }
    }
}

impl<R: ContainerRuntime> ContainerRuntime for CountingRuntime<R> {
    async fn list(&self, namespace: &str) -> Result<Vec<ObservedContainer>> {
        bump(&self.counters.list);
        self.inner.list(namespace).await
    }

    async fn inspect(&self, name_or_id: &str) -> Result<ObservedContainer> {
        bump(&self.counters.inspect);
        self.inner.inspect(name_or_id).await
    }

    async fn create(&self, req: CreateRequest<'_>) -> Result<String> {
        bump(&self.counters.create);
        self.inner.create(req).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        bump(&self.counters.start);
        self.inner.start(id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        bump(&self.counters.stop);
        self.inner.stop(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        bump(&self.counters.remove);
        self.inner.remove(id).await
    }

    async fn rename(&self, id: &str, new_name: &str) -> Result<()> {
        bump(&self.counters.rename);
        self.inner.rename(id, new_name).await
    }

    async fn image_present(&self, image: &str) -> Result<bool> {
        bump(&self.counters.image_present);
        self.inner.image_present(image).await
    }

    async fn pull(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
        progress: ProgressFn<'_>,
    ) -> Result<()> {
        bump(&self.counters.pull);
        self.inner.pull(image, credentials, progress).await
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        bump(&self.counters.remove_image);
        self.inner.remove_image(image).await
    }

    async fn version(&self) -> Result<String> {
        bump(&self.counters.version);
        self.inner.version().await
    }
}
