//! Shutdown on a signal: the first SIGTERM (or Ctrl-C) asks the process to stop cleanly;
//! a second one, while it drains, aborts.

use tokio_util::task::TaskTracker;

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // No SIGTERM handler could be installed: Ctrl-C is all that is left.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How draining ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every task finished.
    Finished,
    /// A second signal came first: the caller should exit at once (status 130 by
    /// convention).
    Aborted,
}

/// Waits until every task of `tasks` has finished (close the tracker first), or until a
/// second signal arrives.
pub async fn drain(tasks: &TaskTracker) -> Drained {
    tokio::select! {
        () = tasks.wait() => Drained::Finished,
        () = terminated() => Drained::Aborted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_waits_for_the_tasks() {
        let tasks = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let _ = rx.await;
        });
        tasks.close();
        let drained = tokio::spawn({
            let tasks = tasks.clone();
            async move { drain(&tasks).await }
        });
        tokio::task::yield_now().await;
        assert!(!drained.is_finished());
        tx.send(()).unwrap();
        assert_eq!(drained.await.unwrap(), Drained::Finished);
    }
}
