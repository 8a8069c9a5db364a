//! The process's long-running tasks: each has a name, all run under one [`TaskTracker`],
//! and one token tells them to stop.
//!
//! A task that ends on its own while the process runs (before [`Tasks::shutting_down`] or
//! [`Tasks::stop`]) is logged by name (nothing restarts it; `/healthz` says whether the
//! process can still make progress without it), so that a dead loop is never silent.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::signals::{self, Drained};

/// The named tasks of one process.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Shutdown has begun (the tasks may end in the order it needs, before `stop`).
    closing: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires when the tasks are told to stop; tasks that stop gracefully watch it.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` to its end; it watches [`Tasks::stopping`] (or a token derived from it)
    /// itself to stop gracefully.
    pub fn spawn<F, T>(&self, name: &'static str, task: F) -> JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let quiet = self.closing.clone();
        self.tracker.spawn(async move {
            debug!(task = name, "task started");
            let out = task.await;
            ended(name, &quiet);
            out
        })
    }

    /// Runs `task` until it ends or the tasks are told to stop, whichever comes first: for
    /// tasks with nothing to finish (a watch feeding a cache).
    pub fn spawn_until_stop<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, quiet) = (self.stop.clone(), self.closing.clone());
        self.tracker.spawn(async move {
            debug!(task = name, "task started");
            tokio::select! {
                () = stop.cancelled() => debug!(task = name, "task stopped"),
                () = task => ended(name, &quiet),
            }
        })
    }

    /// Says that shutdown has begun: tasks that end from now on (a handover ending its
    /// own tasks before the rest are told to stop) are not reported as dead.
    pub fn shutting_down(&self) {
        self.closing.cancel();
    }

    /// Tells every task to stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Tells every task to stop and waits until all have ended, or until a second signal
    /// arrives ([`Drained::Aborted`]: the caller should exit at once).
    pub async fn stop_and_drain(&self) -> Drained {
        self.closing.cancel();
        self.stop.cancel();
        self.tracker.close();
        signals::drain(&self.tracker).await
    }
}

fn ended(name: &'static str, closing: &CancellationToken) {
    if closing.is_cancelled() {
        debug!(task = name, "task stopped");
    } else {
        warn!(
            task = name,
            "task ended while the process runs; it is not restarted"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn stopping_ends_the_waiting_tasks_and_lets_the_graceful_ones_finish() {
        let tasks = Tasks::new();
        let finished = Arc::new(AtomicBool::new(false));
        let graceful = tasks.spawn("graceful", {
            let stop = tasks.stopping();
            let finished = finished.clone();
            async move {
                stop.cancelled().await;
                tokio::task::yield_now().await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        let endless = tasks.spawn_until_stop("endless", std::future::pending());
        tokio::task::yield_now().await;
        assert!(!graceful.is_finished() && !endless.is_finished());
        assert_eq!(tasks.stop_and_drain().await, Drained::Finished);
        assert!(finished.load(Ordering::SeqCst), "ran to its end");
        assert!(graceful.is_finished() && endless.is_finished());
    }

    #[tokio::test]
    async fn a_task_may_end_before_the_others() {
        let tasks = Tasks::new();
        let quick = tasks.spawn_until_stop("quick", async {});
        quick.await.expect("the task ran");
        assert!(!tasks.stopping().is_cancelled(), "the others go on");
        assert_eq!(tasks.stop_and_drain().await, Drained::Finished);
    }
}
