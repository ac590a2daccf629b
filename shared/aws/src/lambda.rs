//! SQS event-source batches in a Lambda: how a message handler's settling
//! (delete, requeue, dead-letter) maps onto Lambda's partial batch response.

use std::time::Duration;

use crcr_core::ports::{QueueError, QueueSettle, QueueSide, ReceivedMessage};
use crcr_core::reconcile::MessageHandler;
use futures::StreamExt;

/// Processes a batch delivered by an SQS event source mapping with
/// `handler` (the dispatcher or the reconciler) and returns the message ids
/// to report as `batchItemFailures` (SQS partial batch response,
/// `ReportBatchItemFailures`, "Handling errors for an SQS event source in
/// Lambda", AWS Lambda developer guide). Messages run concurrently (10 at a
/// time). The handler settles each message on a [`LambdaBatchQueue`] over
/// `queue`: a message it deletes is not reported (Lambda deletes it); one it
/// requeues has its visibility changed to the wanted delay and is reported;
/// one it dead-letters is sent to the DLQ with its reason and not reported.
/// An error while settling (e.g. the DLQ send failed) reports the message,
/// so nothing is acked silently or lost.
pub async fn process_sqs_batch<H: MessageHandler + ?Sized>(
    handler: &H,
    queue: &dyn QueueSettle,
    batch: Vec<ReceivedMessage>,
) -> Vec<String> {
    let results = futures::stream::iter(batch)
        .map(|msg| async move {
            let settle = LambdaBatchQueue::new(queue);
            let failed = match handler.handle(&settle, &msg).await {
                Ok(()) => settle.requeued(),
                Err(e) => {
                    tracing::error!(message_id = %msg.message_id, error = %e, "could not settle message; it stays on the queue");
                    true
                }
            };
            failed.then_some(msg.message_id)
        })
        .buffer_unordered(10)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().flatten().collect()
}

/// How a handler settles a message inside a Lambda SQS batch: deleting a
/// source message does nothing (Lambda deletes every message not reported
/// as a batch item failure); changing a source message's visibility is
/// passed on and marks it "requeued" (to be reported); dead-lettering and
/// the DLQ side are passed on unchanged.
pub struct LambdaBatchQueue<'a> {
    inner: &'a dyn QueueSettle,
    requeued: std::sync::atomic::AtomicBool,
}

impl<'a> LambdaBatchQueue<'a> {
    pub fn new(inner: &'a dyn QueueSettle) -> Self {
        Self { inner, requeued: Default::default() }
    }
    /// Whether the handler asked for the message to come back later.
    pub fn requeued(&self) -> bool {
        self.requeued.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl QueueSettle for LambdaBatchQueue<'_> {
    async fn delete(&self, side: QueueSide, receipt: &str) -> Result<(), QueueError> {
        match side {
            QueueSide::Source => Ok(()),
            QueueSide::DeadLetter => self.inner.delete(side, receipt).await,
        }
    }
    async fn change_visibility(&self, side: QueueSide, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        if side == QueueSide::Source {
            self.requeued.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.change_visibility(side, receipt, delay).await
    }
    async fn dead_letter(&self, msg: &ReceivedMessage, reason: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(msg, reason).await
    }
    /// Passed on (a delayed copy, the original deleted): not reported, so
    /// Lambda's own delete of it finds it gone, which SQS allows.
    async fn postpone(&self, msg: &ReceivedMessage, delay: Duration) -> Result<(), QueueError> {
        self.inner.postpone(msg, delay).await
    }
}
