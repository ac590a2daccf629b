//! Plain-text tables for people (the `--json` output is for scripts).

/// A table: a header row and rows of cells, printed with columns padded to
/// their widest cell (at most `max_cell` characters; longer cells end in `…`).
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    max_cell: usize,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self { headers: headers.into_iter().map(Into::into).collect(), rows: vec![], max_cell: 60 }
    }

    /// Longest cell shown, in characters (default 60).
    pub fn max_cell(mut self, n: usize) -> Self {
        self.max_cell = n.max(4);
        self
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, one line per row, each line ending in `\n`.
    pub fn render(&self) -> String {
        let clip = |s: &str| -> String {
            let one_line = s.replace(['\n', '\r', '\t'], " ");
            if one_line.chars().count() <= self.max_cell {
                one_line
            } else {
                let mut t: String = one_line.chars().take(self.max_cell - 1).collect();
                t.push('…');
                t
            }
        };
        let lines: Vec<Vec<String>> =
            std::iter::once(&self.headers).chain(&self.rows).map(|r| r.iter().map(|c| clip(c)).collect()).collect();
        let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|i| lines.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                if i + 1 < line.len() {
                    text.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_clips() {
        let mut t = Table::new(["ID", "REASON"]).max_cell(8);
        t.row(["a", "short"]);
        t.row(["longer-id", "a reason that is long"]);
        assert_eq!(t.render(), "ID        REASON\na         short\nlonger-…  a reaso…\n");
    }
}
