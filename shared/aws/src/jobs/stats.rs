//! [`JobStats`] on the jobs table: the on-call counts.

use async_trait::async_trait;

use crcr_core::lifecycle::{CallbackCounts, JobStats};
use crcr_core::ports::StoreError;

use super::items::read;
use super::{attr, DynamoJobStore, JOB_PREFIX, VIOLATION_PREFIX};
use crate::item::{n, s, unavailable};

#[async_trait]
impl JobStats for DynamoJobStore {
    /// `Scan` of the whole table (all pages) for job items changed in the
    /// window and violation items recorded in it, projecting only the times
    /// and the conclusion: O(table) in read capacity (a filter does not
    /// reduce what DynamoDB reads), for on-call commands only. Eventually
    /// consistent.
    async fn callback_counts(&self, since_ms: i64) -> Result<CallbackCounts, StoreError> {
        let mut items = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(
                "(begins_with(#sk, :job) AND #updated >= :since) OR (begins_with(#sk, :violation) AND #at >= :since)",
            )
            .projection_expression("#sk, #in_progress, #completed, #conclusion, #at")
            .expression_attribute_names("#sk", attr::SK)
            .expression_attribute_names("#updated", attr::UPDATED_AT)
            .expression_attribute_names("#at", attr::AT_MS)
            .expression_attribute_names("#in_progress", attr::IN_PROGRESS_AT_MS)
            .expression_attribute_names("#completed", attr::COMPLETED_AT_MS)
            .expression_attribute_names("#conclusion", attr::CONCLUSION)
            .expression_attribute_values(":job", s(JOB_PREFIX))
            .expression_attribute_values(":violation", s(VIOLATION_PREFIX))
            .expression_attribute_values(":since", n(since_ms))
            .into_paginator()
            .items()
            .send();
        let mut counts = CallbackCounts::default();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| unavailable("Scan (callback counts)", e))?;
            let a = read(&item);
            if a.s(attr::SK)?.starts_with(VIOLATION_PREFIX) {
                counts.violations += 1;
                continue;
            }
            if a.opt_n::<i64>(attr::IN_PROGRESS_AT_MS)?.is_some_and(|t| t >= since_ms) {
                counts.in_progress += 1;
            }
            if a.opt_n::<i64>(attr::COMPLETED_AT_MS)?.is_some_and(|t| t >= since_ms) {
                match a.opt_s(attr::CONCLUSION)?.as_deref() {
                    Some("timed_out") => counts.timed_out += 1,
                    _ => counts.completed += 1,
                }
            }
        }
        Ok(counts)
    }
}
