//! [`EventQueue`] on SQLite with SQS semantics: at-least-once delivery,
//! visibility timeout, receive count, and a dead-letter queue (`<name>-dlq`):
//! a message already received `max_receive_count` times is moved to the DLQ
//! on the next receive instead of being delivered (SQS redrive policy
//! `maxReceiveCount`). Long polling wakes on sends from this process and
//! re-checks every 100 ms for messages whose visibility timeout ran out.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::Db;
use crcr_core::ports::{
    Clock, QueueError, QueueInspect, QueueReceive, QueueSend, QueueSettle, QueueSide, QueueStats, ReceivedMessage,
    SystemClock,
};

/// Same limit as SQS (262,144 bytes), so the embedded default exercises the
/// claim-check path exactly where AWS would.
pub const MAX_MESSAGE_BYTES: usize = 262_144;

/// One queue and its DLQ in the database.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    name: String,
    dlq: String,
    max_receive_count: u32,
    /// Visibility and send times come from here ([`SystemClock`] unless
    /// [`SqliteQueue::with_clock`] says otherwise).
    clock: Arc<dyn Clock>,
}

impl SqliteQueue {
    /// `name` e.g. `"dispatch"`; its DLQ is `"<name>-dlq"`. `max_receive_count`
    /// as SQS's redrive policy (>= 1).
    pub fn new(db: Db, name: &str, max_receive_count: u32) -> Self {
        Self {
            db,
            name: name.to_owned(),
            dlq: format!("{name}-dlq"),
            max_receive_count: max_receive_count.max(1),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same queue on `clock` (an injected clock in tests: a message
    /// hidden for `d` reappears when the clock has moved `d`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn queue_name(&self, side: QueueSide) -> &str {
        match side {
            QueueSide::Source => &self.name,
            QueueSide::DeadLetter => &self.dlq,
        }
    }

    fn insert(
        conn: &Connection,
        queue: &str,
        body: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<String, QueueError> {
        let id = uuid::Uuid::new_v4().to_string();
        conn.execute(
            "INSERT INTO queue_messages (queue, message_id, body, sent_at_ms, visible_at_ms, dead_letter_reason)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            params![queue, id, body, now, reason],
        )
        .map_err(unavailable)?;
        Ok(id)
    }

    fn try_receive(
        &self,
        side: QueueSide,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let queue = self.queue_name(side);
        let mut conn = self.db.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        {
            let mut pick = tx
                .prepare_cached(
                    "SELECT seq, message_id, body, sent_at_ms, receive_count, dead_letter_reason
                     FROM queue_messages WHERE queue = ?1 AND visible_at_ms <= ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(unavailable)?;
            // Pick a few more than asked: some may move to the DLQ instead.
            let rows = pick
                .query_map(params![queue, now, (max * 2 + 10) as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, u32>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            for (seq, message_id, body, sent_at_ms, count, reason) in rows {
                if out.len() >= max {
                    break;
                }
                if side == QueueSide::Source && count >= self.max_receive_count {
                    // Redrive policy: received maxReceiveCount times already. Like
                    // SQS, the message keeps its id, sent time and receive count.
                    tx.execute(
                        "UPDATE queue_messages SET queue = ?2, visible_at_ms = ?3, receipt = NULL WHERE seq = ?1",
                        params![seq, self.dlq, now],
                    )
                    .map_err(unavailable)?;
                    continue;
                }
                let receipt = format!("{seq}:{}", uuid::Uuid::new_v4());
                tx.execute(
                    "UPDATE queue_messages SET receive_count = receive_count + 1, visible_at_ms = ?2, receipt = ?3
                     WHERE seq = ?1",
                    params![seq, now + visibility.as_millis() as i64, receipt],
                )
                .map_err(unavailable)?;
                out.push(ReceivedMessage {
                    message_id,
                    receipt,
                    body,
                    receive_count: count + 1,
                    sent_at_ms,
                    dead_letter_reason: reason,
                });
            }
        }
        tx.commit().map_err(unavailable)?;
        Ok(out)
    }
}

/// A SQLite failure as a queue error, the SQLite error kept as its source.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::backend("SQLite", e)
}

#[async_trait]
impl QueueSend for SqliteQueue {
    fn max_message_bytes(&self) -> usize {
        MAX_MESSAGE_BYTES
    }
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(QueueError::TooLarge { size: body.len(), limit: MAX_MESSAGE_BYTES });
        }
        let id = Self::insert(&self.db.lock(), &self.name, body, None, self.clock.now_ms())?;
        self.db.sent.notify_waiters();
        Ok(id)
    }
}

#[async_trait]
impl QueueReceive for SqliteQueue {
    async fn receive(
        &self,
        side: QueueSide,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = max.clamp(1, 10);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.db.sent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.try_receive(side, max, visibility)?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let nap = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }
}

#[async_trait]
impl QueueSettle for SqliteQueue {
    async fn delete(&self, side: QueueSide, receipt: &str) -> Result<(), QueueError> {
        let n = self
            .db
            .lock()
            .execute(
                "DELETE FROM queue_messages WHERE queue = ?1 AND receipt = ?2",
                params![self.queue_name(side), receipt],
            )
            .map_err(unavailable)?;
        if n == 0 {
            return Err(QueueError::BadReceipt(receipt.to_owned()));
        }
        Ok(())
    }
    async fn change_visibility(&self, side: QueueSide, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        let n = self
            .db
            .lock()
            .execute(
                "UPDATE queue_messages SET visible_at_ms = ?3 WHERE queue = ?1 AND receipt = ?2",
                params![self.queue_name(side), receipt, self.clock.now_ms() + delay.as_millis() as i64],
            )
            .map_err(unavailable)?;
        if n == 0 {
            return Err(QueueError::BadReceipt(receipt.to_owned()));
        }
        if delay.is_zero() {
            self.db.sent.notify_waiters();
        }
        Ok(())
    }
    async fn dead_letter(&self, msg: &ReceivedMessage, reason: &str) -> Result<(), QueueError> {
        let mut conn = self.db.lock();
        let tx = conn.transaction().map_err(unavailable)?;
        Self::insert(&tx, &self.dlq, &msg.body, Some(reason), self.clock.now_ms())?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT seq FROM queue_messages WHERE queue = ?1 AND receipt = ?2",
                params![self.name, msg.receipt],
                |r| r.get(0),
            )
            .optional()
            .map_err(unavailable)?;
        let Some(seq) = existing else {
            return Err(QueueError::BadReceipt(msg.receipt.clone()));
        };
        tx.execute("DELETE FROM queue_messages WHERE seq = ?1", [seq]).map_err(unavailable)?;
        tx.commit().map_err(unavailable)
    }
}

#[async_trait]
impl QueueInspect for SqliteQueue {
    async fn depth(&self, side: QueueSide) -> Result<u64, QueueError> {
        self.db
            .lock()
            .query_row("SELECT COUNT(*) FROM queue_messages WHERE queue = ?1", [self.queue_name(side)], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(unavailable)
    }
    /// Exact figures from one query: visible (`visible_at_ms` reached),
    /// in flight (hidden; the embedded queue has no delayed sends, so
    /// `delayed` is 0) and the oldest `sent_at_ms`.
    async fn stats(&self, side: QueueSide) -> Result<QueueStats, QueueError> {
        self.db
            .lock()
            .query_row(
                "SELECT COALESCE(SUM(visible_at_ms <= ?2), 0), COALESCE(SUM(visible_at_ms > ?2), 0), MIN(sent_at_ms)
                 FROM queue_messages WHERE queue = ?1",
                params![self.queue_name(side), self.clock.now_ms()],
                |r| {
                    Ok(QueueStats {
                        visible: r.get::<_, i64>(0)? as u64,
                        in_flight: r.get::<_, i64>(1)? as u64,
                        delayed: 0,
                        oldest_sent_at_ms: r.get(2)?,
                    })
                },
            )
            .map_err(unavailable)
    }
}
