//! Console output for people watching a terminal: window results as a table, like Spark's
//! console sink, and alerts as a box.

use chrono::{DateTime, FixedOffset, Utc};

use crate::{
    process::{
        alert::{Alert, Kind},
        window::{AggOp, Layout, WindowResult},
    },
    record::{format_millis, parse_millis},
    text::terminal,
};

/// Width of the alert box, borders included: wide enough for a USGS event URL on one line.
pub const BOX_WIDTH: usize = 78;
const LABEL: usize = 11;

/// One batch of window results as a table headed `Batch: n`.
pub fn window_table(layout: &Layout, batch: u64, results: &[WindowResult]) -> String {
    let mut header = vec!["window_start".to_string(), "window_end".to_string()];
    header.extend(layout.group_by.iter().cloned());
    header.extend(layout.aggregates.iter().map(|a| a.0.clone()));
    header.push("final".into());
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut row = vec![
                format_millis(r.start).unwrap_or_default(),
                format_millis(r.end).unwrap_or_default(),
            ];
            let group: Vec<serde_json::Value> = serde_json::from_str(&r.group).unwrap_or_default();
            row.extend(
                layout
                    .group_by
                    .iter()
                    .enumerate()
                    .map(|(i, _)| match group.get(i) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(serde_json::Value::Null) | None => "null".into(),
                        Some(v) => v.to_string(),
                    }),
            );
            row.extend(
                layout
                    .aggregates
                    .iter()
                    .zip(&r.values)
                    .map(|((_, op, _), v)| match (op, v) {
                        (AggOp::Count, Some(n)) => format!("{}", *n as u64),
                        (_, Some(x)) => format!("{x}"),
                        (_, None) => "null".into(),
                    }),
            );
            row.push(r.is_final.to_string());
            row
        })
        .collect();
    table(&format!("Batch: {batch}"), &header, &rows)
}

/// A plain ASCII table: `+---+` rules, `|`-separated cells, left-aligned text. Cells are
/// terminal-safe ([`terminal`]): a group value from the feed cannot move the cursor.
pub fn table(title: &str, header: &[String], rows: &[Vec<String>]) -> String {
    let safe = |cells: &[String]| -> Vec<String> {
        cells.iter().map(|c| terminal(c).into_owned()).collect()
    };
    let header = safe(header);
    let rows: Vec<Vec<String>> = rows.iter().map(|r| safe(r)).collect();
    let (header, rows) = (&header[..], &rows[..]);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(*w));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (w, cell) in widths.iter().zip(cells) {
            s.push_str(cell);
            s.push_str(&" ".repeat(w - cell.chars().count()));
            s.push('|');
        }
        s.push('\n');
        s
    };
    let bar = "-".repeat(rule.len().saturating_sub(1).max(title.len()));
    let mut out = format!("{bar}\n{title}\n{bar}\n");
    out.push_str(&rule);
    out.push_str(&line(header));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(row));
    }
    out.push_str(&rule);
    out.push('\n');
    out
}

fn text<'a>(alert: &'a Alert, field: &str) -> Option<&'a str> {
    alert
        .quake
        .get(field)
        .and_then(|v| v.as_str())
        .filter(|s| !s.trim().is_empty())
}

fn number(alert: &Alert, field: &str) -> Option<f64> {
    alert.quake.get(field).and_then(serde_json::Value::as_f64)
}

fn times(alert: &Alert, local: FixedOffset) -> Option<(String, String)> {
    let ms = text(alert, "time").and_then(parse_millis)?;
    let utc: DateTime<Utc> = DateTime::from_timestamp_millis(ms)?;
    Some((
        utc.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        utc.with_timezone(&local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
    ))
}

/// The language of the alert box and the alert log (`[alerts] language`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// English.
    #[default]
    En,
    /// Spanish, as the course prints it (`ALERTA SÍSMICA`).
    Es,
}

/// The words of the alert box and line in one language.
struct Words {
    title: &'static str,
    kinds: [&'static str; 3],
    magnitude: &'static str,
    place: &'static str,
    time: &'static str,
    local: &'static str,
    location: &'static str,
    depth: &'static str,
    tsunami: &'static str,
    yes_no: [&'static str; 2],
    why: &'static str,
    rules: &'static str,
    event: &'static str,
    unknown: &'static str,
    unknown_place: &'static str,
}

const ENGLISH: Words = Words {
    title: "EARTHQUAKE ALERT",
    kinds: ["NEW", "UPGRADE", "CANCELLED"],
    magnitude: "Magnitude",
    place: "Place",
    time: "Time",
    local: "Local",
    location: "Location",
    depth: "depth",
    tsunami: "tsunami flag",
    yes_no: ["yes", "no"],
    why: "Why",
    rules: "Rules",
    event: "Event",
    unknown: "unknown",
    unknown_place: "unknown place",
};

const SPANISH: Words = Words {
    title: "ALERTA SÍSMICA",
    kinds: ["NUEVA", "MAYOR", "CANCELADA"],
    magnitude: "Magnitud",
    place: "Lugar",
    time: "Hora",
    local: "Hora local",
    location: "Ubicación",
    depth: "profundidad",
    tsunami: "aviso de tsunami",
    yes_no: ["sí", "no"],
    why: "Motivo",
    rules: "Reglas",
    event: "Evento",
    unknown: "desconocida",
    unknown_place: "lugar desconocido",
};

impl Language {
    fn words(self) -> &'static Words {
        match self {
            Language::En => &ENGLISH,
            Language::Es => &SPANISH,
        }
    }
}

impl Words {
    fn kind(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::New => self.kinds[0],
            Kind::Upgrade => self.kinds[1],
            Kind::Cancel => self.kinds[2],
        }
    }
}

/// One line that says it all: what the log file and webhooks carry. Text from the feed is
/// terminal-safe ([`terminal`]): a newline in a place cannot forge a second line.
pub fn alert_line(alert: &Alert, language: Language) -> String {
    let w = language.words();
    let mag = number(alert, "mag").map_or("M ?".to_string(), |m| format!("M {m:.1}"));
    let place = terminal(text(alert, "place").unwrap_or(w.unknown_place));
    let when = times(alert, FixedOffset::east_opt(0).expect("zero offset"))
        .map(|(utc, _)| utc)
        .unwrap_or_default();
    let mut line = format!("[{}] {mag} - {place} - {when}", w.kind(alert.kind));
    if let Some(level) = text(alert, "alert") {
        line.push_str(&format!(" - PAGER {}", terminal(level)));
    }
    if alert.quake.get("tsunami") == Some(&serde_json::Value::Bool(true)) {
        line.push_str(&format!(" - {}", w.tsunami));
    }
    if alert.kind == Kind::Cancel {
        line.push_str(&format!(" - {}", terminal(&alert.reason)));
    } else {
        let rules = w.rules.to_lowercase();
        line.push_str(&format!(" - {rules}: {}", alert.rules.join(", ")));
    }
    if let Some(url) = text(alert, "url") {
        line.push_str(&format!(" - {}", terminal(url)));
    }
    line
}

/// The alert as a Unicode box: aligned labels, long places wrapped at spaces, anything still
/// too long cut with `…`; origin time in UTC and in `local` time.
pub fn alert_box(alert: &Alert, local: FixedOffset, language: Language) -> String {
    let w = language.words();
    let inner = BOX_WIDTH - 4;
    let value_width = inner - LABEL;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut add = |label: &str, value: String| rows.push((label.to_string(), value));
    let mag = match (number(alert, "mag"), text(alert, "mag_type")) {
        (Some(m), Some(t)) => format!("{m:.1} {t}"),
        (Some(m), None) => format!("{m:.1}"),
        (None, _) => w.unknown.into(),
    };
    add(w.magnitude, mag);
    add(
        w.place,
        text(alert, "place").unwrap_or(w.unknown).to_string(),
    );
    if let Some((utc, local)) = times(alert, local) {
        add(w.time, utc);
        add(w.local, local);
    }
    if let (Some(lat), Some(lon)) = (number(alert, "lat"), number(alert, "lon")) {
        let depth =
            number(alert, "depth_km").map_or(String::new(), |d| format!(", {} {d:.1} km", w.depth));
        add(w.location, format!("{lat:.4}, {lon:.4}{depth}"));
    }
    let pager = text(alert, "alert").unwrap_or("none");
    let tsunami =
        w.yes_no[usize::from(alert.quake.get("tsunami") != Some(&serde_json::Value::Bool(true)))];
    add("PAGER", format!("{pager}, {} {tsunami}", w.tsunami));
    if alert.kind == Kind::Cancel {
        add(w.why, alert.reason.clone());
    } else {
        add(w.rules, alert.reason.clone());
    }
    if let Some(id) = text(alert, "id") {
        add(w.event, id.to_string());
    }
    if let Some(url) = text(alert, "url") {
        add("URL", cut(url, value_width));
    }

    let mut out = String::new();
    let rule = "─".repeat(BOX_WIDTH - 2);
    out.push_str(&format!("┌{rule}┐\n"));
    out.push_str(&boxed(
        &format!("{} · {}", w.title, w.kind(alert.kind)),
        inner,
    ));
    out.push_str(&format!("├{rule}┤\n"));
    for (label, value) in rows {
        for (i, piece) in wrap(&value, value_width).into_iter().enumerate() {
            let label = if i == 0 { label.as_str() } else { "" };
            out.push_str(&boxed(&format!("{label:<LABEL$}{piece}"), inner));
        }
    }
    out.push_str(&format!("└{rule}┘\n"));
    out
}

fn boxed(content: &str, inner: usize) -> String {
    let content = cut(content, inner);
    let pad = inner - content.chars().count();
    format!("│ {content}{} │\n", " ".repeat(pad))
}

/// `text` shortened to `width` characters, ending in `…` when cut.
fn cut(text: &str, width: usize) -> String {
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    if text.chars().count() <= width {
        return text;
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Words laid into lines of at most `width` characters; a word longer than a line is cut.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let word = cut(word, width);
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if needed > width && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
pub fn print_out(text: &str) -> crate::error::Result<bool> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(crate::error::Error::io("<stdout>")(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::process::alert::Severity;

    fn alert(place: &str) -> Alert {
        Alert {
            kind: Kind::New,
            rules: vec!["M4.5+".into()],
            reason: "M4.5+: M ≥ 4.5".into(),
            severity: Severity::default(),
            quake: serde_json::json!({
                "id": "us6000len8", "time": "2023-10-15T03:36:00.937Z", "mag": 6.3,
                "mag_type": "mww", "place": place, "lat": 34.5565, "lon": 62.0449,
                "depth_km": 6.0, "alert": "red", "tsunami": false,
                "url": "https://earthquake.usgs.gov/earthquakes/eventpage/us6000len8",
            }),
            emitted_at: "2023-10-15T03:40:00.000Z".into(),
        }
    }

    #[test]
    fn the_alert_box_is_aligned_and_shows_utc_and_local_time() {
        let text = alert_box(
            &alert("western Afghanistan"),
            FixedOffset::east_opt(4 * 3600 + 1800).unwrap(),
            Language::En,
        );
        for line in text.lines() {
            assert_eq!(line.chars().count(), BOX_WIDTH, "{line:?}");
        }
        assert!(
            text.contains("│ Time       2023-10-15 03:36:00 UTC"),
            "{text}"
        );
        assert!(
            text.contains("│ Local      2023-10-15 08:06:00 +04:30"),
            "{text}"
        );
        assert!(text.contains("https://earthquake.usgs.gov/earthquakes/eventpage/us6000len8 "));
        assert!(text.starts_with("┌") && text.trim_end().ends_with("┘"));
    }

    #[test]
    fn long_places_wrap_and_endless_words_are_cut() {
        let place = "a very long place name that goes on and on past the edge of the box, \
                     somewhere in the middle of a large ocean far from any coast at all";
        let text = alert_box(
            &alert(place),
            FixedOffset::east_opt(0).unwrap(),
            Language::En,
        );
        let place_lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("│ Place"))
            .take_while(|l| !l.starts_with("│ Time"))
            .collect();
        assert_eq!(place_lines.len(), 3, "{text}");
        assert!(
            place_lines[1].starts_with("│            "),
            "continuation is indented"
        );
        let word = "x".repeat(200);
        let text = alert_box(
            &alert(&word),
            FixedOffset::east_opt(0).unwrap(),
            Language::En,
        );
        assert!(text.contains("x…"));
        for line in text.lines() {
            assert_eq!(line.chars().count(), BOX_WIDTH);
        }
        // Control characters in a hostile place cannot break the box.
        let text = alert_box(
            &alert("evil\u{1b}[2J\nplace\r"),
            FixedOffset::east_opt(0).unwrap(),
            Language::En,
        );
        assert!(!text.contains('\u{1b}'));
        let normal = alert_box(
            &alert("somewhere"),
            FixedOffset::east_opt(0).unwrap(),
            Language::En,
        );
        assert_eq!(text.lines().count(), normal.lines().count());
    }

    #[test]
    fn the_course_reads_its_alerts_in_spanish() {
        let text = alert_box(
            &alert("western Afghanistan"),
            FixedOffset::east_opt(0).unwrap(),
            Language::Es,
        );
        assert!(text.contains("ALERTA SÍSMICA · NUEVA"), "{text}");
        for label in [
            "Magnitud",
            "Lugar",
            "Hora local",
            "Ubicación",
            "Reglas",
            "Evento",
        ] {
            assert!(text.contains(&format!("│ {label} ")), "{label}: {text}");
        }
        for line in text.lines() {
            assert_eq!(line.chars().count(), BOX_WIDTH, "{line:?}");
        }
        let line = alert_line(&alert("western Afghanistan"), Language::Es);
        assert!(line.starts_with("[NUEVA] M "), "{line}");
        assert!(line.contains(" - reglas: "), "{line}");
    }

    #[test]
    fn the_alert_line_says_it_all() {
        let line = alert_line(&alert("western Afghanistan"), Language::En);
        assert_eq!(
            line,
            "[NEW] M 6.3 - western Afghanistan - 2023-10-15 03:36:00 UTC - PAGER red - rules: \
             M4.5+ - https://earthquake.usgs.gov/earthquakes/eventpage/us6000len8"
        );
    }

    #[test]
    fn window_results_print_as_an_aligned_table() {
        let layout = Layout::new(
            &[],
            &[
                ("count".into(), AggOp::Count, None),
                ("max_mag".into(), AggOp::Max, Some("mag".into())),
            ],
        )
        .unwrap();
        let result = WindowResult {
            start: 0,
            end: 300_000,
            group: Arc::from("[]"),
            values: vec![Some(3.0), Some(4.25)],
            is_final: false,
            emitted_at: 0,
        };
        let text = window_table(&layout, 2, &[result]);
        let expected = "\
-----------------------------------------------------------------------
Batch: 2
-----------------------------------------------------------------------
+------------------------+------------------------+-----+-------+-----+
|window_start            |window_end              |count|max_mag|final|
+------------------------+------------------------+-----+-------+-----+
|1970-01-01T00:00:00.000Z|1970-01-01T00:05:00.000Z|3    |4.25   |false|
+------------------------+------------------------+-----+-------+-----+

";
        assert_eq!(text, expected);
    }
}
