//! Heatmaps of matrices whose rows and columns are tokens (attention weights), as SVG and PNG
//! from one drawing: one panel per matrix (per head) with the tokens on both axes, rows top to
//! bottom and columns left to right, and one colour bar for all panels.

use super::register_fonts;
use crate::ZooError;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// A figure of panels sharing their row and column labels and one colour scale.
pub struct Heatmap {
    /// The figure's title.
    pub title: String,
    /// Row labels, top to bottom (attention: the queries).
    pub rows: Vec<String>,
    /// Column labels, left to right (attention: the keys).
    pub columns: Vec<String>,
    /// The panels, drawn left to right, four to a line.
    pub panels: Vec<Panel>,
}

/// One matrix of a heatmap.
pub struct Panel {
    /// The caption above it ("head 3").
    pub caption: String,
    /// `rows x columns` values, row after row.
    pub values: Vec<f32>,
}

/// Panels on one line of the figure.
const PANELS_PER_LINE: usize = 4;
/// Labels are cut to this many characters.
const LABEL_CHARS: usize = 12;
const TITLE_HEIGHT: i32 = 34;
const CAPTION_HEIGHT: i32 = 22;
const COLOUR_BAR_WIDTH: i32 = 90;

/// Pixel sizes of a figure.
struct Layout {
    cell: i32,
    font: i32,
    /// Every `label_step`th label is written when the cells are smaller than the text.
    label_step: usize,
    /// Room for the labels left of and below each grid.
    label_room: i32,
    panel_width: i32,
    panel_height: i32,
    lines: usize,
    width: i32,
    height: i32,
}

impl Heatmap {
    /// Writes the figure to `stem.svg` and `stem.png` and returns the two paths.
    pub fn write(&self, stem: &Path) -> Result<[PathBuf; 2], ZooError> {
        let (rows, columns) = (self.rows.len(), self.columns.len());
        if rows == 0 || columns == 0 || self.panels.is_empty() {
            return Err(ZooError::Usage(format!("{}: nothing to draw", self.title)));
        }
        if let Some(panel) = self
            .panels
            .iter()
            .find(|p| p.values.len() != rows * columns)
        {
            return Err(ZooError::Usage(format!(
                "{}: panel {} has {} values for {rows} x {columns}",
                self.title,
                panel.caption,
                panel.values.len()
            )));
        }
        register_fonts();
        let layout = self.layout();
        let size = (layout.width as u32, layout.height as u32);
        let [svg, png] = ["svg", "png"].map(|ext| stem.with_extension(ext));
        let failed = |path: &Path, e: &dyn std::fmt::Display| {
            ZooError::io(path, format!("cannot draw the heatmap: {e}"))
        };
        self.draw(SVGBackend::new(&svg, size).into_drawing_area(), &layout)
            .map_err(|e| failed(&svg, &e))?;
        self.draw(BitMapBackend::new(&png, size).into_drawing_area(), &layout)
            .map_err(|e| failed(&png, &e))?;
        Ok([svg, png])
    }

    fn layout(&self) -> Layout {
        let (rows, columns) = (self.rows.len(), self.columns.len());
        let cell = (440 / rows.max(columns) as i32).clamp(3, 26);
        let font = (cell - 2).clamp(8, 13);
        let label_step = (font as usize + 1).div_ceil(cell as usize).max(1);
        let longest = self
            .rows
            .iter()
            .chain(&self.columns)
            .map(|l| short(l).chars().count())
            .max()
            .unwrap_or(1);
        let label_room = (longest as f64 * font as f64 * 0.62) as i32 + 8;
        let panel_width = label_room + columns as i32 * cell + 14;
        let panel_height = CAPTION_HEIGHT + rows as i32 * cell + label_room + 8;
        let per_line = self.panels.len().min(PANELS_PER_LINE);
        let lines = self.panels.len().div_ceil(PANELS_PER_LINE);
        Layout {
            cell,
            font,
            label_step,
            label_room,
            panel_width,
            panel_height,
            lines,
            width: per_line as i32 * panel_width + COLOUR_BAR_WIDTH,
            height: TITLE_HEIGHT + lines as i32 * panel_height,
        }
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
        layout: &Layout,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let text = |size: i32| TextStyle::from(("sans-serif", size).into_font()).color(&BLACK);
        root.draw(&Text::new(self.title.clone(), (10, 9), text(16)))?;
        // One scale for every panel, so heads compare; at least a sliver above zero.
        let top = self
            .panels
            .iter()
            .flat_map(|p| p.values.iter().copied())
            .fold(0.0f32, f32::max)
            .max(1e-6);
        let (cell, step) = (layout.cell, layout.label_step);
        for (i, panel) in self.panels.iter().enumerate() {
            let x0 = (i % PANELS_PER_LINE) as i32 * layout.panel_width;
            let y0 = TITLE_HEIGHT + (i / PANELS_PER_LINE) as i32 * layout.panel_height;
            let (gx, gy) = (x0 + layout.label_room, y0 + CAPTION_HEIGHT);
            root.draw(&Text::new(panel.caption.clone(), (gx, y0 + 4), text(13)))?;
            let columns = self.columns.len();
            for (r, row) in panel.values.chunks(columns).enumerate() {
                for (c, &value) in row.iter().enumerate() {
                    let (x, y) = (gx + c as i32 * cell, gy + r as i32 * cell);
                    let colour = ViridisRGB::get_color(value / top);
                    root.draw(&Rectangle::new(
                        [(x, y), (x + cell, y + cell)],
                        colour.filled(),
                    ))?;
                }
            }
            let (grid_w, grid_h) = (columns as i32 * cell, self.rows.len() as i32 * cell);
            root.draw(&Rectangle::new(
                [(gx, gy), (gx + grid_w, gy + grid_h)],
                BLACK.mix(0.4),
            ))?;
            let label = text(layout.font);
            for (r, name) in self.rows.iter().enumerate().step_by(step) {
                let at = (gx - 4, gy + r as i32 * cell + cell / 2);
                let style = label.pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(short(name), at, style))?;
            }
            for (c, name) in self.columns.iter().enumerate().step_by(step) {
                // Read bottom to top, ending just under the grid.
                let at = (gx + c as i32 * cell + cell / 2, gy + grid_h + 4);
                let style = label
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(short(name), at, style))?;
            }
        }
        self.draw_colour_bar(&root, layout, top)
    }

    /// The scale: viridis from 0 (bottom) to the largest value (top), with five ticks.
    fn draw_colour_bar<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        layout: &Layout,
        top: f32,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let x = layout.width - COLOUR_BAR_WIDTH + 14;
        let y = TITLE_HEIGHT + CAPTION_HEIGHT;
        let height =
            (layout.lines as i32 * layout.panel_height - CAPTION_HEIGHT - 20).clamp(60, 280);
        let steps = 64;
        for s in 0..steps {
            let (from, to) = (y + height * s / steps, y + height * (s + 1) / steps);
            let colour = ViridisRGB::get_color(1.0 - (s as f32 + 0.5) / steps as f32);
            root.draw(&Rectangle::new([(x, from), (x + 16, to)], colour.filled()))?;
        }
        root.draw(&Rectangle::new(
            [(x, y), (x + 16, y + height)],
            BLACK.mix(0.4),
        ))?;
        let style = TextStyle::from(("sans-serif", 11).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for tick in 0..=4 {
            let at = y + height - height * tick / 4;
            let value = top * tick as f32 / 4.0;
            root.draw(&PathElement::new(vec![(x + 16, at), (x + 20, at)], BLACK))?;
            root.draw(&Text::new(
                format!("{value:.2}"),
                (x + 23, at),
                style.clone(),
            ))?;
        }
        root.present()
    }
}

/// `label` cut to [`LABEL_CHARS`] characters.
fn short(label: &str) -> String {
    if label.chars().count() <= LABEL_CHARS {
        return label.to_string();
    }
    let mut cut: String = label.chars().take(LABEL_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heatmap_is_written_as_svg_and_png_with_its_labels() {
        let dir = std::env::temp_dir().join(format!("zoo-heatmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens: Vec<String> = ["the", "cat", "sat", "on", "a-very-long-token-indeed"]
            .map(String::from)
            .to_vec();
        let values: Vec<f32> = (0..25).map(|i| (i % 6) as f32 / 5.0).collect();
        let heatmap = Heatmap {
            title: "layer 0".into(),
            rows: tokens.clone(),
            columns: tokens,
            panels: (0..5)
                .map(|h| Panel {
                    caption: format!("head {h}"),
                    values: values.clone(),
                })
                .collect(),
        };
        let [svg, png] = heatmap.write(&dir.join("layer0")).unwrap();
        let svg = std::fs::read_to_string(svg).unwrap();
        for label in ["cat", "head 4", "a-very-long…", "layer 0", "1.00"] {
            assert!(svg.contains(label), "{label} missing");
        }
        let png = std::fs::read(png).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let bad = Heatmap {
            panels: vec![Panel {
                caption: "head 0".into(),
                values: vec![0.5; 3],
            }],
            ..heatmap
        };
        assert!(bad.write(&dir.join("bad")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
