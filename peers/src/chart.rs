//! The headline as an SVG chart (plotters, its SVG backend only): one panel per workload, a bar
//! per system at its median, a whisker over its range across rounds, the value above it.

use std::path::Path;

use plotters::prelude::*;

/// One bar.
pub(crate) struct Bar {
    pub(crate) system: String,
    pub(crate) median: Option<f64>,
    pub(crate) range: Option<[f64; 2]>,
}

/// One panel: a workload at one writer count.
pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) unit: String,
    pub(crate) bars: Vec<Bar>,
}

const ORDERFLOW: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const PEER: RGBColor = RGBColor(0x9a, 0xa5, 0xb1);

/// Thousands separated, no decimals (`12,345`).
pub(crate) fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn write(path: &Path, title: &str, subtitle: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let width = 480 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (header, body) = root.split_vertically(64);
    header
        .draw(&Text::new(
            title.to_owned(),
            (16, 10),
            ("sans-serif", 20).into_font().color(&BLACK),
        ))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    header
        .draw(&Text::new(
            subtitle.to_owned(),
            (16, 38),
            ("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
        ))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let areas = body.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = panel.bars.len().max(1) as i32;
    // A segmented range `0..k` has k + 1 segments; one bar alone gets an empty second one.
    let last = (n - 1).max(1);
    let top = panel
        .bars
        .iter()
        .filter_map(|b| b.range.map(|r| r[1]).or(b.median))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.15;
    let names: Vec<String> = panel.bars.iter().map(|b| b.system.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d((0..last).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .y_desc(panel.unit.as_str())
        .y_label_formatter(&|v| grouped(*v))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    for (i, bar) in panel.bars.iter().enumerate() {
        let i = i as i32;
        let color = if bar.system == "orderflow" { ORDERFLOW } else { PEER };
        let Some(median) = bar.median else {
            chart.draw_series(std::iter::once(Text::new(
                "no figure",
                (SegmentValue::CenterOf(i), top * 0.05),
                ("sans-serif", 12).into_font(),
            )))?;
            continue;
        };
        let mut bar_rect = Rectangle::new(
            [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), median)],
            color.filled(),
        );
        bar_rect.set_margin(0, 0, 14, 14);
        chart.draw_series(std::iter::once(bar_rect))?;
        if let Some([low, high]) = bar.range {
            let whisker = BLACK.stroke_width(2);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(SegmentValue::CenterOf(i), low), (SegmentValue::CenterOf(i), high)],
                whisker,
            )))?;
        }
        let label_at = bar.range.map_or(median, |r| r[1]).max(median) + top * 0.02;
        chart.draw_series(std::iter::once(Text::new(
            grouped(median),
            (SegmentValue::CenterOf(i), label_at + top * 0.04),
            ("sans-serif", 13).into_font(),
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0.4), "0");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1234.0), "1,234");
        assert_eq!(grouped(1_234_567.8), "1,234,568");
    }

    #[test]
    fn writes_an_svg() {
        let path = std::env::temp_dir().join(format!("peers-chart-{}.svg", uuid::Uuid::new_v4()));
        let panels = vec![Panel {
            title: "place, 64 writers".into(),
            unit: "operations/s".into(),
            bars: vec![
                Bar {
                    system: "orderflow".into(),
                    median: Some(5000.0),
                    range: Some([4800.0, 5100.0]),
                },
                Bar {
                    system: "esrs".into(),
                    median: None,
                    range: None,
                },
            ],
        }];
        write(&path, "title", "subtitle", &panels).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("5,000"));
        assert!(svg.contains("no figure"));
    }
}
