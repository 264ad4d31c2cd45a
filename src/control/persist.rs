//! Durable state: every pod record and the ID counter, in an embedded,
//! crash-safe database (redb) in the state directory.
//!
//! A CRI call that changes a pod writes the pod's whole record (one small
//! JSON value) in one transaction before it returns success; a failed write
//! fails the call, and the kubelet's retry (an idempotent repeat) writes
//! it again. Only this module knows the database.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::state::Pod;
use super::Error;
use crate::pool::PodId;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ORDINAL: &str = "next_ordinal";

pub struct Db {
    db: Database,
}

fn db_error(what: &str) -> impl Fn(redb::Error) -> Error + '_ {
    move |e| Error::State(format!("state database: {what}: {e}"))
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = Database::create(path)
            .map_err(|e| Error::State(format!("state database {}: {e}", path.display())))?;
        Ok(Self { db })
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
        write(&self.db).map_err(db_error("write"))
    }

    pub fn delete(&self, id: &PodId) -> Result<(), Error> {
        let delete = |db: &Database| -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            tx.open_table(PODS)?.remove(id.to_string().as_str())?;
            tx.commit()?;
            Ok(())
        };
        delete(&self.db).map_err(db_error("delete"))
    }

    /// Every stored pod and the ID counter.
    pub fn load(&self) -> Result<(Vec<Pod>, u64), Error> {
        let read = |db: &Database| -> Result<(Vec<(String, Vec<u8>)>, u64), redb::Error> {
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
        let (raw, next) = read(&self.db).map_err(db_error("read"))?;
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
