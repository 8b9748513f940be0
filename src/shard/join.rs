//! Runs one future per shard concurrently, in this task (no spawning, so
//! nothing needs to be `'static`), and collects their outputs in order.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

pub(super) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::join_all;

    #[tokio::test(start_paused = true)]
    async fn futures_run_concurrently_and_outputs_keep_their_order() {
        let start = tokio::time::Instant::now();
        let outputs = join_all(
            [30u64, 10, 20]
                .into_iter()
                .map(|ms| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ms
                })
                .collect(),
        )
        .await;
        assert_eq!(outputs, vec![30, 10, 20]);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(30),
            "not one after another"
        );
    }
}
