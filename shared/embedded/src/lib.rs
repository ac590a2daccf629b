//! The embedded default: ingest and dispatcher workers in one process on one
//! SQLite file (`crcr serve`, `crcr demo`, end-to-end tests).
//!
//! The worker loop receives up to `workers` messages at a time (long polling,
//! woken by ingest's sends) and handles each on its own task; on shutdown it
//! stops receiving and lets in-flight messages finish. A message whose
//! process dies mid-way reappears after the visibility timeout, and its
//! targets' leases let the next attempt take them over.

pub mod server;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::sqlite::{Db, SqliteBlobStore, SqliteDispatchStore, SqliteJobStore, SqliteKv, SqliteQueue};
use crcr_core::config::{EmbeddedConfig, RelayConfig};
use crcr_core::dispatch::Dispatcher;
use crcr_core::ports::{Clock, EventQueue, QueueSide, SystemClock};
use crcr_http::ingest::{self, IngestState};

pub use crcr_clients::compose::{github_and_allowlist, hud_from_config, oidc_verifier, StartupError as EmbeddedError};

/// The relay wired on SQLite.
pub struct EmbeddedRelay {
    pub db: Db,
    pub queue: Arc<SqliteQueue>,
    pub store: Arc<SqliteDispatchStore>,
    pub dispatcher: Arc<Dispatcher>,
    pub reconcile_queue: Arc<SqliteQueue>,
    pub jobs: Arc<SqliteJobStore>,
    pub reconciler: Arc<crcr_core::reconcile::Reconciler>,
    /// Small named values shared by the relay's tasks (SQLite table `kv`),
    /// e.g. the redeliver cursor.
    pub state: Arc<dyn crcr_core::ports::StateStore>,
    /// Missed-delivery recovery on the App's own client and `state`.
    pub redeliver: Arc<crcr_core::redeliver::Redeliverer>,
    /// How often [`EmbeddedRelay::run`] runs it (zero: never; see
    /// [`EmbeddedRelay::with_redeliver_interval`]).
    pub redeliver_interval: Duration,
    pub sweep_interval: Duration,
    pub router: Router,
    pub workers: usize,
    pub visibility_timeout: Duration,
    /// How long [`EmbeddedRelay::run`] lets in-flight work finish after the
    /// shutdown signal before it returns anyway (`CRCR_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// HTTP limits against slow or idle clients ([`crate::server`]).
    pub server_limits: crate::server::ServerLimits,
    /// Connections being served, and the most at once.
    pub connections: crate::server::ConnectionCount,
    /// Background sweeps finished since start (ok or not): what a test
    /// waits on ([`EmbeddedRelay::sweeps`]) to know that the sweeper has
    /// looked again, instead of sleeping.
    pub sweeps_done: Arc<tokio::sync::watch::Sender<u64>>,
}

impl EmbeddedRelay {
    /// The relay on the system clock: what `crcr serve` and `crcr demo` run.
    /// Errors: the visibility timeout is not longer than the retry budget, the
    /// database cannot be opened, or a client cannot be built from `cfg`.
    pub fn build(cfg: &RelayConfig, emb: &EmbeddedConfig) -> Result<Self, EmbeddedError> {
        Self::build_with_clock(cfg, emb, Arc::new(SystemClock))
    }

    /// [`EmbeddedRelay::build`] with every time the relay reads (queue
    /// visibility, leases, token checks, job timeouts, HUD back-off, metrics
    /// of age) taken from `clock`: tests move time instead of sleeping.
    pub fn build_with_clock(
        cfg: &RelayConfig,
        emb: &EmbeddedConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EmbeddedError> {
        if emb.visibility_timeout <= cfg.dispatcher.retry_budget {
            return Err(EmbeddedError::VisibilityTooShort {
                visibility: emb.visibility_timeout,
                budget: cfg.dispatcher.retry_budget,
            });
        }
        let db = Db::open(&emb.database)?;
        let queue = Arc::new(
            SqliteQueue::new(db.clone(), "dispatch", cfg.dispatcher.max_receive_count).with_clock(clock.clone()),
        );
        let store = Arc::new(SqliteDispatchStore::new(db.clone()));
        let blobs = Arc::new(SqliteBlobStore::new(db.clone()).with_clock(clock.clone()));
        let (github, allowlist) = github_and_allowlist(cfg)?;
        // Bindings, used jtis, rate windows, breakers and state survive restarts (table `kv`).
        let kv = Arc::new(SqliteKv::new(db.clone(), clock.clone()).with_rate_per_min(cfg.callbacks.rate_per_min));
        let jobs = Arc::new(SqliteJobStore::new(db.clone()));
        let dispatcher = Arc::new(Dispatcher {
            store: store.clone(),
            blobs: blobs.clone(),
            github: github.clone(),
            budget: crcr_core::budget::DispatchPace::in_memory(cfg.dispatcher.pace),
            breakers: Arc::new(crcr_core::breaker::Breakers::new(kv.clone(), cfg.dispatcher.breaker, clock.clone())),
            paused_checks: Some(crcr_core::dispatch::PausedChecks {
                outbox: jobs.clone(),
                upstream: cfg.upstream.clone(),
            }),
            allowlist,
            clock: clock.clone(),
            settings: cfg.dispatcher.clone(),
        });
        let reconcile_queue = Arc::new(
            SqliteQueue::new(db.clone(), "reconcile", cfg.callbacks.reconciler.max_receive_count)
                .with_clock(clock.clone()),
        );
        let verifier = oidc_verifier(&cfg.callbacks, clock.clone(), kv.clone(), kv.clone())?;
        let hud = hud_from_config(&cfg.callbacks)?;
        // One cache for the callback route's and the reconciler's commit checks.
        let commits: Arc<dyn crcr_core::ports::CommitLookup> =
            Arc::new(crcr_core::commits::CachedCommitLookup::new(github.clone(), clock.clone()));
        let reconciler = Arc::new(crcr_core::reconcile::Reconciler {
            dispatches: store.clone(),
            jobs: jobs.clone(),
            hud,
            clock: clock.clone(),
            settings: cfg.callbacks.reconciler.clone(),
            upstream: cfg.upstream.clone(),
            commits: commits.clone(),
            checks: Some(github.clone()),
            runs: Some(github.clone()),
            state: kv.clone(),
        });
        let callbacks = crcr_http::callback_route::router(Arc::new(crcr_http::callback_route::CallbackState {
            verifier: Arc::new(verifier),
            allowlist: dispatcher.allowlist.clone(),
            dispatches: store.clone(),
            jobs: jobs.clone(),
            queue: reconcile_queue.clone(),
            rate: kv.clone(),
            clock: clock.clone(),
            commits,
            upstream: cfg.upstream.clone(),
        }));
        let router = ingest::router(Arc::new(IngestState {
            secret: cfg.webhook_secret.clone(),
            upstream: cfg.upstream.clone(),
            queue: queue.clone(),
            blobs,
            clock: clock.clone(),
            max_body_bytes: cfg.max_body_bytes,
            reconcile: Some(reconcile_queue.clone()),
        }))
        .merge(callbacks)
        .merge(crcr_http::metrics::prometheus_router());
        // The relay's own GitHub client: the redelivery job competes with
        // dispatches for its in-flight slots and the App's primary limit
        // (it comes last, crcr_core::rate_limit).
        let mut redeliver = crcr_core::redeliver::Redeliverer::new(github.clone(), kv.clone());
        redeliver.clock = clock;
        Ok(Self {
            db,
            queue,
            store,
            dispatcher,
            reconcile_queue,
            jobs,
            reconciler,
            state: kv,
            redeliver: Arc::new(redeliver),
            redeliver_interval: Duration::ZERO,
            sweep_interval: cfg.callbacks.sweep_interval,
            router,
            workers: emb.workers,
            visibility_timeout: emb.visibility_timeout,
            shutdown_grace: emb.shutdown_grace,
            server_limits: emb.server,
            connections: Default::default(),
            sweeps_done: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// Counts the background sweeps [`EmbeddedRelay::run`] finishes.
    pub fn sweeps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sweeps_done.subscribe()
    }

    /// Asks GitHub for missed deliveries every `interval` while running
    /// (`crcr_core::redeliver::run_periodic`; the first run at start-up). Zero,
    /// the default of [`EmbeddedRelay::build`], never does; `crcr serve`
    /// passes `CRCR_REDELIVER_INTERVAL_SECS`.
    pub fn with_redeliver_interval(mut self, interval: Duration) -> Self {
        self.redeliver_interval = interval;
        self
    }

    /// Serves ingest on `listener` and runs the dispatcher workers, the
    /// reconciler, the sweeps and the redeliver task until `shutdown`
    /// resolves. First it loads the allowlist: a broken one
    /// ([`crcr_core::allowlist::AllowlistProvider::check_at_start`]) is
    /// [`EmbeddedError::Allowlist`] before anything is served. Then ingest stops taking requests, a sweep stops sending
    /// ([`crcr_core::reconcile::Reconciler::sweep_until`]) and in-flight
    /// messages get [`EmbeddedRelay::shutdown_grace`] to finish; whatever is
    /// still running after that is dropped and taken up at the next start
    /// (messages reappear after their visibility timeout, dispatch leases
    /// expire, HUD and check-run records stay pending), so the process stops
    /// within about the grace period whatever it was doing.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), EmbeddedError> {
        self.dispatcher.allowlist.check_at_start().await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(run_workers(
            self.queue.clone(),
            self.dispatcher.clone(),
            self.workers,
            self.visibility_timeout,
            stop_rx,
        ));
        tasks.spawn(run_workers(
            self.reconcile_queue.clone(),
            self.reconciler.clone(),
            4,
            self.visibility_timeout,
            stop_tx.subscribe(),
        ));
        tasks.spawn(run_sweeps(
            self.reconciler.clone(),
            self.sweep_interval,
            stop_tx.subscribe(),
            self.sweeps_done.clone(),
        ));
        tasks.spawn(crcr_core::redeliver::run_periodic(
            self.redeliver.clone(),
            self.redeliver_interval,
            stop_tx.subscribe(),
        ));
        let signalled = stop_tx.clone();
        let mut server = tokio::spawn(crate::server::serve(
            listener,
            self.router,
            self.server_limits,
            self.connections.clone(),
            async move {
                shutdown.await;
                let _ = signalled.send(true);
            },
        ));
        let mut stopped = stop_tx.subscribe();
        let served = tokio::select! {
            served = &mut server => Some(served),
            _ = stopped.wait_for(|s| *s) => None,
        };
        // The server ended by itself (an error): stop the rest too.
        let _ = stop_tx.send(true);
        let grace = self.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            let served = match served {
                Some(s) => s,
                None => (&mut server).await,
            };
            while tasks.join_next().await.is_some() {}
            served
        })
        .await;
        match drained {
            Ok(served) => {
                served.map_err(|e| std::io::Error::other(format!("the HTTP server task failed: {e}")))??;
            }
            Err(_) => {
                tracing::warn!(
                    grace_s = grace.as_secs_f64(),
                    tasks = tasks.len(),
                    "shutdown grace over: stopping with work in flight; it is taken up at the next start"
                );
                server.abort();
                tasks.abort_all();
            }
        }
        Ok(())
    }
}

/// Runs the reconciler's sweep (timeouts, HUD outbox) every `interval`
/// until `stop` turns true, adding one to `done` after each sweep. One
/// sweeper per process, so an outbox item is never sent by two senders at
/// once.
pub async fn run_sweeps(
    reconciler: Arc<crcr_core::reconcile::Reconciler>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    done: Arc<tokio::sync::watch::Sender<u64>>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let mut stopping = stop.clone();
        let report = reconciler
            .sweep_until(async move {
                let _ = stopping.wait_for(|s| *s).await;
            })
            .await;
        match report {
            Ok(r) if r.timed_out == 0 && r.hud == Default::default() && r.check_runs == Default::default() => {}
            Ok(r) => tracing::info!(
                timed_out = r.timed_out,
                never_started = r.never_started.len(),
                hud_sent = r.hud.sent,
                hud_rejected = r.hud.rejected,
                hud_pending = r.hud.still_pending,
                check_runs_created = r.check_runs.created,
                check_runs_updated = r.check_runs.updated,
                check_runs_rejected = r.check_runs.rejected,
                check_runs_pending = r.check_runs.still_pending,
                check_runs_deferred = r.check_runs.deferred,
                metric = "hud_sync",
                "sweep"
            ),
            Err(e) => tracing::error!(error = %e, "sweep failed; retrying next interval"),
        }
        done.send_modify(|n| *n += 1);
    }
}

/// A queue worker loop (dispatcher or reconciler); returns when `stop` turns true and in-flight
/// messages are done.
pub async fn run_workers(
    queue: Arc<dyn EventQueue>,
    dispatcher: Arc<dyn crcr_core::reconcile::MessageHandler>,
    workers: usize,
    visibility: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(workers));
    loop {
        if *stop.borrow() {
            break;
        }
        let Ok(first) = permits.clone().acquire_owned().await else {
            break;
        };
        let mut held = vec![first];
        while held.len() < 10 {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let received = tokio::select! {
            r = queue.receive(QueueSide::Source, held.len(), visibility, Duration::from_secs(1)) => r,
            _ = stop.changed() => break,
        };
        let messages = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "dispatch queue receive failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for msg in messages {
            let permit = held.pop().expect("one permit per received message");
            let (queue, dispatcher) = (queue.clone(), dispatcher.clone());
            tokio::spawn(async move {
                if let Err(e) = dispatcher.handle(queue.as_ref(), &msg).await {
                    tracing::error!(message_id = %msg.message_id, error = %e, "could not settle message; it will reappear");
                }
                drop(permit);
            });
        }
    }
    // Drain: wait for every in-flight message.
    let _ = permits.acquire_many(workers as u32).await;
}
