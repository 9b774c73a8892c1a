//! A strict RFC 8259 JSON parser producing a borrowed tree.
//!
//! serde_json is not used here because (a) without its `arbitrary_precision` feature, which
//! would change number handling for the whole crate, it turns a 25-digit number into a lossy
//! f64 while the convention requires the literal text, and (b) its `Value` silently keeps
//! the last of duplicate keys, which the gateway must reject.

use super::error::{malformed, too_large, TranslateError};
use super::Limits;
use std::borrow::Cow;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JVal<'a> {
    Null,
    Bool(bool),
    /// The number's literal text, exactly as written.
    Num(&'a str),
    Str(Cow<'a, str>),
    Arr(Vec<JVal<'a>>),
    /// Members in document order, with the byte offset of each key (for error positions).
    Obj(Vec<(Cow<'a, str>, JVal<'a>, usize)>),
}

pub(crate) fn parse<'a>(input: &'a [u8], limits: &Limits) -> Result<JVal<'a>, TranslateError> {
    if input.len() > limits.max_total_bytes {
        return Err(too_large(format!(
            "document of {} bytes exceeds the limit of {} bytes",
            input.len(),
            limits.max_total_bytes
        )));
    }
    let s = std::str::from_utf8(input)
        .map_err(|e| malformed("invalid UTF-8 in JSON").at(input, e.valid_up_to()))?;
    let mut p = Parser {
        s,
        b: input,
        i: 0,
        limits,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(p.err("unexpected data after the JSON value"));
    }
    Ok(v)
}

struct Parser<'a, 'l> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    limits: &'l Limits,
}

/// Objects with more members than this get a hash set for the duplicate-key check.
const LINEAR_KEYS: usize = 16;

impl<'a> Parser<'a, '_> {
    fn err(&self, m: &str) -> TranslateError {
        malformed(m.to_string()).at(self.b, self.i)
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> Result<JVal<'a>, TranslateError> {
        match self.peek() {
            None => Err(self.err("unexpected end of JSON")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(JVal::Str(self.string()?)),
            Some(b't') => self.literal("true", JVal::Bool(true)),
            Some(b'f') => self.literal("false", JVal::Bool(false)),
            Some(b'n') => self.literal("null", JVal::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character in JSON")),
        }
    }

    fn literal(&mut self, word: &str, v: JVal<'a>) -> Result<JVal<'a>, TranslateError> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn check_depth(&self, depth: usize) -> Result<(), TranslateError> {
        if depth > self.limits.depth() {
            return Err(too_large("JSON nesting deeper than max_depth").at(self.b, self.i));
        }
        Ok(())
    }

    fn object(&mut self, depth: usize) -> Result<JVal<'a>, TranslateError> {
        self.check_depth(depth)?;
        self.i += 1;
        let mut members: Vec<(Cow<'a, str>, JVal<'a>, usize)> = Vec::new();
        let mut big: Option<HashSet<Cow<'a, str>>> = None;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(JVal::Obj(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key_off = self.i;
            let key = self.string()?;
            if key.len() > self.limits.max_name_len {
                return Err(too_large("JSON key longer than max_name_len").at(self.b, key_off));
            }
            let dup = match &mut big {
                Some(set) => !set.insert(key.clone()),
                None => {
                    let d = members.iter().any(|(k, _, _)| *k == key);
                    if !d && members.len() >= LINEAR_KEYS {
                        let mut set: HashSet<Cow<'a, str>> =
                            members.iter().map(|(k, _, _)| k.clone()).collect();
                        set.insert(key.clone());
                        big = Some(set);
                    }
                    d
                }
            };
            if dup {
                return Err(malformed(format!("duplicate key \"{key}\"")).at(self.b, key_off));
            }
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':' after key"));
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth)?;
            members.push((key, v, key_off));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(JVal::Obj(members));
                }
                _ => return Err(self.err("expected ',' or '}' in object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<JVal<'a>, TranslateError> {
        self.check_depth(depth)?;
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(JVal::Arr(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(JVal::Arr(items));
                }
                _ => return Err(self.err("expected ',' or ']' in array")),
            }
        }
    }

    fn number(&mut self) -> Result<JVal<'a>, TranslateError> {
        let start = self.i;
        let b = self.b;
        let digits = |i: &mut usize| {
            let s = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            *i - s
        };
        let mut i = self.i;
        if b[i] == b'-' {
            i += 1;
        }
        if i < b.len() && b[i] == b'0' {
            i += 1;
        } else if digits(&mut i) == 0 {
            self.i = i;
            return Err(self.err("invalid number"));
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            if digits(&mut i) == 0 {
                self.i = i;
                return Err(self.err("invalid number: digits required after '.'"));
            }
        }
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            if digits(&mut i) == 0 {
                self.i = i;
                return Err(self.err("invalid number: digits required in exponent"));
            }
        }
        self.i = i;
        if i - start > self.limits.max_text_len {
            return Err(too_large("number longer than max_text_len").at(self.b, start));
        }
        Ok(JVal::Num(&self.s[start..i]))
    }

    fn hex4(&mut self) -> Result<u32, TranslateError> {
        if self.i + 4 > self.b.len() {
            return Err(self.err("truncated \\u escape"));
        }
        // Checked as bytes: the four after `\u` need not be characters of their own
        // (`\u1éé`), and slicing the text there would split one.
        let h = &self.b[self.i..self.i + 4];
        if !h.iter().all(u8::is_ascii_hexdigit) {
            return Err(self.err("invalid \\u escape"));
        }
        self.i += 4;
        Ok(h.iter()
            .fold(0, |v, &c| (v << 4) | (c as char).to_digit(16).unwrap_or(0)))
    }

    fn string(&mut self) -> Result<Cow<'a, str>, TranslateError> {
        let start = self.i + 1;
        let mut i = start;
        let b = self.b;
        // Fast path: no escapes → borrow.
        while i < b.len() {
            match b[i] {
                b'"' => {
                    self.i = i + 1;
                    if i - start > self.limits.max_text_len {
                        return Err(too_large("string longer than max_text_len").at(b, start));
                    }
                    return Ok(Cow::Borrowed(&self.s[start..i]));
                }
                b'\\' => break,
                0..=0x1F => {
                    self.i = i;
                    return Err(self.err("control character in string must be escaped"));
                }
                _ => i += 1,
            }
        }
        let mut out = String::with_capacity(i - start + 16);
        out.push_str(&self.s[start..i]);
        self.i = i;
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\\' => {
                    self.i += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{C}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("lone surrogate in \\u escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("lone surrogate in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("lone surrogate in \\u escape"));
                            } else {
                                hi
                            };
                            match char::from_u32(cp) {
                                Some(ch) => out.push(ch),
                                None => return Err(self.err("invalid \\u escape")),
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                0..=0x1F => return Err(self.err("control character in string must be escaped")),
                _ => {
                    let run_start = self.i;
                    while self.i < self.b.len()
                        && !matches!(self.b[self.i], b'"' | b'\\' | 0..=0x1F)
                    {
                        self.i += 1;
                    }
                    out.push_str(&self.s[run_start..self.i]);
                }
            }
            if out.len() > self.limits.max_text_len {
                return Err(too_large("string longer than max_text_len").at(self.b, start));
            }
        }
        Ok(Cow::Owned(out))
    }
}
