//! `patientflow report`: the KPIs hospital operations ask for, from the warehouse. The SQL lives in
//! `sql/embedded/report/`; this module runs it and renders a readable table or JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// One table of the report: a KPI, the query that computes it and the columns of that query it
/// shows (all when empty). KPIs that aggregate the same rows share one query, run once.
#[derive(Debug, Clone, Copy)]
pub struct Kpi {
    /// Stable name (the JSON key).
    pub name: &'static str,
    /// Human title.
    pub title: &'static str,
    /// The SQL (`sql/embedded/report/`).
    pub sql: &'static str,
    /// The query's columns this KPI shows, in order; empty for all.
    pub columns: &'static [&'static str],
}

/// The seed notebook's two KPIs, computed together (see the SQL).
const SEED_KPIS: &str = include_str!("../../sql/embedded/report/06_seed_kpis_by_gender.sql");

/// Every KPI of the report. The last two are the seed notebook's KPIs exactly as the seed defines
/// them, beside our well-defined ones, so a team migrating from the notebooks can check parity.
pub const KPIS: [Kpi; 7] = [
    Kpi {
        name: "bed_occupancy_by_gender",
        title: "Bed occupancy % by gender",
        sql: include_str!("../../sql/embedded/report/01_bed_occupancy_by_gender.sql"),
        columns: &[],
    },
    Kpi {
        name: "bed_turnover_by_gender",
        title: "Bed turnover rate by gender",
        sql: include_str!("../../sql/embedded/report/02_bed_turnover_by_gender.sql"),
        columns: &[],
    },
    Kpi {
        name: "census_by_hospital_department",
        title: "Current census and occupancy by hospital and department",
        sql: include_str!("../../sql/embedded/report/03_census_by_hospital_department.sql"),
        columns: &[],
    },
    Kpi {
        name: "length_of_stay_by_department",
        title: "Length of stay (hours) by department",
        sql: include_str!("../../sql/embedded/report/04_length_of_stay_by_department.sql"),
        columns: &[],
    },
    Kpi {
        name: "admissions_per_hour",
        title: "Admissions per hour, last 24 h",
        sql: include_str!("../../sql/embedded/report/05_admissions_per_hour.sql"),
        columns: &[],
    },
    Kpi {
        name: "seed_bed_occupancy_by_gender",
        title: "Seed notebook's bed occupancy % by gender (its formula: share of the gender's visits with a discharge after the clock; for parity only)",
        sql: SEED_KPIS,
        columns: &["gender", "bed_occupancy_percent"],
    },
    Kpi {
        name: "seed_bed_turnover_by_gender",
        title: "Seed notebook's bed turnover rate by gender (its formula: distinct visits / distinct bed numbers; for parity only)",
        sql: SEED_KPIS,
        columns: &["gender", "bed_turnover_rate"],
    },
];

/// One KPI table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    /// Stable name (the JSON key).
    pub name: String,
    /// Human title.
    pub title: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The gold build in the warehouse.
    pub build: Option<u64>,
    /// The build's clock.
    pub as_of: Option<String>,
    /// KPI tables.
    pub sections: Vec<Section>,
    /// Quarantined events by reason (from the lake).
    pub quarantine_by_reason: BTreeMap<String, u64>,
}

/// The widest a text cell is rendered, in characters; longer values end in an ellipsis (the JSON
/// output carries them whole).
pub const MAX_CELL_CHARS: usize = 60;

fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match text.char_indices().nth(MAX_CELL_CHARS - 1) {
        Some((end, _)) if text.chars().count() > MAX_CELL_CHARS => format!("{}…", &text[..end]),
        _ => text,
    }
}

/// `value` right-aligned in `width` characters. Padded by hand: `format!`'s width argument panics
/// past 65,535.
fn pad_left(value: &str, width: usize) -> String {
    let len = value.chars().count();
    let mut out = String::with_capacity(value.len() + width.saturating_sub(len));
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
    out.push_str(value);
    out
}

impl Report {
    /// Readable tables.
    pub fn render(&self) -> String {
        let mut out = match (&self.build, &self.as_of) {
            (Some(b), Some(t)) => format!("patientflow report — gold build {b}, as of {t}\n"),
            _ => "patientflow report — the warehouse holds no build yet (run `patientflow run` first)\n".to_string(),
        };
        for s in &self.sections {
            out.push_str(&format!("\n{}\n", s.title));
            let cells: Vec<Vec<String>> = s.rows.iter().map(|r| r.iter().map(cell).collect()).collect();
            let columns: Vec<String> = s.columns.iter().map(|c| cell(&Value::String(c.clone()))).collect();
            let widths: Vec<usize> = (0..columns.len())
                .map(|i| {
                    cells
                        .iter()
                        .filter_map(|r| r.get(i))
                        .map(|c| c.chars().count())
                        .chain([columns[i].chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |values: &[String]| {
                let parts: Vec<String> = values.iter().zip(&widths).map(|(v, w)| pad_left(v, *w)).collect();
                format!("  {}\n", parts.join("  "))
            };
            out.push_str(&line(&columns));
            for r in &cells {
                out.push_str(&line(r));
            }
            if cells.is_empty() {
                out.push_str("  (no rows)\n");
            }
        }
        out.push_str("\nQuarantined events by reason\n");
        let total: u64 = self.quarantine_by_reason.values().sum();
        for (reason, n) in &self.quarantine_by_reason {
            let reason = cell(&Value::String(reason.clone()));
            out.push_str(&format!("  {reason:<20} {n:>10}\n"));
        }
        out.push_str(&format!("  {:<20} {total:>10}\n", "total"));
        out
    }
}

/// Runs every report query against the embedded warehouse.
#[cfg(feature = "embedded-warehouse")]
pub fn query_embedded(conn: &duckdb::Connection) -> super::Result<Report> {
    let mut report = Report::default();
    let latest: Option<(i64, String)> = conn
        .query_row(
            "SELECT build, strftime(as_of, '%Y-%m-%dT%H:%M:%S.%fZ') FROM LoadLog ORDER BY build DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    report.build = latest.as_ref().map(|(b, _)| *b as u64);
    report.as_of = latest.map(|(_, t)| t);
    // The last query's result, for the KPIs that share it.
    let mut last: Option<(&str, Vec<String>, Rows)> = None;
    for kpi in KPIS {
        let (columns, rows) = match &last {
            Some((sql, columns, rows)) if *sql == kpi.sql => (columns, rows),
            _ => {
                let (columns, rows) = run_embedded(conn, kpi.sql).map_err(|e| {
                    let names: Vec<&str> = KPIS.iter().filter(|k| k.sql == kpi.sql).map(|k| k.name).collect();
                    super::Error::Database(format!("KPI {}: {e}", names.join(" and ")))
                })?;
                let (_, columns, rows) = last.insert((kpi.sql, columns, rows));
                (&*columns, &*rows)
            }
        };
        let shown: Vec<usize> = if kpi.columns.is_empty() {
            (0..columns.len()).collect()
        } else {
            let at = |name: &&str| columns.iter().position(|c| c == name);
            kpi.columns.iter().map(at).collect::<Option<_>>().ok_or_else(|| {
                super::Error::Database(format!(
                    "KPI {}: its query returns {columns:?}, not all of {:?}",
                    kpi.name, kpi.columns
                ))
            })?
        };
        report.sections.push(Section {
            name: kpi.name.into(),
            title: kpi.title.into(),
            columns: shown.iter().map(|&i| columns[i].clone()).collect(),
            rows: rows.iter().map(|row| shown.iter().map(|&i| row[i].clone()).collect()).collect(),
        });
    }
    Ok(report)
}

/// A query's rows, one JSON value per column.
#[cfg(feature = "embedded-warehouse")]
type Rows = Vec<Vec<Value>>;

/// Runs one report query: its column names and rows.
#[cfg(feature = "embedded-warehouse")]
fn run_embedded(conn: &duckdb::Connection, sql: &str) -> duckdb::Result<(Vec<String>, Rows)> {
    use duckdb::types::Value as D;
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let mut columns = Vec::new();
    while let Some(row) = rows.next()? {
        if columns.is_empty() {
            columns = row.as_ref().column_names();
        }
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let v: D = row.get(i)?;
            values.push(match v {
                D::Null => Value::Null,
                D::Boolean(b) => Value::Bool(b),
                D::TinyInt(n) => n.into(),
                D::SmallInt(n) => n.into(),
                D::Int(n) => n.into(),
                D::BigInt(n) => n.into(),
                D::UTinyInt(n) => n.into(),
                D::USmallInt(n) => n.into(),
                D::UInt(n) => n.into(),
                D::UBigInt(n) => n.into(),
                D::HugeInt(n) => Value::from(n as f64),
                D::Float(f) => Value::from(f64::from(f)),
                D::Double(f) => Value::from(f),
                D::Decimal(d) => Value::String(d.to_string()),
                D::Text(s) => Value::String(s),
                D::Date32(d) => Value::String(
                    chrono::DateTime::from_timestamp(i64::from(d) * 86_400, 0)
                        .map(|t| t.format("%Y-%m-%d").to_string())
                        .unwrap_or_default(),
                ),
                other => Value::String(format!("{other:?}")),
            });
        }
        out.push(values);
    }
    if columns.is_empty() {
        columns = stmt.column_names();
    }
    Ok((columns, out))
}
