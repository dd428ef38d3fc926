//! `--plot loss.png`: the training (and validation) loss per epoch, on a log scale.

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// (epoch, loss, val_loss) of each epoch, as kept in a checkpoint's history.
pub type History = [(usize, f64, Option<f64>)];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font ships inside the binary (the `dejavu` crate): no system font library is needed.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws the curves into `path` (PNG), written to a temporary file and renamed when complete.
pub fn plot_losses(path: &Path, history: &History) -> Result<()> {
    register_font();
    // The PNG encoder picks the format from the extension: the temporary file keeps `.png`.
    let tmp = crate::io::temp_path(path, ".png")?;
    let result = draw(&tmp, history)
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn draw(file: &Path, history: &History) -> Result<()> {
    let err = |e: String| Error::file(file, format!("cannot draw the plot: {e}"));
    let values = history
        .iter()
        .flat_map(|&(_, l, v)| std::iter::once(l).chain(v))
        .filter(|x| x.is_finite() && *x > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (lo / 1.2, hi * 1.2)
    } else {
        (1e-3, 1.0)
    };
    let last = history.iter().map(|h| h.0).max().unwrap_or(1).max(2);
    let root = BitMapBackend::new(file, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "tiedae: reconstruction loss (MSE) per epoch",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(1usize..last, (lo..hi).log_scale())
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("MSE (log scale)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let train: Vec<(usize, f64)> = history
        .iter()
        .filter(|h| h.1.is_finite())
        .map(|h| (h.0, h.1))
        .collect();
    chart
        .draw_series(LineSeries::new(train, BLUE.stroke_width(2)))
        .map_err(|e| err(e.to_string()))?
        .label("loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    let val: Vec<(usize, f64)> = history
        .iter()
        .filter_map(|h| h.2.map(|v| (h.0, v)))
        .collect();
    if !val.is_empty() {
        chart
            .draw_series(LineSeries::new(val, RED.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label("val_loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
