//! The SVG grouped bar chart the harnesses draw their results as.

/// One series of bars: one value (and the text printed above its bar) per group.
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
    pub labels: Vec<String>,
    /// Per group, the (min, max) of the runs, drawn as a whisker over the bar;
    /// empty for none.
    pub ranges: Vec<(f64, f64)>,
}

/// A grouped bar chart: one group of bars per entry of `groups` (a `\n` in a
/// group's name breaks it in two lines), one bar per series in each.
pub struct BarChart {
    pub title: String,
    pub width: f64,
    pub groups: Vec<String>,
    pub series: Vec<Series>,
    /// A line across the whole plot (value, label): the baseline of a ratio chart.
    pub reference: Option<(f64, String)>,
    /// Per group, a dashed line over its bars at the target value.
    pub targets: Vec<Option<f64>>,
}

const COLORS: [&str; 4] = ["#2b6cb0", "#805ad5", "#718096", "#dd6b20"];

impl BarChart {
    pub fn svg(&self) -> String {
        let max = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied().chain(s.ranges.iter().map(|r| r.1)))
            .chain(self.reference.iter().map(|r| r.0))
            .chain(self.targets.iter().flatten().copied())
            .fold(1.0f64, f64::max);
        let (w, h, left, top, bottom) = (self.width, 360.0, 50.0, 40.0, 70.0);
        let plot_h = h - top - bottom;
        let group_w = (w - left - 20.0) / self.groups.len().max(1) as f64;
        let bar_w = group_w / (self.series.len() as f64 + 1.0);
        let y_of = |val: f64| top + plot_h - plot_h * val / max;
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<text x="{left}" y="20" font-size="14" font-weight="bold">{}</text>
"#,
            self.title
        );
        for i in 0..=4 {
            let val = max * i as f64 / 4.0;
            let y = top + plot_h - plot_h * i as f64 / 4.0;
            s += &format!(
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e2e8f0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{val:.1}</text>
"##,
                w - 20.0,
                left - 6.0,
                y + 4.0
            );
        }
        for (g, name) in self.groups.iter().enumerate() {
            let gx = left + group_w * g as f64;
            for (i, ser) in self.series.iter().enumerate() {
                let val = ser.values.get(g).copied().unwrap_or(0.0);
                let label = ser.labels.get(g).map(String::as_str).unwrap_or("");
                let bh = plot_h * val / max;
                let x = gx + bar_w * (i as f64 + 0.5);
                let y = top + plot_h - bh;
                // the label sits above the whisker, if one reaches higher
                let label_y = ser.ranges.get(g).map_or(y, |r| y.min(y_of(r.1))) - 3.0;
                s += &format!(
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{label}</text>
"#,
                    bar_w * 0.9,
                    COLORS[i % COLORS.len()],
                    x + bar_w * 0.45,
                    label_y
                );
                if let Some((lo, hi)) = ser.ranges.get(g) {
                    let cx = x + bar_w * 0.45;
                    s += &format!(
                        r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#1a202c" stroke-width="1"/>
"##,
                        y_of(*lo),
                        y_of(*hi)
                    );
                }
            }
            if let Some(Some(t)) = self.targets.get(g) {
                let y = y_of(*t);
                s += &format!(
                    r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#c53030" stroke-width="2" stroke-dasharray="4 3"/>
"##,
                    gx + bar_w * 0.3,
                    gx + group_w - bar_w * 0.3
                );
            }
            let (cx, ty) = (gx + group_w / 2.0, top + plot_h + 18.0);
            if name.contains('\n') {
                s += &format!(r#"<text x="{cx:.1}" y="{ty:.1}" text-anchor="middle">"#);
                for (k, line) in name.split('\n').enumerate() {
                    let dy = if k == 0 { "0" } else { "1.2em" };
                    s += &format!(r#"<tspan x="{cx:.1}" dy="{dy}">{line}</tspan>"#);
                }
                s += "</text>\n";
            } else {
                s += &format!(
                    r#"<text x="{cx:.1}" y="{ty:.1}" text-anchor="middle">{name}</text>
"#
                );
            }
        }
        if let Some((val, label)) = &self.reference {
            let y = y_of(*val);
            s += &format!(
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#1a202c" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">{label}</text>
"##,
                w - 20.0,
                w - 20.0,
                y - 4.0
            );
        }
        let mut legend: Vec<(String, String)> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, ser)| (COLORS[i % COLORS.len()].to_string(), ser.name.clone()))
            .collect();
        if self.targets.iter().any(Option::is_some) {
            legend.push(("#c53030".into(), "target".into()));
        }
        for (i, (color, name)) in legend.iter().enumerate() {
            let x = left + 180.0 * (i % 4) as f64;
            let y = h - 22.0;
            s += &format!(
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{y:.1}">{name}</text>
"#,
                y - 10.0,
                x + 16.0,
            );
        }
        s + "</svg>\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_draws_every_bar_target_and_line() {
        let c = BarChart {
            title: "t".into(),
            width: 600.0,
            groups: vec!["a".into(), "b\nc".into()],
            series: vec![Series {
                name: "s".into(),
                values: vec![0.5, 2.0],
                labels: vec!["0.50x".into(), "2.00x".into()],
                ranges: vec![(0.4, 0.6), (1.5, 2.5)],
            }],
            reference: Some((1.0, "kernel".into())),
            targets: vec![Some(0.7), None],
        };
        let svg = c.svg();
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 1, "{svg}");
        assert!(svg.contains("stroke-dasharray") && svg.contains("<tspan"));
        assert!(svg.ends_with("</svg>\n"));
        // the top gridline is the highest whisker, not the highest bar
        assert!(svg.contains(">2.5</text>"), "{svg}");
        // 5 gridlines, 2 whiskers, the target, the reference
        assert_eq!(svg.matches("<line").count(), 5 + 2 + 1 + 1, "{svg}");
    }
}
