//! Loading a profile: TOML text to validated [`Knob`]s, with `extends` inheritance (a child's
//! knob replaces the parent's knob of the same name, new knobs follow the parent's). Every
//! error names the file and line. Reads profile files only; never touches the system.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::catalogue::{self, Scope, Spec};
use crate::error::{Error, Source};
use crate::value::{Compare, Field, Wanted};

/// How deep `extends` may chain; deeper is surely a mistake.
const MAX_DEPTH: usize = 8;

/// A profile after inheritance and validation.
#[derive(Debug, Clone)]
pub struct Profile {
    /// File stem (`edge-1m`).
    pub name: String,
    /// One line saying what the profile is for.
    pub description: String,
    /// The profile file itself.
    pub file: PathBuf,
    /// The profile this one extends, if any.
    pub extends: Option<String>,
    /// The knobs, parents' first, in file order.
    pub knobs: Vec<Knob>,
}

/// One knob of a profile.
#[derive(Debug, Clone)]
pub struct Knob {
    /// Sysctl name or `rlimit.nofile`.
    pub name: String,
    /// The wanted value.
    pub want: Wanted,
    /// How the actual value must relate to `want`.
    pub compare: Compare,
    /// Where the knob lives (checked against the catalogue).
    pub scope: Scope,
    /// One line saying why.
    pub why: String,
    /// Skip (instead of failing) when the knob does not exist, e.g. a module not loaded.
    pub optional: bool,
    /// Where the knob is written.
    pub at: Source,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: String,
    extends: Option<Spanned<String>>,
    #[serde(default)]
    knob: Vec<RawKnob>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKnob {
    name: Spanned<String>,
    want: Spanned<toml::Value>,
    compare: Spanned<String>,
    scope: Spanned<String>,
    why: Spanned<String>,
    #[serde(default)]
    optional: bool,
}

/// The names of the profiles in `dir` (`*.toml`), sorted.
pub fn list(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|err| Error::ProfileFile { path: dir.to_path_buf(), err })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// Loads profile `name_or_path`: a path to a `.toml` file, or a name looked up in `dir`.
pub fn load(dir: &Path, name_or_path: &str) -> Result<Profile, Error> {
    let is_path = Path::new(name_or_path).extension().is_some_and(|x| x.eq_ignore_ascii_case("toml"));
    let file = if is_path || name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        dir.join(format!("{name_or_path}.toml"))
    };
    load_file(&file, &mut Vec::new())
}

fn load_file(file: &Path, chain: &mut Vec<PathBuf>) -> Result<Profile, Error> {
    let text = std::fs::read_to_string(file).map_err(|err| Error::ProfileFile { path: file.to_path_buf(), err })?;
    let raw: RawProfile = toml::from_str(&text).map_err(|e| Error::Profile {
        at: Source::at(file, &text, e.span().map_or(0, |s| s.start)),
        message: e.message().trim().to_owned(),
    })?;
    let err_at =
        |span: Range<usize>, message: String| Error::Profile { at: Source::at(file, &text, span.start), message };
    chain.push(file.to_path_buf());

    let mut knobs = match &raw.extends {
        None => Vec::new(),
        Some(parent) => {
            let parent_file = file.with_file_name(format!("{}.toml", parent.get_ref()));
            if chain.contains(&parent_file) {
                return Err(err_at(parent.span(), format!("`extends = \"{}\"` makes a cycle", parent.get_ref())));
            }
            if chain.len() >= MAX_DEPTH {
                return Err(err_at(parent.span(), "`extends` chains too deep".to_owned()));
            }
            load_file(&parent_file, chain)?.knobs
        }
    };

    let mut seen = HashSet::new();
    for raw_knob in raw.knob {
        let name_span = raw_knob.name.span();
        if !seen.insert(raw_knob.name.get_ref().clone()) {
            return Err(err_at(name_span, format!("knob `{}` is listed twice", raw_knob.name.get_ref())));
        }
        let knob = validate(raw_knob, &|span, m| err_at(span, m), Source::at(file, &text, name_span.start))?;
        match knobs.iter_mut().find(|k| k.name == knob.name) {
            Some(inherited) => *inherited = knob,
            None => knobs.push(knob),
        }
    }

    let name = file.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    Ok(Profile {
        name,
        description: raw.description,
        file: file.to_path_buf(),
        extends: raw.extends.map(Spanned::into_inner),
        knobs,
    })
}

type ErrAt<'a> = dyn Fn(Range<usize>, String) -> Error + 'a;

fn validate(raw: RawKnob, err_at: &ErrAt<'_>, at: Source) -> Result<Knob, Error> {
    let name = raw.name.get_ref();
    let spec = catalogue::lookup(name).ok_or_else(|| {
        err_at(raw.name.span(), format!("unknown knob `{name}`; known knobs: {}", catalogue::names()))
    })?;

    let scope = Scope::parse(raw.scope.get_ref()).ok_or_else(|| {
        err_at(raw.scope.span(), format!("scope `{}` is not one of netns, global, process", raw.scope.get_ref()))
    })?;
    if scope != spec.scope {
        return Err(err_at(
            raw.scope.span(),
            format!("`{name}` has scope `{}` on Linux, not `{}`", spec.scope.as_str(), scope.as_str()),
        ));
    }

    let compare = Compare::parse(raw.compare.get_ref()).ok_or_else(|| {
        err_at(
            raw.compare.span(),
            format!("compare `{}` is not one of exact, at-least, at-most, range", raw.compare.get_ref()),
        )
    })?;
    if compare == Compare::Range && spec.fields != 2 {
        return Err(err_at(
            raw.compare.span(),
            format!("`range` needs a two-field knob; `{name}` has {}", spec.fields),
        ));
    }

    let want = parse_want(&raw.want, spec).map_err(|m| err_at(raw.want.span(), m))?;
    if let (Compare::Range, [Field::Int(low), Field::Int(high)]) = (compare, want.0.as_slice())
        && low > high
    {
        return Err(err_at(raw.want.span(), format!("malformed value for `{name}`: range {low} {high} is backwards")));
    }
    if raw.why.get_ref().trim().is_empty() {
        return Err(err_at(raw.why.span(), format!("`{name}` needs a one-line `why`")));
    }
    Ok(Knob { name: name.clone(), want, compare, scope, why: raw.why.into_inner(), optional: raw.optional, at })
}

fn parse_want(value: &Spanned<toml::Value>, spec: &Spec) -> Result<Wanted, String> {
    let name = spec.name;
    let want = match value.get_ref() {
        toml::Value::Integer(n) => u64::try_from(*n)
            .map(|n| Wanted(vec![Field::Int(n)]))
            .map_err(|_| format!("malformed value for `{name}`: {n} is negative"))?,
        toml::Value::String(s) => Wanted::parse(s).map_err(|m| format!("malformed value for `{name}`: {m}"))?,
        other => {
            return Err(format!(
                "malformed value for `{name}`: a {} where an integer or a string of integers \
                 belongs",
                other.type_str()
            ));
        }
    };
    if want.0.len() != spec.fields {
        return Err(format!(
            "malformed value for `{name}`: `{want}` has {} field(s), the knob takes {}",
            want.0.len(),
            spec.fields
        ));
    }
    if let Some(n) = want.0.iter().find_map(|f| match f {
        Field::Int(n) if *n > spec.max => Some(*n),
        _ => None,
    }) {
        return Err(format!("malformed value for `{name}`: {n} is above its maximum {}", spec.max));
    }
    if spec.scope == Scope::Process && want.0.contains(&Field::Any) {
        return Err(format!("malformed value for `{name}`: `*` is not allowed here"));
    }
    Ok(want)
}
