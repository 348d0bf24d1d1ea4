//! The nesting guard: input nested deeper than any configuration needs is refused before the
//! HCL parser sees it.

/// The deepest nesting of `(`, `[`, `{` and `${`/`%{` the file may use.
///
/// hcl-edit backtracks exponentially on some malformed nested expressions: each unclosed index
/// bracket in `o = a[b%c%a[b%c%...` followed by a comment or a newline doubles the parse time
/// (0.4 s for a 320-byte file, minutes past 25 levels; found by `fuzz/` target `agent_hcl`). A
/// configuration needs a handful of levels, so deeper input is refused before it is parsed.
pub(super) const MAX_NESTING: usize = 16;

/// The 1-based line where `src` nests brackets more than [`MAX_NESTING`] levels deep, if it
/// does. Brackets inside strings (outside their `${ }`), comments and heredocs do not count.
pub(super) fn too_deep(src: &str) -> Option<usize> {
    /// What an open `"` or bracket holds.
    #[derive(PartialEq)]
    enum Ctx {
        /// Code: inside `(`, `[`, `{`, or a string's `${ }` / `%{ }`.
        Code,
        /// A quoted string's template text.
        Str,
    }
    let bytes = src.as_bytes();
    let at = |i: usize, s: &[u8]| bytes.get(i..).is_some_and(|rest| rest.starts_with(s));
    // Where the next `pat` from `from` starts (the end of `src` without one).
    let find = |from: usize, pat: &[u8]| {
        (from..bytes.len())
            .find(|&j| at(j, pat))
            .unwrap_or(bytes.len())
    };
    let mut stack: Vec<Ctx> = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let mut next = i + 1;
        if stack.last() == Some(&Ctx::Str) {
            match b {
                b'\\' => next += 1,
                // `\n`: an unterminated string, a syntax error the parser reports; resume as code.
                b'"' | b'\n' => {
                    stack.pop();
                }
                // `$${` and `%%{` are literal text.
                b'$' | b'%' if at(i + 1, &[b, b'{']) => next += 2,
                b'$' | b'%' if at(i + 1, b"{") => {
                    stack.push(Ctx::Code);
                    next += 1;
                }
                _ => {}
            }
        } else {
            match b {
                b'"' => stack.push(Ctx::Str),
                b'#' => next = find(i, b"\n"),
                b'/' if at(i + 1, b"/") => next = find(i, b"\n"),
                b'/' if at(i + 1, b"*") => next = (find(i + 2, b"*/") + 2).min(bytes.len()),
                // A heredoc (`<<EOT` or `<<-EOT`): its text, up to a line holding only `EOT`, is
                // skipped; `next` is that line's end.
                b'<' if at(i + 1, b"<") => {
                    let name_start = i + 2 + usize::from(at(i + 2, b"-"));
                    let name_end = (name_start..bytes.len())
                        .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_'))
                        .unwrap_or(bytes.len());
                    next = name_start;
                    if name_end > name_start && at(name_end, b"\n") {
                        let name = &src[name_start..name_end];
                        let mut j = name_end + 1;
                        next = bytes.len();
                        while j < bytes.len() {
                            let eol = find(j, b"\n");
                            if src[j..eol].trim() == name {
                                next = eol;
                                break;
                            }
                            j = eol + 1;
                        }
                    }
                }
                b'(' | b'[' | b'{' => stack.push(Ctx::Code),
                b')' | b']' | b'}' if stack.last() == Some(&Ctx::Code) => {
                    stack.pop();
                }
                _ => {}
            }
        }
        let next = next.min(bytes.len());
        line += bytes[i..next].iter().filter(|&&c| c == b'\n').count();
        if stack.iter().filter(|c| **c == Ctx::Code).count() > MAX_NESTING {
            return Some(line);
        }
        i = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_in_strings_comments_and_heredocs_do_not_count() {
        // Brackets in strings, comments and heredocs do not count, nor closed ones.
        let b = "[({".repeat(20);
        for src in [
            format!("a = \"{b}\"\n"),
            format!("a = \"\\\"{b}\"\n"),
            format!("a = \"$${{{b}\"\n"),
            format!("a = \"${{\"{b}\"}}\"\n"),
            format!("# {b}\n// {b}\n/* {b}\n{b} */ x = 1"),
            format!("a = <<-EOT\n  {b}\n  EOT\nc = 1\n"),
            "[]".repeat(100),
        ] {
            assert_eq!(too_deep(&src), None, "{src}");
        }
        assert_eq!(too_deep(&format!("/* x\n */\n<<EOT\n\nEOT\n{b}")), Some(6));
        assert_eq!(too_deep(&format!("a = \"x\n{b}")), Some(2));
    }
}
