//! PNG copies of the SVG plots, rendered with resvg (no browser or converter needed),
//! their text in the system's fonts (DejaVu on Debian: `fonts-dejavu-core`). Without
//! any font the lines and axes are drawn and the text is left out.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use resvg::{tiny_skia, usvg};

/// The system's fonts, loaded once for all the plots of a report.
pub fn fonts() -> Arc<usvg::fontdb::Database> {
    let mut db = usvg::fontdb::Database::new();
    db.load_system_fonts();
    // The plots ask for `sans-serif`, which fontdb maps to Arial unless told: map it to a
    // sans face this system has, or else to any face at all.
    let families: Vec<String> = db.faces().flat_map(|f| f.families.iter().map(|(name, _)| name.clone())).collect();
    let sans = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "FreeSans"]
        .into_iter()
        .map(String::from)
        .find(|want| families.contains(want))
        .or_else(|| families.first().cloned());
    if let Some(sans) = sans {
        db.set_sans_serif_family(sans);
    }
    Arc::new(db)
}

/// Renders `svg` to PNG bytes, at its own size, on white.
///
/// # Errors
/// The SVG does not parse, or has no area.
pub fn render(svg: &str, fonts: &Arc<usvg::fontdb::Database>) -> Result<Vec<u8>> {
    let options = usvg::Options { fontdb: Arc::clone(fonts), ..usvg::Options::default() };
    let tree = usvg::Tree::from_str(svg, &options).context("the plot's SVG does not parse")?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).context("the plot has no area")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().context("PNG encoding")
}
