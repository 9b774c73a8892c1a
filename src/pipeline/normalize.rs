//! Request-target normalisation. Routing decisions are made on the normalised path
//! and the upstream receives exactly that path, so no other spelling of a path can
//! reach a route whose rules it would not pass.
//!
//! Rules, in order:
//! 1. Bytes outside RFC 3986 `pchar`/`/` are refused (hyper already refuses most).
//! 2. Percent-escapes must be well formed. Escapes of unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`) are decoded; every other escape keeps its meaning and is
//!    upper-cased (`%2f` → refused, see 3; `%c3%a1` → `%C3%A1`).
//! 3. Ambiguous forms are refused: an encoded `/` (`%2F`) or `\` (`%5C`), a literal
//!    `\`, an encoded NUL or control character, and double encoding (`%25` followed by
//!    two hex digits), because upstreams disagree on what those mean. Escaped bytes
//!    above 0x7F must spell valid UTF-8: an overlong form such as `%C0%AE` is a `.` to
//!    lax decoders, and any other invalid sequence means different things to
//!    different upstreams.
//! 4. Duplicate slashes are collapsed.
//! 5. `.` and `..` segments are resolved (after decoding, so `%2e%2e` is `..`);
//!    climbing above the root is refused. Dot segments carrying a path parameter
//!    (`..;x`, `.;x`) are refused, since some servlet containers treat them as dots.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    BadEscape,
    EncodedSlash,
    Backslash,
    ControlChar,
    DoubleEncoding,
    AboveRoot,
    DotWithParameter,
    InvalidChar,
    InvalidUtf8,
    Confusable,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "the path must start with '/'",
            PathError::BadEscape => "malformed percent-encoding in the path",
            PathError::EncodedSlash => "an encoded '/' in the path is ambiguous and not accepted",
            PathError::Backslash => "a '\\' in the path is ambiguous and not accepted",
            PathError::ControlChar => "control characters are not accepted in the path",
            PathError::DoubleEncoding => "double percent-encoding in the path is not accepted",
            PathError::AboveRoot => "the path climbs above the root",
            PathError::DotWithParameter => "a dot segment with a parameter is not accepted",
            PathError::InvalidChar => "the path contains a character that must be percent-encoded",
            PathError::InvalidUtf8 => "percent-encoded bytes in the path are not valid UTF-8",
            PathError::Confusable => {
                "an encoded character in the path reads as '.', '/' or '\\' to some servers, or is a control character"
            }
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%` (handled separately), plus `/`.
fn is_path_byte(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/".contains(&b)
}

/// Returns the normalised form of an origin-form path (without query).
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Fast path: the common already-normal path (no escapes, dots or double slashes)
    // is returned as is without building segments.
    if is_plain(bytes) {
        return Ok(path.to_string());
    }
    // Pass 1: decode escapes of unreserved characters, refuse ambiguous ones.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).and_then(|&c| hex(c)),
                bytes.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            let v = (h << 4) | l;
            match v {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0..=0x1f | 0x7f => return Err(PathError::ControlChar),
                // Double encoding is looked for in the decoded path, once it is
                // complete: the two digits after an encoded `%` may themselves be
                // escapes (`%25%32%65` decodes to `%252e`).
                b'%' => decoded.push_str("%25"),
                v if is_unreserved(v) => decoded.push(v as char),
                v => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    decoded.push('%');
                    decoded.push(HEX[(v >> 4) as usize] as char);
                    decoded.push(HEX[(v & 15) as usize] as char);
                }
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            return Err(PathError::Backslash);
        }
        if b < 0x20 || b == 0x7f {
            return Err(PathError::ControlChar);
        }
        if !is_path_byte(b) {
            return Err(PathError::InvalidChar);
        }
        decoded.push(b as char);
        i += 1;
    }
    if has_double_encoding(decoded.as_bytes()) {
        return Err(PathError::DoubleEncoding);
    }
    escapes_are_utf8(decoded.as_bytes())?;
    // Pass 2: collapse slashes and resolve dot segments.
    let trailing_slash = decoded.len() > 1 && decoded.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = decoded.split('/').collect();
    let last = segs.len() - 1;
    let mut ends_dir = trailing_slash;
    for (idx, seg) in segs.iter().enumerate() {
        match *seg {
            "" => continue,
            "." => {
                if idx == last {
                    ends_dir = true;
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if idx == last {
                    ends_dir = true;
                }
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(PathError::DotWithParameter)
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if out.is_empty() || ends_dir {
        result.push('/');
    }
    Ok(result)
}

/// Percent-decodes URL text whose escapes are well formed (a normalised path, or a
/// query parameter's name); None when the bytes are not UTF-8. A `%` that does not
/// start an escape is kept as it is.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h << 4) | l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// An encoded `%` followed by two hex digits: an escape meant to be decoded twice.
fn has_double_encoding(decoded: &[u8]) -> bool {
    decoded
        .windows(5)
        .any(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some())
}

/// True when every run of escaped bytes above 0x7F in `decoded` (where every escape
/// left is `%XX` with upper-case digits) is valid UTF-8. Rust's decoder refuses
/// overlong forms, surrogates and truncated sequences.
fn escapes_are_utf8(decoded: &[u8]) -> Result<(), PathError> {
    // Compatibility forms that NFKC-normalising servers (some .NET and Python stacks)
    // fold into `.`, `/` or `\` after the gateway has routed, and C1 controls.
    fn check(run: &[u8]) -> Result<(), PathError> {
        let text = std::str::from_utf8(run).map_err(|_| PathError::InvalidUtf8)?;
        let confusable = |c: char| {
            matches!(
                c,
                '\u{2024}'
                    ..='\u{2026}' | '\u{FE52}' | '\u{FE68}' | '\u{FF0E}' | '\u{FF0F}' | '\u{FF3C}'
            ) || ('\u{80}'..='\u{9F}').contains(&c)
        };
        if text.chars().any(confusable) {
            return Err(PathError::Confusable);
        }
        Ok(())
    }
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < decoded.len() {
        if decoded[i] == b'%' && i + 2 < decoded.len() {
            let v = (hex(decoded[i + 1]).unwrap_or(0) << 4) | hex(decoded[i + 2]).unwrap_or(0);
            if v >= 0x80 {
                run.push(v);
                i += 3;
                continue;
            }
        }
        if !run.is_empty() {
            check(&run)?;
            run.clear();
        }
        i += 1;
    }
    check(&run)
}

/// True when the path has nothing to normalise: only plain path bytes, no `%`,
/// no `//`, and no segment starting with a dot.
fn is_plain(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in bytes {
        if !is_path_byte(b) || (b == b'/' && prev == b'/') || (b == b'.' && prev == b'/') {
            return false;
        }
        prev = b;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p)
    }

    #[test]
    fn plain_paths_pass_unchanged() {
        for p in [
            "/", "/api", "/api/", "/a/b.c/d", "/a-b_c~d", "/x;y=1", "/a:b@c",
        ] {
            assert_eq!(n(p).unwrap(), p);
        }
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/../b").unwrap(), "/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(n("/a/%2E/b").unwrap(), "/a/b");
        assert_eq!(n("/a/.%2e/b").unwrap(), "/b");
        assert_eq!(n("/.hidden").unwrap(), "/.hidden");
        assert_eq!(n("/a/...").unwrap(), "/a/...");
        assert_eq!(n("/..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(n("/a/../../b").unwrap_err(), PathError::AboveRoot);
        assert_eq!(n("/%2e%2e/x").unwrap_err(), PathError::AboveRoot);
    }

    #[test]
    fn slashes_collapse() {
        assert_eq!(n("//a///b//").unwrap(), "/a/b/");
        assert_eq!(n("//").unwrap(), "/");
    }

    #[test]
    fn unreserved_escapes_decode_others_uppercase() {
        assert_eq!(n("/%61%70%69").unwrap(), "/api");
        assert_eq!(n("/%7e").unwrap(), "/~");
        assert_eq!(n("/h%c3%a1").unwrap(), "/h%C3%A1");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/50%25").unwrap(), "/50%25");
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        assert_eq!(n("/a%2fb").unwrap_err(), PathError::EncodedSlash);
        assert_eq!(n("/a%2Fb").unwrap_err(), PathError::EncodedSlash);
        assert_eq!(n("/a%5cb").unwrap_err(), PathError::Backslash);
        assert_eq!(n("/a\\b").unwrap_err(), PathError::Backslash);
        assert_eq!(n("/a%00").unwrap_err(), PathError::ControlChar);
        assert_eq!(n("/a%0a").unwrap_err(), PathError::ControlChar);
        assert_eq!(n("/%252e%252e/").unwrap_err(), PathError::DoubleEncoding);
        // The digits after the encoded `%` spelled as escapes themselves.
        assert_eq!(
            n("/p/%25%32%65%25%32%65/a").unwrap_err(),
            PathError::DoubleEncoding
        );
        assert_eq!(n("/p/%25%32%66").unwrap_err(), PathError::DoubleEncoding);
        assert_eq!(n("/p/%25%32e").unwrap_err(), PathError::DoubleEncoding);
        // An encoded `%` before anything but two hex digits stays a literal `%`.
        assert_eq!(n("/p/%25%C3%A1").unwrap(), "/p/%25%C3%A1");
        assert_eq!(n("/p/%25x%61").unwrap(), "/p/%25xa");
        assert_eq!(n("/%2").unwrap_err(), PathError::BadEscape);
        assert_eq!(n("/%zz").unwrap_err(), PathError::BadEscape);
        assert_eq!(n("/a/..;/b").unwrap_err(), PathError::DotWithParameter);
        assert_eq!(n("/a/.;x/b").unwrap_err(), PathError::DotWithParameter);
        assert_eq!(n("a/b").unwrap_err(), PathError::NotOriginForm);
        assert_eq!(n("/a b").unwrap_err(), PathError::InvalidChar);
    }

    #[test]
    fn normal_form_is_a_fixed_point() {
        for p in ["/a/./b/../c//d/", "/%61/%2e/x", "/h%c3%a1/.", "/a/b/.."] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn escaped_bytes_must_spell_utf8() {
        // Vietnamese in UTF-8 passes, split over segments or not.
        assert_eq!(n("/h%c3%b4%20s%C6%A1").unwrap(), "/h%C3%B4%20s%C6%A1");
        assert_eq!(n("/%E1%BB%87/x").unwrap(), "/%E1%BB%87/x");
        // Overlong `.` and `/`, as lax decoders read them.
        assert_eq!(n("/a/%C0%AE%C0%AE/b").unwrap_err(), PathError::InvalidUtf8);
        assert_eq!(n("/a%C0%AFb").unwrap_err(), PathError::InvalidUtf8);
        assert_eq!(n("/a/%E0%80%AE").unwrap_err(), PathError::InvalidUtf8);
        // Latin-1, a lone continuation byte, a truncated sequence, a surrogate.
        assert_eq!(n("/caf%E9").unwrap_err(), PathError::InvalidUtf8);
        assert_eq!(n("/%80").unwrap_err(), PathError::InvalidUtf8);
        assert_eq!(n("/%C3/%A1").unwrap_err(), PathError::InvalidUtf8);
        assert_eq!(n("/%ED%A0%80").unwrap_err(), PathError::InvalidUtf8);
        // Valid UTF-8 that NFKC folds into dots and slashes, and C1 controls.
        for p in [
            "/pub/%EF%BC%8E%EF%BC%8E/admin",
            "/pub%EF%BC%8Fadmin",
            "/pub%EF%BC%BCadmin",
            "/a/%E2%80%A5/b",
            "/a%C2%85b",
        ] {
            assert_eq!(n(p).unwrap_err(), PathError::Confusable, "{p}");
        }
    }
}
