//! [`EventQueue`] on Amazon SQS: a standard source queue plus its dead-letter
//! queue.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;

use crcr_core::ports::{
    QueueError, QueueInspect, QueueReceive, QueueSend, QueueSettle, QueueSide, QueueStats, ReceivedMessage,
};

/// Largest message body the adapter sends, in bytes: 262,144 (256 KiB).
///
/// This was SQS's fixed message size limit (body plus message attributes);
/// since August 2025 SQS (and moto 5.2.5) accept up to 1 MiB by default, but
/// crcr keeps 256 KiB so queue messages stay within what every SQS queue,
/// Lambda event source and the SQLite twin accept. Larger payloads go through
/// the claim check ([`crcr_core::ports::BlobStore`]). The adapter enforces the limit
/// itself ([`QueueError::TooLarge`]) before calling SQS; the queue should be
/// created with `MaximumMessageSize` = 262144 as a second guard.
pub const SQS_MAX_MESSAGE_BYTES: usize = 262_144;

/// Message attribute (type `String`) carrying the reason on messages crcr
/// writes to the dead-letter queue.
pub const DEAD_LETTER_REASON_ATTR: &str = "crcr_dead_letter_reason";

/// Longest dead-letter reason stored, in characters; longer reasons are
/// truncated (the reason is for people, and attributes count against the
/// message size limit).
pub const DEAD_LETTER_REASON_MAX_CHARS: usize = 1_000;

/// SQS limits on ReceiveMessage parameters (SQS API reference).
const MAX_BATCH: usize = 10;
const MAX_WAIT_SECS: u64 = 20;
const MAX_VISIBILITY_SECS: u64 = 43_200;

/// An SQS source queue and its dead-letter queue as one [`EventQueue`](crcr_core::ports::EventQueue).
///
/// Expected shape: a standard queue whose `RedrivePolicy` is
/// `{"deadLetterTargetArn": <dlq arn>, "maxReceiveCount": "<n>"}`. Moving a
/// message to the DLQ after `n` receives is SQS's own job: the adapter does
/// not count receives itself. SQS (and moto 5.2.5) deliver a message with
/// `ApproximateReceiveCount` 1..=n and move it to the DLQ on the receive
/// after the n-th (that receive does not return it), keeping its message
/// id, body and `SentTimestamp` (documented by SQS for standard queues).
/// moto also keeps the receive count, so the first receive from the DLQ
/// reports n + 1. Such messages have no [`DEAD_LETTER_REASON_ATTR`].
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dlq_url: String,
}

impl SqsQueue {
    /// `queue_url` / `dlq_url`: the queue URLs as returned by `GetQueueUrl`
    /// (`https://sqs.<region>.amazonaws.com/<account>/<name>`).
    pub fn new(client: Client, queue_url: String, dlq_url: String) -> Self {
        Self { client, queue_url, dlq_url }
    }

    fn url(&self, side: QueueSide) -> &str {
        match side {
            QueueSide::Source => &self.queue_url,
            QueueSide::DeadLetter => &self.dlq_url,
        }
    }

    fn check_size(&self, body: &str) -> Result<(), QueueError> {
        if body.len() > SQS_MAX_MESSAGE_BYTES {
            return Err(QueueError::TooLarge { size: body.len(), limit: SQS_MAX_MESSAGE_BYTES });
        }
        Ok(())
    }
}

/// An SQS failure as a queue error: the SDK's whole error context in the
/// message (for logs), the SDK error as its source.
fn unavailable<E>(what: &str, e: E) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
{
    QueueError::Unavailable { what: format!("SQS {what}: {}", DisplayErrorContext(&e)), source: Some(Box::new(e)) }
}

/// Whole seconds, rounded up, clamped to `max`.
fn secs_ceil(d: Duration, max: u64) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(max) as i32
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn convert(m: aws_sdk_sqs::types::Message) -> Result<ReceivedMessage, QueueError> {
    let attrs = m.attributes.unwrap_or_default();
    let receive_count = attrs
        .get(&MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
    let sent_at_ms =
        attrs.get(&MessageSystemAttributeName::SentTimestamp).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let dead_letter_reason =
        m.message_attributes.unwrap_or_default().remove(DEAD_LETTER_REASON_ATTR).and_then(|v| v.string_value);
    let (Some(message_id), Some(receipt)) = (m.message_id, m.receipt_handle) else {
        return Err(QueueError::unavailable("SQS returned a message without id or receipt handle"));
    };
    Ok(ReceivedMessage {
        message_id,
        receipt,
        body: m.body.unwrap_or_default(),
        receive_count,
        sent_at_ms,
        dead_letter_reason,
    })
}

#[async_trait]
impl QueueSend for SqsQueue {
    /// [`SQS_MAX_MESSAGE_BYTES`] (262,144).
    fn max_message_bytes(&self) -> usize {
        SQS_MAX_MESSAGE_BYTES
    }
    /// `SendMessage` to the source queue; bodies over
    /// [`SQS_MAX_MESSAGE_BYTES`] are refused with [`QueueError::TooLarge`]
    /// without calling SQS.
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        self.check_size(body)?;
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| unavailable("SendMessage", e))?;
        out.message_id.ok_or_else(|| QueueError::unavailable("SQS SendMessage returned no message id"))
    }
}

#[async_trait]
impl QueueReceive for SqsQueue {
    /// `ReceiveMessage`: `max` clamped to 1..=10, `visibility` and `wait` in
    /// whole seconds rounded up (visibility ≤ 43,200 s, wait ≤ 20 s: SQS
    /// limits).
    async fn receive(
        &self,
        side: QueueSide,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(self.url(side))
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .visibility_timeout(secs_ceil(visibility, MAX_VISIBILITY_SECS))
            .wait_time_seconds(secs_ceil(wait, MAX_WAIT_SECS))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names(DEAD_LETTER_REASON_ATTR)
            .send()
            .await
            .map_err(|e| unavailable("ReceiveMessage", e))?;
        out.messages.unwrap_or_default().into_iter().map(convert).collect()
    }
}

#[async_trait]
impl QueueSettle for SqsQueue {
    /// `DeleteMessage`; an invalid receipt handle is [`QueueError::BadReceipt`].
    async fn delete(&self, side: QueueSide, receipt: &str) -> Result<(), QueueError> {
        match self.client.delete_message().queue_url(self.url(side)).receipt_handle(receipt).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_receipt_handle_is_invalid()) => {
                Err(QueueError::BadReceipt(DisplayErrorContext(e).to_string()))
            }
            Err(e) => Err(unavailable("DeleteMessage", e)),
        }
    }
    /// `ChangeMessageVisibility` with `delay` in whole seconds rounded up
    /// (≤ 43,200 s). An invalid receipt or a message no longer in flight is
    /// [`QueueError::BadReceipt`].
    async fn change_visibility(&self, side: QueueSide, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        match self
            .client
            .change_message_visibility()
            .queue_url(self.url(side))
            .receipt_handle(receipt)
            .visibility_timeout(secs_ceil(delay, MAX_VISIBILITY_SECS))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_receipt_handle_is_invalid() || s.is_message_not_inflight()) =>
            {
                Err(QueueError::BadReceipt(DisplayErrorContext(e).to_string()))
            }
            Err(e) => Err(unavailable("ChangeMessageVisibility", e)),
        }
    }
    /// `SendMessage` of the body to the source queue with `DelaySeconds` =
    /// `delay` in whole seconds rounded up (at most 900), then
    /// `DeleteMessage` of `msg`: the copy is a new message whose receive
    /// count starts afresh, so the queue's redrive policy does not count
    /// the wait.
    async fn postpone(&self, msg: &ReceivedMessage, delay: Duration) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&msg.body)
            .delay_seconds(secs_ceil(delay, crcr_core::ports::MAX_POSTPONE.as_secs()))
            .send()
            .await
            .map_err(|e| unavailable("SendMessage (postponed copy)", e))?;
        self.delete(QueueSide::Source, &msg.receipt).await
    }
    /// `SendMessage` of the body to the DLQ with message attribute
    /// [`DEAD_LETTER_REASON_ATTR`] (`String`, at most
    /// [`DEAD_LETTER_REASON_MAX_CHARS`] characters), then `DeleteMessage` of
    /// `msg` from the source queue. The copy is a new SQS message: new id,
    /// receive count and sent time start afresh.
    async fn dead_letter(&self, msg: &ReceivedMessage, reason: &str) -> Result<(), QueueError> {
        let reason = truncate_chars(reason, DEAD_LETTER_REASON_MAX_CHARS);
        // SQS rejects empty String attribute values.
        let reason = if reason.is_empty() { "(no reason given)" } else { reason };
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(reason)
            .build()
            .map_err(|e| QueueError::unavailable(format!("building SQS message attribute: {e}")))?;
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(&msg.body)
            .message_attributes(DEAD_LETTER_REASON_ATTR, attr)
            .send()
            .await
            .map_err(|e| unavailable("SendMessage (dead-letter queue)", e))?;
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(&msg.receipt)
            .send()
            .await
            .map_err(|e| unavailable("DeleteMessage (after dead-lettering)", e))?;
        Ok(())
    }
}

#[async_trait]
impl QueueInspect for SqsQueue {
    /// `GetQueueAttributes`: `ApproximateNumberOfMessages` +
    /// `ApproximateNumberOfMessagesNotVisible` (visible + in flight; delayed
    /// messages are not counted). Approximate: SQS updates these counters
    /// with a lag of up to about a minute.
    async fn depth(&self, side: QueueSide) -> Result<u64, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(self.url(side))
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| unavailable("GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |k: &QueueAttributeName| -> Result<u64, QueueError> {
            match attrs.get(k) {
                None => Ok(0),
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|_| QueueError::unavailable(format!("SQS returned {k:?} = {v:?}, not a number"))),
            }
        };
        Ok(get(&QueueAttributeName::ApproximateNumberOfMessages)?
            + get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?)
    }
    /// `GetQueueAttributes`: `ApproximateNumberOfMessages`,
    /// `ApproximateNumberOfMessagesNotVisible` and
    /// `ApproximateNumberOfMessagesDelayed` (approximate, like
    /// [`QueueInspect::depth`](crcr_core::ports::QueueInspect::depth)). The age of the oldest message is not an SQS
    /// queue attribute (it is the CloudWatch metric
    /// `ApproximateAgeOfOldestMessage`): `oldest_sent_at_ms` is `None`.
    async fn stats(&self, side: QueueSide) -> Result<QueueStats, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(self.url(side))
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| unavailable("GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |k: QueueAttributeName| -> Result<u64, QueueError> {
            match attrs.get(&k) {
                None => Ok(0),
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|_| QueueError::unavailable(format!("SQS returned {k:?} = {v:?}, not a number"))),
            }
        };
        Ok(QueueStats {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages)?,
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed)?,
            oldest_sent_at_ms: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_and_clamp() {
        assert_eq!(secs_ceil(Duration::ZERO, 20), 0);
        assert_eq!(secs_ceil(Duration::from_millis(1), 20), 1);
        assert_eq!(secs_ceil(Duration::from_secs(1), 20), 1);
        assert_eq!(secs_ceil(Duration::from_millis(1_001), 20), 2);
        assert_eq!(secs_ceil(Duration::from_secs(3_600), 20), 20);
    }

    #[test]
    fn reasons_truncate_on_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("abc", 10), "abc");
        assert_eq!(truncate_chars(&"é".repeat(1_500), 1_000).chars().count(), 1_000);
    }
}
