//! Plain-text tables for bench output: columns as wide as their widest cell, the first one
//! left-aligned, the others right-aligned, a rule under the header row. Formatting only.

use std::fmt::Write as _;

/// Prints `rows` (the first one is the header) as an aligned table.
pub fn print_rows(rows: &[Vec<String>]) {
    let Some(first) = rows.first() else {
        return;
    };
    let widths: Vec<usize> = (0..first.len())
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (n, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[c]);
            }
        }
        println!("{}", line.trim_end());
        if n == 0 {
            println!("{}", "-".repeat(line.trim_end().len()));
        }
    }
}

/// `a / b` with two decimals, or `-` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}
