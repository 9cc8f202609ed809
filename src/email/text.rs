//! Plain text from an email's HTML, for the re-send of a bounced message.
//!
//! The point of the plain-text re-send is that the link still works when the
//! HTML did not get through, so every `<a href>` becomes a visible URL:
//! `label (https://...)`, or just the URL when the label is the URL. Block
//! elements become line breaks, `<style>`, `<script>` and `<head>` vanish,
//! entities are decoded, and runs of blank lines collapse.

/// Converts `html` to readable plain text with every link kept.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    let mut skip_until: Option<&'static str> = None;
    let mut link: Option<(String, usize)> = None; // href, where its label starts in `out`
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if skip_until.is_none() {
                push_text(&mut out, rest);
            }
            break;
        };
        if skip_until.is_none() {
            push_text(&mut out, &rest[..lt]);
        }
        rest = &rest[lt..];
        if rest.starts_with("<!--") {
            rest = rest.find("-->").map_or("", |e| &rest[e + 3..]);
            continue;
        }
        let Some(gt) = rest.find('>') else {
            break;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some(end) = skip_until {
            if closing && name == end {
                skip_until = None;
            }
            continue;
        }
        match (name.as_str(), closing) {
            ("style", false) => skip_until = Some("style"),
            ("script", false) => skip_until = Some("script"),
            ("head", false) => skip_until = Some("head"),
            ("title", false) => skip_until = Some("title"),
            ("br", _) => out.push('\n'),
            (
                "p" | "div" | "tr" | "table" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul"
                | "ol" | "section" | "header" | "footer",
                _,
            ) => ensure_break(&mut out, 2),
            ("li", false) => {
                ensure_break(&mut out, 1);
                out.push_str("- ");
            }
            ("td" | "th", true) => out.push(' '),
            ("hr", _) => {
                ensure_break(&mut out, 1);
                out.push_str("----");
                ensure_break(&mut out, 1);
            }
            ("a", false) => {
                if let Some(href) = attr(tag, "href") {
                    link = Some((decode_entities(&href), out.len()));
                }
            }
            ("a", true) => {
                if let Some((href, start)) = link.take() {
                    let label = out[start..].trim().to_string();
                    let keep = !href.is_empty()
                        && !href.starts_with('#')
                        && !href.to_ascii_lowercase().starts_with("javascript:");
                    if keep {
                        if label.is_empty()
                            || label == href
                            || label.trim_end_matches('/') == href.trim_end_matches('/')
                        {
                            out.truncate(start);
                            if !out.ends_with([' ', '\n']) && !out.is_empty() {
                                out.push(' ');
                            }
                            out.push_str(&href);
                        } else {
                            out.push_str(" (");
                            out.push_str(&href);
                            out.push(')');
                        }
                    }
                }
            }
            ("img", _) => {
                if let Some(alt) = attr(tag, "alt").filter(|a| !a.trim().is_empty()) {
                    push_text(&mut out, &alt);
                }
            }
            _ => {}
        }
    }
    tidy(&out)
}

fn push_text(out: &mut String, text: &str) {
    let decoded = decode_entities(text);
    for c in decoded.chars() {
        let c = if c.is_whitespace() { ' ' } else { c }; // includes U+00A0
        if c == ' ' && (out.ends_with(' ') || out.ends_with('\n') || out.is_empty()) {
            continue;
        }
        out.push(c);
    }
}

fn ensure_break(out: &mut String, n: usize) {
    while out.ends_with(' ') {
        out.pop();
    }
    if out.is_empty() {
        return;
    }
    let have = out.chars().rev().take_while(|c| *c == '\n').count();
    for _ in have..n {
        out.push('\n');
    }
}

/// The value of attribute `name` in a tag's inner text.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(name) {
        let i = from + pos;
        let before_ok = i == 0 || lower.as_bytes()[i - 1].is_ascii_whitespace();
        let after = lower[i + name.len()..].trim_start();
        if before_ok && after.starts_with('=') {
            let value_start = tag.len() - after.len() + 1;
            let v = tag[value_start..].trim_start();
            return Some(match v.chars().next() {
                Some(q @ ('"' | '\'')) => v[1..].split(q).next().unwrap_or("").to_string(),
                _ => v
                    .split(|c: char| c.is_whitespace() || c == '>')
                    .next()
                    .unwrap_or("")
                    .to_string(),
            });
        }
        from = i + name.len();
    }
    None
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let decoded = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            "mdash" => Some('—'),
            "ndash" => Some('–'),
            "hellip" => Some('…'),
            "copy" => Some('©'),
            _ => ent
                .strip_prefix("#x")
                .or_else(|| ent.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn tidy(s: &str) -> String {
    let mut lines: Vec<&str> = s.lines().map(str::trim).collect();
    let mut out: Vec<&str> = Vec::with_capacity(lines.len());
    for l in lines.drain(..) {
        if l.is_empty() && out.last().is_none_or(|p: &&str| p.is_empty()) {
            continue;
        }
        out.push(l);
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stay_visible() {
        let html = r#"<html><head><title>x</title><style>p{color:red}</style></head><body>
            <h1>Confirm your email</h1>
            <p>Hi Ada,</p>
            <p>Click <a href="https://app.example.com/verify?token=abc&amp;u=1">verify my email</a> to finish.</p>
            <p>Or paste <a href='https://app.example.com/verify?token=abc&amp;u=1'>https://app.example.com/verify?token=abc&amp;u=1</a></p>
            <script>track()</script>
            </body></html>"#;
        let t = html_to_text(html);
        assert_eq!(
            t,
            "Confirm your email\n\nHi Ada,\n\nClick verify my email (https://app.example.com/verify?token=abc&u=1) to finish.\n\nOr paste https://app.example.com/verify?token=abc&u=1"
        );
        assert!(!t.contains("color"), "{t}");
        assert!(!t.contains("track"), "{t}");
    }

    #[test]
    fn buttons_lists_and_entities() {
        let html = "<table><tr><td><a class=\"btn\" href=\"https://x.io/reset/9\" target=_blank><span>Reset&nbsp;password</span></a></td></tr></table>\
                    <ul><li>One &amp; two</li><li>&#8220;three&#8221; &#x2014; four</li></ul><br>Thanks<br/>The team";
        let t = html_to_text(html);
        assert!(t.contains("Reset password (https://x.io/reset/9)"), "{t}");
        assert!(t.contains("- One & two\n- “three” — four"), "{t}");
        assert!(t.ends_with("Thanks\nThe team"), "{t}");
    }

    #[test]
    fn fragments_and_javascript_links_are_not_urls_to_keep() {
        let t = html_to_text(
            r##"<a href="#top">Top</a> <a href="javascript:void(0)">x</a> <a>plain</a>"##,
        );
        assert_eq!(t, "Top x plain");
    }

    #[test]
    fn broken_markup_does_not_panic() {
        for s in [
            "<",
            "<a href=",
            "&",
            "&#xZZ;",
            "<p>unclosed <b>bold",
            "<!-- never closed",
            "a < b and c > d",
        ] {
            let _ = html_to_text(s);
        }
        assert_eq!(html_to_text("a &lt; b"), "a < b");
    }
}
