//! Text from feeds made safe for where it is shown: terminals and log files (no control
//! characters that move the cursor, clear the screen or forge a line), chat webhooks (no
//! mention that pings a whole channel), spreadsheets (no formula). Each function returns the
//! text unchanged, without copying, when there is nothing to change.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal or a line-oriented log as it is: C0 and C1 controls
/// (escape, newline, carriage return, backspace…), DEL, and the bidirectional overrides that
/// make text read differently from how it is stored.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` for a terminal or a log line: every unsafe character written as a visible escape
/// (`\u{1b}`), so nothing is hidden and nothing acts.
pub fn terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` for a chat webhook (Slack, Discord, Teams, Mattermost): terminal-safe, with `&`, `<`
/// and `>` escaped as Slack requires (so `<!channel>` or `<@U123>` in a feed is text, not a
/// mention or a link), and `@everyone`, `@here` and `@channel` broken with a zero-width space
/// so that no service pings anyone.
pub fn chat(text: &str) -> Cow<'_, str> {
    let safe = terminal(text);
    let mentions = ["@everyone", "@here", "@channel"];
    let lower = safe.to_lowercase();
    let needs = safe.contains(['&', '<', '>']) || mentions.iter().any(|m| lower.contains(m));
    if !needs {
        return safe;
    }
    let mut out = String::with_capacity(safe.len() + 16);
    let chars: Vec<char> = safe.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => {
                out.push('@');
                let rest: String = chars[i + 1..]
                    .iter()
                    .take(8)
                    .collect::<String>()
                    .to_lowercase();
                if ["everyone", "here", "channel"]
                    .iter()
                    .any(|w| rest.starts_with(w))
                {
                    out.push('\u{200b}');
                }
            }
            c => out.push(*c),
        }
    }
    Cow::Owned(out)
}

/// A CSV cell a spreadsheet will not run: a cell beginning with `=`, `+`, `-`, `@`, a tab or a
/// carriage return gets a leading `'` (the OWASP advice for CSV injection). Numbers written as
/// numbers are not text cells and never pass through here.
pub fn csv_cell(text: &str) -> Cow<'_, str> {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{text}")),
        _ => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminals_see_escapes_not_actions() {
        assert!(matches!(terminal("Tres Pinos, CA"), Cow::Borrowed(_)));
        assert_eq!(terminal("evil\u{1b}[2J"), "evil\\u{1b}[2J");
        assert_eq!(
            terminal("place\n[NEW] M 9.9 - forged"),
            "place\\u{a}[NEW] M 9.9 - forged"
        );
        assert_eq!(
            terminal("a\u{202e}b\u{9b}c\u{7f}"),
            "a\\u{202e}b\\u{9b}c\\u{7f}"
        );
        assert_eq!(terminal("Zürich – 東京"), "Zürich – 東京");
    }

    #[test]
    fn chat_mentions_are_text() {
        assert!(matches!(
            chat("10 km SSW of Tres Pinos, CA"),
            Cow::Borrowed(_)
        ));
        assert_eq!(chat("<!channel> quake"), "&lt;!channel&gt; quake");
        assert_eq!(chat("<@U123|bob>"), "&lt;@U123|bob&gt;");
        assert_eq!(
            chat("hi @everyone & @Here"),
            "hi @\u{200b}everyone &amp; @\u{200b}Here"
        );
        assert_eq!(chat("mail me@example.org"), "mail me@example.org");
        assert_eq!(chat("line\nbreak"), "line\\u{a}break");
    }

    #[test]
    fn csv_formulas_are_neutralized() {
        for bad in [
            "=HYPERLINK(\"http://x\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(csv_cell(bad), format!("'{bad}"), "{bad:?}");
        }
        assert!(matches!(csv_cell("Tres Pinos"), Cow::Borrowed(_)));
        assert_eq!(csv_cell(""), "");
    }
}
