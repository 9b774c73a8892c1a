//! Character-level rules of XML 1.0 (5th edition) and Namespaces 1.0 that quick-xml does not
//! enforce, plus the JSON/XML escapers used on the hot path.

/// Bit flags for ASCII bytes; non-ASCII characters are classified by `is_name_start_char`.
const NAME_START: u8 = 1;
const NAME_CHAR: u8 = 2;

const fn ascii_name_table() -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        let start = c.is_ascii_alphabetic() || c == b'_' || c == b':';
        let name = start || c.is_ascii_digit() || c == b'-' || c == b'.';
        t[i] = (if start { NAME_START } else { 0 }) | (if name { NAME_CHAR } else { 0 });
        i += 1;
    }
    t
}

static ASCII_NAME: [u8; 128] = ascii_name_table();

/// [`QNAME_CLASS`] of an ASCII NameChar other than `:`.
const QN_PLAIN: u8 = 0;
/// [`QNAME_CLASS`] of `:`.
const QN_COLON: u8 = 1;
/// [`QNAME_CLASS`] of every other byte (non-ASCII bytes included).
const QN_OTHER: u8 = 0x80;

/// One class per byte value, so that the name scanners need one load and one test per byte
/// (the colon, at most once per name, is the rare case).
const fn qname_class_table() -> [u8; 256] {
    let ascii = ascii_name_table();
    let mut t = [QN_OTHER; 256];
    let mut i = 0;
    while i < 128 {
        if ascii[i] & NAME_CHAR != 0 {
            t[i] = QN_PLAIN;
        }
        i += 1;
    }
    t[b':' as usize] = QN_COLON;
    t
}

static QNAME_CLASS: [u8; 256] = qname_class_table();

/// Length of the leading run of ASCII NameChars (colons included) in `b`: the plain
/// reference the tests hold [`ascii_qname_run`]'s run length against.
#[cfg(test)]
pub fn ascii_name_run(b: &[u8]) -> usize {
    b.iter()
        .position(|&c| QNAME_CLASS[c as usize] == QN_OTHER)
        .unwrap_or(b.len())
}

/// No colon in the run (see [`ascii_qname_run`]).
pub const NO_COLON: usize = usize::MAX;
/// More than one colon in the run (see [`ascii_qname_run`]).
pub const COLONS: usize = usize::MAX - 1;

/// `ascii_name_run` that also locates colons, so that splitting the name needs no second
/// scan: returns the run's length and the position of its only colon, [`NO_COLON`] or
/// [`COLONS`].
#[inline]
pub fn ascii_qname_run(b: &[u8]) -> (usize, usize) {
    let mut colon = NO_COLON;
    let mut i = 0;
    loop {
        // Colons are rare: a tight loop over the other NameChars, then one step per colon.
        i += b[i..]
            .iter()
            .position(|&c| QNAME_CLASS[c as usize] != QN_PLAIN)
            .unwrap_or(b.len() - i);
        if b.get(i) != Some(&b':') {
            return (i, colon);
        }
        colon = if colon == NO_COLON { i } else { COLONS };
        i += 1;
    }
}

/// [`ascii_qname_run`] for a name whose end is already known (quick-xml finds it): None
/// unless every byte is an ASCII NameChar, else the colon as there (128 colons or more also
/// give None: the general path rejects such names too). Without an early exit the loop is a
/// branch-free sum: colons count in its low bits, any other byte adds [`QN_OTHER`], so 0 and
/// 1 are the only sums of names with at most one colon.
#[inline]
pub fn ascii_qname_colon(b: &[u8]) -> Option<usize> {
    let sum: usize = b.iter().map(|&c| QNAME_CLASS[c as usize] as usize).sum();
    match sum {
        0 => Some(NO_COLON),
        1 => b.iter().position(|&c| c == b':'),
        s if s < QN_OTHER as usize => Some(COLONS),
        _ => None,
    }
}

/// [`split_qname`] for a name known to consist of ASCII NameChars only, with its colon
/// already located by [`ascii_qname_run`]: only the colon and start-character rules remain.
#[inline]
pub fn split_ascii_qname_at(s: &str, colon: usize) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    let starts_name = |i: usize| {
        b.get(i)
            .is_some_and(|&c| ASCII_NAME[c as usize] & NAME_START != 0)
    };
    if !starts_name(0) {
        return None;
    }
    match colon {
        NO_COLON => Some(("", s)),
        COLONS => None,
        i if i == 0 || !starts_name(i + 1) => None,
        i => Some((&s[..i], &s[i + 1..])),
    }
}

fn is_name_start_char(c: char) -> bool {
    if (c as u32) < 0x80 {
        return ASCII_NAME[c as usize] & NAME_START != 0;
    }
    matches!(c as u32,
        0xC0..=0xD6 | 0xD8..=0xF6 | 0xF8..=0x2FF | 0x370..=0x37D | 0x37F..=0x1FFF
        | 0x200C..=0x200D | 0x2070..=0x218F | 0x2C00..=0x2FEF | 0x3001..=0xD7FF
        | 0xF900..=0xFDCF | 0xFDF0..=0xFFFD | 0x10000..=0xEFFFF)
}

fn is_name_char(c: char) -> bool {
    if (c as u32) < 0x80 {
        return ASCII_NAME[c as usize] & NAME_CHAR != 0;
    }
    is_name_start_char(c) || c == '\u{B7}' || matches!(c as u32, 0x300..=0x36F | 0x203F..=0x2040)
}

/// XML 1.0 `Name` production (colons allowed).
pub fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    // ASCII fast path: almost every name in real documents is ASCII.
    if b.is_ascii() {
        return ASCII_NAME[b[0] as usize] & NAME_START != 0
            && b[1..]
                .iter()
                .all(|&c| ASCII_NAME[c as usize] & NAME_CHAR != 0);
    }
    let mut it = s.chars();
    match it.next() {
        Some(c) if is_name_start_char(c) => it.all(is_name_char),
        _ => false,
    }
}

/// Namespaces 1.0 `NCName`: a Name without colons.
pub fn is_ncname(s: &str) -> bool {
    !s.as_bytes().contains(&b':') && is_name(s)
}

/// Splits a Namespaces 1.0 `QName` into (prefix, local). Returns None if it is not a QName.
pub fn split_qname(s: &str) -> Option<(&str, &str)> {
    // ASCII fast path in one pass (names are checked on every start tag and attribute):
    // every byte must be a NameChar or the one colon; the start-character rule for the
    // first byte and the byte after the colon is checked afterwards.
    let b = s.as_bytes();
    let mut colon = None;
    let mut ascii = true;
    for (i, &c) in b.iter().enumerate() {
        if c >= 0x80 {
            ascii = false;
            break;
        }
        if c == b':' {
            if colon.is_some() {
                return None;
            }
            colon = Some(i);
        } else if ASCII_NAME[c as usize] & NAME_CHAR == 0 {
            return None;
        }
    }
    let starts_name = |i: usize| {
        b.get(i)
            .is_some_and(|&c| ASCII_NAME[c as usize] & NAME_START != 0)
    };
    if ascii {
        return match colon {
            _ if !starts_name(0) => None,
            None => Some(("", s)),
            Some(i) if i == 0 || !starts_name(i + 1) => None,
            Some(i) => Some((&s[..i], &s[i + 1..])),
        };
    }
    if !is_name(s) {
        return None;
    }
    match s.find(':') {
        None => Some(("", s)),
        Some(i) => {
            let (p, l) = (&s[..i], &s[i + 1..]);
            if p.is_empty() || l.is_empty() || l.contains(':') {
                None
            } else if !is_name(l) {
                // the local part must itself start with a NameStartChar (e.g. not `a:1b`)
                None
            } else {
                Some((p, l))
            }
        }
    }
}

/// XML 1.0 `Char` production for a decoded scalar value.
pub fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Whole-document check that every character is an XML 1.0 `Char`. Runs once before parsing
/// so that the per-event code never has to look at characters again. Returns the byte offset
/// of the first offending character. The input is already valid UTF-8, so surrogates cannot
/// occur; what remains are C0 controls and U+FFFE / U+FFFF (UTF-8 `EF BF BE` / `EF BF BF`).
pub fn find_forbidden_char(s: &str) -> Option<usize> {
    // Branch-free screening of 64-byte blocks into one byte accumulator (vectorises to about
    // one instruction per byte); only blocks that contain a suspicious byte are examined
    // byte by byte.
    const BLOCK: usize = 64;
    let b = s.as_bytes();
    let mut i = 0;
    for block in b.chunks_exact(BLOCK) {
        let mut m = 0u8;
        for &c in block {
            m |= forbidden_screen(c);
        }
        if m != 0 {
            if let Some(j) = find_forbidden_in(b, i, i + BLOCK) {
                return Some(j);
            }
        }
        i += BLOCK;
    }
    find_forbidden_in(b, i, b.len())
}

/// 1 for a C0 control other than TAB/LF/CR, and for 0xEF (lead byte of U+FFFE / U+FFFF).
/// `(c | 4) == 13` holds exactly for TAB (9) and CR (13).
#[inline]
fn forbidden_screen(c: u8) -> u8 {
    (((c < 0x20) & ((c | 4) != 13) & (c != b'\n')) | (c == 0xEF)) as u8
}

/// Byte-by-byte check of `b[from..to]`; U+FFFE / U+FFFF may extend past `to`.
fn find_forbidden_in(b: &[u8], from: usize, to: usize) -> Option<usize> {
    for j in from..to {
        let c = b[j];
        if c < 0x20 {
            if c != b'\t' && c != b'\n' && c != b'\r' {
                return Some(j);
            }
        } else if c == 0xEF && j + 2 < b.len() && b[j + 1] == 0xBF && (b[j + 2] & 0xFE) == 0xBE {
            return Some(j);
        }
    }
    None
}

/// Is `b` XML whitespace (S production)?
#[inline]
pub fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

pub fn all_ws(s: &[u8]) -> bool {
    s.iter().all(|&b| is_ws(b))
}

/// Resolves the body of a reference (`amp`, `#38`, `#x26`) to its character. Only the five
/// predefined entities exist because DTDs are refused.
pub fn resolve_reference(name: &str) -> Result<char, &'static str> {
    if let Some(num) = name.strip_prefix('#') {
        let (digits, radix) = match num.strip_prefix('x') {
            Some(h) => (h, 16),
            None => (num, 10),
        };
        if digits.is_empty()
            || digits.len() > 8
            || !digits.bytes().all(|b| (b as char).is_digit(radix))
        {
            return Err("malformed character reference");
        }
        let v = u32::from_str_radix(digits, radix).map_err(|_| "malformed character reference")?;
        if !is_xml_char(v) {
            return Err("character reference to a character not allowed in XML");
        }
        return char::from_u32(v).ok_or("character reference to a character not allowed in XML");
    }
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        _ => Err("reference to an undeclared entity (DTDs are not supported)"),
    }
}

/// JSON escape table: 0 = copy, b'u' = \u00XX, other = two-char escape `\X`.
/// `b'r'` for CR is special-cased by the XML-text escaper (line-end normalisation).
const fn json_escape_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0C] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
}

static JSON_ESC: [u8; 256] = json_escape_table();

/// [`attr_value_class`] bit: the byte changes under attribute-value normalisation (or is
/// refused there): `&`, `<`, TAB, LF, CR.
pub const ATTR_NORMALISE: u8 = 1;
/// [`attr_value_class`] bit: the byte needs JSON escaping.
pub const ATTR_JSON_ESCAPE: u8 = 2;

const fn attr_class_table() -> [u8; 256] {
    let esc = json_escape_table();
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        if esc[i] != 0 {
            t[i] |= ATTR_JSON_ESCAPE;
        }
        i += 1;
    }
    t[b'&' as usize] |= ATTR_NORMALISE;
    t[b'<' as usize] |= ATTR_NORMALISE;
    t[b'\t' as usize] |= ATTR_NORMALISE;
    t[b'\n' as usize] |= ATTR_NORMALISE;
    t[b'\r' as usize] |= ATTR_NORMALISE;
    t
}

static ATTR_CLASS: [u8; 256] = attr_class_table();

/// Finds the closing `quote` of an attribute value and classifies the value on the way, so
/// that the value is read once instead of three times (quote search, normalisation check,
/// JSON escaping check). Returns the value's length and the OR of the
/// [`ATTR_NORMALISE`]/[`ATTR_JSON_ESCAPE`] bits of its bytes, or None if the quote is missing.
#[inline]
pub fn attr_value_class(s: &[u8], quote: u8) -> Option<(usize, u8)> {
    let mut class = 0u8;
    for (i, &c) in s.iter().enumerate() {
        if c == quote {
            return Some((i, class));
        }
        class |= ATTR_CLASS[c as usize];
    }
    None
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Length of the leading run of `s` that JSON needs no escape for and that contains no `>`
/// (which the XML-text escaper must look at for `]]>`): no control character, `"`, `\` or
/// `>`. Text is scanned eight bytes at a time with the usual SWAR tricks: `x - 0x01..01` sets
/// a byte's high bit where the byte was zero, `x - 0x20..20` where it was below 0x20 (the
/// `& !x` masks out bytes of 0x80 and above). A borrow can only flag bytes *after* a true
/// match, so the lowest flagged byte is always a real one.
///
/// A tail shorter than eight bytes is checked as the last eight bytes of `s` when there are
/// that many: the overlap was found plain already, so no flag can come from it.
#[inline]
fn json_plain_run(s: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let flags = |c: &[u8]| {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        (w.wrapping_sub(LO * 0x20) & !w & HI)
            | zero(w ^ (LO * b'"' as u64))
            | zero(w ^ (LO * b'\\' as u64))
            | zero(w ^ (LO * b'>' as u64))
    };
    let mut chunks = s.chunks_exact(8);
    let mut i = 0;
    for c in &mut chunks {
        let m = flags(c);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    let tail = chunks.remainder();
    if tail.is_empty() {
        return i;
    }
    if let Some(last) = s.len().checked_sub(8) {
        let m = flags(&s[last..]);
        return if m == 0 {
            s.len()
        } else {
            last + (m.trailing_zeros() / 8) as usize
        };
    }
    i + tail
        .iter()
        .position(|&b| b == b'>' || JSON_ESC[b as usize] != 0)
        .unwrap_or(tail.len())
}

/// Does `s` contain a byte that JSON strings must escape?
pub fn needs_json_escape(s: &[u8]) -> bool {
    s.iter().any(|&b| JSON_ESC[b as usize] != 0)
}

/// Appends `s` JSON-escaped (without quotes). Runs of plain bytes are copied in one go.
#[inline]
pub fn escape_json(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    let mut i = 0;
    loop {
        i += json_plain_run(&s[i..]);
        let Some(&b) = s.get(i) else { break };
        let e = JSON_ESC[b as usize];
        if e != 0 {
            out.extend_from_slice(&s[start..i]);
            push_escape(out, b, e);
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&s[start..]);
}

#[inline]
fn push_escape(out: &mut Vec<u8>, b: u8, e: u8) {
    if e == b'u' {
        out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(b >> 4) as usize],
            HEX[(b & 15) as usize],
        ]);
    } else {
        out.extend_from_slice(&[b'\\', e]);
    }
}

/// Appends XML character data JSON-escaped, applying XML line-end normalisation (CRLF and lone
/// CR become LF) on the way. Returns Err(index) if the literal sequence `]]>` is found, which
/// XML forbids in character data.
// Inlined into the text path: most texts are short, and the call's register saving cost
// as much as scanning them.
#[inline(always)]
pub fn escape_xml_text_to_json(
    out: &mut Vec<u8>,
    s: &[u8],
    check_cdata_end: bool,
) -> Result<(), usize> {
    let mut start = 0;
    let mut i = 0;
    loop {
        i += json_plain_run(&s[i..]);
        let Some(&b) = s.get(i) else { break };
        if b == b'>' {
            if check_cdata_end && i >= 2 && s[i - 1] == b']' && s[i - 2] == b']' {
                return Err(i - 2);
            }
            i += 1;
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        if b == b'\r' {
            out.extend_from_slice(b"\\n");
            if i + 1 < s.len() && s[i + 1] == b'\n' {
                i += 1;
            }
        } else {
            push_escape(out, b, JSON_ESC[b as usize]);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&s[start..]);
    Ok(())
}

/// Appends `s` escaped for XML character data. Fails on characters XML 1.0 cannot carry.
pub fn escape_xml_text(out: &mut Vec<u8>, s: &str, attr: bool) -> Result<(), char> {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let rep: &[u8] = match c {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            // `>` only matters after `]]` in text, escaping it always is simpler and valid.
            b'>' => b"&gt;",
            b'"' if attr => b"&quot;",
            // Attribute-value normalisation would turn raw TAB/LF/CR into spaces, and the
            // parser would turn a raw CR into LF: character references survive both.
            b'\t' if attr => b"&#9;",
            b'\n' if attr => b"&#10;",
            b'\r' => b"&#13;",
            b'\t' | b'\n' => continue,
            0..=0x1F => return Err(c as char),
            0xEF if i + 2 < b.len() && b[i + 1] == 0xBF && (b[i + 2] & 0xFE) == 0xBE => {
                return Err(if b[i + 2] == 0xBE {
                    '\u{FFFE}'
                } else {
                    '\u{FFFF}'
                })
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    Ok(())
}

/// String equality that never calls `memcmp` for empty strings. An empty `String` points at a
/// dangling (but aligned) address and glibc 2.36's AVX-512 `memcmp` still touches it: measured
/// at ~130 ns per zero-length compare on this project's benchmark machine, which made JSON →
/// XML 2× slower on namespaced documents (benches/translate.sh).
/// The first bytes are compared inline too: the callers compare short names (prefixes) that
/// mostly differ there, and a `memcmp` call costs more than the comparison itself.
#[inline]
pub fn same(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// [`same`] for byte strings.
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Names are mostly 4 to 16 bytes long: two overlapping word loads each instead of a
    // `memcmp` call.
    if (8..=16).contains(&n) {
        word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8)
    } else if (4..8).contains(&n) {
        word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4)
    } else {
        n == 0 || (a[0] == b[0] && a == b)
    }
}

#[inline]
fn word8(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_ne_bytes(w)
}

#[inline]
fn word4(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_ne_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_slice_equality() {
        for n in 0..24 {
            let a: Vec<u8> = (0..n as u8).map(|i| b'a' + i).collect();
            assert!(same_bytes(&a, &a.clone()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x20;
                assert!(!same_bytes(&a, &b), "len {n}, difference at {i}");
            }
            if n > 0 {
                assert!(!same_bytes(&a, &a[..n - 1]));
            }
        }
    }

    #[test]
    fn forbidden_char_blocks_match_char_by_char() {
        fn reference(s: &str) -> Option<usize> {
            s.char_indices()
                .find(|&(_, c)| {
                    (c < ' ' && !matches!(c, '\t' | '\n' | '\r'))
                        || c == '\u{FFFE}'
                        || c == '\u{FFFF}'
                })
                .map(|(i, _)| i)
        }
        for c in 0u8..0x80 {
            assert_eq!(
                forbidden_screen(c) != 0,
                reference(&(c as char).to_string()).is_some()
            );
        }
        let base = "ab\tc\r\nd\u{FFFD}\u{FEFF}\u{EFBF}ệ x".repeat(12);
        let inserts = [
            "\u{0}", "\u{1}", "\u{8}", "\u{B}", "\u{C}", "\u{E}", "\u{1F}", "\t", "\n", "\r",
            "\u{7F}", "\u{FFFE}", "\u{FFFF}", "\u{FFFD}", "\u{FFEF}", "\u{F8FF}", "",
        ];
        let cuts: Vec<usize> = base.char_indices().map(|(i, _)| i).collect();
        for (ki, &k) in cuts.iter().enumerate() {
            for ins in inserts {
                for end in [base.len(), cuts[(ki + cuts.len()) / 2]] {
                    let s = format!("{}{}{}", &base[..k], ins, &base[k..end]);
                    assert_eq!(find_forbidden_char(&s), reference(&s), "{s:?}");
                }
            }
        }
    }

    /// Byte-at-a-time reference for the chunked escapers.
    fn reference(s: &[u8], xml_text: bool) -> Result<Vec<u8>, usize> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let b = s[i];
            if xml_text && b == b'>' && i >= 2 && &s[i - 2..i] == b"]]" {
                return Err(i - 2);
            }
            if xml_text && b == b'\r' {
                out.extend_from_slice(b"\\n");
                if s.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            } else if JSON_ESC[b as usize] != 0 {
                push_escape(&mut out, b, JSON_ESC[b as usize]);
            } else {
                out.push(b);
            }
            i += 1;
        }
        Ok(out)
    }

    /// The start-tag fast path (scan with `ascii_qname_run`, split with `split_ascii_qname_at`)
    /// must agree with `split_qname` on every name it accepts, and leave the rest to it.
    #[test]
    fn ascii_qname_fast_path_matches_split_qname() {
        let names = [
            "a", "ab", "a:b", "hs:HoSo", ":a", "a:", "a::b", "a:b:c", "1a", "a:1b", "-a",
            "a-b.c_d", "_:_", "a.b:c-d", "xmlns", "xmlns:x", ".", "a b", "a=b", "é", "aé:b",
            "a:bé", "", "a\u{B7}b", "a/b", "a>b", "a\"b",
        ];
        for n in names {
            let run = ascii_name_run(n.as_bytes());
            let (run2, colon) = ascii_qname_run(n.as_bytes());
            assert_eq!(run, run2, "{n:?}");
            // the known-length variant agrees on whole names
            let whole = (run == n.len()).then_some(colon);
            assert_eq!(ascii_qname_colon(n.as_bytes()), whole, "{n:?}");
            if run == n.len() {
                assert_eq!(split_ascii_qname_at(n, colon), split_qname(n), "{n:?}");
            } else {
                // the fast path stops before a byte that is not an ASCII NameChar
                let c = n.as_bytes()[run];
                assert!(
                    c >= 0x80 || ASCII_NAME[c as usize] & NAME_CHAR == 0,
                    "{n:?}"
                );
            }
        }
        for c in 0..=255u8 {
            let s = [b'a', c, b'b'];
            let run = ascii_name_run(&s);
            assert_eq!(
                run == 3,
                c < 0x80 && ASCII_NAME[c as usize] & NAME_CHAR != 0
            );
            if run != 3 {
                assert_eq!(ascii_qname_colon(&s), None);
            }
            if let Ok(n) = std::str::from_utf8(&s) {
                if run == 3 {
                    let (run2, colon) = ascii_qname_run(&s);
                    assert_eq!(run2, 3);
                    assert_eq!(ascii_qname_colon(&s), Some(colon));
                    assert_eq!(split_ascii_qname_at(n, colon), split_qname(n), "{n:?}");
                }
            }
        }
    }

    #[test]
    fn chunked_escapers_match_reference() {
        let specials: &[&[u8]] = &[
            b"\"",
            b"\\",
            b">",
            b"]]>",
            b"\r\n",
            b"\r",
            b"\n",
            b"\x01",
            b"\x1f",
            b" ",
            b"\x7f",
            "é".as_bytes(),
            "ệ".as_bytes(),
            b"\xff",
        ];
        for len in 0..20 {
            for at in 0..=len {
                for sp in specials {
                    let mut s = vec![b'a'; len];
                    s.splice(at..at, sp.iter().copied());
                    let mut out = Vec::new();
                    let r = escape_xml_text_to_json(&mut out, &s, true).map(|_| out);
                    assert_eq!(r, reference(&s, true), "{s:?}");
                    let mut out = Vec::new();
                    escape_json(&mut out, &s);
                    assert_eq!(Ok(out), reference(&s, false), "{s:?}");
                }
            }
        }
    }
}
