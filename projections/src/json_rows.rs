//! Multi-row statements with one parameter: the rows as a JSON array of objects keyed by column,
//! unpacked by the server (PostgreSQL's `jsonb_populate_recordset` and `jsonb_to_recordset`,
//! SQLite's `json_each`).
//!
//! Why: a statement with a parameter per value has a new text for every row count, and sqlx
//! prepares each new text on the server before running it: a round trip to parse and describe
//! it, one to run it, and one to close a statement that its cache (100 per connection) evicts,
//! with PostgreSQL parsing and planning the statement every time. With one parameter each
//! statement has one text, prepared once per connection and then one round trip per run. The
//! dashboard's applies serialize on its `writer` lock, so the round trips inside that lock bound
//! how many batches per second all its workers together apply (BENCHMARKS.md, "What we learned").

use std::fmt::Write as _;

use sqlx::AnyConnection;
use uuid::Uuid;

/// A JSON value of a row; built with `.into()` from strings, integers and options of them.
pub(crate) type Json = serde_json::Value;

/// The SQL dialect a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    pub(crate) fn of(conn: &AnyConnection) -> Self {
        if conn.backend_name() == "SQLite" {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }
}

/// The names in a column list such as `"a, b, c"`.
pub(crate) fn names(columns: &str) -> impl Iterator<Item = &str> {
    columns.split(',').map(str::trim)
}

/// One statement's rows as a JSON array of objects keyed by column, bound as one parameter.
/// The statement takes each column by name: keys it does not name are ignored, and a column
/// with no key is NULL (each builder's test checks that its rows have every column).
#[derive(Default)]
pub(crate) struct JsonRows {
    text: String,
}

impl JsonRows {
    /// Adds a row: `(column, value)` pairs.
    pub(crate) fn push<'k>(&mut self, fields: impl IntoIterator<Item = (&'k str, Json)>) {
        self.text.push(if self.text.is_empty() { '[' } else { ',' });
        self.text.push('{');
        for (i, (column, value)) in fields.into_iter().enumerate() {
            // Column names are identifiers of ours and need no escaping; values are serde_json's.
            let _ = write!(self.text, "{}\"{column}\":{value}", if i == 0 { "" } else { "," });
        }
        self.text.push('}');
    }

    /// The JSON text to bind.
    pub(crate) fn into_param(mut self) -> String {
        if self.text.is_empty() {
            self.text.push('[');
        }
        self.text.push(']');
        self.text
    }
}

/// The rows of `items` as one parameter ([`JsonRows`]): `fields` gives each item's
/// `(column, value)` pairs.
pub(crate) fn json_rows<T, I>(items: impl IntoIterator<Item = T>, fields: impl Fn(T) -> I) -> String
where
    I: IntoIterator<Item = (&'static str, Json)>,
{
    let mut rows = JsonRows::default();
    for item in items {
        rows.push(fields(item));
    }
    rows.into_param()
}

/// `INSERT INTO table (columns) SELECT columns FROM <parameter `param`'s rows> tail`. An
/// upsert's `tail` starts with `WHERE true`: SQLite needs a `WHERE` before an `ON CONFLICT` that
/// follows a `SELECT`, to tell it from a join's constraint.
pub(crate) fn insert_rows(dialect: Dialect, table: &str, columns: &str, param: usize, tail: &str) -> String {
    format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM {} {tail}",
        table_rows(dialect, table, columns, param)
    )
}

/// A `FROM` item named `r`: the rows ([`JsonRows`]) of parameter `param` (PostgreSQL's `$param`;
/// SQLite's statements have one parameter, `?`) as `columns` of `table`, typed as that table's
/// columns.
pub(crate) fn table_rows(dialect: Dialect, table: &str, columns: &str, param: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("jsonb_populate_recordset(NULL::{table}, CAST(${param} AS JSONB)) AS r"),
        Dialect::Sqlite => json_each_rows(names(columns)),
    }
}

/// A `FROM` item named `r`: the rows ([`JsonRows`]) of parameter `param` (as in [`table_rows`])
/// as `columns`, each `(name, PostgreSQL type)`.
pub(crate) fn typed_rows(dialect: Dialect, columns: &[(&str, &str)], param: usize) -> String {
    match dialect {
        Dialect::Postgres => {
            let list: Vec<String> = columns.iter().map(|(name, ty)| format!("{name} {ty}")).collect();
            format!("jsonb_to_recordset(CAST(${param} AS JSONB)) AS r({})", list.join(", "))
        }
        Dialect::Sqlite => json_each_rows(columns.iter().map(|(name, _)| *name)),
    }
}

/// SQLite: `(SELECT e.value ->> 'a' AS a, ... FROM json_each(?) AS e) AS r`.
fn json_each_rows<'a>(columns: impl Iterator<Item = &'a str>) -> String {
    let list: Vec<String> = columns.map(|c| format!("e.value ->> '{c}' AS {c}")).collect();
    format!("(SELECT {} FROM json_each(?) AS e) AS r", list.join(", "))
}

/// `column` is one of parameter 1's strings, a JSON array ([`json_ids`]).
///
/// On PostgreSQL as `column = ANY(ARRAY(...))`: an index condition on `column` whatever the
/// planner estimates for either side (see [`and_id_in_rows`]). SQLite probes the index for `IN`.
pub(crate) fn key_in(dialect: Dialect, column: &str) -> String {
    match dialect {
        Dialect::Postgres => {
            format!("{column} = ANY(ARRAY(SELECT value FROM jsonb_array_elements_text(CAST($1 AS JSONB))))")
        }
        Dialect::Sqlite => format!("{column} IN (SELECT value FROM json_each(?))"),
    }
}

/// ` AND column = ANY(the "id" fields of parameter param's rows)` on PostgreSQL ([`JsonRows`]);
/// nothing on SQLite.
///
/// Beside a join of `column`'s table `t` with the rows, it makes every plan reach `t`'s rows
/// through its index, also when the planner puts `t` on the outer side of the join: it cannot
/// see how many rows a JSON parameter holds (it assumes 100), and a statement is planned once
/// per connection, maybe while `t` is still small, and keeps that plan as `t` grows. Without it
/// such a plan read a whole index of `t` on every execution.
pub(crate) fn and_id_in_rows(dialect: Dialect, column: &str, param: usize) -> String {
    match dialect {
        Dialect::Postgres => format!(
            " AND {column} = ANY(ARRAY(SELECT e ->> 'id' FROM jsonb_array_elements(CAST(${param} AS JSONB)) AS e))"
        ),
        Dialect::Sqlite => String::new(),
    }
}

/// `["id", ...]`: uuids need no escaping.
pub(crate) fn json_ids<'a>(ids: impl IntoIterator<Item = &'a Uuid>) -> String {
    let mut text = String::from("[");
    for (i, id) in ids.into_iter().enumerate() {
        let _ = write!(text, "{}\"{id}\"", if i == 0 { "" } else { "," });
    }
    text.push(']');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_json_objects_keyed_by_column_with_values_escaped() -> serde_json::Result<()> {
        let mut rows = JsonRows::default();
        rows.push([
            ("id", "a".into()),
            ("name", "say \"hi\"\n".into()),
            ("count", 7i64.into()),
            ("note", Option::<&str>::None.into()),
        ]);
        rows.push([("id", "b".into()), ("name", "é".into()), ("count", (-1i64).into())]);
        let parsed: serde_json::Value = serde_json::from_str(&rows.into_param())?;
        assert_eq!(
            parsed,
            serde_json::json!([
                { "id": "a", "name": "say \"hi\"\n", "count": 7, "note": null },
                { "id": "b", "name": "é", "count": -1 },
            ])
        );
        assert_eq!(JsonRows::default().into_param(), "[]");
        Ok(())
    }

    #[test]
    fn ids_are_a_json_array_of_strings() -> serde_json::Result<()> {
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let parsed: Vec<Uuid> = serde_json::from_str(&json_ids(&ids))?;
        assert_eq!(parsed, ids);
        assert_eq!(json_ids(&[]), "[]");
        Ok(())
    }
}
