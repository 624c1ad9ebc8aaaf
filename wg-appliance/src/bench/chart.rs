//! The bench's SVG chart (plotters, SVG backend only): one panel per
//! workload, a bar per variant at its median, a min–max bar over it, and
//! the median (and the ratio to the baseline) written above.

use std::path::Path;

use anyhow::Result;
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{report::Machine, report::Row, Settings, Variant, Workload};

fn color(v: Variant) -> RGBColor {
    match v {
        Variant::Appliance => RGBColor(0x1f, 0x77, 0xb4),
        Variant::AppliancePerPacket => RGBColor(0x17, 0xbe, 0xcf),
        Variant::WireguardGo => RGBColor(0xff, 0x7f, 0x0e),
        Variant::Boringtun => RGBColor(0x2c, 0xa0, 0x2c),
        Variant::ApplianceAfxdp => RGBColor(0xd6, 0x27, 0x28),
        Variant::ApplianceBpf => RGBColor(0x94, 0x67, 0xbd),
    }
}

pub fn draw(path: &Path, settings: &Settings, rows: &[Row], machine: &Machine) -> Result<()> {
    let panels = settings.workloads.len().max(1);
    let (w, h) = (460 * panels as u32, 500u32);
    let root = SVGBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "wg-appliance A/B bench: median of {} round(s) × {} s, bars min–max",
            settings.rounds, settings.duration_s
        ),
        ("sans-serif", 18),
    )?;
    let (main, footer) = root.split_vertically(h - 60);
    footer.draw_text(
        &format!(
            "{}, {} cores, kernel {}",
            machine.cpu_model, machine.cores, machine.kernel
        ),
        &("sans-serif", 11).into_font().color(&BLACK),
        (10, 4),
    )?;
    footer.draw_text(
        &format!(
            "{} | {} | {} | {}",
            machine.versions.wg_appliance,
            machine.versions.wireguard_go,
            machine.versions.boringtun_cli,
            machine.versions.iperf3
        ),
        &("sans-serif", 10).into_font().color(&BLACK),
        (10, 18),
    )?;
    for (area, &wl) in main
        .split_evenly((1, panels))
        .iter()
        .zip(&settings.workloads)
    {
        panel(area, settings, rows, wl)?;
    }
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    settings: &Settings,
    rows: &[Row],
    wl: Workload,
) -> Result<()> {
    let mine: Vec<&Row> = settings
        .variants
        .iter()
        .filter_map(|v| rows.iter().find(|r| r.workload == wl && r.variant == *v))
        .collect();
    let n = mine.len().max(1);
    let top = mine
        .iter()
        .filter_map(|r| r.max.or(r.median))
        .fold(0.0f64, f64::max);
    let ymax = if top > 0.0 { top * 1.18 } else { 1.0 };
    let base = mine.first().and_then(|r| r.baseline);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{} [{}]{}",
                wl.label(),
                wl.unit(),
                base.map_or(String::new(), |b| format!(", ratio vs {}", b.name()))
            ),
            ("sans-serif", 14),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0..n).into_segmented(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(wl.unit())
        .x_labels(n)
        .x_label_style(("sans-serif", 11))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => mine
                .get(*i)
                .map_or(String::new(), |r| r.variant.name().into()),
            _ => String::new(),
        })
        .draw()?;
    for (i, r) in mine.iter().enumerate() {
        let Some(m) = r.median else { continue };
        let c = color(r.variant);
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), m),
            ],
            c.mix(0.85).filled(),
        );
        bar.set_margin(0, 0, 14, 14);
        chart.draw_series(std::iter::once(bar))?;
        if let (Some(lo), Some(hi)) = (r.min, r.max) {
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                SegmentValue::CenterOf(i),
                lo,
                m,
                hi,
                BLACK.stroke_width(2),
                14,
            )))?;
        }
        let prec = if m.abs() < 10.0 { 1 } else { 0 };
        let label = match r.ratio {
            Some(x) => format!("{m:.prec$} ({x:.2}x)"),
            None => format!("{m:.prec$}"),
        };
        let style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(std::iter::once(Text::new(
            label,
            (
                SegmentValue::CenterOf(i),
                r.max.unwrap_or(m).max(m) + ymax * 0.01,
            ),
            style,
        )))?;
    }
    Ok(())
}
