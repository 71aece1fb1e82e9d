//! Subscription and authorization state in SQLite. The core emits a `Persist`
//! output before any transmit that depends on it; the host applies it here, in a
//! committed transaction with `synchronous = FULL`, before it moves on to the next
//! output, so that nothing is acknowledged on the wire before it is on disk.

use std::fmt;
use std::path::Path;

use isthmus_core::roster::{Item, Persist, Sub};
use rusqlite::{params, Connection, OptionalExtension};

/// Schema migrations, in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: one row per (SIP user, XMPP contact) with both subscription directions.
    "CREATE TABLE roster (
        local TEXT NOT NULL,
        remote TEXT NOT NULL,
        watch TEXT NOT NULL CHECK (watch IN ('none', 'pending', 'active')),
        watched_by TEXT NOT NULL CHECK (watched_by IN ('none', 'pending', 'active')),
        PRIMARY KEY (local, remote)
    ) WITHOUT ROWID;",
];

#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    /// The file was written by a newer isthmus.
    TooNew {
        found: i64,
        known: i64,
    },
    /// A row holds a value this version does not know.
    Corrupt(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "state database: {e}"),
            StoreError::TooNew { found, known } => write!(
                f,
                "state database schema version {found} is newer than this isthmus knows ({known}); use a newer isthmus"
            ),
            StoreError::Corrupt(t) => write!(f, "state database: {t}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version in the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Makes one change durable (returns once it is committed).
    pub fn apply(&mut self, p: &Persist) -> Result<(), StoreError> {
        if p.item == Item::default() {
            self.conn.execute(
                "DELETE FROM roster WHERE local = ?1 AND remote = ?2",
                params![p.local, p.remote],
            )?;
        } else {
            self.conn.execute(
                "INSERT INTO roster (local, remote, watch, watched_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (local, remote) DO UPDATE SET watch = excluded.watch, watched_by = excluded.watched_by",
                params![p.local, p.remote, p.item.watch.as_str(), p.item.watched_by.as_str()],
            )?;
        }
        Ok(())
    }

    /// Everything stored, for `Gateway::restore`.
    pub fn load(&self) -> Result<Vec<Persist>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT local, remote, watch, watched_by FROM roster ORDER BY local, remote",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (local, remote, watch, watched_by) = row?;
            let parse = |s: &str| {
                Sub::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown state '{s}'")))
            };
            out.push(Persist {
                local,
                remote,
                item: Item {
                    watch: parse(&watch)?,
                    watched_by: parse(&watched_by)?,
                },
            });
        }
        Ok(out)
    }

    /// One pair's state, for checks.
    pub fn get(&self, local: &str, remote: &str) -> Result<Item, StoreError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT watch, watched_by FROM roster WHERE local = ?1 AND remote = ?2",
                params![local, remote],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => Ok(Item::default()),
            Some((w, b)) => Ok(Item {
                watch: Sub::parse(&w).ok_or_else(|| StoreError::Corrupt(w.clone()))?,
                watched_by: Sub::parse(&b).ok_or_else(|| StoreError::Corrupt(b.clone()))?,
            }),
        }
    }

    /// SQLite's own consistency check.
    pub fn integrity_ok(&self) -> Result<bool, StoreError> {
        let r: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(r == "ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("isthmus-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("state.sqlite")
    }

    #[test]
    fn apply_load_delete_and_migrations() {
        let path = temp("basic");
        let mut s = Store::open(&path).expect("open");
        assert_eq!(s.schema_version().expect("version"), 1);
        let p = Persist {
            local: "alice@sip.test".into(),
            remote: "romeo@xmpp.test".into(),
            item: Item {
                watch: Sub::Active,
                watched_by: Sub::Pending,
            },
        };
        s.apply(&p).expect("apply");
        drop(s);
        let mut s = Store::open(&path).expect("reopen runs no migration twice");
        assert_eq!(s.load().expect("load"), vec![p.clone()]);
        s.apply(&Persist {
            item: Item::default(),
            ..p
        })
        .expect("delete");
        assert!(s.load().expect("load").is_empty());
        assert!(s.integrity_ok().expect("check"));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let path = temp("newer");
        let s = Store::open(&path).expect("open");
        s.conn.pragma_update(None, "user_version", 99).expect("set");
        drop(s);
        let err = Store::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
