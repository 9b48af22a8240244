//! What a command prints: a table for people, JSON for scripts, and errors said in
//! words.

use serde_json::Value;

/// A command's result: rows of named fields (one row for a single object).
pub struct Output {
    /// Column names, in order.
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Value>>,
    /// A single object rather than a list (`--json` prints an object, not an array).
    pub single: bool,
}

impl Output {
    pub fn one(fields: Vec<(&'static str, Value)>) -> Self {
        let (columns, row) = fields.into_iter().unzip();
        Self {
            columns,
            rows: vec![row],
            single: true,
        }
    }

    pub fn list(columns: Vec<&'static str>, rows: Vec<Vec<Value>>) -> Self {
        Self {
            columns,
            rows,
            single: false,
        }
    }

    /// A command that printed as it went (`watch`).
    pub fn nothing() -> Self {
        Self::list(Vec::new(), Vec::new())
    }

    pub fn print(&self, json: bool) {
        if self.columns.is_empty() {
            return;
        }
        if json {
            println!("{}", self.json());
        } else if self.single {
            for (column, value) in self.columns.iter().zip(&self.rows[0]) {
                println!("{column:<16} {}", cell(value));
            }
        } else {
            print!("{}", self.table());
        }
    }

    fn json(&self) -> Value {
        let object = |row: &Vec<Value>| {
            let fields = self
                .columns
                .iter()
                .map(|c| c.to_string())
                .zip(row.iter().cloned());
            Value::Object(fields.collect())
        };
        if self.single {
            object(&self.rows[0])
        } else {
            Value::Array(self.rows.iter().map(object).collect())
        }
    }

    /// Columns padded to their widest cell, headers in capitals.
    fn table(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|c| c.to_uppercase()).collect();
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(cell).collect())
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                cells
                    .iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |row: &[String]| {
            let padded: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", padded.join("  ").trim_end())
        };
        std::iter::once(line(&header))
            .chain(cells.iter().map(|r| line(r)))
            .collect()
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// An error as a shell user should read it: a refused call says the server's words
/// after what kind of refusal it was.
pub fn explain(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return format!("{}: {}", code_words(status.code()), status.message());
    }
    format!("{e:#}")
}

fn code_words(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        NotFound => "not found",
        AlreadyExists => "already exists",
        Unauthenticated => "not authenticated (check PAGEWIRE_TOKEN or --token)",
        PermissionDenied => "permission denied",
        InvalidArgument | OutOfRange => "refused",
        ResourceExhausted => "over a limit",
        FailedPrecondition => "not now",
        Aborted => "busy",
        Unimplemented => "not supported by this server (or store)",
        Unavailable => "server unavailable",
        DeadlineExceeded => "timed out",
        _ => "server error",
    }
}
