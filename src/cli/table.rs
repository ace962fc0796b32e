//! A text table whose column widths come from what is in it: a long label or
//! client name widens its column instead of pushing the rest out of line.

/// Which side of its column a cell keeps to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Headers and rows, printed as aligned lines.
pub(crate) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// One row, a cell per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The header line, then one line per row; columns two spaces apart,
    /// no trailing spaces. Widths count characters (`sk-…wxyz` is 8).
    pub(crate) fn lines(&self) -> Vec<String> {
        let width = |i: usize, header: &str| {
            self.rows
                .iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .chain([header.chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (header, _))| width(i, header))
            .collect();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        std::iter::once(&headers)
            .chain(&self.rows)
            .map(|cells| {
                let line: Vec<String> = self
                    .columns
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, ((_, align), &width))| {
                        let cell = cells.get(i).map_or("", String::as_str);
                        match align {
                            Align::Left => format!("{cell:<width$}"),
                            Align::Right => format!("{cell:>width$}"),
                        }
                    })
                    .collect();
                line.join("  ").trim_end().to_owned()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_cell_widens_its_column_and_the_rest_stay_aligned() {
        let mut table = Table::new(&[
            ("ID", Align::Left),
            ("N", Align::Right),
            ("STATE", Align::Left),
        ]);
        table.row(vec!["a".into(), "7".into(), "current".into()]);
        table.row(vec![
            "a-much-longer-id".into(),
            "1234".into(),
            "sk-…wxyz".into(),
        ]);
        let lines = table.lines();
        let state_at: Vec<usize> = lines
            .iter()
            .map(|l| l.chars().count() - l.split("  ").last().unwrap().trim_start().chars().count())
            .collect();
        assert_eq!(state_at[0], state_at[1]);
        assert_eq!(state_at[1], state_at[2]);
        assert_eq!(lines[1], "a                    7  current");
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }
}
