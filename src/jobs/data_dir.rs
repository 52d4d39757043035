//! The data folder: every file the service keeps outside the database. Jobs' checkpoints
//! and resume files live in `checkpoints/`, uploaded corpora in `corpora/`, TorchScript
//! models in `models/` and data sets in `datasets/`. Files are
//! named by server-made ids only ([`Uuid`]s), so no request reaches a path of its own.
//! Nodes sharing one PostgreSQL database share this folder too (a shared file system): a
//! job lost with its node resumes elsewhere from the checkpoint here. Everything reaches
//! the files through [`DataDir`], so object storage could take the folder's place.

use std::path::{Path, PathBuf};

use anyhow::Context;
use uuid::Uuid;

use crate::train::checkpoint;

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates the folder when it is missing.
    pub fn create(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("failed to create data folder {}", self.root.display()))
    }

    /// The checkpoint of job `id` (its latest weights as safetensors); its resume files
    /// lie beside it.
    pub fn checkpoint(&self, id: Uuid) -> PathBuf {
        self.root.join("checkpoints").join(format!("{id}.safetensors"))
    }

    /// The step job `id` can resume from: the newest resume file at or before step
    /// `committed`; `None` when there is none. Reads the files' headers off the async
    /// workers.
    pub async fn resume_step(&self, id: Uuid, committed: u64) -> anyhow::Result<Option<u64>> {
        let weights = self.checkpoint(id);
        Ok(tokio::task::spawn_blocking(move || checkpoint::resume_step(&weights, committed)).await?)
    }

    /// Job `id`'s checkpoint opened for reading, with its length; `None` when it has none.
    pub async fn open_checkpoint(&self, id: Uuid) -> anyhow::Result<Option<(tokio::fs::File, u64)>> {
        let file = match tokio::fs::File::open(self.checkpoint(id)).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(anyhow::Error::from(err).context("failed to open checkpoint")),
        };
        let length = file.metadata().await?.len();
        Ok(Some((file, length)))
    }

    /// Removes job `id`'s checkpoint and resume files; a failure is logged, not returned
    /// (the job's rows are gone already).
    pub async fn remove_checkpoints(&self, id: Uuid) {
        let weights = self.checkpoint(id);
        let resume = checkpoint::resume_path(&weights);
        let previous = checkpoint::previous_resume_path(&weights);
        let modules = [checkpoint::module_path(&resume), checkpoint::module_path(&previous)];
        for file in modules.into_iter().chain([resume, previous, weights]) {
            remove(&file, &format!("job {id}")).await;
        }
    }

    /// The file uploaded corpus `id` is kept in.
    fn corpus(&self, id: Uuid) -> PathBuf {
        self.root.join("corpora").join(format!("{id}.txt"))
    }

    /// Writes corpus `id`, creating the folder when it is missing.
    pub async fn write_corpus(&self, id: Uuid, text: &[u8]) -> anyhow::Result<()> {
        let path = self.corpus(id);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.with_context(|| format!("failed to create {}", dir.display()))?;
        }
        tokio::fs::write(&path, text).await.with_context(|| format!("failed to write corpus {id}"))
    }

    /// The text of corpus `id`.
    pub async fn read_corpus(&self, id: Uuid) -> anyhow::Result<String> {
        tokio::fs::read_to_string(self.corpus(id)).await.with_context(|| format!("failed to read corpus {id}"))
    }

    /// Removes corpus `id`; a missing file is no error, a failure is logged.
    pub async fn remove_corpus(&self, id: Uuid) {
        remove(&self.corpus(id), &format!("corpus {id}")).await;
    }
}

/// Which uploaded file a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFile {
    /// A TorchScript module.
    Model,
    /// A safetensors data set.
    Dataset,
}

impl DataDir {
    /// Where upload `id` of `kind` is kept.
    pub fn upload(&self, kind: UploadFile, id: Uuid) -> PathBuf {
        match kind {
            UploadFile::Model => self.root.join("models").join(format!("{id}.pt")),
            UploadFile::Dataset => self.root.join("datasets").join(format!("{id}.safetensors")),
        }
    }

    /// Writes upload `id`, creating its folder when it is missing.
    pub async fn write_upload(&self, kind: UploadFile, id: Uuid, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.upload(kind, id);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.with_context(|| format!("failed to create {}", dir.display()))?;
        }
        tokio::fs::write(&path, bytes).await.with_context(|| format!("failed to write {}", path.display()))
    }

    /// Removes upload `id`; a missing file is no error, a failure is logged.
    pub async fn remove_upload(&self, kind: UploadFile, id: Uuid) {
        remove(&self.upload(kind, id), &format!("{kind:?} {id}")).await;
    }
}

async fn remove(file: &Path, owner: &str) {
    if let Err(err) = tokio::fs::remove_file(file).await
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("{owner}: failed to remove {}: {err}", file.display());
    }
}
