//! Local lookup tables (CSV or JSON files) as a [`LookupSource`].
//!
//! A file is read and parsed once, when the config is loaded; every row becomes canonical
//! JSON (object keys sorted, compact) ready to serve, so a lookup costs one hash-map probe.
//! Options select the rows (`filter`), the fields (`columns`, `rename`), how the key is
//! spelled (`key_pad` for zero-padded numeric codes) and whether one key may have several
//! rows (`group`). Reloading the config builds a new [`FileSource`].
//!
//! The administrative-unit table shipped in `config/data/dvhc-2025.csv` holds three kinds
//! of rows told apart by its `level` column (`province`, `commune`, `conversion`); the
//! [`DvhcTable`] presets turn it into the province, commune and old→new commune lookups.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::lookup::{Fetched, LookupSource, SourceFuture};

/// Why a table could not be loaded. Every variant names the file (when there is one) and,
/// where it helps, the line, so a config check can point at the problem.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: unknown table format (expected a .csv or .json file)")]
    Format { path: PathBuf },
    #[error("CSV line {line}: {problem}")]
    Csv { line: usize, problem: String },
    #[error("JSON: {0}")]
    Json(String),
    #[error("unknown column {column:?} (columns: {known})")]
    UnknownColumn { column: String, known: String },
    #[error("key {key:?} appears twice (set group = true if that is intended)")]
    DuplicateKey { key: String },
    #[error("{path}: {inner}")]
    InFile {
        path: PathBuf,
        #[source]
        inner: Box<TableError>,
    },
}

/// A parsed file: its column names and its rows (objects), in file order.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
}

impl Table {
    /// Reads a `.csv` or `.json` file (by extension).
    pub fn load(path: impl AsRef<Path>) -> Result<Table, TableError> {
        let path = path.as_ref();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parse: fn(&str) -> Result<Table, TableError> = match ext.as_deref() {
            Some("csv") => Table::from_csv,
            Some("json") => |text| Table::from_json(text, None),
            _ => {
                return Err(TableError::Format {
                    path: path.to_owned(),
                })
            }
        };
        let text = std::fs::read_to_string(path).map_err(|source| TableError::Io {
            path: path.to_owned(),
            source,
        })?;
        parse(&text).map_err(|inner| TableError::InFile {
            path: path.to_owned(),
            inner: Box::new(inner),
        })
    }

    /// RFC 4180 CSV with a header line. Every cell is a string (codes keep their leading
    /// zeros); cells are not trimmed. A UTF-8 BOM and blank lines are ignored.
    pub fn from_csv(text: &str) -> Result<Table, TableError> {
        let mut records = parse_csv(text.strip_prefix('\u{feff}').unwrap_or(text))?;
        if records.is_empty() {
            return Ok(Table::default());
        }
        let (_, header) = records.remove(0);
        for (i, name) in header.iter().enumerate() {
            if name.is_empty() || header[..i].contains(name) {
                return Err(TableError::Csv {
                    line: 1,
                    problem: format!("column {} has an empty or repeated name", i + 1),
                });
            }
        }
        let mut rows = Vec::with_capacity(records.len());
        for (line, cells) in records {
            if cells.len() != header.len() {
                return Err(TableError::Csv {
                    line,
                    problem: format!("{} cells, the header has {}", cells.len(), header.len()),
                });
            }
            rows.push(
                header
                    .iter()
                    .cloned()
                    .zip(cells.into_iter().map(Value::String))
                    .collect(),
            );
        }
        Ok(Table {
            columns: header,
            rows,
        })
    }

    /// A JSON array of objects, either the whole document or the one at `pointer`
    /// (RFC 6901, e.g. `/data`). Columns are the union of the objects' fields.
    pub fn from_json(text: &str, pointer: Option<&str>) -> Result<Table, TableError> {
        let doc: Value = serde_json::from_str(text).map_err(|e| TableError::Json(e.to_string()))?;
        let array = match pointer {
            Some(p) => doc
                .pointer(p)
                .ok_or_else(|| TableError::Json(format!("nothing at {p:?}")))?,
            None => &doc,
        };
        let Value::Array(items) = array else {
            return Err(TableError::Json("expected an array of objects".into()));
        };
        let mut table = Table::default();
        for (i, item) in items.iter().enumerate() {
            let Value::Object(obj) = item else {
                return Err(TableError::Json(format!("item {i} is not an object")));
            };
            for k in obj.keys() {
                if !table.columns.contains(k) {
                    table.columns.push(k.clone());
                }
            }
            table.rows.push(obj.clone());
        }
        Ok(table)
    }

    fn check_column(&self, column: &str) -> Result<(), TableError> {
        if self.columns.iter().any(|c| c == column) {
            Ok(())
        } else {
            Err(TableError::UnknownColumn {
                column: column.to_owned(),
                known: self.columns.join(", "),
            })
        }
    }
}

/// The CSV records with the (1-based) line each starts on.
fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, TableError> {
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut start_line = 1;
    // `quoted`: inside a quoted field; `was_quoted`: the current field was quoted and
    // only a separator may follow its closing quote.
    let (mut quoted, mut was_quoted) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quoted = false;
                    was_quoted = true;
                }
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                // A line with nothing on it is not a record.
                if !(record.len() == 1 && record[0].is_empty() && !was_quoted) {
                    records.push((start_line, std::mem::take(&mut record)));
                }
                record.clear();
                was_quoted = false;
                line += 1;
                start_line = line;
            }
            '"' if field.is_empty() && !was_quoted => quoted = true,
            _ if was_quoted => {
                return Err(TableError::Csv {
                    line,
                    problem: "text after a closing quote".into(),
                })
            }
            '"' => {
                return Err(TableError::Csv {
                    line,
                    problem: "quote inside an unquoted field".into(),
                })
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(TableError::Csv {
            line: start_line,
            problem: "unterminated quoted field".into(),
        });
    }
    if !field.is_empty() || !record.is_empty() || was_quoted {
        record.push(field);
        records.push((start_line, record));
    }
    Ok(records)
}

/// How a [`Table`] becomes a [`FileSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOptions {
    /// Column (CSV) or field (JSON) holding the key. Rows whose key is missing or empty
    /// are left out of keyed lookups (they still appear in the whole-table value).
    pub key: String,
    /// Keep only rows where each named column equals the value. Those columns are then
    /// constant and are dropped from the output.
    pub filter: Vec<(String, String)>,
    /// Output only these columns (default: all but the filter columns).
    pub columns: Option<Vec<String>>,
    /// Output-name changes, `(column, new name)`.
    pub rename: Vec<(String, String)>,
    /// Several rows per key allowed: each key's value is then a JSON array of its rows.
    /// When false a repeated key is a load error.
    pub group: bool,
    /// Zero-pad all-digit keys to this width, both in the file and in requests, so that
    /// `1`, `01` and numeric JSON codes all find `01`.
    pub key_pad: Option<usize>,
    /// Leave out fields whose value is an empty string (CSV's way of saying "none").
    pub omit_empty: bool,
}

impl TableOptions {
    pub fn new(key: impl Into<String>) -> Self {
        TableOptions {
            key: key.into(),
            filter: Vec::new(),
            columns: None,
            rename: Vec::new(),
            group: false,
            key_pad: None,
            omit_empty: true,
        }
    }

    /// Applies `key_pad` (and trims) — the same rule for stored and requested keys.
    pub fn normalize_key(&self, key: &str) -> String {
        let key = key.trim();
        match self.key_pad {
            Some(width) if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{key:0>width$}")
            }
            _ => key.to_owned(),
        }
    }
}

/// A local table served as a [`LookupSource`]: `fetch(Some(key))` answers the key's row
/// (or array of rows when grouped), `fetch(None)` the array of all selected rows.
#[derive(Debug, Clone)]
pub struct FileSource {
    options: TableOptions,
    by_key: HashMap<String, Bytes>,
    all: Bytes,
    rows: usize,
}

impl FileSource {
    /// Reads and indexes a file once.
    pub fn load(path: impl AsRef<Path>, options: TableOptions) -> Result<FileSource, TableError> {
        let path = path.as_ref();
        FileSource::from_table(&Table::load(path)?, options).map_err(|inner| TableError::InFile {
            path: path.to_owned(),
            inner: Box::new(inner),
        })
    }

    /// Indexes an already parsed table (one parse can feed several sources).
    pub fn from_table(table: &Table, options: TableOptions) -> Result<FileSource, TableError> {
        table.check_column(&options.key)?;
        for (col, _) in &options.filter {
            table.check_column(col)?;
        }
        for col in options.columns.iter().flatten() {
            table.check_column(col)?;
        }
        for (col, _) in &options.rename {
            table.check_column(col)?;
        }
        let output: Vec<&String> = match &options.columns {
            Some(cols) => cols.iter().collect(),
            None => table
                .columns
                .iter()
                .filter(|c| !options.filter.iter().any(|(f, _)| f == *c))
                .collect(),
        };

        let mut all = Vec::new();
        let mut keyed: Vec<(String, Vec<Value>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for row in &table.rows {
            let selected = options
                .filter
                .iter()
                .all(|(col, want)| row.get(col).is_some_and(|v| cell_text(v) == *want));
            if !selected {
                continue;
            }
            let mut out = Map::new();
            for col in &output {
                let Some(v) = row.get(*col) else { continue };
                if options.omit_empty && v.as_str() == Some("") {
                    continue;
                }
                let name = options
                    .rename
                    .iter()
                    .find(|(from, _)| from == *col)
                    .map_or(col.as_str(), |(_, to)| to.as_str());
                out.insert(name.to_owned(), v.clone());
            }
            let out = Value::Object(out);
            all.push(out.clone());

            let key = row.get(&options.key).map(cell_text).unwrap_or_default();
            let key = options.normalize_key(&key);
            if key.is_empty() {
                continue;
            }
            match index.get(&key) {
                Some(&i) if options.group => keyed[i].1.push(out),
                Some(_) => return Err(TableError::DuplicateKey { key }),
                None => {
                    index.insert(key.clone(), keyed.len());
                    keyed.push((key, vec![out]));
                }
            }
        }

        let rows = all.len();
        let by_key = keyed
            .into_iter()
            .map(|(key, mut rows)| {
                let value = if options.group {
                    Value::Array(rows)
                } else {
                    rows.swap_remove(0)
                };
                (key, canonical_json(&value))
            })
            .collect();
        Ok(FileSource {
            by_key,
            all: canonical_json(&Value::Array(all)),
            rows,
            options,
        })
    }

    /// Number of selected rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of distinct keys.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// The canonical JSON for `key`, without going through a cache.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.by_key.get(&self.options.normalize_key(key))
    }

    /// The whole selection as one canonical JSON array.
    pub fn all(&self) -> &Bytes {
        &self.all
    }
}

impl LookupSource for FileSource {
    fn fetch(&self, key: Option<&str>) -> SourceFuture<'_> {
        let answer = match key {
            None => Fetched::Found(self.all.clone()),
            Some(k) => self
                .get(k)
                .map_or(Fetched::NotFound, |v| Fetched::Found(v.clone())),
        };
        Box::pin(std::future::ready(Ok(answer)))
    }
}

/// A cell as key or filter text: strings as they are, numbers and booleans spelled out.
fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// Compact JSON with object keys sorted at every depth, so equal data gives equal bytes
/// (and equal ETags) whatever the file's field order or serde_json's map feature.
pub fn canonical_json(v: &Value) -> Bytes {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let tree: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(tree.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // Serializing a `Value` cannot fail (all keys are strings).
    Bytes::from(serde_json::to_vec(&sorted(v)).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------
// Administrative units (from 1 July 2025)
// ---------------------------------------------------------------------------------------

/// The lookups the default config builds from `config/data/dvhc-2025.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DvhcTable {
    /// 34 provincial units by 2-digit code: `{code, name, type}`.
    Provinces,
    /// 3,321 communes, wards and special zones by 5-digit code:
    /// `{code, name, type, province_code, province_name}`.
    Communes,
    /// Pre-July-2025 commune code → array of the new communes it went into (several when
    /// it was split): `{old_code, old_name, old_district_code, old_district_name,
    /// old_province_code, old_province_name, new_code, new_name, new_province_code, note}`.
    OldToNew,
    /// New commune code → array of the old communes merged into it (same fields).
    NewToOld,
}

impl DvhcTable {
    pub const ALL: [DvhcTable; 4] = [
        DvhcTable::Provinces,
        DvhcTable::Communes,
        DvhcTable::OldToNew,
        DvhcTable::NewToOld,
    ];

    /// The lookup name the default config uses.
    pub fn name(self) -> &'static str {
        match self {
            DvhcTable::Provinces => "provinces",
            DvhcTable::Communes => "communes",
            DvhcTable::OldToNew => "communes-old-to-new",
            DvhcTable::NewToOld => "communes-new-to-old",
        }
    }

    pub fn options(self) -> TableOptions {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let level = |l: &str| vec![("level".to_string(), l.to_string())];
        let conversion = |key: &str| TableOptions {
            key: key.into(),
            filter: level("conversion"),
            columns: Some(strings(&[
                "old_code",
                "old_name",
                "old_district_code",
                "old_district_name",
                "old_province_code",
                "old_province_name",
                "code",
                "name",
                "province_code",
                "note",
            ])),
            rename: vec![
                ("code".into(), "new_code".into()),
                ("name".into(), "new_name".into()),
                ("province_code".into(), "new_province_code".into()),
            ],
            group: true,
            key_pad: Some(5),
            omit_empty: true,
        };
        match self {
            DvhcTable::Provinces => TableOptions {
                filter: level("province"),
                columns: Some(strings(&["code", "name", "type"])),
                key_pad: Some(2),
                ..TableOptions::new("code")
            },
            DvhcTable::Communes => TableOptions {
                filter: level("commune"),
                columns: Some(strings(&[
                    "code",
                    "name",
                    "type",
                    "province_code",
                    "province_name",
                ])),
                key_pad: Some(5),
                ..TableOptions::new("code")
            },
            DvhcTable::OldToNew => conversion("old_code"),
            DvhcTable::NewToOld => conversion("code"),
        }
    }
}

/// All four administrative-unit sources from one read of the file.
#[derive(Debug, Clone)]
pub struct DvhcSources {
    pub provinces: Arc<FileSource>,
    pub communes: Arc<FileSource>,
    pub old_to_new: Arc<FileSource>,
    pub new_to_old: Arc<FileSource>,
}

impl DvhcSources {
    pub fn load(path: impl AsRef<Path>) -> Result<DvhcSources, TableError> {
        let path = path.as_ref();
        let table = Table::load(path)?;
        let build = |t: DvhcTable| {
            FileSource::from_table(&table, t.options())
                .map(Arc::new)
                .map_err(|inner| TableError::InFile {
                    path: path.to_owned(),
                    inner: Box::new(inner),
                })
        };
        Ok(DvhcSources {
            provinces: build(DvhcTable::Provinces)?,
            communes: build(DvhcTable::Communes)?,
            old_to_new: build(DvhcTable::OldToNew)?,
            new_to_old: build(DvhcTable::NewToOld)?,
        })
    }

    pub fn get(&self, table: DvhcTable) -> &Arc<FileSource> {
        match table {
            DvhcTable::Provinces => &self.provinces,
            DvhcTable::Communes => &self.communes,
            DvhcTable::OldToNew => &self.old_to_new,
            DvhcTable::NewToOld => &self.new_to_old,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::lookup::{KeyMode, Lookup, LookupError, LookupSpec};
    use super::*;

    /// The shipped table, found relative to this source file so the tests run both in the
    /// gateway crate (`file!()` relative to the package root, the test's working
    /// directory) and in a crate that includes this file by absolute `#[path]`.
    fn shipped_table() -> PathBuf {
        Path::new(file!())
            .ancestors()
            .nth(3)
            .unwrap_or(Path::new(""))
            .join("config/data/dvhc-2025.csv")
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn csv_quotes_crlf_bom_and_blank_lines() {
        let text =
            "\u{feff}a,b,c\r\n1,\"x, y\",\"say \"\"hi\"\"\"\r\n\r\n2,\"multi\nline\",\n3,,\"\"";
        let t = Table::from_csv(text).unwrap();
        assert_eq!(t.columns, ["a", "b", "c"]);
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0]["b"], "x, y");
        assert_eq!(t.rows[0]["c"], "say \"hi\"");
        assert_eq!(t.rows[1]["b"], "multi\nline");
        assert_eq!(t.rows[1]["c"], "");
        assert_eq!(t.rows[2]["c"], "");
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = |text: &str| Table::from_csv(text).unwrap_err().to_string();
        assert_eq!(
            err("a,b\n1,2\n3\n"),
            "CSV line 3: 1 cells, the header has 2"
        );
        assert!(err("a,b\n1,\"2\n").contains("unterminated"));
        assert!(err("a,b\n1,x\"y\n").contains("quote inside"));
        assert!(err("a,b\n1,\"x\"y\n").contains("after a closing quote"));
        assert!(err("a,a\n1,2\n").contains("repeated"));
    }

    #[test]
    fn options_filter_project_rename_pad_group() {
        let t = Table::from_csv("kind,id,name,extra\nx,1,one,\ny,2,two,e\nx,1,uno,z\nx,,blank,\n")
            .unwrap();
        let grouped = FileSource::from_table(
            &t,
            TableOptions {
                filter: vec![("kind".into(), "x".into())],
                rename: vec![("name".into(), "label".into())],
                group: true,
                key_pad: Some(3),
                ..TableOptions::new("id")
            },
        )
        .unwrap();
        assert_eq!(grouped.rows(), 3);
        assert_eq!(grouped.keys(), 1);
        assert_eq!(
            grouped.get("1").unwrap(),
            r#"[{"id":"1","label":"one"},{"extra":"z","id":"1","label":"uno"}]"#
        );
        assert_eq!(grouped.get("001"), grouped.get(" 1 "));
        assert!(grouped.get("2").is_none(), "filtered out");
        assert_eq!(json(grouped.all()).as_array().unwrap().len(), 3);

        let dup = FileSource::from_table(&t, TableOptions::new("id"));
        assert!(matches!(dup, Err(TableError::DuplicateKey { key }) if key == "1"));
        let typo = FileSource::from_table(&t, TableOptions::new("idd")).unwrap_err();
        assert!(
            typo.to_string().contains("unknown column \"idd\""),
            "{typo}"
        );
    }

    #[test]
    fn json_tables_with_numeric_codes_and_pointer() {
        let text = r#"{"data":[{"code":1,"name":"A","n":{"z":1,"a":2}},{"name":"B","code":79}]}"#;
        let t = Table::from_json(text, Some("/data")).unwrap();
        let src = FileSource::from_table(
            &t,
            TableOptions {
                key_pad: Some(2),
                ..TableOptions::new("code")
            },
        )
        .unwrap();
        // Canonical: keys sorted at every depth.
        assert_eq!(
            src.get("01").unwrap(),
            r#"{"code":1,"n":{"a":2,"z":1},"name":"A"}"#
        );
        assert_eq!(src.get("79").unwrap(), r#"{"code":79,"name":"B"}"#);
        assert!(Table::from_json("{}", None).is_err());
        assert!(Table::from_json("[1]", None).is_err());
    }

    #[test]
    fn load_reports_path_and_format() {
        let err = Table::load("/nonexistent/table.csv").unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/table.csv:"),
            "{err}"
        );
        let err = Table::load("/nonexistent/table.xlsx").unwrap_err();
        assert!(matches!(err, TableError::Format { .. }));
    }

    #[test]
    fn shipped_dvhc_table_answers_the_default_lookups() {
        let d = DvhcSources::load(shipped_table()).unwrap();
        assert_eq!((d.provinces.rows(), d.provinces.keys()), (34, 34));
        assert_eq!((d.communes.rows(), d.communes.keys()), (3321, 3321));
        assert_eq!(d.new_to_old.keys(), 3321);
        assert!(d.old_to_new.keys() > 10_000);

        let hn = json(d.provinces.get("1").unwrap());
        assert_eq!(
            hn,
            serde_json::json!({"code":"01","name":"Thành phố Hà Nội","type":"thành phố trung ương"})
        );
        assert_eq!(
            json(d.provinces.get("79").unwrap())["name"],
            "Thành phố Hồ Chí Minh"
        );
        assert_eq!(json(d.provinces.get("96").unwrap())["name"], "Tỉnh Cà Mau");
        assert!(
            d.provinces.get("02").is_none(),
            "Hà Giang merged into Tuyên Quang (08)"
        );

        let ba_dinh = json(d.communes.get("00004").unwrap());
        assert_eq!(ba_dinh["name"], "Phường Ba Đình");
        assert_eq!(ba_dinh["type"], "phường");
        assert_eq!(ba_dinh["province_code"], "01");

        // Phường Phúc Xá (00001) went whole into Phường Hồng Hà (00097).
        let phuc_xa = json(d.old_to_new.get("00001").unwrap());
        assert_eq!(phuc_xa.as_array().unwrap().len(), 1);
        assert_eq!(phuc_xa[0]["new_code"], "00097");
        assert_eq!(phuc_xa[0]["old_name"], "Phường Phúc Xá");
        assert_eq!(phuc_xa[0]["old_district_code"], "001");
        // Xã Văn Khê (09013) was split between four new communes.
        let van_khe = json(d.old_to_new.get("9013").unwrap());
        let new: Vec<_> = van_khe
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["new_code"].clone())
            .collect();
        assert_eq!(new, ["08980", "08995", "09022", "09817"]);
        // New → old: Phường Ba Đình took in Trúc Bạch, Quán Thánh, part of Ngọc Hà, ...
        let ba_dinh_old = json(d.new_to_old.get("00004").unwrap());
        assert!(ba_dinh_old
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["old_code"] == "00013"));
    }

    /// Cross-check against the sample files the table was generated from (the shared
    /// folder sits beside the repository on developer machines and in CI; or set
    /// `LIENTHONG_SHARED`). Every official code in the samples must be in the shipped table.
    #[test]
    fn shipped_table_matches_the_samples() {
        let root = shipped_table().ancestors().nth(3).map(Path::to_path_buf);
        let candidates = [
            std::env::var_os("LIENTHONG_SHARED").map(|s| PathBuf::from(s).join("domain/samples")),
            root.map(|r| r.join("../shared/domain/samples")),
        ];
        let samples = candidates
            .into_iter()
            .flatten()
            .find(|p| p.join("dvhc-2025-07-nested-divisions.json").exists())
            .expect(
                "shared/domain/samples not found beside the repository (or set LIENTHONG_SHARED)",
            );
        let d = DvhcSources::load(shipped_table()).unwrap();
        let text =
            std::fs::read_to_string(samples.join("dvhc-2025-07-nested-divisions.json")).unwrap();
        let nested: Value = serde_json::from_str(&text).unwrap();
        let mut communes = 0;
        for p in nested.as_array().unwrap() {
            let code = p["code"].as_u64().unwrap().to_string();
            assert!(d.provinces.get(&code).is_some(), "province {code}");
            for w in p["wards"].as_array().unwrap() {
                let code = w["code"].as_u64().unwrap().to_string();
                let row = json(d.communes.get(&code).expect("commune in shipped table"));
                assert_eq!(
                    row["province_code"],
                    format!("{:02}", p["code"].as_u64().unwrap())
                );
                communes += 1;
            }
        }
        assert_eq!(communes, 3321);
    }

    #[tokio::test]
    async fn file_source_behind_a_lookup() {
        let d = DvhcSources::load(shipped_table()).unwrap();
        let mut spec = LookupSpec::new("communes", KeyMode::ByKey, Duration::from_secs(86_400));
        spec.negative_ttl = Some(Duration::from_secs(3600));
        let communes = Lookup::new(spec, d.communes.clone()).unwrap();
        let served = communes.get(Some("00004")).await.unwrap();
        assert_eq!(json(&served.value)["name"], "Phường Ba Đình");
        assert!(communes.get(Some("00004")).await.unwrap().from_cache);
        assert!(matches!(
            communes.get(Some("99999")).await,
            Err(LookupError::NotFound { .. })
        ));
        let whole = LookupSpec::new(
            "provinces-all",
            KeyMode::WholeTable,
            Duration::from_secs(60),
        );
        let all = Lookup::new(whole, d.provinces.clone()).unwrap();
        assert_eq!(
            json(&all.get(None).await.unwrap().value)
                .as_array()
                .unwrap()
                .len(),
            34
        );
    }
}
