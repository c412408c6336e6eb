//! Ordering and concurrency: the router actor, person actors and the group-commit log writer.
//! [`Engine`] is the one door the API uses.

pub mod person;
pub mod router;
pub mod writer;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use actix::prelude::*;

pub use router::{Clock, EngineConfig, EngineError, IngestItem, IngestOutcome, ItemOutcome};
use router::{Delete, Ingest, LastSeq, PatchSettings, ResolveProject, Router, Split};
pub use writer::{WriterFailed, WriterHandle, WriterStatus};

use crate::domain::{Person, PersonUuid, ProjectId, ProjectSettings, Seq, SettingsPatch};
use crate::metrics::Metrics;
use crate::store::recovery::{recover, Recovered};
use crate::store::Store;

/// The running engine: router, writer and store.
#[derive(Clone)]
pub struct Engine {
    router: Addr<Router>,
    writer: WriterHandle,
    store: Store,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl Engine {
    /// Recover `store` and start the actors on the current actix arbiter. `on_fatal` runs if
    /// a log write ever fails.
    pub fn start(
        store: Store,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        on_fatal: impl FnOnce(&str) + Send + 'static,
        progress: impl FnMut(Seq, Seq),
    ) -> Result<(Engine, Recovered, JoinHandle<()>), EngineError> {
        let recovered = recover(&store, false, progress)?;
        let (writer, join) =
            WriterHandle::spawn(store.clone(), recovered.last_seq, metrics.clone(), on_fatal);
        let router = Router::new(
            store.clone(),
            writer.clone(),
            metrics.clone(),
            config,
            recovered.last_seq,
        )?;
        let clock = router.clock();
        let router = router.start();
        Ok((
            Engine {
                router,
                writer,
                store,
                metrics,
                clock,
            },
            recovered,
            join,
        ))
    }

    /// Ingest events in order; returns once every stored one is durable. Refused once the
    /// log writer has failed, whatever the events (duplicates already on disk too).
    pub async fn ingest(&self, items: Vec<IngestItem>) -> Result<Vec<ItemOutcome>, EngineError> {
        self.writer.check()?;
        let started = Instant::now();
        let outcome = self
            .router
            .send(Ingest(items))
            .await
            .map_err(|_| EngineError::Stopped)??;
        // Freed here, on the thread that parsed them, and before the wait.
        drop(outcome.events);
        let routed = Instant::now();
        self.metrics
            .capture_stage("route", (routed - started).as_secs_f64());
        if let Some(seq) = outcome.wait_for {
            self.writer.wait_durable(seq).await?;
            self.metrics
                .capture_stage("durable", routed.elapsed().as_secs_f64());
        }
        Ok(outcome.outcomes)
    }

    /// The project of a token, created on first use when `create`.
    pub async fn resolve_project(
        &self,
        token: &str,
        name: Option<String>,
        create: bool,
    ) -> Result<Option<ProjectId>, EngineError> {
        let msg = ResolveProject {
            token: token.to_string(),
            name,
            create,
        };
        let id = self
            .router
            .send(msg)
            .await
            .map_err(|_| EngineError::Stopped)??;
        self.barrier().await?;
        Ok(id)
    }

    /// Split a person; returns the persons it became.
    pub async fn split(
        &self,
        project: ProjectId,
        person: PersonUuid,
        main: Option<String>,
    ) -> Result<Vec<Person>, EngineError> {
        let (seq, persons) = self
            .router
            .send(Split {
                project,
                person,
                main,
            })
            .await
            .map_err(|_| EngineError::Stopped)??;
        if let Some(seq) = seq {
            self.writer.wait_durable(seq).await?;
        }
        Ok(persons)
    }

    /// Delete a person (and optionally its events).
    pub async fn delete(
        &self,
        project: ProjectId,
        person: PersonUuid,
        delete_events: bool,
    ) -> Result<(), EngineError> {
        let msg = Delete {
            project,
            person,
            delete_events,
        };
        let seq = self
            .router
            .send(msg)
            .await
            .map_err(|_| EngineError::Stopped)??;
        Ok(self.writer.wait_durable(seq).await?)
    }

    /// Change a project's settings; returns the settings now in force, once durable.
    pub async fn patch_settings(
        &self,
        project: ProjectId,
        patch: SettingsPatch,
    ) -> Result<ProjectSettings, EngineError> {
        let (seq, settings) = self
            .router
            .send(PatchSettings { project, patch })
            .await
            .map_err(|_| EngineError::Stopped)??;
        if let Some(seq) = seq {
            self.writer.wait_durable(seq).await?;
        }
        Ok(settings)
    }

    /// The conversion buffer's clock (`--test-clock` lets tests move it forward).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Wait until everything decided so far is durable, so reads see it.
    pub async fn barrier(&self) -> Result<Seq, EngineError> {
        let seq = self
            .router
            .send(LastSeq)
            .await
            .map_err(|_| EngineError::Stopped)?;
        self.writer.wait_durable(seq).await?;
        Ok(seq)
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The writer's status.
    pub fn writer_status(&self) -> WriterStatus {
        self.writer.status()
    }

    /// Make everything durable and stop the writer thread.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        let result = self.barrier().await;
        self.writer.stop();
        result.map(|_| ())
    }
}
