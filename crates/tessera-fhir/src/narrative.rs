//! The XHTML of a narrative (`Narrative.div`, the `xhtml` data type), checked against
//! FHIR's narrative rules (R4 §2.6.0 Narrative, invariants txt-1 and txt-2).
//!
//! * txt-1: only the basic HTML formatting elements and attributes of HTML 4.0
//!   chapters 7–11 and 12 (except section 4 of chapter 9), `<a>` (`name`, `href`), images
//!   and inline `style`; so no `<script>`, forms, frames, `<iframe>`, `<object>`,
//!   `<embed>`, `<style>`, `<link>`, `<base>`, `<meta>`, no event attributes (`on…`),
//!   no `javascript:` (or other script) URLs, no style that loads or runs anything.
//! * txt-2: some non-whitespace content (text or an image).
//! * The text is well-formed XML with a single `<div>` root in the XHTML namespace
//!   (checked by `quick-xml`); no DOCTYPE (so no entity definitions) and no processing
//!   instructions.
//!
//! [`check`] returns the first problem as a sentence naming the rule.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// The elements txt-1 allows (lower case, as XHTML requires).
const ELEMENTS: &[&str] = &[
    "a", "abbr", "acronym", "address", "b", "bdo", "big", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd", "del", "dfn", "div", "dl",
    "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "map", "area", "ol", "p", "pre", "q", "samp", "small", "span",
    "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "ul", "var", "s", "u", "strike", "center", "font",
];

/// Attributes allowed on every element.
const GLOBAL_ATTRIBUTES: &[&str] = &["id", "class", "style", "title", "lang", "xml:lang", "dir", "accesskey", "tabindex", "xmlns"];

/// Attributes allowed on particular elements.
const ELEMENT_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("a", &["href", "name", "rel", "rev", "shape", "coords", "hreflang", "type", "charset"]),
    ("img", &["src", "alt", "width", "height", "longdesc", "usemap", "ismap", "align", "border", "hspace", "vspace"]),
    ("area", &["href", "alt", "shape", "coords", "nohref"]),
    ("map", &["name"]),
    ("q", &["cite"]),
    ("blockquote", &["cite"]),
    ("del", &["cite", "datetime"]),
    ("ins", &["cite", "datetime"]),
    ("ol", &["start", "type", "compact"]),
    ("ul", &["type", "compact"]),
    ("li", &["value", "type"]),
    ("font", &["size", "color", "face"]),
    ("bdo", &["dir"]),
    ("pre", &["width"]),
    ("br", &["clear"]),
    ("hr", &["align", "noshade", "size", "width"]),
    ("p", &["align"]),
    ("div", &["align"]),
    ("h1", &["align"]),
    ("h2", &["align"]),
    ("h3", &["align"]),
    ("h4", &["align"]),
    ("h5", &["align"]),
    ("h6", &["align"]),
];

/// Attributes of the table elements (HTML 4.0 chapter 11).
const TABLE_ELEMENTS: &[&str] = &["table", "caption", "col", "colgroup", "tbody", "td", "tfoot", "th", "thead", "tr"];
const TABLE_ATTRIBUTES: &[&str] = &[
    "summary", "width", "border", "frame", "rules", "cellspacing", "cellpadding", "align", "valign", "char", "charoff", "span", "abbr", "axis",
    "headers", "scope", "rowspan", "colspan", "nowrap", "bgcolor", "height",
];

/// Elements named in refusals as dangerous (rather than merely not allowed).
const ACTIVE_ELEMENTS: &[&str] =
    &["script", "form", "input", "button", "select", "textarea", "iframe", "frame", "frameset", "object", "embed", "applet", "style", "link", "base", "meta", "svg", "math", "html", "head", "body"];

/// Checks narrative XHTML; `Err` names the first problem.
pub fn check(xhtml: &str) -> Result<(), String> {
    let mut reader = Reader::from_str(xhtml);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut content = false;
    loop {
        let event = reader.read_event().map_err(|e| format!("the narrative is not well-formed XHTML: {e}"))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                if depth == 0 {
                    if seen_root {
                        return Err("the narrative must be a single <div> element".into());
                    }
                    seen_root = true;
                    if e.name().as_ref() != b"div" {
                        return Err(format!("the narrative must be a <div> element, not <{}>", String::from_utf8_lossy(e.name().as_ref())));
                    }
                }
                let name = element(e, depth == 0, &reader)?;
                if name == "img" {
                    content = true;
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) => {
                let blank = t.iter().all(u8::is_ascii_whitespace);
                if depth == 0 && !blank {
                    return Err("text outside the narrative's <div>".into());
                }
                content |= !blank;
            }
            Event::CData(t) => {
                if depth == 0 {
                    return Err("text outside the narrative's <div>".into());
                }
                content |= !t.iter().all(u8::is_ascii_whitespace);
            }
            Event::GeneralRef(r) => {
                if depth == 0 {
                    return Err("text outside the narrative's <div>".into());
                }
                let name: &[u8] = &r;
                if !r.is_char_ref() && !matches!(name, b"lt" | b"gt" | b"amp" | b"quot" | b"apos") {
                    return Err(format!("the entity '&{};' is not defined in XHTML narrative (use a character reference)", String::from_utf8_lossy(name)));
                }
                content = true;
            }
            Event::Comment(_) => {}
            Event::Decl(_) => {}
            Event::PI(_) => return Err("processing instructions are not allowed in the narrative".into()),
            Event::DocType(_) => return Err("a DOCTYPE is not allowed in the narrative".into()),
            Event::Eof => break,
        }
    }
    if !seen_root {
        return Err("the narrative must be a <div> element".into());
    }
    if depth != 0 {
        return Err("the narrative is not well-formed XHTML: unclosed elements".into());
    }
    if !content {
        return Err("txt-2: the narrative must have some non-whitespace content".into());
    }
    Ok(())
}

/// Checks one element and its attributes; returns its name.
fn element(e: &BytesStart<'_>, root: bool, reader: &Reader<&[u8]>) -> Result<String, String> {
    let raw = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    // `<xhtml:p>` (a prefixed XHTML element) is the same element.
    let name = raw.rsplit(':').next().unwrap_or(&raw).to_string();
    if ACTIVE_ELEMENTS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("txt-1: <{raw}> is not allowed in the narrative (no scripts, forms, frames, objects, styles or document elements)"));
    }
    if !ELEMENTS.contains(&name.as_str()) {
        return Err(format!("txt-1: <{raw}> is not one of the HTML elements allowed in the narrative"));
    }
    let mut xmlns = None;
    for attr in e.attributes().with_checks(true) {
        let attr = attr.map_err(|e| format!("the narrative is not well-formed XHTML: {e}"))?;
        let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        let value = attr
            .decode_and_unescape_value_with(reader.decoder(), |_| None)
            .map_err(|e| format!("the narrative is not well-formed XHTML: attribute '{key}' of <{raw}>: {e}"))?;
        let lower = key.to_ascii_lowercase();
        if lower.starts_with("on") {
            return Err(format!("txt-1: the event attribute '{key}' of <{raw}> is not allowed in the narrative"));
        }
        if key == "xmlns" {
            xmlns = Some(value.to_string());
            continue;
        }
        if key.starts_with("xmlns:") {
            if value != XHTML_NS {
                return Err(format!("txt-1: the namespace '{value}' is not allowed in the narrative (XHTML only)"));
            }
            continue;
        }
        let allowed = GLOBAL_ATTRIBUTES.contains(&key.as_str())
            || ELEMENT_ATTRIBUTES.iter().any(|(el, attrs)| *el == name && attrs.contains(&key.as_str()))
            || (TABLE_ELEMENTS.contains(&name.as_str()) && TABLE_ATTRIBUTES.contains(&key.as_str()));
        if !allowed {
            return Err(format!("txt-1: the attribute '{key}' of <{raw}> is not allowed in the narrative"));
        }
        match key.as_str() {
            "href" | "src" | "cite" | "longdesc" | "usemap" => check_url(&key, &raw, &value)?,
            "style" => check_style(&raw, &value)?,
            _ => {}
        }
    }
    if root {
        match xmlns.as_deref() {
            Some(XHTML_NS) => {}
            Some(other) => return Err(format!("the narrative's <div> must be in the XHTML namespace ({XHTML_NS}), not '{other}'")),
            None => return Err(format!("the narrative's <div> must declare the XHTML namespace (xmlns=\"{XHTML_NS}\")")),
        }
    } else if xmlns.as_deref().is_some_and(|ns| ns != XHTML_NS) {
        return Err(format!("txt-1: the namespace '{}' is not allowed in the narrative (XHTML only)", xmlns.unwrap_or_default()));
    }
    Ok(name)
}

/// URLs of links and images: no script schemes (whatever the case or embedded spaces).
fn check_url(key: &str, element: &str, value: &str) -> Result<(), String> {
    let compact: String = value.chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect::<String>().to_ascii_lowercase();
    let scheme = compact.split(':').next().unwrap_or("");
    let refused = compact.contains(':') && matches!(scheme, "javascript" | "vbscript" | "livescript" | "mocha" | "file")
        || (scheme == "data" && !compact.starts_with("data:image/"));
    if refused {
        return Err(format!("txt-1: the URL in '{key}' of <{element}> is not allowed in the narrative (no script or document URLs)"));
    }
    Ok(())
}

/// Inline styles may format, not load or run anything.
fn check_style(element: &str, value: &str) -> Result<(), String> {
    let lower: String = value.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    if ["url(", "expression(", "javascript:", "@import", "behavior:", "-moz-binding"].iter().any(|bad| lower.contains(bad)) || lower.contains('\\') {
        return Err(format!("txt-1: the style of <{element}> is not allowed in the narrative (styles must not load resources or run code)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    const NS: &str = "xmlns=\"http://www.w3.org/1999/xhtml\"";

    #[test]
    fn accepts_ordinary_narratives() {
        for div in [
            format!("<div {NS}>Generated by <a href=\"https://github.com/synthetichealth/synthea\">Synthea</a>.</div>"),
            format!("<div {NS}><p><b>Name</b>: Peter &amp; <span style=\"color: red\">James</span></p><table><tr><td colspan=\"2\">x</td></tr></table></div>"),
            format!("<div {NS}><img src=\"#pic1\" alt=\"x\"/></div>"),
            format!("<div {NS}><!-- note -->&#160;text<br/><ul><li>a</li></ul></div>"),
            format!("<div {NS}><xhtml:p xmlns:xhtml=\"http://www.w3.org/1999/xhtml\">x</xhtml:p></div>"),
        ] {
            assert_eq!(check(&div), Ok(()), "{div}");
        }
    }

    #[test]
    fn refuses_active_content() {
        let cases = [
            (format!("<div {NS}><script>alert(1)</script>x</div>"), "<script>"),
            (format!("<div {NS}><p onclick=\"alert(1)\">x</p></div>"), "onclick"),
            (format!("<div {NS}><a href=\"javascript:alert(1)\">x</a></div>"), "href"),
            (format!("<div {NS}><a href=\" JaVa&#x09;Script:alert(1)\">x</a></div>"), "href"),
            (format!("<div {NS}><iframe src=\"https://evil.example\"></iframe>x</div>"), "<iframe>"),
            (format!("<div {NS}><object data=\"x\"></object>x</div>"), "<object>"),
            (format!("<div {NS}><form><input/></form>x</div>"), "<form>"),
            (format!("<div {NS}><p style=\"background: url(https://evil.example/t.png)\">x</p></div>"), "style"),
            (format!("<div {NS}><img src=\"data:text/html,&lt;script&gt;\"/></div>"), "src"),
            (format!("<div {NS}><marquee>x</marquee></div>"), "<marquee>"),
            (format!("<div {NS}><p foo=\"1\">x</p></div>"), "'foo'"),
            (format!("<div {NS}>   </div>"), "txt-2"),
            (format!("<div {NS}><p>x</div>"), "well-formed"),
            (format!("<div {NS}>x</div><div {NS}>y</div>"), "single"),
            ("<div>x</div>".to_string(), "namespace"),
            (format!("<p {NS}>x</p>"), "<div>"),
            (format!("<!DOCTYPE div [<!ENTITY x \"y\">]><div {NS}>&x;</div>"), "DOCTYPE"),
            (format!("<div {NS}>&nbsp;</div>"), "entity"),
        ];
        for (div, expected) in cases {
            let problem = check(&div).expect_err(&div);
            assert!(problem.contains(expected), "{div}: {problem}");
        }
    }
}
