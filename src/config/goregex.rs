//! Go RE2 compatibility for patterns written for upstream NPD: Go's `\d \w
//! \s` are ASCII-only where the regex crate's are Unicode-aware.

use regex::Regex;

/// Compiles a Go pattern with Go's meaning of the Perl classes.
pub fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&go_compatible(pattern))
}

/// Why `pattern` does not compile, with where: the parser's own account of
/// the spot (a character position in the pattern as written) where there is
/// one, else the compiler's message on one line.
pub fn describe(pattern: &str, e: &regex::Error) -> String {
    match regex_syntax::ast::parse::Parser::new().parse(pattern) {
        Err(ast) => {
            let at = ast.span().start;
            format!(
                "{} at character {} of the pattern: {:?} <- here",
                ast.kind(),
                at.column,
                &pattern[..at.offset.min(pattern.len())]
            )
        }
        Ok(_) => super::syslog::one_line(e),
    }
}

/// Rewrites Go's ASCII-only Perl classes for the regex crate, whose `\d \w
/// \s` are Unicode-aware. Outside brackets they become ASCII sets; inside
/// brackets, their ASCII ranges.
pub fn go_compatible(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(next) = chars.next() else {
                    out.push('\\');
                    break;
                };
                match (next, in_class) {
                    // Go's classes as explicit ASCII sets (the negated ones
                    // still match every non-ASCII character, as in Go).
                    ('d', false) => out.push_str("[0-9]"),
                    ('w', false) => out.push_str("[0-9A-Za-z_]"),
                    ('s', false) => out.push_str("[\\t\\n\\x0C\\r ]"),
                    ('D', false) => out.push_str("[^0-9]"),
                    ('W', false) => out.push_str("[^0-9A-Za-z_]"),
                    ('S', false) => out.push_str("[^\\t\\n\\x0C\\r ]"),
                    ('d', true) => out.push_str("0-9"),
                    ('w', true) => out.push_str("0-9A-Za-z_"),
                    ('s', true) => out.push_str("\\t\\n\\x0C\\r "),
                    _ => {
                        out.push('\\');
                        out.push(next);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // A leading ']' or '^]' is a literal, not the end.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push_str("\\]");
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_classes_are_ascii_only() {
        let re = Regex::new(&format!("^{}$", go_compatible(r"\d+\s\w+"))).expect("compiles");
        assert!(re.is_match("42 abc"));
        assert!(
            !re.is_match("٤٢ abc"),
            "Arabic-Indic digits are not \\d in Go"
        );
        assert!(
            !re.is_match("42\u{2003}abc"),
            "an em space is not \\s in Go"
        );
        let class = Regex::new(&go_compatible(r"^[\d\s]+$")).expect("compiles");
        assert!(class.is_match("1 2") && !class.is_match("١"));
        assert_eq!(go_compatible(r"a\.b[\]x]"), r"a\.b[\]x]");
        let not_space = compile(r"^\S+$").expect("compiles");
        assert!(not_space.is_match("héllo") && !not_space.is_match("a b"));
        compile(r#"^time="(\S*)""#).expect("docker-monitor-filelog.json's timestamp pattern");
    }
}
