//! Report files: the JSON parses back with the fields tools rely on, and both plots are
//! well-formed SVG (checked with a small XML tag-balance parser) with the expected elements.

mod common;

use common::{Echo, load};
use wsbench::report::Report;

/// Checks that `text` is a single well-formed XML element tree (declaration allowed);
/// returns the element names in document order.
fn xml_elements(text: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut rest = text.trim_start();
    if let Some(after) = rest.strip_prefix("<?xml") {
        rest = &after[after.find("?>").expect("unterminated declaration") + 2..];
    }
    let mut roots = 0;
    while let Some(open) = rest.find('<') {
        let text_part = &rest[..open];
        assert!(!text_part.contains('>'), "stray '>' in text {text_part:?}");
        for (i, _) in text_part.match_indices('&') {
            let end = text_part[i..].find(';').map_or(text_part.len(), |e| i + e + 1);
            let entity = &text_part[i..end];
            assert!(["&amp;", "&lt;", "&gt;", "&quot;"].contains(&entity), "bare & in {text_part:?}");
        }
        let close = rest[open..].find('>').expect("unterminated tag") + open;
        let tag = &rest[open + 1..close];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
        } else {
            let name = tag.split_whitespace().next().unwrap().trim_end_matches('/').to_string();
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
            if stack.is_empty() {
                roots += 1;
            }
            names.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?}");
    assert_eq!(roots, 1, "one root element");
    assert!(rest.trim().is_empty());
    names
}

#[test]
fn json_report_and_plots_are_well_formed() {
    let echo = Echo::start(&[]);
    let run = load("echo", echo.addr, &["--conns", "10", "--duration", "1", "--interval-ms", "50"]);
    assert_eq!(run.code, 0);
    // The JSON parses into the report type and has what a reader needs.
    let text = std::fs::read_to_string(&run.path).unwrap();
    let report: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(report.scenario, "echo");
    assert_eq!(report.targets, vec![echo.addr.to_string()]);
    assert!(report.latency_us.p50 > 0 && report.latency_us.p50 <= report.latency_us.p99);
    assert!(report.latency_us.p99 <= report.latency_us.max);
    assert!(report.timeline.len() >= 3);
    assert!(report.timeline.iter().any(|s| s.snap.open == 10));
    assert!((report.latency_distribution.last().unwrap()[0] - 100.0).abs() < 1e-9);
    assert!(report.clean);
    // Every sample knows the machine's memory in use; the handshakes have their distribution.
    assert!(report.timeline.iter().all(|s| s.mem_used_kib > 0));
    assert!((report.handshake_distribution.last().unwrap()[0] - 100.0).abs() < 1e-9);
    // The plots exist next to it, as well-formed SVG with the expected elements and as
    // PNG images of the same size, not blank.
    let [conns, lat, mem] = Report::plot_paths(&run.path);
    for (path, title) in
        [(conns, "connections over time"), (lat, "latency by percentile"), (mem, "memory per open connection")]
    {
        let svg = std::fs::read_to_string(&path).unwrap();
        let names = xml_elements(&svg);
        assert_eq!(names[0], "svg", "{}", path.display());
        assert!(names.iter().any(|n| n == "polyline"));
        assert!(names.iter().filter(|n| *n == "text").count() >= 6, "axis labels");
        assert!(svg.contains(title), "{title}");
        assert!(svg.contains(r#"xmlns="http://www.w3.org/2000/svg""#));
        let png = std::fs::read(path.with_extension("png")).unwrap();
        let (width, height, colours, title) = png_facts(&png);
        assert_eq!((width, height), (800, 420), "{}", path.display());
        assert!(colours >= 3, "{}: {colours} colours, a blank image", path.display());
        // Above the plot area there is only the title: its text was drawn (a font found).
        assert!(title, "{}: no text in the title rows (no font?)", path.display());
    }
}

/// Width, height, the number of distinct pixels of a PNG (decoded for real), and whether
/// the rows above the plot area (only the title is there) have a dark pixel.
fn png_facts(bytes: &[u8]) -> (u32, u32, usize, bool) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels = &buf[..info.buffer_size()];
    let step = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = pixels.chunks(step).collect();
    let title_rows = &pixels[..info.line_size * 45];
    let dark = title_rows.chunks(step).any(|p| p.iter().take(3).all(|c| *c < 128));
    (info.width, info.height, colours.len(), dark)
}

#[test]
fn the_xml_check_rejects_broken_svg() {
    let bad = std::panic::catch_unwind(|| xml_elements("<svg><text>x</svg>"));
    assert!(bad.is_err());
    assert_eq!(xml_elements(r#"<?xml version="1.0"?><svg a="1"><line/></svg>"#), ["svg", "line"]);
}
