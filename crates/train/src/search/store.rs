//! The search's state in one SQLite file, `DIR/search.db`, shared by every
//! worker process of the search.
//!
//! Three tables: `meta` (the base config, the space, the stages, the seed
//! and the pruning rule, as JSON, written once), `stages` (each stage's
//! ranges) and `trials` (parameters, status, per-epoch validation accuracy,
//! seconds, error, and the worker that trains it with its last heartbeat).
//! Every change is one `BEGIN IMMEDIATE` transaction that reads the state,
//! changes it and writes back what changed, so two workers never claim the
//! same trial and a crash leaves the last committed state. `trials.csv` is
//! exported after every change of a trial, for people and spreadsheets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::runner::{SearchState, Trial};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stages (stage INTEGER PRIMARY KEY, space TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    trial INTEGER PRIMARY KEY,
    stage INTEGER NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    accuracies TEXT NOT NULL,
    seconds REAL NOT NULL,
    error TEXT,
    worker TEXT,
    heartbeat REAL
);
";

/// The search's database, open.
pub struct Store {
    conn: Connection,
    dir: PathBuf,
}

impl Store {
    /// The database file of the search in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("search.db")
    }

    fn connect(dir: &Path) -> Result<Connection> {
        let path = Self::path(dir);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the search database {}", path.display()))?;
        // Workers wait for each other's transactions instead of failing.
        conn.busy_timeout(Duration::from_secs(60))?;
        // Readers do not block the writer; every commit reaches the disk.
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=FULL;")?;
        Ok(conn)
    }

    /// Creates the search in `dir` from `state` (its setup and first stage).
    /// Fails when `dir` already holds one.
    pub fn create(dir: &Path, state: &SearchState) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if Self::path(dir).exists() {
            bail!(
                "{} already holds a search: pass --resume to continue it (or to add a worker), \
                 --summary to see it, or another --out",
                dir.display()
            );
        }
        let mut conn = Self::connect(dir)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        let meta = [
            ("base", serde_json::to_string(&state.base)?),
            ("space", serde_json::to_string(&state.space)?),
            ("stages", serde_json::to_string(&state.stages)?),
            ("seed", serde_json::to_string(&state.seed)?),
            ("prune", serde_json::to_string(&state.prune)?),
        ];
        for (key, value) in meta {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
        }
        write_changes(&tx, &empty_like(state), state)?;
        tx.commit()?;
        let store = Self {
            conn,
            dir: dir.to_path_buf(),
        };
        export(dir, state)?;
        Ok(store)
    }

    /// Opens the search in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        if !path.is_file() {
            bail!(
                "{} holds no search ({} is missing): is it the --out folder of a train search?",
                dir.display(),
                path.display()
            );
        }
        let conn = Self::connect(dir)?;
        let store = Self {
            conn,
            dir: dir.to_path_buf(),
        };
        store.state()?;
        Ok(store)
    }

    /// The state as last committed.
    pub fn state(&self) -> Result<SearchState> {
        read_state(&self.conn)
            .with_context(|| format!("{} is corrupt", Self::path(&self.dir).display()))
    }

    /// Runs `change` on the state inside one transaction and commits what it
    /// changed; no other worker changes the state in between.
    pub fn update<R>(&mut self, change: impl FnOnce(&mut SearchState) -> Result<R>) -> Result<R> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let before = read_state(&tx)?;
        let mut after = before.clone();
        let result = change(&mut after)?;
        if after != before {
            write_changes(&tx, &before, &after)?;
            // Exported while the database is locked, so that the last file
            // written is always the newest state.
            if after.trials != before.trials {
                export(&self.dir, &after)?;
            }
            tx.commit()?;
        }
        Ok(result)
    }
}

/// Writes `dir/trials.csv`.
fn export(dir: &Path, state: &SearchState) -> Result<()> {
    crate::rundir::write_atomic(&dir.join("trials.csv"), state.csv().as_bytes())
}

/// `state` without stages or trials: what `create` writes them against.
fn empty_like(state: &SearchState) -> SearchState {
    SearchState {
        stage_spaces: Vec::new(),
        trials: Vec::new(),
        ..state.clone()
    }
}

fn meta<T: serde::de::DeserializeOwned>(conn: &Connection, key: &str) -> Result<T> {
    let text: String = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?
        .with_context(|| format!("no '{key}' in the search's meta table"))?;
    serde_json::from_str(&text).with_context(|| format!("the search's '{key}' is corrupt"))
}

fn read_state(conn: &Connection) -> Result<SearchState> {
    let mut stages = conn.prepare("SELECT space FROM stages ORDER BY stage")?;
    let stage_spaces = stages
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|text| Ok(serde_json::from_str(&text?)?))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = conn.prepare(
        "SELECT trial, stage, params, status, accuracies, seconds, error, worker, heartbeat
         FROM trials ORDER BY trial",
    )?;
    let trials = rows
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, f64>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<f64>>(8)?,
            ))
        })?
        .map(|row| {
            let (trial, stage, params, status, accuracies, seconds, error, worker, heartbeat) =
                row?;
            Ok(Trial {
                trial: usize::try_from(trial)?,
                stage: usize::try_from(stage)?,
                params: serde_json::from_str(&params)?,
                status: serde_json::from_value(serde_json::Value::String(status))?,
                accuracies: serde_json::from_str::<Vec<Option<f64>>>(&accuracies)?
                    .into_iter()
                    .map(|a| a.unwrap_or(f64::NAN))
                    .collect(),
                seconds,
                error,
                worker,
                heartbeat,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SearchState {
        base: meta(conn, "base")?,
        space: meta(conn, "space")?,
        stages: meta(conn, "stages")?,
        seed: meta(conn, "seed")?,
        prune: meta(conn, "prune")?,
        stage_spaces,
        trials,
    })
}

fn write_changes(conn: &Connection, before: &SearchState, after: &SearchState) -> Result<()> {
    if after.stage_spaces.len() < before.stage_spaces.len()
        || after.trials.len() < before.trials.len()
    {
        bail!("a search's stages and trials are only ever added");
    }
    for (stage, space) in after.stage_spaces.iter().enumerate() {
        if before.stage_spaces.get(stage) != Some(space) {
            conn.execute(
                "INSERT OR REPLACE INTO stages (stage, space) VALUES (?1, ?2)",
                params![stage as i64, serde_json::to_string(space)?],
            )?;
        }
    }
    for trial in &after.trials {
        if before.trials.iter().any(|t| t == trial) {
            continue;
        }
        // NaN is not JSON: a diverged epoch is stored as null.
        let accuracies: Vec<Option<f64>> = trial
            .accuracies
            .iter()
            .map(|a| a.is_finite().then_some(*a))
            .collect();
        conn.execute(
            "INSERT OR REPLACE INTO trials
             (trial, stage, params, status, accuracies, seconds, error, worker, heartbeat)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                trial.trial as i64,
                trial.stage as i64,
                serde_json::to_string(&trial.params)?,
                trial.status.to_string(),
                serde_json::to_string(&accuracies)?,
                trial.seconds,
                trial.error,
                trial.worker,
                trial.heartbeat,
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::search::runner::{Prune, Stage, TrialStatus};
    use crate::search::space::Value;

    fn state() -> SearchState {
        let space = vec!["lr=log:1e-4:1".parse().unwrap()];
        SearchState {
            base: TrainConfig::default(),
            stage_spaces: vec![space],
            space: vec!["lr=log:1e-4:1".parse().unwrap()],
            stages: vec![Stage {
                epochs: 2,
                trials: 3,
            }],
            seed: 7,
            prune: Prune::Median,
            trials: Vec::new(),
        }
    }

    fn trial(n: usize) -> Trial {
        Trial {
            trial: n,
            stage: 0,
            params: vec![("lr".into(), Value::Float(0.01 * n as f64))],
            status: TrialStatus::Queued,
            accuracies: Vec::new(),
            seconds: 0.0,
            error: None,
            worker: None,
            heartbeat: None,
        }
    }

    #[test]
    fn the_state_round_trips_through_the_database() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::create(tmp.path(), &state()).unwrap();
        store
            .update(|st| {
                st.trials.extend([trial(0), trial(1)]);
                st.trials[1].status = TrialStatus::Diverged;
                st.trials[1].accuracies = vec![0.25, f64::NAN];
                st.trials[1].worker = Some("host:1".into());
                st.trials[1].heartbeat = Some(1.5);
                st.trials[1].error = Some("loss NaN".into());
                Ok(())
            })
            .unwrap();
        drop(store);
        let back = Store::open(tmp.path()).unwrap().state().unwrap();
        assert_eq!(back.seed, 7);
        assert_eq!(back.prune, Prune::Median);
        assert_eq!(back.stage_spaces, state().stage_spaces);
        assert_eq!(back.trials[0], trial(0));
        let t = &back.trials[1];
        assert_eq!(t.status, TrialStatus::Diverged);
        assert_eq!(t.accuracies[0], 0.25);
        assert!(t.accuracies[1].is_nan());
        assert_eq!(t.worker.as_deref(), Some("host:1"));
        assert_eq!(t.error.as_deref(), Some("loss NaN"));
        let csv = std::fs::read_to_string(tmp.path().join("trials.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3, "{csv}");
    }

    #[test]
    fn a_failed_change_commits_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::create(tmp.path(), &state()).unwrap();
        let result: Result<()> = store.update(|st| {
            st.trials.push(trial(0));
            bail!("refused")
        });
        assert!(result.is_err());
        assert!(store.state().unwrap().trials.is_empty());
    }

    #[test]
    fn a_second_create_and_a_missing_search_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        Store::create(tmp.path(), &state()).unwrap();
        let again = Store::create(tmp.path(), &state()).err().unwrap();
        assert!(format!("{again:#}").contains("--resume"), "{again:#}");
        let missing = Store::open(&tmp.path().join("nothing")).err().unwrap();
        assert!(format!("{missing:#}").contains("search.db"), "{missing:#}");
    }

    #[test]
    fn concurrent_updates_from_two_connections_are_serialized() {
        let tmp = tempfile::tempdir().unwrap();
        Store::create(tmp.path(), &state()).unwrap();
        // Two workers each claim 50 trials, one transaction per claim: every
        // number is taken exactly once.
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let dir = tmp.path().to_path_buf();
                std::thread::spawn(move || {
                    let mut store = Store::open(&dir).unwrap();
                    for _ in 0..50 {
                        store
                            .update(|st| {
                                let mut t = trial(st.trials.len());
                                t.worker = Some(format!("w{w}"));
                                st.trials.push(t);
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let st = Store::open(tmp.path()).unwrap().state().unwrap();
        let numbers: Vec<usize> = st.trials.iter().map(|t| t.trial).collect();
        assert_eq!(numbers, (0..100).collect::<Vec<_>>());
        for w in ["w0", "w1"] {
            let n = st.trials.iter().filter(|t| t.worker.as_deref() == Some(w));
            assert_eq!(n.count(), 50, "{w}");
        }
    }
}
