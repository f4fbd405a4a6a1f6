//! `${VAR}` substitution, keeping a map back to the original byte offsets so that
//! errors found after substitution still point at the right column.
//!
//! Syntax: `${NAME}` (the variable must be set), `${NAME:-default}` (default when
//! unset or empty), `$${` for a literal `${`. Lines whose first non-blank character
//! is `#` are comments and left alone, so a commented-out secret never fails a load.

use crate::error::ErrorKind;

pub(crate) struct Expanded {
    pub(crate) text: String,
    /// `(expanded_offset, original_offset, verbatim)` at the start of every
    /// piece: offsets inside a verbatim piece map one to one; offsets inside a
    /// substituted value map to the `${` that produced it.
    segments: Vec<(usize, usize, bool)>,
}

pub(crate) struct ExpandError {
    pub(crate) offset: usize,
    pub(crate) kind: ErrorKind,
}

impl Expanded {
    pub(crate) fn original_offset(&self, offset: usize) -> usize {
        let idx = self.segments.partition_point(|&(exp, _, _)| exp <= offset);
        match idx.checked_sub(1).and_then(|i| self.segments.get(i)) {
            Some(&(exp, orig, true)) => orig + (offset - exp),
            Some(&(_, orig, false)) => orig,
            None => offset,
        }
    }
}

pub(crate) fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, ExpandError> {
    if !text.contains("${") {
        return Ok(Expanded {
            text: text.to_owned(),
            segments: vec![(0, 0, true)],
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut segments = vec![(0, 0, true)];
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let is_comment = line.trim_start().starts_with('#');
        let mut rest = line;
        let mut pos = line_start;
        while let Some(i) = rest.find('$').filter(|_| !is_comment) {
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix("${") {
                // `$${` → literal `${`
                out.push_str(&rest[..i]);
                out.push_str("${");
                segments.push((out.len(), pos + i + 3, true));
                rest = tail;
                pos += i + 3;
            } else if let Some(body) = after.strip_prefix('{') {
                out.push_str(&rest[..i]);
                let start = pos + i;
                let Some(end) = body.find('}') else {
                    return Err(ExpandError {
                        offset: start,
                        kind: ErrorKind::BadVariable("`${` without a closing `}`".into()),
                    });
                };
                let inner = &body[..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(ExpandError {
                        offset: start,
                        kind: ErrorKind::BadVariable(format!(
                            "`${{{inner}}}`: a variable name is letters, digits and `_`"
                        )),
                    });
                }
                let value = match (env(name), default) {
                    (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
                    (Some(v), _) => v,
                    (None, Some(d)) => d.to_owned(),
                    (None, None) => {
                        return Err(ExpandError {
                            offset: start,
                            kind: ErrorKind::MissingVariable(name.to_owned()),
                        });
                    }
                };
                // Everything produced by the substitution maps back to the `${`.
                segments.push((out.len(), start, false));
                out.push_str(&value);
                let consumed = i + 2 + end + 1;
                segments.push((out.len(), pos + consumed, true));
                rest = &rest[consumed..];
                pos += consumed;
            } else {
                out.push_str(&rest[..=i]);
                rest = after;
                pos += i + 1;
            }
        }
        out.push_str(rest);
        line_start += line.len();
    }
    Ok(Expanded { text: out, segments })
}
