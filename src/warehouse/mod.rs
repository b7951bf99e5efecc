//! The warehouse seam: the gold build is loaded, idempotently per build, into a [`Warehouse`] — the
//! embedded DuckDB database by default (feature `embedded-warehouse`), Synapse when configured.

#[cfg(feature = "embedded-warehouse")]
pub mod embedded;
pub mod report;
pub mod synapse;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::Serialize;

use crate::pipeline::gold::manifest::{Manifest, TableFile};
use crate::storage::Lake;

/// Warehouse errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The warehouse rejected a statement or could not be opened.
    #[error("warehouse: {0}")]
    Database(String),
    /// Reading the gold files failed.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::Error),
    /// Another process holds the warehouse (a load is in progress) longer than the wait allows.
    #[error("{0}")]
    Busy(String),
    /// The warehouse holds a newer build than the one offered.
    #[error("warehouse already holds build {loaded}, newer than build {offered}; nothing loaded")]
    Newer {
        /// Build in the warehouse.
        loaded: u64,
        /// Build offered.
        offered: u64,
    },
}

/// Result alias for warehouse calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a load did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadMetrics {
    /// The build now in the warehouse.
    pub build: u64,
    /// `false` when the build was already loaded (nothing changed).
    pub loaded: bool,
    /// Gold files loaded (the build's files the warehouse did not hold).
    pub files_added: u64,
    /// Gold files the warehouse held that the build no longer has (their rows were replaced by the
    /// added files' rows, or by the whole table's).
    pub files_removed: u64,
    /// DimPatient rows written.
    pub patient_rows_written: u64,
    /// Fact rows written.
    pub fact_rows_written: u64,
    /// Fact rows in the warehouse after the load.
    pub fact_rows_total: u64,
    /// Tables whose deleted rows the load's checkpoint reclaimed (the embedded warehouse does so
    /// once they are more than a tenth of a table's stored rows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vacuumed: Vec<String>,
    /// Seconds per phase (`delete`, `insert`, `commit`), where the loader can tell them apart (the
    /// embedded one; a Synapse load is one batch).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub phase_seconds: BTreeMap<&'static str, f64>,
}

/// A gold table, as both warehouses name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `DimDepartment`: small, replaced whole.
    DimDepartment,
    /// `DimPatient` (SCD2), by `patient_id`.
    DimPatient,
    /// `DimTime`: small, replaced whole.
    DimTime,
    /// `FactPatientFlow`, by `fact_id`.
    FactPatientFlow,
}

impl Table {
    /// Every table, in load order (dimensions before facts).
    pub const ALL: [Table; 4] = [Table::DimDepartment, Table::DimPatient, Table::DimTime, Table::FactPatientFlow];

    /// The table's name in both warehouses (and in `LoadedFile.table_name`).
    pub fn name(self) -> &'static str {
        match self {
            Table::DimDepartment => "DimDepartment",
            Table::DimPatient => "DimPatient",
            Table::DimTime => "DimTime",
            Table::FactPatientFlow => "FactPatientFlow",
        }
    }

    /// The table named `name`.
    pub fn parse(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The column whose value is in exactly one file of a build, by which a load replaces rows;
    /// `None` for the small tables a load replaces whole.
    pub fn key(self) -> Option<&'static str> {
        match self {
            Table::DimPatient => Some("patient_id"),
            Table::FactPatientFlow => Some("fact_id"),
            Table::DimDepartment | Table::DimTime => None,
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One gold file of a build, as a loader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldFile {
    /// Its table.
    pub table: Table,
    /// Its key in the gold container.
    pub file: String,
    /// Rows in it.
    pub rows: u64,
    /// Whether a load may append it without deleting first: none of its keys can be in the
    /// warehouse (see [`TableFile::fresh`](crate::pipeline::gold::manifest::TableFile::fresh)).
    pub fresh: bool,
    /// Facts only: the earliest instant one of its rows' census flag flips, when a later build
    /// replaces the file (see [`TableFile::next_change_us`]); `None` for files no clock replaces.
    pub next_change_us: Option<i64>,
}

/// The files of a build that loaders load, table by table (the ledger is gold-internal).
pub fn gold_files(m: &Manifest) -> Vec<GoldFile> {
    let whole = |table: Table, file: &String| GoldFile {
        table,
        file: file.clone(),
        rows: m.rows.get(table.name()).copied().unwrap_or(0),
        fresh: false,
        next_change_us: None,
    };
    let keyed = |table: Table, f: &TableFile| GoldFile {
        table,
        file: f.file.clone(),
        rows: f.rows,
        fresh: f.fresh,
        next_change_us: f.next_change_us,
    };
    let mut files = vec![whole(Table::DimDepartment, &m.dim_department)];
    files.extend(m.dim_patient.iter().map(|f| keyed(Table::DimPatient, f)));
    files.push(whole(Table::DimTime, &m.dim_time));
    files.extend(m.fact_files().map(|f| keyed(Table::FactPatientFlow, f)));
    files.retain(|f| !f.file.is_empty());
    files
}

/// The gold files a warehouse holds rows of (its `LoadedFile` table): (table, file).
pub type LoadedFiles = BTreeSet<(Table, String)>;

/// What the load of one build does, file by file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileChanges {
    /// The build's files the warehouse does not hold: their rows are inserted, after the rows with
    /// their keys are deleted unless the file is `fresh` (for DimDepartment and DimTime: after
    /// the whole table is emptied).
    pub added: Vec<GoldFile>,
    /// Files the warehouse holds that the build no longer has: forgotten. Their rows need no
    /// delete of their own: every key of theirs is in an added file (keys move between files,
    /// never vanish), whose load deletes it.
    pub removed: Vec<(Table, String)>,
    /// Keyed tables the build dropped every held file of: each row the warehouse holds is replaced
    /// by a row of an added file, so the table is emptied (no delete by key) and refilled, its
    /// added files loaded as `fresh`.
    pub emptied: BTreeSet<Table>,
}

impl FileChanges {
    /// Nothing to do: the warehouse holds exactly the build's files.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// The added files of `table`.
    pub fn added(&self, table: Table) -> impl Iterator<Item = &GoldFile> {
        self.added.iter().filter(move |f| f.table == table)
    }

    /// The added files of keyed `table` whose keys may be in the warehouse: delete, then insert.
    pub fn replacing(&self, table: Table) -> impl Iterator<Item = &GoldFile> {
        self.added(table).filter(|f| !f.fresh)
    }

    /// Whether the load empties `table` and refills it from its added files: a small table whose
    /// file changed, or a keyed table in [`emptied`](Self::emptied).
    pub fn replaces_whole(&self, table: Table) -> bool {
        let changed = self.added(table).next().is_some() || self.removed.iter().any(|(t, _)| *t == table);
        (table.key().is_none() && changed) || self.emptied.contains(&table)
    }

    /// Rows the added files of `table` hold.
    pub fn added_rows(&self, table: Table) -> u64 {
        self.added(table).map(|f| f.rows).sum()
    }
}

/// Compares a build's files with the files the warehouse holds: added = the build's files not
/// held; removed = held files the build lacks. By gold's invariants (each key in exactly one file
/// of a build; a key never leaves gold once in it; files immutable) loading the added files — each
/// replacing the rows of its keys — and forgetting the removed ones gives exactly the build's
/// tables, however many builds behind the warehouse is.
///
/// An added file is loaded as `fresh` (no delete) when gold says so; also when the warehouse holds
/// no file of its table (the table is empty: nothing to delete), and when the build dropped every
/// file of its table the warehouse holds (the table is [emptied](FileChanges::emptied): each row of
/// a dropped file is replaced by the added file that now holds its key, so every row goes).
pub fn file_changes(manifest: &Manifest, loaded: &LoadedFiles) -> FileChanges {
    let files = gold_files(manifest);
    let in_build: BTreeSet<(Table, &str)> = files.iter().map(|f| (f.table, f.file.as_str())).collect();
    let removed: Vec<(Table, String)> =
        loaded.iter().filter(|(t, f)| !in_build.contains(&(*t, f.as_str()))).cloned().collect();
    let held = |t: Table| loaded.iter().filter(move |(l, _)| *l == t).count();
    let dropped = |t: Table| removed.iter().filter(|(r, _)| *r == t).count();
    let emptied: BTreeSet<Table> =
        Table::ALL.into_iter().filter(|&t| t.key().is_some() && held(t) > 0 && dropped(t) == held(t)).collect();
    let added = files
        .iter()
        .filter(|f| !loaded.contains(&(f.table, f.file.clone())))
        .map(|f| GoldFile { fresh: f.fresh || held(f.table) == 0 || emptied.contains(&f.table), ..f.clone() })
        .collect();
    FileChanges { added, removed, emptied }
}

/// The files of `manifest`, as a warehouse that holds that build records them.
pub fn loaded_files(manifest: &Manifest) -> LoadedFiles {
    gold_files(manifest).into_iter().map(|f| (f.table, f.file)).collect()
}

/// A star-schema warehouse that gold builds are loaded into.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// Loads build `manifest.build` from the lake, in one transaction; a build already loaded is a no-op.
    async fn load(&self, lake: &Lake, manifest: &Manifest) -> Result<LoadMetrics>;

    /// The build the warehouse holds, if any.
    async fn loaded_build(&self) -> Result<Option<u64>>;

    /// The KPI report from the loaded build.
    async fn report(&self) -> Result<report::Report>;

    /// A short name for logs.
    fn name(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::gold::manifest::FactPartition;

    fn file(name: &str, fresh: bool) -> TableFile {
        TableFile { file: format!("builds/{name}.parquet"), rows: 1, fresh, ..Default::default() }
    }

    fn build(n: u64, patients: &[(&str, bool)], facts: &[(&str, bool)]) -> Manifest {
        let mut m = Manifest {
            build: n,
            dim_department: "builds/1/dep.parquet".into(),
            dim_time: format!("builds/{n}/time.parquet"),
            dim_patient: patients.iter().map(|(f, fresh)| file(f, *fresh)).collect(),
            ledger: Some(vec![file("ledger", false)]),
            ..Default::default()
        };
        let files = facts.iter().map(|(f, fresh)| file(f, *fresh)).collect();
        m.fact_patient_flow.insert("2026-11-24".into(), FactPartition { files, discharge_days: vec![] });
        m
    }

    fn names(files: &[GoldFile]) -> Vec<(&str, bool)> {
        files.iter().map(|f| (f.file.as_str(), f.fresh)).collect()
    }

    #[test]
    fn changes_are_the_files_added_and_removed() {
        let one = build(1, &[("p1", false)], &[("f1", false), ("f4", false)]);
        let two = build(2, &[("p1", false), ("p2", true)], &[("f2", false), ("f3", true), ("f4", false)]);

        // An empty warehouse loads everything, with nothing to delete; the ledger is never loaded.
        let first = file_changes(&one, &LoadedFiles::new());
        assert_eq!(
            names(&first.added),
            [
                ("builds/1/dep.parquet", true),
                ("builds/p1.parquet", true),
                ("builds/1/time.parquet", true),
                ("builds/f1.parquet", true),
                ("builds/f4.parquet", true)
            ]
        );
        assert!(first.removed.is_empty() && first.emptied.is_empty());
        assert!(first.replaces_whole(Table::DimDepartment) && first.replaces_whole(Table::DimTime));

        // The next build: new files only, `fresh` as gold says; the replaced files forgotten.
        let next = file_changes(&two, &loaded_files(&one));
        assert_eq!(
            names(&next.added),
            [
                ("builds/p2.parquet", true),
                ("builds/2/time.parquet", false),
                ("builds/f2.parquet", false),
                ("builds/f3.parquet", true)
            ]
        );
        assert_eq!(
            next.removed,
            [
                (Table::DimTime, "builds/1/time.parquet".to_string()),
                (Table::FactPatientFlow, "builds/f1.parquet".into())
            ]
        );
        assert!(!next.replaces_whole(Table::DimDepartment), "DimDepartment's file is unchanged");
        assert!(next.replaces_whole(Table::DimTime));
        assert!(next.emptied.is_empty() && !next.replaces_whole(Table::FactPatientFlow), "f4 is kept");
        assert_eq!(
            names(&next.replacing(Table::FactPatientFlow).cloned().collect::<Vec<_>>()),
            [("builds/f2.parquet", false)]
        );
        assert_eq!(next.replacing(Table::DimPatient).count(), 0);
        assert_eq!((next.added_rows(Table::FactPatientFlow), next.added_rows(Table::DimPatient)), (2, 1));

        // The same build again: nothing.
        assert!(file_changes(&two, &loaded_files(&two)).is_empty());
        // Every file the build references but the ledger's.
        assert_eq!(loaded_files(&two).len(), 7);

        // A build that drops every held DimPatient file: the table is emptied and refilled.
        let three = build(3, &[("p3", false)], &[("f2", false), ("f3", true), ("f4", false)]);
        let all = file_changes(&three, &loaded_files(&two));
        assert_eq!(all.emptied, BTreeSet::from([Table::DimPatient]));
        assert!(all.replaces_whole(Table::DimPatient) && !all.replaces_whole(Table::FactPatientFlow));
        assert_eq!(
            names(&all.added.iter().filter(|f| f.table == Table::DimPatient).cloned().collect::<Vec<_>>()),
            [("builds/p3.parquet", true)]
        );
        assert_eq!(all.replacing(Table::DimPatient).count(), 0, "no delete by key");
    }

    #[test]
    fn tables_round_trip_their_names() {
        for t in Table::ALL {
            assert_eq!(Table::parse(t.name()), Some(t));
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!(Table::parse("LoadLog"), None);
        assert_eq!(Table::DimPatient.key(), Some("patient_id"));
        assert_eq!(Table::DimTime.key(), None);
    }
}
