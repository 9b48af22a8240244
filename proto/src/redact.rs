//! Secrets out of text that is logged or reported: every side (the VFS, the server, the
//! tests' harness) logs filenames, URLs and store specs that may carry one.

/// `text` with every `token=` and `password=` value (URI parameters, PostgreSQL
/// key-value connection strings) and every URL password replaced by `***`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    for key in ["token=", "password="] {
        out = redact_values(&out, key);
    }
    redact_passwords(&out)
}

/// Every value after `key` (ASCII, lower case, matched ignoring case) -> `***`.
fn redact_values(text: &str, key: &str) -> String {
    let ends_value = |c: char| {
        matches!(
            c,
            '&' | '"' | '\'' | '\\' | '#' | ')' | ']' | '>' | ',' | ';'
        ) || c.is_whitespace()
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_ascii_ci(rest, key) {
        let (head, tail) = rest.split_at(at + key.len());
        out.push_str(head);
        let end = tail.find(ends_value).unwrap_or(tail.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The byte offset of `needle` (ASCII, lower case) in `hay`, ignoring ASCII case.
fn find_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// `scheme://user:password@host` -> `scheme://user:***@host`, everywhere in `text`. The
/// user info ends at the authority's last `@`, so a password holding `@` is hidden whole.
fn redact_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end =
            tail.find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace());
        let authority = &tail[..authority_end.unwrap_or(tail.len())];
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
                rest = &tail[authority.len()..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        for (text, want) in [
            (
                "cannot open \"file:x?url=http://h:1&token=abc&mode=ro\"",
                "cannot open \"file:x?url=http://h:1&token=***&mode=ro\"",
            ),
            ("file:x?TOKEN=abc", "file:x?TOKEN=***"),
            ("a token=abc b", "a token=*** b"),
            ("token=", "token="),
            (
                "postgres://u:pw@h/db and http://v:pw2@g:1",
                "postgres://u:***@h/db and http://v:***@g:1",
            ),
            ("postgres://u:p@ss@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "host=h user=u password=s3cret dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            (
                "http://h:1/x@y and ordinary text",
                "http://h:1/x@y and ordinary text",
            ),
            ("über token=ü€ ok", "über token=*** ok"),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }
}
