//! PNG charts a person reads without the CSV: titles, labelled axes with
//! tick values, and legends. Drawn with plotters' bitmap backend and text
//! from DejaVu Sans compiled into the binary, so no system font is needed.
//!
//! | file | what |
//! |---|---|
//! | `loss.png` | per-step loss, its running mean, epoch boundaries |
//! | `accuracy.png` | training and validation accuracy per epoch (the gap is overfitting) |
//! | `lr.png` | the learning-rate schedule |
//! | `update-ratio.png` | update/weight ratio per weight tensor, log scale, 1e-3 reference, and the rotational equilibrium of weights feeding batch norm (SGD with weight decay) |
//! | `activations.png` | per-layer activation histograms at the last epoch |
//! | `confusion-<split>.png` | the confusion matrix with class names and counts |
//! | `init-stats.png` | the lecture's initialization figure |
//! | `lr-find.png` | the learning-rate finder's sweep and suggestions |

use std::error::Error;
use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::callbacks::{EpochSummary, MetricsLog};
use crate::diagnostics::lr_find::LrFindResult;
use crate::monitor::{HEALTHY_RATIO, LayerMonitor, LayerSnapshot, RatioHistory};
use crate::rundir::RunDir;
use crate::trainer::StepInfo;
use cifar_models::Histogram;

/// The font of every chart (DejaVu Sans; its license is beside it in `assets/`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn Error>>;

/// A qualitative palette (Tableau 10) for series.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The color of series `i`.
fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The font is compiled in and known to parse (see the tests).
            let _ = plotters::style::register_font(FAMILY, style, FONT);
        }
    });
}

/// Draws a `width x height` chart with `f` and writes it to `path` (through a temporary file).
pub fn draw(
    path: &Path,
    (width, height): (u32, u32),
    f: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<()> {
    register_font();
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
        f(&root).map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
        root.present()
            .map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    let image = image::RgbImage::from_raw(width, height, buffer).expect("buffer of the right size");
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| anyhow!("cannot encode {}: {e}", path.display()))?;
    crate::rundir::write_atomic(path, png.get_ref())
}

fn caption_style() -> TextStyle<'static> {
    (FAMILY, 22).into_font().style(FontStyle::Bold).into()
}

fn label_style() -> TextStyle<'static> {
    (FAMILY, 15).into_font().color(&BLACK)
}

/// `(lo, hi)` of the finite values, padded; `(0, 1)` when there are none.
fn span(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let width = (hi - lo).max(1e-9);
    (lo - pad * width, hi + pad * width)
}

/// Running mean over the last `k` values.
fn running_mean(values: &[f64], k: usize) -> Vec<f64> {
    let k = k.max(1);
    let mut sum = 0.0;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            sum += v;
            if i >= k {
                sum -= values[i - k];
            }
            sum / (i + 1).min(k) as f64
        })
        .collect()
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(label_style())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
}

/// `loss.png`: every step's loss, its running mean, and dashed epoch boundaries.
pub fn loss_chart(
    path: &Path,
    steps: &[StepInfo],
    epoch_ends: &[usize],
    log_y: bool,
) -> Result<()> {
    let losses: Vec<f64> = steps.iter().map(|s| s.loss).collect();
    let window = (steps.len() / 50).clamp(1, 100);
    let mean = running_mean(&losses, window);
    let x_max = steps.last().map_or(1, |s| s.iteration + 1).max(2) as f64;
    draw(path, (900, 500), |root| {
        let mut builder = ChartBuilder::on(root);
        builder
            .caption("Training loss", caption_style())
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70);
        let positive = losses.iter().copied().filter(|v| v.is_finite() && *v > 0.0);
        let series = LossSeries {
            steps,
            losses: &losses,
            mean: &mean,
            window,
            epoch_ends,
        };
        if log_y {
            let lo = positive.clone().fold(f64::INFINITY, f64::min);
            let hi = positive.fold(0.0f64, f64::max);
            let (lo, hi) = if lo.is_finite() {
                (lo * 0.9, hi * 1.1)
            } else {
                (0.1, 10.0)
            };
            let mut chart = builder.build_cartesian_2d(1f64..x_max, (lo..hi).log_scale())?;
            series.draw(&mut chart, "loss (log scale)", (lo, hi))
        } else {
            let (lo, hi) = span(losses.iter().copied(), 0.05);
            let lo = lo.max(0.0);
            let mut chart = builder.build_cartesian_2d(1f64..x_max, lo..hi)?;
            series.draw(&mut chart, "loss", (lo, hi))
        }
    })
}

/// What `loss.png` shows, drawn the same on a linear or a log axis.
struct LossSeries<'s> {
    steps: &'s [StepInfo],
    losses: &'s [f64],
    mean: &'s [f64],
    window: usize,
    epoch_ends: &'s [usize],
}

impl LossSeries<'_> {
    fn draw<'a, DB, Y>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
        y_desc: &str,
        range: (f64, f64),
    ) -> DrawResult
    where
        DB: DrawingBackend + 'a,
        DB::ErrorType: 'static,
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(y_desc)
            .label_style(label_style())
            .draw()?;
        draw_loss_series(
            chart,
            self.steps,
            self.losses,
            self.mean,
            self.window,
            self.epoch_ends,
            range,
        )?;
        legend(chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    }
}

fn draw_loss_series<'a, DB: DrawingBackend + 'a, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    steps: &[StepInfo],
    losses: &[f64],
    mean: &[f64],
    window: usize,
    epoch_ends: &[usize],
    (lo, hi): (f64, f64),
) -> DrawResult
where
    CT: CoordTranslate<From = (f64, f64)>,
    DB::ErrorType: 'static,
{
    let raw = PALETTE[0].mix(0.3);
    chart
        .draw_series(LineSeries::new(
            steps
                .iter()
                .zip(losses)
                .filter(|(_, l)| l.is_finite())
                .map(|(s, &l)| ((s.iteration + 1) as f64, l.clamp(lo, hi))),
            raw,
        ))?
        .label("loss per step")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], raw));
    chart
        .draw_series(LineSeries::new(
            steps
                .iter()
                .zip(mean)
                .filter(|(_, l)| l.is_finite())
                .map(|(s, &l)| ((s.iteration + 1) as f64, l.clamp(lo, hi))),
            PALETTE[0].stroke_width(2),
        ))?
        .label(format!("running mean ({window} steps)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[0].stroke_width(2)));
    let boundary = BLACK.mix(0.35);
    for (i, &end) in epoch_ends.iter().enumerate() {
        let x = end as f64;
        let series = chart.draw_series(DashedLineSeries::new(
            vec![(x, lo), (x, hi)],
            6,
            4,
            boundary.into(),
        ))?;
        if i == 0 {
            series
                .label("epoch end")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], boundary));
        }
    }
    Ok(())
}

/// `accuracy.png`: training and validation accuracy per epoch.
pub fn accuracy_chart(path: &Path, epochs: &[(usize, EpochSummary)]) -> Result<()> {
    let x_max = epochs
        .iter()
        .map(|(_, e)| e.epoch)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    draw(path, (900, 500), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Accuracy per epoch (the gap between the lines is overfitting)",
                caption_style(),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5f64..x_max + 0.5, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("accuracy")
            .x_labels((x_max as usize + 1).min(20))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(label_style())
            .draw()?;
        for (i, (name, get)) in [
            (
                "training (1,000-image sample)",
                (|e: &EpochSummary| e.train_accuracy) as fn(&EpochSummary) -> f64,
            ),
            (
                "validation",
                (|e: &EpochSummary| e.val_accuracy) as fn(&EpochSummary) -> f64,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let c = color(i);
            let points: Vec<(f64, f64)> = epochs
                .iter()
                .map(|(_, e)| (e.epoch as f64, get(e)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

/// `lr.png`: the learning rate of every step.
pub fn lr_chart(path: &Path, steps: &[StepInfo]) -> Result<()> {
    let x_max = steps.last().map_or(1, |s| s.iteration + 1).max(2) as f64;
    let hi = steps
        .iter()
        .map(|s| s.lr)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        * 1.1;
    draw(path, (900, 400), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Learning-rate schedule", caption_style())
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(1f64..x_max, 0f64..hi.max(1e-12))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("learning rate")
            .y_label_formatter(&|y| format!("{y:.1e}"))
            .label_style(label_style())
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                steps.iter().map(|s| ((s.iteration + 1) as f64, s.lr)),
                PALETTE[1].stroke_width(2),
            ))?
            .label("lr")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[1].stroke_width(2))
            });
        Ok(())
    })
}

/// `update-ratio.png`: `||ΔW|| / ||W||` per weight tensor over the steps,
/// log scale, with the lecture's 1e-3 and, when the run has one, the
/// rotational equilibrium that SGD with weight decay holds the weights
/// feeding batch norm at.
pub fn update_ratio_chart(path: &Path, history: &RatioHistory) -> Result<()> {
    let ratios = &history.ratios;
    let equilibrium: Vec<(f64, f64)> = history
        .equilibrium
        .iter()
        .filter(|(_, r)| r.is_finite() && *r > 0.0)
        .map(|&(i, r)| ((i + 1) as f64, r))
        .collect();
    let mut names: Vec<&str> = Vec::new();
    for r in ratios {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    let finite = || {
        ratios
            .iter()
            .map(|r| r.ratio)
            .filter(|r| r.is_finite() && *r > 0.0)
    };
    let lo = finite().fold(HEALTHY_RATIO, f64::min) / 2.0;
    let hi = finite()
        .chain(equilibrium.iter().map(|p| p.1))
        .fold(HEALTHY_RATIO, f64::max)
        * 2.0;
    let x_max = ratios
        .iter()
        .map(|r| r.iteration + 1)
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    // The legend sits in a panel right of the plot: inside it, it covered
    // the curves around 1e-3, the band the chart is read for.
    let reference_style = BLACK.stroke_width(2);
    let equilibrium_style = RGBColor(110, 110, 110).stroke_width(3);
    let mut entries: Vec<LegendEntry> = names
        .iter()
        .enumerate()
        .map(|(i, name)| LegendEntry {
            label: name.trim_end_matches(".weight").to_string(),
            style: color(i).stroke_width(2),
            dashed: false,
        })
        .collect();
    entries.push(LegendEntry {
        label: "1e-3 reference".into(),
        style: reference_style,
        dashed: true,
    });
    if !equilibrium.is_empty() {
        entries.push(LegendEntry {
            label: "equilibrium of weights\nfeeding batch norm".into(),
            style: equilibrium_style,
            dashed: true,
        });
    }
    let (plot_width, panel_width) = (1000, 300);
    let height = 560.max(LegendEntry::panel_height(&entries));
    draw(path, (plot_width + panel_width, height), |root| {
        let (plot, panel) = root.split_horizontally(plot_width);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                "Update/weight ratio per layer (about 1e-3 is healthy)",
                caption_style(),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(1f64..x_max, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("||update|| / ||weight|| (log scale)")
            .y_label_formatter(&|y| format!("{y:.0e}"))
            .label_style(label_style())
            .draw()?;
        for (name, entry) in names.iter().zip(&entries) {
            chart.draw_series(LineSeries::new(
                ratios
                    .iter()
                    .filter(|r| r.name == *name && r.ratio.is_finite() && r.ratio > 0.0)
                    .map(|r| ((r.iteration + 1) as f64, r.ratio)),
                entry.style,
            ))?;
        }
        chart.draw_series(DashedLineSeries::new(
            vec![(1.0, HEALTHY_RATIO), (x_max, HEALTHY_RATIO)],
            8,
            5,
            reference_style,
        ))?;
        if !equilibrium.is_empty() {
            chart.draw_series(DashedLineSeries::new(
                equilibrium.iter().copied(),
                3,
                4,
                equilibrium_style,
            ))?;
        }
        LegendEntry::draw_panel(&panel, &entries)
    })
}

/// One line of a legend drawn in its own panel beside a chart (`\n` in
/// the label breaks it over lines).
struct LegendEntry {
    label: String,
    /// The series' own line style.
    style: ShapeStyle,
    dashed: bool,
}

impl LegendEntry {
    /// Pixels from the panel's top to its first entry (below the caption).
    const TOP: i32 = 60;
    /// Pixels per line of text.
    const LINE: i32 = 22;

    /// The height a panel of `entries` needs.
    fn panel_height(entries: &[Self]) -> u32 {
        let lines: usize = entries.iter().map(|e| e.label.lines().count()).sum();
        (Self::TOP + Self::LINE * lines as i32 + 20) as u32
    }

    /// Each entry's line sample (dashed or solid) and label, top down.
    fn draw_panel(panel: &Area<'_>, entries: &[Self]) -> DrawResult {
        let mut y = Self::TOP;
        for entry in entries {
            let sample: &[(i32, i32)] = if entry.dashed {
                &[(4, 12), (16, 24), (28, 34)]
            } else {
                &[(4, 34)]
            };
            for &(from, to) in sample {
                panel.draw(&PathElement::new(vec![(from, y), (to, y)], entry.style))?;
            }
            for line in entry.label.lines() {
                panel.draw(&Text::new(
                    line.to_string(),
                    (42, y),
                    label_style().pos(Pos::new(HPos::Left, VPos::Center)),
                ))?;
                y += Self::LINE;
            }
        }
        Ok(())
    }
}

/// One histogram per row, `titles[i]` above row `i`, all over `[lo, hi]`.
fn histogram_rows(
    area: &Area<'_>,
    rows: &[(String, Vec<u64>)],
    (lo, hi): (f64, f64),
    x_desc: &str,
) -> DrawResult {
    let areas = area.split_evenly((rows.len().max(1), 1));
    for (i, ((title, counts), cell)) in rows.iter().zip(&areas).enumerate() {
        let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
        let last = i + 1 == rows.len();
        let mut chart = ChartBuilder::on(cell)
            .margin_left(10)
            .margin_right(20)
            .margin_top(20)
            .x_label_area_size(if last { 40 } else { 18 })
            .y_label_area_size(70)
            .build_cartesian_2d(lo..hi, 0f64..max * 1.05)?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_y_mesh()
            .y_labels(2)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_labels(9)
            .label_style((FAMILY, 12).into_font().color(&BLACK));
        if last {
            mesh.x_desc(x_desc);
        }
        mesh.draw()?;
        let bins = counts.len().max(1);
        let width = (hi - lo) / bins as f64;
        let c = color(i);
        chart.draw_series(counts.iter().enumerate().map(|(b, &n)| {
            let x0 = lo + b as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, n as f64)], c.mix(0.8).filled())
        }))?;
        cell.draw(&Text::new(
            title.clone(),
            (80, 2),
            (FAMILY, 14).into_font().style(FontStyle::Bold),
        ))?;
    }
    Ok(())
}

/// The bin of `h` where the running count first reaches a fraction `q`
/// of its values (the last bin for `q` of 1); `None` when it is empty.
fn quantile_bin(h: &Histogram, q: f64) -> Option<usize> {
    let total: u64 = h.counts.iter().sum();
    if total == 0 {
        return None;
    }
    let mut seen = 0u64;
    let reached = h.counts.iter().position(|&n| {
        seen += n;
        seen as f64 >= q * total as f64
    });
    Some(reached.unwrap_or(h.counts.len() - 1))
}

/// The x-range shared by the layers' histograms in `activations.png`: from
/// the lower edge of the bin holding the smallest of the layers' 0.5%
/// quantiles to the upper edge of the bin holding the largest of their
/// 99.5% quantiles. The full range of every value let a few large values
/// (a ReLU layer's tail out to 10, with most values below 2) squeeze every
/// layer's bars into the first few bins; values outside the range are
/// counted in the end bins, as the chart's axis says.
fn shared_range(layers: &[&Histogram]) -> (f64, f64) {
    const TAIL: f64 = 0.005;
    let lo = layers
        .iter()
        .filter_map(|h| Some(h.bin_edges(quantile_bin(h, TAIL)?).0))
        .fold(f64::INFINITY, f64::min);
    let hi = layers
        .iter()
        .filter_map(|h| Some(h.bin_edges(quantile_bin(h, 1.0 - TAIL)?).1))
        .fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (-1.0, 1.0)
    }
}

/// `h`'s counts on `bins` equal bins over `[lo, hi]`, each of its own bins
/// shared among the new bins it overlaps in proportion to the overlap (its
/// values taken as spread evenly across it); what lies outside `[lo, hi]`
/// is counted in the end bins. Moving each old bin whole to the new bin
/// of its centre left most new bins empty, a comb of bars with gaps,
/// wherever the old bins were wider than the new ones.
fn rebin(h: &Histogram, (lo, hi): (f64, f64), bins: usize) -> Vec<u64> {
    let mut counts = vec![0f64; bins];
    let new_width = (hi - lo) / bins as f64;
    for (b, &n) in h.counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let (a, z) = h.bin_edges(b);
        if z <= a {
            // A histogram of one value: all of it in the bin of that value.
            let k = ((a - lo) / new_width).floor().clamp(0.0, (bins - 1) as f64);
            counts[k as usize] += n as f64;
            continue;
        }
        let per_unit = n as f64 / (z - a);
        // The parts below and above the range go to the end bins.
        counts[0] += per_unit * (lo.min(z) - a).max(0.0);
        counts[bins - 1] += per_unit * (z - hi.max(a)).max(0.0);
        let (a, z) = (a.max(lo), z.min(hi));
        if z <= a {
            continue;
        }
        let first = ((a - lo) / new_width).floor() as usize;
        let last = (((z - lo) / new_width).ceil() as usize).min(bins);
        for (k, count) in counts.iter_mut().enumerate().take(last).skip(first) {
            let (ka, kz) = (lo + k as f64 * new_width, lo + (k + 1) as f64 * new_width);
            *count += per_unit * (z.min(kz) - a.max(ka)).max(0.0);
        }
    }
    // Whole counts by rounding the running total, so that none are lost
    // (rounding each bin's share lost a few in 227 values over 40 bins).
    let mut total = 0f64;
    let mut rounded = 0u64;
    counts
        .into_iter()
        .map(|c| {
            total += c;
            let up_to_here = total.round() as u64;
            let count = up_to_here - rounded;
            rounded = up_to_here;
            count
        })
        .collect()
}

/// `activations.png`: per-layer activation histograms on the probe batch at one epoch.
pub fn activations_chart(path: &Path, epoch: usize, layers: &[LayerSnapshot]) -> Result<()> {
    let histograms: Vec<&Histogram> = layers.iter().map(|l| &l.stats.histogram).collect();
    let (lo, hi) = shared_range(&histograms);
    // Each layer's histogram is over its own range: re-bin it onto the shared one.
    let rows: Vec<(String, Vec<u64>)> = layers
        .iter()
        .map(|l| {
            let counts = rebin(&l.stats.histogram, (lo, hi), 40);
            (
                format!(
                    "{}: mean {:+.3}, std {:.3}, {:.0}% zero, {:.0}% dead, {:.0}% saturated",
                    l.name,
                    l.stats.mean,
                    l.stats.std,
                    100.0 * l.stats.zero_fraction,
                    100.0 * l.dead_fraction,
                    100.0 * l.stats.saturated_fraction
                ),
                counts,
            )
        })
        .collect();
    let height = (150 * rows.len().max(1) + 80) as u32;
    draw(path, (900, height), |root| {
        let root = root.titled(
            &format!("Activations per layer after epoch {epoch} (probe batch, eval mode)"),
            caption_style(),
        )?;
        histogram_rows(
            &root,
            &rows,
            (lo, hi),
            "activation value (the few values beyond the axis are counted in its end bins)",
        )
    })
}

/// `confusion-<split>.png`: rows are true classes, columns predictions; each
/// cell shows its count and is shaded by the row's fraction.
pub fn confusion_chart(
    path: &Path,
    matrix: &[Vec<u64>],
    classes: &[&str],
    title: &str,
) -> Result<()> {
    let n = matrix.len();
    let last = n.saturating_sub(1);
    draw(path, (1000, 820), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_style())
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(100)
            .build_cartesian_2d((0..last).into_segmented(), (0..last).into_segmented())?;
        let name = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n => {
                classes.get(*i).copied().unwrap_or("").to_string()
            }
            _ => String::new(),
        };
        // Rows are drawn from the top (true class 0 first), so the y axis counts down.
        let row_name = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n => {
                classes.get(n - 1 - *i).copied().unwrap_or("").to_string()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_desc("predicted class")
            .y_desc("true class")
            .x_label_formatter(&name)
            .y_label_formatter(&row_name)
            .x_label_style((FAMILY, 13).into_font().color(&BLACK))
            .y_label_style(label_style())
            .draw()?;
        let row_y = |r: usize| n - 1 - r;
        for (r, row) in matrix.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (c, &count) in row.iter().enumerate() {
                let v = count as f64 / total;
                let shade = RGBColor(
                    (255.0 * (1.0 - 0.85 * v)) as u8,
                    (255.0 * (1.0 - 0.6 * v)) as u8,
                    (255.0 * (1.0 - 0.3 * v)) as u8,
                );
                let y = row_y(r);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
                    ],
                    shade.filled(),
                )))?;
                let ink = if v > 0.55 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    count.to_string(),
                    (SegmentValue::CenterOf(c), SegmentValue::CenterOf(y)),
                    (FAMILY, 15)
                        .into_font()
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )))?;
            }
        }
        Ok(())
    })
}

/// One layer of the initialization experiment.
#[derive(Debug, Clone)]
pub struct InitLayer {
    /// 1-based layer number.
    pub layer: usize,
    /// The layer's name (`hidden.2`, `stages.1.convs.0`).
    pub name: String,
    /// Mean of the layer's outputs.
    pub mean: f64,
    /// Standard deviation of the layer's outputs.
    pub std: f64,
    /// Histogram counts over the shared range.
    pub counts: Vec<u64>,
}

/// `init-stats.png`: the lecture's figure: mean and std per layer as lines,
/// above per-layer histograms on one shared range.
pub fn init_stats_chart(
    path: &Path,
    title: &str,
    layers: &[InitLayer],
    range: (f64, f64),
) -> Result<()> {
    let height = (320 + 110 * layers.len().max(1)) as u32;
    draw(path, (900, height), |root| {
        let root = root.titled(title, caption_style())?;
        let (top, bottom) = root.split_vertically(300);
        let (means, stds) = top.split_horizontally(450);
        let n = layers.len().max(1) as f64;
        for (area, name, get, i) in [
            (
                &means,
                "layer mean",
                (|l: &InitLayer| l.mean) as fn(&InitLayer) -> f64,
                0usize,
            ),
            (
                &stds,
                "layer std",
                (|l: &InitLayer| l.std) as fn(&InitLayer) -> f64,
                1,
            ),
        ] {
            let (lo, hi) = span(layers.iter().map(get).chain([0.0]), 0.1);
            let mut chart = ChartBuilder::on(area)
                .caption(name, (FAMILY, 16).into_font())
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0.5f64..n + 0.5, lo..hi)?;
            chart
                .configure_mesh()
                .x_desc("hidden layer")
                .x_labels(layers.len().clamp(1, 12))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.2e}"))
                .label_style(label_style())
                .draw()?;
            let c = color(i);
            let points: Vec<(f64, f64)> = layers.iter().map(|l| (l.layer as f64, get(l))).collect();
            chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?;
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
        let rows: Vec<(String, Vec<u64>)> = layers
            .iter()
            .map(|l| {
                (
                    format!(
                        "layer {} ({}): mean {:+.2e}, std {:.2e}",
                        l.layer, l.name, l.mean, l.std
                    ),
                    l.counts.clone(),
                )
            })
            .collect();
        histogram_rows(
            &bottom,
            &rows,
            range,
            "activation value (one range for every layer)",
        )
    })
}

/// `init-stats.png` of a run: the lecture's initialization figure for the
/// run's own freshly initialized `model`, on `probe` images (on the model's
/// device, so that batch norm uses the batch's statistics as in training).
pub fn model_init_stats_chart(
    path: &Path,
    model: &cifar_models::Model,
    probe: burn::prelude::Tensor<4>,
    title: &str,
) -> Result<()> {
    let (_, observed) = model.forward_observed(probe);
    let values: Vec<(String, Vec<f32>)> = observed
        .into_iter()
        .map(|l| {
            let v = l
                .post
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("float activations");
            (l.name, v)
        })
        .collect();
    let (lo, hi) = values
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v as f64), b.max(v as f64))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (-1.0, 1.0)
    };
    let layers: Vec<InitLayer> = values
        .iter()
        .enumerate()
        .map(|(i, (_, v))| {
            let stats = cifar_models::ActivationStats::of(v, None, 1);
            InitLayer {
                layer: i + 1,
                name: values[i].0.clone(),
                mean: stats.mean,
                std: stats.std,
                counts: cifar_models::Histogram::new(v, 30, lo, hi).counts,
            }
        })
        .collect();
    init_stats_chart(path, title, &layers, (lo, hi))
}

/// `lr-find.png`: loss against the learning rate (log scale), the three suggestions marked.
pub fn lr_find_chart(path: &Path, result: &LrFindResult) -> Result<()> {
    let points = &result.points;
    let lr_lo = points.first().map_or(1e-7, |p| p.lr);
    let lr_hi = points.last().map_or(10.0, |p| p.lr).max(lr_lo * 10.0);
    let (lo, hi) = span(points.iter().map(|p| p.smoothed), 0.0);
    let first = points.first().map_or(hi, |p| p.smoothed);
    // The sweep ends in a blow-up: show it up to twice the starting loss.
    let hi = hi.min(first * 2.0).max(lo + 1e-6);
    let pad = 0.08 * (hi - lo);
    let (lo, hi) = (lo - pad, hi + pad);
    draw(path, (1000, 560), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Learning-rate finder", caption_style())
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((lr_lo..lr_hi).log_scale(), lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("learning rate (log scale)")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0e}"))
            .label_style(label_style())
            .draw()?;
        let raw = PALETTE[0].mix(0.3);
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .filter(|p| p.loss.is_finite())
                    .map(|p| (p.lr, p.loss.clamp(lo, hi))),
                raw,
            ))?
            .label("loss per step")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], raw));
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .filter(|p| p.smoothed.is_finite())
                    .map(|p| (p.lr, p.smoothed.clamp(lo, hi))),
                PALETTE[0].stroke_width(2),
            ))?
            .label("smoothed loss")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[0].stroke_width(2))
            });
        let s = result.suggestions;
        for (i, (name, lr)) in [
            ("steepest", s.steepest),
            ("valley", s.valley),
            ("minimum / 10", s.minimum),
        ]
        .into_iter()
        .enumerate()
        {
            let c = color(i + 1);
            let chosen = if name == result.chosen {
                " (used by --lr find)"
            } else {
                ""
            };
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(lr, lo), (lr, hi)],
                    6,
                    4,
                    c.stroke_width(2),
                ))?
                .label(format!("{name}: {lr:.2e}{chosen}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    })
}

/// One panel of `search-params.png`: accuracy against one parameter.
struct ScatterPanel<'p> {
    name: &'p str,
    points: &'p [(f64, f64)],
}

impl ScatterPanel<'_> {
    fn draw<'a, DB, X>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
        log: bool,
        labels: usize,
        format: &dyn Fn(&f64) -> String,
    ) -> DrawResult
    where
        DB: DrawingBackend + 'a,
        DB::ErrorType: 'static,
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        chart
            .configure_mesh()
            .x_desc(if log {
                format!("{} (log scale)", self.name)
            } else {
                self.name.to_string()
            })
            .y_desc("val accuracy")
            .x_labels(labels)
            .x_label_formatter(format)
            .label_style((FAMILY, 12).into_font().color(&BLACK))
            .draw()?;
        chart.draw_series(
            self.points
                .iter()
                .map(|&q| Circle::new(q, 4, PALETTE[0].filled())),
        )?;
        Ok(())
    }
}

/// Tick values for a log axis over `[low, high]`: powers of ten, then 1-2-5
/// steps, then every digit, whichever first gives at least three; a range
/// too narrow for any of them gets five evenly spaced (in log) values.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let (low, high) = (low.min(high), low.max(high));
    if !(low > 0.0 && high.is_finite()) {
        return Vec::new();
    }
    let inside = |mantissas: &[f64]| -> Vec<f64> {
        let (k0, k1) = (low.log10().floor() as i32, high.log10().ceil() as i32);
        (k0..=k1)
            .flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|v| *v >= low * (1.0 - 1e-9) && *v <= high * (1.0 + 1e-9))
            .collect()
    };
    for mantissas in [
        &[1.0][..],
        &[1.0, 2.0, 5.0],
        &[1., 2., 3., 4., 5., 6., 7., 8., 9.],
    ] {
        let ticks = inside(mantissas);
        if ticks.len() >= 3 {
            return ticks;
        }
    }
    let (l0, l1) = (low.ln(), high.ln());
    (0..5)
        .map(|i| (l0 + (l1 - l0) * i as f64 / 4.0).exp())
        .collect()
}

/// A log axis over `[low, high]` with [`log_ticks`].
fn log_axis(
    low: f64,
    high: f64,
) -> plotters::coord::combinators::WithKeyPoints<plotters::coord::combinators::LogCoord<f64>> {
    (low..high)
        .log_scale()
        .with_key_points(log_ticks(low, high))
}

/// A tick label on a log axis: two significant digits, `3e-2` rather than `3.0e-2`.
fn log_label(x: &f64) -> String {
    format!("{x:.1e}").replace(".0e", "e")
}

/// Blue (low) to yellow (high), for `t` in `[0, 1]`.
fn heat(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t) as u8;
    RGBColor(mix(40.0, 250.0), mix(60.0, 200.0), mix(160.0, 30.0))
}

/// A search's charts in `dir`: `search-params.png` (validation accuracy
/// against each searched parameter, log x for log ranges),
/// `search-progress.png` (accuracy by trial with the running best) and,
/// when both are searched, `search-lr-wd.png` (the lecture's learning rate
/// x regularization scatter, coloured by accuracy).
pub fn search_charts(dir: &Path, state: &crate::search::runner::SearchState) -> Result<()> {
    use crate::search::space::{Range, Value};
    let scored: Vec<(&crate::search::runner::Trial, f64)> = state
        .trials
        .iter()
        .filter_map(|t| Some((t, t.best()?)))
        .collect();
    let params = &state.space;
    let cols = params.len().clamp(1, 3);
    let rows = params.len().div_ceil(cols).max(1);
    draw(
        &dir.join("search-params.png"),
        ((380 * cols as u32).max(640), 330 * rows as u32 + 40),
        |root| {
            let root = root.titled(
                "Validation accuracy against each searched parameter",
                caption_style(),
            )?;
            for (p, area) in params.iter().zip(root.split_evenly((rows, cols))) {
                let points: Vec<(f64, f64)> = scored
                    .iter()
                    .filter_map(|(t, acc)| {
                        let v = &t.params.iter().find(|(n, _)| *n == p.name)?.1;
                        let x = match (v, &p.range) {
                            (Value::Text(c), Range::Choice { values }) => {
                                values.iter().position(|x| x == c)? as f64
                            }
                            (v, _) => v.as_f64()?,
                        };
                        Some((x, *acc))
                    })
                    .collect();
                let (y0, y1) = span(points.iter().map(|p| p.1), 0.1);
                let mut builder = ChartBuilder::on(&area);
                builder
                    .margin(12)
                    .x_label_area_size(40)
                    .y_label_area_size(55);
                let panel = ScatterPanel {
                    name: &p.name,
                    points: &points,
                };
                match &p.range {
                    Range::Log { low, high } => {
                        let mut chart =
                            builder.build_cartesian_2d(log_axis(*low, *high), y0..y1)?;
                        panel.draw(&mut chart, true, 5, &log_label)?;
                    }
                    Range::Int {
                        low,
                        high,
                        log: true,
                    } => {
                        let (x0, x1) = (*low as f64 * 0.9, *high as f64 * 1.1);
                        let mut chart = builder.build_cartesian_2d(log_axis(x0, x1), y0..y1)?;
                        panel.draw(&mut chart, true, 5, &|x| format!("{x:.0}"))?;
                    }
                    Range::Choice { values } => {
                        let n = values.len();
                        let mut chart =
                            builder.build_cartesian_2d(-0.5f64..n as f64 - 0.5, y0..y1)?;
                        let name = |x: &f64| {
                            let i = x.round();
                            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                                values[i as usize].clone()
                            } else {
                                String::new()
                            }
                        };
                        panel.draw(&mut chart, false, n + 1, &name)?;
                    }
                    _ => {
                        let (x0, x1) = span(points.iter().map(|p| p.0), 0.05);
                        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
                        panel.draw(&mut chart, false, 5, &|x| format!("{x:.3}"))?;
                    }
                }
            }
            Ok(())
        },
    )?;
    let n = state.trials.len().max(1) as f64;
    draw(&dir.join("search-progress.png"), (900, 450), |root| {
        let (y0, y1) = span(scored.iter().map(|s| s.1), 0.1);
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Validation accuracy by trial, and the best so far",
                caption_style(),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..n - 0.5, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("trial")
            .y_desc("best val accuracy of the trial")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(label_style())
            .draw()?;
        chart
            .draw_series(
                scored
                    .iter()
                    .map(|(t, acc)| Circle::new((t.trial as f64, *acc), 4, PALETTE[0].filled())),
            )?
            .label("trial")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, PALETTE[0].filled()));
        let mut best = f64::NEG_INFINITY;
        let mut ordered: Vec<(usize, f64)> = scored.iter().map(|(t, a)| (t.trial, *a)).collect();
        ordered.sort_by_key(|(t, _)| *t);
        // A step line: the best so far only changes at a trial.
        let mut running: Vec<(f64, f64)> = Vec::new();
        for (t, a) in ordered {
            if let Some(&(_, previous)) = running.last() {
                running.push((t as f64, previous));
            }
            best = best.max(a);
            running.push((t as f64, best));
        }
        chart
            .draw_series(LineSeries::new(running, PALETTE[1].stroke_width(2)))?
            .label("best so far")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[1].stroke_width(2))
            });
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })?;
    let lr = params.iter().find(|p| p.name == "lr");
    let wd = params.iter().find(|p| p.name == "weight-decay");
    if let (Some(lr), Some(wd)) = (lr, wd) {
        let bounds = |p: &crate::search::space::Param| match p.range {
            Range::Log { low, high } | Range::Uniform { low, high } => (low, high),
            _ => (1e-8, 1.0),
        };
        let ((x0, x1), (y0, y1)) = (bounds(lr), bounds(wd));
        let points: Vec<(f64, f64, f64)> = scored
            .iter()
            .filter_map(|(t, acc)| {
                let get = |name: &str| t.params.iter().find(|(n, _)| n == name)?.1.as_f64();
                Some((get("lr")?, get("weight-decay")?, *acc))
            })
            .collect();
        let (a0, a1) = span(points.iter().map(|p| p.2), 0.0);
        draw(&dir.join("search-lr-wd.png"), (900, 650), |root| {
            let mut chart = ChartBuilder::on(root)
                .caption(
                    format!("Learning rate x weight decay, coloured by val accuracy ({a0:.3} blue to {a1:.3} yellow)"),
                    caption_style(),
                )
                .margin(15)
                .x_label_area_size(50)
                .y_label_area_size(80)
                .build_cartesian_2d(log_axis(x0, x1), log_axis(y0.max(1e-12), y1))?;
            chart
                .configure_mesh()
                .x_desc("learning rate (log scale)")
                .y_desc("weight decay (log scale)")
                .x_label_formatter(&log_label)
                .y_label_formatter(&log_label)
                .label_style(label_style())
                .draw()?;
            for (x, y, acc) in &points {
                let t = if a1 > a0 { (acc - a0) / (a1 - a0) } else { 1.0 };
                chart.draw_series(std::iter::once(Circle::new((*x, *y), 7, heat(t).filled())))?;
            }
            if let Some(best) = points.iter().max_by(|a, b| a.2.total_cmp(&b.2)) {
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (best.0, best.1),
                        11,
                        BLACK.stroke_width(2),
                    )))?
                    .label(format!("best: {:.4}", best.2))
                    .legend(|(x, y)| Circle::new((x + 10, y), 6, BLACK.stroke_width(2)));
                legend(&mut chart, SeriesLabelPosition::UpperRight)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Redraws a run's training charts from its metrics and monitor: `loss.png`,
/// `accuracy.png`, `lr.png`, and with a monitor `update-ratio.png` and
/// `activations.png`.
pub fn training_charts(
    run: &RunDir,
    metrics: &MetricsLog,
    monitor: Option<&LayerMonitor>,
) -> Result<()> {
    let epoch_ends: Vec<usize> = metrics.epochs().iter().map(|(step, _)| *step).collect();
    loss_chart(&run.file("loss.png"), metrics.steps(), &epoch_ends, false)?;
    accuracy_chart(&run.file("accuracy.png"), metrics.epochs())?;
    lr_chart(&run.file("lr.png"), metrics.steps())?;
    if let Some(monitor) = monitor {
        update_ratio_chart(&run.file("update-ratio.png"), &monitor.history())?;
        if let Some((epoch, layers)) = monitor.snapshots().last() {
            activations_chart(&run.file("activations.png"), *epoch, layers)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dark pixels in rows `rows` and columns `columns` of the PNG at
    /// `path`: text or lines were drawn there.
    fn dark_pixels(
        path: &Path,
        rows: std::ops::Range<u32>,
        columns: std::ops::Range<u32>,
    ) -> usize {
        let img = image::open(path).unwrap().to_rgb8();
        rows.flat_map(|y| columns.clone().map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count()
    }

    #[test]
    fn the_font_parses_and_titles_are_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let steps: Vec<StepInfo> = (0..100)
            .map(|i| StepInfo {
                epoch: i / 50,
                iteration: i,
                loss: 2.3 / (1.0 + i as f64 * 0.05),
                lr: 0.1,
            })
            .collect();
        loss_chart(&path, &steps, &[50, 100], false).unwrap();
        assert_eq!(image::image_dimensions(&path).unwrap(), (900, 500));
        // The caption sits in the top 40 rows: text there means the font rendered.
        assert!(dark_pixels(&path, 0..40, 0..900) > 100, "no title text");
        loss_chart(&path, &steps, &[50, 100], true).unwrap();
        assert!(
            dark_pixels(&path, 0..40, 0..900) > 100,
            "no title text (log scale)"
        );
    }

    #[test]
    fn the_update_ratio_legend_lists_every_layer_beside_the_plot() {
        use crate::monitor::RatioPoint;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update-ratio.png");
        // 30 layers: more entries than a 560-pixel panel holds.
        let ratios = (0..30)
            .flat_map(|layer| {
                (0..5).map(move |step| RatioPoint {
                    iteration: step,
                    name: format!("stages.{layer}.convs.0.conv.weight"),
                    ratio: 1e-3 * (1.0 + layer as f64 / 10.0),
                })
            })
            .collect();
        let history = RatioHistory {
            ratios,
            equilibrium: (0..5).map(|step| (step, 3e-3)).collect(),
        };
        update_ratio_chart(&path, &history).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // 30 layers, the reference, and the two-line equilibrium label.
        let lines = 33;
        let height = (LegendEntry::TOP + LegendEntry::LINE * lines + 20) as u32;
        assert_eq!(img.dimensions(), (1300, height));
        // Each layer's sample line, in its color, in the panel right of the
        // plot (x from 1,004 to 1,034), one line apart: none clipped.
        for layer in 0..30 {
            let y = (LegendEntry::TOP + LegendEntry::LINE * layer as i32) as u32;
            let pixel = img.get_pixel(1019, y).0;
            let want = color(layer).rgb();
            let close = pixel
                .iter()
                .zip([want.0, want.1, want.2])
                .all(|(&a, b)| a.abs_diff(b) < 40);
            assert!(close, "layer {layer}: {pixel:?} at y {y}, want {want:?}");
        }
        // Its label's text to the right of the sample.
        let y = LegendEntry::TOP as u32;
        assert!(
            dark_pixels(&path, y - 6..y + 6, 1042..1300) > 50,
            "no label text beside the first sample"
        );
    }

    #[test]
    fn the_shared_activation_range_leaves_out_a_far_tail() {
        // A ReLU-like layer: 1,000 values in [0, 2] and one at 10, over 50
        // bins of 0.2; a symmetric layer: 100 values in [-1, 1].
        let mut counts = vec![100u64; 10];
        counts.extend(vec![0; 39]);
        counts.push(1);
        let relu = Histogram {
            min: 0.0,
            max: 10.0,
            counts,
        };
        let symmetric = Histogram {
            min: -1.0,
            max: 1.0,
            counts: vec![10; 10],
        };
        // By hand: 99.5% of 1,001 values lie below 2.0 (the tenth bin's
        // upper edge), 0.5% of the symmetric layer's below -0.8, whose bin
        // starts at -1.0.
        let (lo, hi) = shared_range(&[&relu, &symmetric]);
        assert!(
            (lo + 1.0).abs() < 1e-9 && (hi - 2.0).abs() < 1e-9,
            "{lo}..{hi}"
        );
        assert_eq!(quantile_bin(&relu, 1.0), Some(49));
        assert_eq!(relu.bin_edges(49), (9.8, 10.0));
        let empty = Histogram {
            min: 0.0,
            max: 1.0,
            counts: vec![0; 4],
        };
        assert_eq!(shared_range(&[&empty]), (-1.0, 1.0));
    }

    #[test]
    fn rebinning_shares_each_bin_among_the_bins_it_overlaps() {
        // Two bins over [0, 2] of 40 and 20 values onto four bins over
        // [0.5, 1.5]: by hand, [0, 0.5] of the first bin (20 values) goes
        // to the first end bin, [0.5, 1] is 10 + 10 values, [1, 1.5] is
        // 5 + 5, and [1.5, 2] (10 values) goes to the last end bin.
        let h = Histogram {
            min: 0.0,
            max: 2.0,
            counts: vec![40, 20],
        };
        assert_eq!(rebin(&h, (0.5, 1.5), 4), vec![30, 10, 5, 15]);
        // Nothing is lost, however the bins fall.
        let wide = Histogram {
            min: -3.0,
            max: 7.0,
            counts: vec![7, 0, 13, 200, 1, 1, 0, 5],
        };
        for bins in [1, 3, 40] {
            let counts = rebin(&wide, (-0.4, 2.9), bins);
            assert_eq!(counts.iter().sum::<u64>(), 227, "{bins} bins: {counts:?}");
        }
    }

    #[test]
    fn confusion_cells_carry_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let m = vec![vec![9, 1], vec![0, 10]];
        confusion_chart(&path, &m, &["cat", "dog"], "Confusion").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // The diagonal cells are dark (90% and 100%), the empty cell white.
        let dark = img.pixels().filter(|p| p.0[0] < 80 && p.0[2] > 150).count();
        assert!(dark > 10_000, "{dark}");
    }

    #[test]
    fn log_ticks_fit_wide_and_narrow_ranges() {
        // Values computed by hand: decades, then 1-2-5, then digits.
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x / y - 1.0).abs() < 1e-9)
        };
        let decades = log_ticks(1e-5, 1e-2);
        assert!(close(&decades, &[1e-5, 1e-4, 1e-3, 1e-2]), "{decades:?}");
        let steps = log_ticks(1e-3, 3e-2);
        assert!(close(&steps, &[1e-3, 2e-3, 5e-3, 1e-2, 2e-2]), "{steps:?}");
        let digits = log_ticks(2.9e-2, 7.6e-2);
        assert_eq!(digits.len(), 5, "{digits:?}");
        assert!((digits[0] - 3e-2).abs() < 1e-12 && (digits[4] - 7e-2).abs() < 1e-12);
        // Too narrow for round values: five points from end to end.
        let narrow = log_ticks(3.1e-2, 3.3e-2);
        assert_eq!(narrow.len(), 5);
        assert!((narrow[0] - 3.1e-2).abs() < 1e-12 && (narrow[4] - 3.3e-2).abs() < 1e-12);
        assert_eq!(log_label(&3e-2), "3e-2");
        assert_eq!(log_label(&3.14e-2), "3.1e-2");
    }
}
