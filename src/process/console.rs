//! Console output for people watching a terminal: window results as a table, like Spark's
//! console sink, and alerts as a box.

use crate::{
    process::window::{AggOp, Layout, WindowResult},
    record::format_millis,
};

/// One batch of window results as a table headed `Batch: n`.
pub fn window_table(layout: &Layout, batch: u64, results: &[WindowResult]) -> String {
    let mut header = vec!["window_start".to_string(), "window_end".to_string()];
    header.extend(layout.group_by.iter().cloned());
    header.extend(layout.aggregates.iter().map(|a| a.0.clone()));
    header.push("final".into());
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut row = vec![
                format_millis(r.start).unwrap_or_default(),
                format_millis(r.end).unwrap_or_default(),
            ];
            let group: Vec<serde_json::Value> = serde_json::from_str(&r.group).unwrap_or_default();
            row.extend(
                layout
                    .group_by
                    .iter()
                    .enumerate()
                    .map(|(i, _)| match group.get(i) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(serde_json::Value::Null) | None => "null".into(),
                        Some(v) => v.to_string(),
                    }),
            );
            row.extend(
                layout
                    .aggregates
                    .iter()
                    .zip(&r.values)
                    .map(|((_, op, _), v)| match (op, v) {
                        (AggOp::Count, Some(n)) => format!("{}", *n as u64),
                        (_, Some(x)) => format!("{x}"),
                        (_, None) => "null".into(),
                    }),
            );
            row.push(r.is_final.to_string());
            row
        })
        .collect();
    table(&format!("Batch: {batch}"), &header, &rows)
}

/// A plain ASCII table: `+---+` rules, `|`-separated cells, left-aligned text.
pub fn table(title: &str, header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(*w));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (w, cell) in widths.iter().zip(cells) {
            s.push_str(cell);
            s.push_str(&" ".repeat(w - cell.chars().count()));
            s.push('|');
        }
        s.push('\n');
        s
    };
    let bar = "-".repeat(rule.len().saturating_sub(1).max(title.len()));
    let mut out = format!("{bar}\n{title}\n{bar}\n");
    out.push_str(&rule);
    out.push_str(&line(header));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(row));
    }
    out.push_str(&rule);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn window_results_print_as_an_aligned_table() {
        let layout = Layout::new(
            &[],
            &[
                ("count".into(), AggOp::Count, None),
                ("max_mag".into(), AggOp::Max, Some("mag".into())),
            ],
        )
        .unwrap();
        let result = WindowResult {
            start: 0,
            end: 300_000,
            group: Arc::from("[]"),
            values: vec![Some(3.0), Some(4.25)],
            is_final: false,
            emitted_at: 0,
        };
        let text = window_table(&layout, 2, &[result]);
        let expected = "\
-----------------------------------------------------------------------
Batch: 2
-----------------------------------------------------------------------
+------------------------+------------------------+-----+-------+-----+
|window_start            |window_end              |count|max_mag|final|
+------------------------+------------------------+-----+-------+-----+
|1970-01-01T00:00:00.000Z|1970-01-01T00:05:00.000Z|3    |4.25   |false|
+------------------------+------------------------+-----+-------+-----+

";
        assert_eq!(text, expected);
    }
}
