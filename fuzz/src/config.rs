//! Properties of the config parser, `gatehouse_config::parse_with_env`.
//!
//! Shared by the `config` fuzz target and `crates/config/tests/properties.rs`
//! (which includes this file with `#[path]`), so each property is written once.
//! Every `check_*` function panics, naming the input, when a property fails.

use std::path::Path;

use gatehouse_config::{ErrorKind, parse_with_env};

/// The path errors are reported against.
pub const CONFIG_PATH: &str = "/fuzz/gatehouse.toml";

/// Whether every property is asserted. The bugs listed in `docs/fuzzing.md` are
/// fixed, so this is on by default; `GATEHOUSE_FUZZ_STRICT=0` excuses the
/// inputs they used to affect (to bisect an old build).
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("GATEHOUSE_FUZZ_STRICT").is_none_or(|v| v != "0"))
}

/// Decodes fuzzer bytes, split at `0xFF` (which never occurs in UTF-8):
/// - `TEXT` → [`check_config`] with every variable holding `"8080"`;
/// - `VALUE 0xFF TEXT` → [`check_config`] with every variable holding `VALUE`;
/// - `PREFIX 0xFF VALUE 0xFF SUFFIX` → [`check_substitution`].
pub fn check_config_bytes(data: &[u8]) {
    let parts: Vec<std::borrow::Cow<'_, str>> = data.splitn(3, |&b| b == 0xFF).map(String::from_utf8_lossy).collect();
    match parts.as_slice() {
        [text] => check_config(text, "8080"),
        [value, text] => check_config(text, value),
        [prefix, value, suffix, ..] => check_substitution(prefix, value, suffix),
        [] => {}
    }
}

/// Parses `text` with an environment in which variables whose names start with
/// `U` are unset and every other variable holds `env_value`.
///
/// Properties:
/// - the parser returns (no panic, whatever the text or the substituted value);
/// - an error has a position, and that position is inside `text` (a line that
///   exists, a column at most one past the end of that line);
/// - an error about a `${…}` reference points at the `$` that starts it;
/// - the message starts with `FILE:LINE:COL: `.
pub fn check_config(text: &str, env_value: &str) {
    let env = |name: &str| {
        if name.starts_with('U') {
            None
        } else {
            Some(env_value.to_owned())
        }
    };
    let Err(e) = parse_with_env(text, Path::new(CONFIG_PATH), &env) else {
        return;
    };
    let shown = e.to_string();
    let Some((line, col)) = e.position() else {
        panic!("error without a position: {shown:?}\ntext: {text:?}\nenv: {env_value:?}");
    };
    let Some(line_text) = line.checked_sub(1).and_then(|i| text.split('\n').nth(i)) else {
        panic!("line {line} is not in the text: {shown:?}\ntext: {text:?}\nenv: {env_value:?}");
    };
    let width = line_text.chars().count();
    assert!(
        (1..=width + 1).contains(&col),
        "column {col} is outside line {line} ({width} characters): {shown:?}\ntext: {text:?}\nenv: {env_value:?}"
    );
    assert!(
        shown.starts_with(&format!("{CONFIG_PATH}:{line}:{col}: ")),
        "message does not start with the position: {shown:?}"
    );
    if matches!(e.kind(), ErrorKind::MissingVariable(_) | ErrorKind::BadVariable(_)) {
        let at: String = line_text.chars().skip(col - 1).take(2).collect();
        assert!(
            at == "${",
            "a variable error points at {at:?}, not at `${{`: {shown:?}\ntext: {text:?}"
        );
    }
}

/// Parses `PREFIX${N}SUFFIX` with `N` = `value`, and `PREFIXvalueSUFFIX` with no
/// variables: after expansion they are the same text, so they must give the same
/// outcome and message, and the position must map back through the reference —
/// unchanged before it, at its `$` for an error inside the value (as
/// `interpolate.rs` promises), shifted by the length difference after it.
///
/// `$` is removed from the three parts so nothing else is substituted. An error
/// strictly inside the value is known to be reported at the wrong place
/// (`docs/fuzzing.md`); that position is only checked when [`strict`].
pub fn check_substitution(prefix: &str, value: &str, suffix: &str) {
    check_substitution_with(prefix, value, suffix, strict());
}

/// [`check_substitution`], with the known bug excused or not.
pub fn check_substitution_with(prefix: &str, value: &str, suffix: &str, strict: bool) {
    let [prefix, value, suffix] = [prefix, value, suffix].map(|s| s.replace('$', ""));
    let reference_line = &prefix[prefix.rfind('\n').map_or(0, |i| i + 1)..];
    if reference_line.trim_start().starts_with('#') {
        // A comment: the reference is left alone, so the texts differ.
        return;
    }
    let text = format!("{prefix}${{N}}{suffix}");
    let literal = format!("{prefix}{value}{suffix}");
    check_config(&text, &value);
    let path = Path::new(CONFIG_PATH);
    let substituted = parse_with_env(&text, path, &|name| (name == "N").then(|| value.clone()));
    let plain = parse_with_env(&literal, path, &|_| None);
    let (substituted, plain) = match (substituted, plain) {
        (Ok(_), Ok(_)) => return,
        (Err(s), Err(p)) => (s, p),
        (s, p) => panic!(
            "substituted {:?} but literal {:?}\ntext: {text:?}\nvalue: {value:?}",
            s.err().map(|e| e.to_string()),
            p.err().map(|e| e.to_string())
        ),
    };
    let context = || format!("substituted: {substituted}\nliteral: {plain}\ntext: {text:?}\nvalue: {value:?}");
    assert_eq!(
        substituted.kind().to_string(),
        plain.kind().to_string(),
        "{}",
        context()
    );
    assert_eq!(substituted.key(), plain.key(), "{}", context());
    let Some(offset) = plain.position().and_then(|p| offset_of(&literal, p)) else {
        return;
    };
    let (start, end) = (prefix.len(), prefix.len() + value.len());
    let expected = if offset < start {
        offset
    } else if offset < end {
        if !strict && offset > start {
            return;
        }
        start
    } else {
        offset - value.len() + "${N}".len()
    };
    assert_eq!(
        substituted.position(),
        Some(line_col(&text, expected)),
        "error at byte {offset} of the literal text should be at byte {expected} of the original\n{}",
        context()
    );
}

/// The byte offset of a 1-based line and column (in characters), if it is in `text`.
fn offset_of(text: &str, (line, col): (usize, usize)) -> Option<usize> {
    let line_start = if line == 1 {
        0
    } else {
        text.match_indices('\n').nth(line - 2)?.0 + 1
    };
    let rest = &text[line_start..];
    match rest.char_indices().nth(col - 1) {
        Some((i, _)) => Some(line_start + i),
        None => (rest.chars().count() == col - 1).then_some(text.len()),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}
