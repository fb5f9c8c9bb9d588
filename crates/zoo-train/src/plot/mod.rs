//! Figures: line plots for reports, as SVG files (one labelled line per series, axes named with
//! units), and attention heatmaps as SVG and PNG ([`heatmap`]).

pub mod heatmap;

use crate::ZooError;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::path::Path;

/// Makes DejaVu Sans the figures' "sans-serif": plotters measures (and, in a PNG, draws) text with
/// the font registered under that name, and no system font is needed.
pub(crate) fn register_fonts() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| unreachable!("the DejaVu crate's font parses"));
    });
}

/// One line of a plot: its label and its points.
pub struct Series {
    /// The legend's label.
    pub label: String,
    /// `(x, y)` points in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// How an axis is scaled and its tick labels written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Linear, plain numbers.
    Linear,
    /// Linear, ticks in scientific notation (FLOPs, tokens).
    Scientific,
    /// Logarithmic (times spanning decades).
    Log,
    /// Logarithmic in base 2, ticks at powers of two (sequence lengths 64, 128, ..., 4096).
    Log2,
}

/// A plot: title, axis names (with units) and scales.
pub struct Plot<'a> {
    /// The caption.
    pub title: &'a str,
    /// The x axis's name and unit.
    pub x_label: &'a str,
    /// The y axis's name and unit.
    pub y_label: &'a str,
    /// The x axis's scale.
    pub x_axis: Axis,
    /// The y axis's scale.
    pub y_axis: Axis,
    /// Where the legend goes: a corner the lines keep clear of.
    pub legend: Legend,
}

/// The legend's corner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Legend {
    /// Upper left: for lines that rise to the right.
    UpperLeft,
    /// Upper right: for lines that fall to the right (losses).
    UpperRight,
    /// Lower right: for lines that rise and level off (accuracies).
    LowerRight,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

impl Plot<'_> {
    /// Draws `series` into an SVG file at `path`.
    pub fn draw(&self, series: &[Series], path: &Path) -> Result<(), ZooError> {
        self.draw_svg(series, path)
            .map_err(|message| ZooError::io(path, format!("cannot draw the plot: {message}")))
    }

    fn draw_svg(&self, series: &[Series], path: &Path) -> Result<(), String> {
        register_fonts();
        // A base-2 axis is drawn as a linear one over log2 of the values, labelled 2^v.
        let log2 = |v: f64, axis: Axis| if axis == Axis::Log2 { v.log2() } else { v };
        let transformed: Vec<Series> = series
            .iter()
            .map(|s| Series {
                label: s.label.clone(),
                points: s
                    .points
                    .iter()
                    .filter(|(x, y)| {
                        (self.x_axis != Axis::Log2 || *x > 0.0)
                            && (self.y_axis != Axis::Log2 || *y > 0.0)
                    })
                    .map(|&(x, y)| (log2(x, self.x_axis), log2(y, self.y_axis)))
                    .collect(),
            })
            .collect();
        let series = transformed.as_slice();
        let error = |e: &dyn std::fmt::Display| e.to_string();
        let points = || series.iter().flat_map(|s| s.points.iter().copied());
        let x = Range::of(points().map(|p| p.0), self.x_axis);
        let y = Range::of(points().map(|p| p.1), self.y_axis);
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| error(&e))?;
        let mut chart = ChartBuilder::on(&root);
        chart
            .caption(self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80);
        // The four scale combinations are four chart types in plotters.
        match (self.x_axis == Axis::Log, self.y_axis == Axis::Log) {
            (false, false) => {
                let chart = chart
                    .build_cartesian_2d(x.lo..x.hi, y.lo..y.hi)
                    .map_err(|e| error(&e))?;
                self.finish(chart, series)
            }
            (true, false) => {
                let chart = chart
                    .build_cartesian_2d((x.lo..x.hi).log_scale(), y.lo..y.hi)
                    .map_err(|e| error(&e))?;
                self.finish(chart, series)
            }
            (false, true) => {
                let chart = chart
                    .build_cartesian_2d(x.lo..x.hi, (y.lo..y.hi).log_scale())
                    .map_err(|e| error(&e))?;
                self.finish(chart, series)
            }
            (true, true) => {
                let chart = chart
                    .build_cartesian_2d((x.lo..x.hi).log_scale(), (y.lo..y.hi).log_scale())
                    .map_err(|e| error(&e))?;
                self.finish(chart, series)
            }
        }?;
        root.present().map_err(|e| error(&e))
    }

    fn finish<'b, X, Y>(
        &self,
        mut chart: ChartContext<'b, SVGBackend<'b>, Cartesian2d<X, Y>>,
        series: &[Series],
    ) -> Result<(), String>
    where
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let error = |e: &dyn std::fmt::Display| e.to_string();
        let x_ticks = Ticks::of(chart.x_range(), self.x_axis);
        let y_ticks = Ticks::of(chart.y_range(), self.y_axis);
        let x_format = move |v: &f64| x_ticks.label(*v);
        let y_format = move |v: &f64| y_ticks.label(*v);
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 13))
            // Log axes otherwise label every minor tick (800, 900, 1000 run together).
            .x_labels(if self.x_axis == Axis::Log { 8 } else { 12 })
            .y_labels(if self.y_axis == Axis::Log { 8 } else { 12 })
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| error(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| error(&e))?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| error(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .label_font(("sans-serif", 14))
            .position(match self.legend {
                Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
                Legend::UpperRight => SeriesLabelPosition::UpperRight,
                Legend::LowerRight => SeriesLabelPosition::LowerRight,
            })
            .draw()
            .map_err(|e| error(&e))
    }
}

/// How an axis writes its tick labels: scientific, or with as many decimals as its span needs
/// (every label of an axis alike).
#[derive(Clone, Copy)]
enum Ticks {
    Scientific,
    Decimals(usize),
    /// The axis holds log2 of the values: whole exponents are labelled with their power.
    PowersOfTwo,
}

impl Ticks {
    fn of(range: std::ops::Range<f64>, axis: Axis) -> Self {
        let span = (range.end - range.start).abs();
        let largest = range.start.abs().max(range.end.abs());
        if axis == Axis::Scientific || largest >= 1e6 || (largest < 1e-3 && largest > 0.0) {
            return Ticks::Scientific;
        }
        if axis == Axis::Log2 {
            return Ticks::PowersOfTwo;
        }
        if axis == Axis::Log {
            return Ticks::Decimals(if range.start < 1.0 { 2 } else { 0 });
        }
        Ticks::Decimals(match span {
            s if s >= 50.0 => 0,
            s if s >= 5.0 => 1,
            s if s >= 0.5 => 2,
            _ => 3,
        })
    }

    fn label(self, value: f64) -> String {
        match self {
            Ticks::Scientific => format!("{value:.1e}"),
            Ticks::Decimals(d) => format!("{value:.d$}"),
            Ticks::PowersOfTwo if (value - value.round()).abs() < 1e-6 => {
                format!("{}", 2f64.powi(value.round() as i32))
            }
            Ticks::PowersOfTwo => String::new(),
        }
    }
}

/// An axis's extent: the data's, padded a little (a log axis by a factor).
struct Range {
    lo: f64,
    hi: f64,
}

impl Range {
    fn of(values: impl Iterator<Item = f64>, axis: Axis) -> Self {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && (axis != Axis::Log || *v > 0.0)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            return Self { lo: 1.0, hi: 10.0 };
        }
        if axis == Axis::Log {
            return Self {
                lo: lo / 1.15,
                hi: hi * 1.15,
            };
        }
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            lo.abs().max(1.0) * 0.05
        };
        Self {
            lo: lo - pad,
            hi: hi + pad,
        }
    }
}
