//! Durable state: every pod record and the ID counter, in an embedded,
//! crash-safe database (redb) in the state directory.
//!
//! A CRI call that changes a pod writes the pod's whole record (one small
//! JSON value) in one transaction before it returns success; a failed write
//! fails the call, and the kubelet's retry (an idempotent repeat) writes
//! it again. Only this module knows the database.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

    /// Writes a pod's encoded record and the ID counter in one durable
    /// transaction.
    pub fn save(&self, id: &PodId, record: &[u8], next_ordinal: u64) -> Result<(), Error> {
        let write = |db: &Database| -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            {
                let mut pods = tx.open_table(PODS)?;
                pods.insert(id.to_string().as_str(), record)?;
                let mut meta = tx.open_table(META)?;
                meta.insert(NEXT_ORDINAL, next_ordinal)?;
            }
            tx.commit()?;
            Ok(())
        };
        self.with(write, "write")
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

    pub fn delete(&self, id: &PodId) -> Result<(), Error> {
        let delete = |db: &Database| -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            tx.open_table(PODS)?.remove(id.to_string().as_str())?;
            tx.commit()?;
            Ok(())
        };
        self.with(delete, "delete")
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
            let pod: Pod = serde_json::from_slice(&value).map_err(|e| {
                Error::State(format!("state database: pod {key}: unreadable record: {e}"))
            })?;
            pods.push(pod);
        }
        // The counter never goes back, even if its own write was lost.
        let next = pods.iter().map(|p| p.id.ordinal() + 1).fold(next, u64::max);
        Ok((pods, next))
    }
}
