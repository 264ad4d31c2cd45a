//! Durable state: every pod record and the ID counter, in an embedded,
//! crash-safe database (redb) in the state directory.
//!
//! A CRI call that changes a pod writes the pod's whole record (one small
//! JSON value) before it returns success; a failed write fails the call,
//! and the kubelet's retry (an idempotent repeat) writes it again. Commits
//! run on their own thread ([`Writer`]), in the order the records were
//! taken, several calls' records in one commit when they queue up: the
//! control thread keeps answering status calls while the disk syncs. Only
//! this module knows the database.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::state::Pod;
use super::Error;
use crate::pool::PodId;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ORDINAL: &str = "next_ordinal";

pub struct Db {
    path: PathBuf,
    /// `None` after an I/O error: redb refuses all work after one, so the
    /// next call opens the database again (the kubelet's retry then
    /// succeeds once the disk is writable).
    db: Mutex<Option<Database>>,
}

fn db_error(what: &str) -> impl Fn(redb::Error) -> Error + '_ {
    move |e| Error::State(format!("state database: {what}: {e}"))
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = Self {
            path: path.to_path_buf(),
            db: Mutex::new(None),
        };
        db.with(|_| Ok(()), "open")?;
        Ok(db)
    }

    /// Runs `work` on the database, opening it first if needed and
    /// dropping it after a failure.
    fn with<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, redb::Error>,
        what: &str,
    ) -> Result<T, Error> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let db = Database::create(&self.path).map_err(|e| {
                Error::State(format!("state database {}: {e}", self.path.display()))
            })?;
            *slot = Some(db);
        }
        let result = work(slot.as_ref().expect("opened above"));
        if result.is_err() {
            *slot = None;
        }
        result.map_err(db_error(what))
    }

    /// A pod's record, encoded (cheap: done under the store's lock so the
    /// slow write happens outside it).
    pub fn encode(pod: &Pod) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(pod)
            .map_err(|e| Error::State(format!("state database: encode pod {}: {e}", pod.id)))
    }

    /// Writes many records in one transaction (recovery).
    pub fn save_all(&self, records: &[(PodId, Vec<u8>)], next_ordinal: u64) -> Result<(), Error> {
        let write = |db: &Database| -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            {
                let mut pods = tx.open_table(PODS)?;
                for (id, record) in records {
                    pods.insert(id.to_string().as_str(), record.as_slice())?;
                }
                tx.open_table(META)?.insert(NEXT_ORDINAL, next_ordinal)?;
            }
            tx.commit()?;
            Ok(())
        };
        self.with(write, "write")
    }

    /// Applies records (`None`: the pod is gone) in order, and the ID
    /// counter, in one durable transaction.
    fn commit(
        &self,
        changes: &[(String, Option<Vec<u8>>)],
        next_ordinal: u64,
    ) -> Result<(), Error> {
        let write = |db: &Database| -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            {
                let mut pods = tx.open_table(PODS)?;
                for (id, record) in changes {
                    match record {
                        Some(record) => {
                            pods.insert(id.as_str(), record.as_slice())?;
                        }
                        None => {
                            pods.remove(id.as_str())?;
                        }
                    }
                }
                tx.open_table(META)?.insert(NEXT_ORDINAL, next_ordinal)?;
            }
            tx.commit()?;
            Ok(())
        };
        self.with(write, "write")
    }

    /// Every stored pod and the ID counter.
    pub fn load(&self) -> Result<(Vec<Pod>, u64), Error> {
        type Raw = (Vec<(String, Vec<u8>)>, u64);
        let read = |db: &Database| -> Result<Raw, redb::Error> {
            let tx = db.begin_read()?;
            let pods = match tx.open_table(PODS) {
                Ok(table) => table
                    .iter()?
                    .map(|entry| entry.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
                    .collect::<Result<Vec<_>, _>>()?,
                Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let next = match tx.open_table(META) {
                Ok(table) => table.get(NEXT_ORDINAL)?.map(|v| v.value()).unwrap_or(0),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(e.into()),
            };
            Ok((pods, next))
        };
        let (raw, next) = self.with(read, "read")?;
        let mut pods = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            let mut pod: Pod = serde_json::from_slice(&value).map_err(|e| {
                Error::State(format!("state database: pod {key}: unreadable record: {e}"))
            })?;
            pod.upgrade();
            pods.push(pod);
        }
        // The counter never goes back, even if its own write was lost.
        let next = pods.iter().map(|p| p.id.ordinal() + 1).fold(next, u64::max);
        Ok((pods, next))
    }
}

/// One pod's record to write (`None`: delete it), taken under the store's
/// lock so that records reach the database in the order of the changes.
struct Job {
    id: String,
    record: Option<Vec<u8>>,
    next_ordinal: u64,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Most records one commit takes from the queue.
const BATCH: usize = 64;

/// The database's writer thread: commits records in order, each batch
/// that queued up while the previous commit synced in one transaction.
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// `commits` observes each commit's latency (`/metrics`).
    pub fn start(db: Arc<Db>, commits: prometheus::Histogram) -> Result<Self, Error> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vimanad-state".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let changes: Vec<_> = batch
                        .iter_mut()
                        .map(|j| (std::mem::take(&mut j.id), j.record.take()))
                        .collect();
                    let next = batch.iter().map(|j| j.next_ordinal).max().unwrap_or(0);
                    let started = std::time::Instant::now();
                    let result = db.commit(&changes, next).map_err(|e| e.to_string());
                    commits.observe(started.elapsed().as_secs_f64());
                    for job in batch {
                        let _ = job.done.send(result.clone());
                    }
                }
            })
            .map_err(Error::io("start the state database writer"))?;
        Ok(Self { jobs })
    }

    /// Queues a record; the returned future completes once it is durable.
    pub fn write(
        &self,
        id: &PodId,
        record: Option<Vec<u8>>,
        next_ordinal: u64,
    ) -> impl std::future::Future<Output = Result<(), Error>> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let sent = self.jobs.send(Job {
            id: id.to_string(),
            record,
            next_ordinal,
            done,
        });
        async move {
            sent.map_err(|_| Error::State("state database: the writer thread stopped".into()))?;
            match wait.await {
                Ok(result) => result.map_err(Error::State),
                Err(_) => Err(Error::State(
                    "state database: the writer thread stopped".into(),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod record as databases before restarts wrote it: one
    /// `container`, no `containers`, no sequence numbers.
    const OLD_RECORD: &str = r#"{
        "id": "example.com:demo.Echo@1.0.0#7",
        "config": {"metadata": {"name": "p", "uid": "u", "namespace": "n", "attempt": 0},
                   "hostname": "", "log_directory": "/l", "port_mappings": [],
                   "labels": {}, "annotations": {}},
        "runtime_handler": "vimana",
        "created_at": 1,
        "socket_dir": "/run/pods/7",
        "lifecycle": "Stopped",
        "container": {
            "config": {"metadata": {"name": "c", "attempt": 0}, "command": [], "args": [],
                       "working_dir": "", "envs": [], "mounts": [], "devices": [],
                       "labels": {}, "annotations": {}, "log_path": "c/0.log",
                       "stdin": false, "stdin_once": false, "tty": false, "cdi_devices": []},
            "image": {"id": "sha256:ab", "repo_tags": ["x/y:1"], "repo_digests": [], "size": 1,
                      "config": {"entrypoint": ["/c"], "cmd": [], "env": [], "working_dir": null,
                                 "user": null, "labels": {}},
                      "pinned": false},
            "created_at": 2, "started_at": 3, "finished_at": 4, "phase": "Exited",
            "exit_code": 137, "reason": "Error", "message": "", "log_path": "/l/c/0.log",
            "dir": "/state/containers/7", "identity": null, "cgroups": []
        }
    }"#;

    #[test]
    fn old_databases_keep_loading() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.redb")).unwrap();
        let id = "example.com:demo.Echo@1.0.0#7".to_owned();
        db.commit(&[(id.clone(), Some(OLD_RECORD.as_bytes().to_vec()))], 8)
            .unwrap();
        let (pods, next) = db.load().unwrap();
        assert_eq!(next, 8);
        let pod = &pods[0];
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(pod.containers[0].seq, 0);
        assert_eq!(pod.containers[0].exit_code, 137);
        assert_eq!(pod.next_seq, 1, "the next container gets its own ID");
        assert_eq!(pod.current().map(|c| c.seq), Some(0));
        // Written again in the new shape, it reads back the same.
        let record = Db::encode(pod).unwrap();
        assert!(!String::from_utf8_lossy(&record).contains("\"container\":"));
        db.commit(&[(id, Some(record))], 8).unwrap();
        let (again, _) = db.load().unwrap();
        assert_eq!(again[0].containers.len(), 1);
        assert_eq!(again[0].next_seq, 1);
    }

    #[test]
    fn container_ids_parse_and_print() {
        use crate::control::state::ContainerId;
        for text in ["a.b:S@1.0.0#3", "a.b:S@1.0.0-rc.1+b.2#3.12"] {
            assert_eq!(ContainerId::parse(text).unwrap().to_string(), text);
        }
        let id = ContainerId::parse("a.b:S@1.0.0#3.2").unwrap();
        assert_eq!((id.pod.ordinal(), id.seq), (3, 2));
        for bad in [
            "a.b:S@1.0.0#3.0",
            "a.b:S@1.0.0#3.01",
            "a.b:S@1.0.0#3.",
            "a.b:S@1.0.0#.1",
            "x",
            "a.b:S@1.0.0#3.1/x",
        ] {
            assert!(ContainerId::parse(bad).is_none(), "{bad}");
        }
    }
}
