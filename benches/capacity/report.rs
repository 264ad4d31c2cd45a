//! How figures are printed: a table as aligned text or markdown, a cell
//! (NaN as "—"), KiB as MiB.

/// A figure to `decimals` places; NaN (nothing measured) as "—".
pub fn cell(x: f64, decimals: usize) -> String {
    match x.is_nan() {
        true => "—".to_owned(),
        false => format!("{x:.decimals$}"),
    }
}

/// Prints a table, markdown or aligned text.
pub fn table(markdown: bool, header: &[&str], rows: &[Vec<String>]) {
    if markdown {
        println!("| {} |", header.join(" | "));
        let align: Vec<&str> = (0..header.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        println!("|{}|", align.join("|"));
        for r in rows {
            println!("| {} |", r.join(" | "));
        }
    } else {
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].chars().count()])
                    .max()
                    .unwrap()
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| match i {
                    0 => format!("{c:<w$}"),
                    _ => format!("{c:>w$}"),
                })
                .collect();
            println!("{}", padded.join("  "));
        };
        line(header.to_vec());
        for r in rows {
            line(r.iter().map(String::as_str).collect());
        }
    }
    println!();
}

pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
