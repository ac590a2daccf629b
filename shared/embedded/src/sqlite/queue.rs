//! [`EventQueue`] on SQLite with SQS semantics: at-least-once delivery,
//! visibility timeout, receive count, and a dead-letter queue (`<name>-dlq`):
//! a message already received `max_receive_count` times is moved to the DLQ
//! on the next receive instead of being delivered (SQS redrive policy
//! `maxReceiveCount`). Long polling wakes on sends from this process and
//! re-checks every 100 ms for messages whose visibility timeout ran out.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection};

use super::{Db, DbError};
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

    /// Makes the in-flight message of `receipt` on `queue` visible again
    /// `delay` from now, taking this receive off its count when `uncount`.
    async fn hide(&self, queue: &str, receipt: &str, delay: Duration, uncount: bool) -> Result<(), QueueError> {
        let (seq, token) = parse_receipt(receipt)?;
        let queue = queue.to_owned();
        let visible_at = self.clock.now_ms() + delay.as_millis() as i64;
        let n = self
            .db
            .write(move |conn| {
                conn.prepare_cached(
                    "UPDATE queue_messages SET visible_at_ms = ?4, receive_count = MAX(receive_count - ?5, 0)
                     WHERE seq = ?1 AND queue = ?2 AND receipt = ?3",
                )
                .and_then(|mut hide| hide.execute(params![seq, queue, token, visible_at, uncount as i64]))
                .map_err(QueueError::sqlite)
            })
            .await?;
        if n == 0 {
            return Err(QueueError::BadReceipt(receipt.to_owned()));
        }
        Ok(())
    }

    /// Inserts a message on `queue`, visible at once. Its stored receipt
    /// token is set now, to a value no one holds, so that receiving it later
    /// rewrites a row of the same size: SQLite then writes only the page
    /// that changed, not the body's overflow pages again.
    fn insert(
        conn: &Connection,
        queue: &str,
        body: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<String, QueueError> {
        let id = uuid::Uuid::new_v4().to_string();
        conn.prepare_cached(
            "INSERT INTO queue_messages (queue, message_id, body, sent_at_ms, visible_at_ms, dead_letter_reason, receipt)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
        )
        .and_then(|mut insert| insert.execute(params![queue, id, body, now, reason, token()]))
        .map_err(QueueError::sqlite)?;
        Ok(id)
    }

    /// Up to `max` visible messages of `side`, oldest visibility first
    /// (read in the order of the index `queue_messages_visible`, so no sort
    /// and no more rows than asked for, however long the backlog), each
    /// hidden for `visibility`. `redrive`: the DLQ and the receive count
    /// past which a message moves there (the source side only).
    fn try_receive(
        conn: &Connection,
        queue: &str,
        redrive: Option<(&str, u32)>,
        max: usize,
        visibility: Duration,
        now: i64,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let mut out = Vec::new();
        // Pick a few more than asked: some may move to the DLQ instead. Only
        // key and count here: the bodies (up to 256 KB each) are read for the
        // messages handed out, not for every row looked at.
        let picked = conn
            .prepare_cached(PICK)
            .and_then(|mut pick| {
                pick.query_map(params![queue, now, (max * 2 + 10) as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(QueueError::sqlite)?;
        for (seq, count) in picked {
            if out.len() >= max {
                break;
            }
            if let Some((dlq, _)) = redrive.filter(|(_, max_count)| count >= *max_count) {
                // Redrive policy: received maxReceiveCount times already. Like
                // SQS, the message keeps its id, sent time and receive count.
                conn.prepare_cached(
                    "UPDATE queue_messages SET queue = ?2, visible_at_ms = ?3, receipt = ?4 WHERE seq = ?1",
                )
                .and_then(|mut moved| moved.execute(params![seq, dlq, now, token()]))
                .map_err(QueueError::sqlite)?;
                continue;
            }
            let token = token();
            conn.prepare_cached(
                "UPDATE queue_messages SET receive_count = receive_count + 1, visible_at_ms = ?2, receipt = ?3
                 WHERE seq = ?1",
            )
            .and_then(|mut hide| hide.execute(params![seq, now + visibility.as_millis() as i64, token]))
            .map_err(QueueError::sqlite)?;
            let (message_id, body, sent_at_ms, dead_letter_reason) = conn
                .prepare_cached(
                    "SELECT message_id, body, sent_at_ms, dead_letter_reason FROM queue_messages WHERE seq = ?1",
                )
                .and_then(|mut read| {
                    read.query_row([seq], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get::<_, Option<String>>(3)?))
                    })
                })
                .map_err(QueueError::sqlite)?;
            out.push(ReceivedMessage {
                message_id,
                receipt: format!("{seq}:{token}"),
                body,
                receive_count: count + 1,
                sent_at_ms,
                dead_letter_reason,
            });
        }
        Ok(out)
    }
}

/// The messages a receive looks at (`?1` the queue, `?2` now, `?3` how
/// many): visible ones, oldest visibility first, read in the order of the
/// index `queue_messages_visible` (queue, visible_at_ms, seq), so no sort
/// and no more rows than the limit, however long the backlog.
const PICK: &str = "SELECT seq, receive_count FROM queue_messages
    WHERE queue = ?1 AND visible_at_ms <= ?2 ORDER BY visible_at_ms, seq LIMIT ?3";

/// A fresh receipt token (36 characters, every one the same length).
fn token() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A receipt as given by a receive: `<seq>:<token>`, the row's key and the
/// token stored with it. Anything else is [`QueueError::BadReceipt`].
fn parse_receipt(receipt: &str) -> Result<(i64, String), QueueError> {
    receipt
        .split_once(':')
        .and_then(|(seq, token)| Some((seq.parse::<i64>().ok()?, token.to_owned())))
        .ok_or_else(|| QueueError::BadReceipt(receipt.to_owned()))
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
        let (queue, body, now) = (self.name.clone(), body.to_owned(), self.clock.now_ms());
        let id = self.db.write(move |conn| Self::insert(conn, &queue, &body, None, now)).await?;
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
            let (queue, dlq, source) = (self.queue_name(side).to_owned(), self.dlq.clone(), side == QueueSide::Source);
            let (max_receive_count, now) = (self.max_receive_count, self.clock.now_ms());
            let got = self
                .db
                .write(move |conn| {
                    let redrive = source.then_some((dlq.as_str(), max_receive_count));
                    Self::try_receive(conn, &queue, redrive, max, visibility, now)
                })
                .await?;
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
        let (seq, token) = parse_receipt(receipt)?;
        let queue = self.queue_name(side).to_owned();
        let n = self
            .db
            .write(move |conn| {
                conn.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1 AND queue = ?2 AND receipt = ?3")
                    .and_then(|mut delete| delete.execute(params![seq, queue, token]))
                    .map_err(QueueError::sqlite)
            })
            .await?;
        if n == 0 {
            return Err(QueueError::BadReceipt(receipt.to_owned()));
        }
        Ok(())
    }
    async fn change_visibility(&self, side: QueueSide, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        self.hide(self.queue_name(side), receipt, delay, false).await?;
        if delay.is_zero() {
            self.db.sent.notify_waiters();
        }
        Ok(())
    }
    /// Hidden for `delay` (at most [`crcr_core::ports::MAX_POSTPONE`]) with
    /// this receive taken off its count, as SQS's new copy would start.
    async fn postpone(&self, msg: &ReceivedMessage, delay: Duration) -> Result<(), QueueError> {
        self.hide(&self.name, &msg.receipt, delay.min(crcr_core::ports::MAX_POSTPONE), true).await
    }
    async fn dead_letter(&self, msg: &ReceivedMessage, reason: &str) -> Result<(), QueueError> {
        let (seq, token) = parse_receipt(&msg.receipt)?;
        let (queue, dlq, body, reason, now) =
            (self.name.clone(), self.dlq.clone(), msg.body.clone(), reason.to_owned(), self.clock.now_ms());
        let receipt = msg.receipt.clone();
        self.db
            .write(move |conn| {
                let n = conn
                    .prepare_cached("DELETE FROM queue_messages WHERE seq = ?1 AND queue = ?2 AND receipt = ?3")
                    .and_then(|mut delete| delete.execute(params![seq, queue, token]))
                    .map_err(QueueError::sqlite)?;
                if n == 0 {
                    return Err(QueueError::BadReceipt(receipt));
                }
                Self::insert(conn, &dlq, &body, Some(&reason), now).map(|_| ())
            })
            .await
    }
}

#[async_trait]
impl QueueInspect for SqliteQueue {
    async fn depth(&self, side: QueueSide) -> Result<u64, QueueError> {
        let queue = self.queue_name(side).to_owned();
        self.db
            .read(move |conn| {
                conn.query_row("SELECT COUNT(*) FROM queue_messages WHERE queue = ?1", [queue], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(QueueError::sqlite)
            })
            .await
    }
    /// Exact figures from one query: visible (`visible_at_ms` reached),
    /// in flight (hidden; the embedded queue has no delayed sends, so
    /// `delayed` is 0) and the oldest `sent_at_ms`.
    async fn stats(&self, side: QueueSide) -> Result<QueueStats, QueueError> {
        let (queue, now) = (self.queue_name(side).to_owned(), self.clock.now_ms());
        self.db
            .read(move |conn| {
                conn.query_row(
                    "SELECT COALESCE(SUM(visible_at_ms <= ?2), 0), COALESCE(SUM(visible_at_ms > ?2), 0), MIN(sent_at_ms)
                     FROM queue_messages WHERE queue = ?1",
                    params![queue, now],
                    |r| {
                        Ok(QueueStats {
                            visible: r.get::<_, i64>(0)? as u64,
                            in_flight: r.get::<_, i64>(1)? as u64,
                            delayed: 0,
                            oldest_sent_at_ms: r.get(2)?,
                        })
                    },
                )
                .map_err(QueueError::sqlite)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receive reads the visible index in its order: no table scan, no
    /// temporary sort of the backlog.
    #[test]
    fn a_receive_reads_the_visible_index_in_order() {
        super::super::assert_plan_reads_index(PICK, "queue_messages_visible");
    }

    /// Receipts name their row; anything else is refused before SQLite.
    #[test]
    fn receipts_are_seq_and_token() {
        assert_eq!(parse_receipt("42:abc").unwrap(), (42, "abc".to_owned()));
        for bad in ["", "42", "x:abc", ":abc"] {
            assert!(matches!(parse_receipt(bad), Err(QueueError::BadReceipt(r)) if r == bad), "{bad:?}");
        }
    }
}
