//! Hooks: small named functions a mapping rule can compute its value with
//! (`hook = "sha256_hex"`, `args = [...]`).
//!
//! The registry is closed. To add a hook: add a variant to [`Hook`], its name to
//! [`Hook::NAMES`], an arm in [`Hook::parse`] that validates its options and argument count,
//! and an arm in [`Hook::run`]. `run` cannot fail: everything that can be wrong is rejected
//! when the mapping file is loaded.

use std::fmt::Write as _;

use aws_lc_rs::digest::{digest, SHA256};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Hook options as written in a mapping rule; all are optional in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookOptions {
    pub separator: Option<String>,
    pub template: Option<String>,
    pub max_chars: Option<i64>,
    pub suffix: Option<String>,
}

impl HookOptions {
    /// Option keys, each with whether it was given.
    pub fn given(&self) -> [(&'static str, bool); 4] {
        [
            ("separator", self.separator.is_some()),
            ("template", self.template.is_some()),
            ("max_chars", self.max_chars.is_some()),
            ("suffix", self.suffix.is_some()),
        ]
    }
}

/// One piece of a parsed `format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Arg(usize),
}

/// A validated hook, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// Arguments joined with `separator`, lowercase hex SHA-256 of the UTF-8 bytes.
    Sha256Hex { separator: String },
    /// Template with `{N}` placeholders; `{{` and `}}` are literal braces.
    Format { pieces: Vec<Piece> },
    /// Standard (padded) base64 of the argument's UTF-8 bytes.
    Base64Encode,
    /// At most `max_chars` characters; longer text ends with `suffix`.
    Truncate { max_chars: usize, suffix: String },
    /// Unicode uppercase.
    Upper,
    /// `true` when the argument contains the text `template` (both compared in Unicode
    /// lowercase), else `false`: for answers whose meaning is in their message.
    Contains { needle: String },
}

impl Hook {
    pub const NAMES: [&'static str; 6] = [
        "sha256_hex",
        "format",
        "base64_encode",
        "truncate",
        "upper",
        "contains",
    ];

    /// Validates a hook name, its options and its argument count. The error starts with the
    /// offending key of the rule (`hook`, `args`, `template`, ...), so the caller only has to
    /// prefix the rule's own path.
    pub fn parse(name: &str, opts: &HookOptions, arg_count: usize) -> Result<Hook, String> {
        let one_arg = || match arg_count {
            1 => Ok(()),
            n => Err(format!(
                "args: hook `{name}` takes exactly 1 argument, got {n}"
            )),
        };
        let (hook, accepted): (Hook, &[&str]) = match name {
            "sha256_hex" => {
                if arg_count == 0 {
                    return Err("args: hook `sha256_hex` needs at least 1 argument".into());
                }
                let separator = opts.separator.clone().unwrap_or_else(|| "|".into());
                (Hook::Sha256Hex { separator }, &["separator"])
            }
            "format" => {
                let template = opts
                    .template
                    .as_deref()
                    .ok_or("template: required by hook `format`")?;
                let pieces = parse_template(template, arg_count)?;
                (Hook::Format { pieces }, &["template"])
            }
            "base64_encode" => {
                one_arg()?;
                (Hook::Base64Encode, &[])
            }
            "truncate" => {
                one_arg()?;
                let suffix = opts.suffix.clone().unwrap_or_else(|| "...".into());
                let min = suffix.chars().count().max(1);
                let max_chars = match opts.max_chars.map(usize::try_from) {
                    None => return Err("max_chars: required by hook `truncate`".into()),
                    Some(Ok(n)) if n >= min => n,
                    Some(_) => {
                        return Err(format!(
                            "max_chars: must be at least {min} (the suffix length)"
                        ))
                    }
                };
                (
                    Hook::Truncate { max_chars, suffix },
                    &["max_chars", "suffix"],
                )
            }
            "upper" => {
                one_arg()?;
                (Hook::Upper, &[])
            }
            "contains" => {
                one_arg()?;
                let needle = match opts.template.as_deref() {
                    Some(t) if !t.is_empty() => comparable(t),
                    _ => {
                        return Err(
                            "template: required by hook `contains` (the text looked for)".into(),
                        )
                    }
                };
                (Hook::Contains { needle }, &["template"])
            }
            _ => {
                return Err(format!(
                    "hook: unknown hook `{name}` (known: {})",
                    Self::NAMES.join(", ")
                ))
            }
        };
        for (key, given) in opts.given() {
            if given && !accepted.contains(&key) {
                return Err(format!("{key}: not an option of hook `{name}`"));
            }
        }
        Ok(hook)
    }

    /// Runs the hook. `args` has the length validated by [`Hook::parse`].
    pub fn run(&self, args: &[String]) -> String {
        let first = args.first().map_or("", String::as_str);
        match self {
            Hook::Sha256Hex { separator } => {
                let hash = digest(&SHA256, args.join(separator).as_bytes());
                hash.as_ref()
                    .iter()
                    .fold(String::with_capacity(64), |mut hex, b| {
                        let _ = write!(hex, "{b:02x}");
                        hex
                    })
            }
            Hook::Format { pieces } => pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Text(text) => text.as_str(),
                    Piece::Arg(i) => args.get(*i).map_or("", String::as_str),
                })
                .collect(),
            Hook::Base64Encode => STANDARD.encode(first),
            Hook::Truncate { max_chars, suffix } => {
                if first.chars().count() <= *max_chars {
                    first.to_owned()
                } else {
                    let keep = max_chars - suffix.chars().count();
                    first.chars().take(keep).chain(suffix.chars()).collect()
                }
            }
            Hook::Upper => first.to_uppercase(),
            Hook::Contains { needle } => comparable(first).contains(needle.as_str()).to_string(),
        }
    }
}

/// Text as `contains` compares it: Unicode NFC (Vietnamese arrives with precomposed or
/// with combining accents, `tồn` either way), lower case, runs of white space as one
/// space.
fn comparable(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lower: String = s.nfc().collect::<String>().to_lowercase();
    lower.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses a `format` template; every placeholder must refer to an existing argument.
fn parse_template(template: &str, arg_count: usize) -> Result<Vec<Piece>, String> {
    let (mut pieces, mut text, mut rest) = (Vec::new(), String::new(), template);
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with("{{") || rest.starts_with("}}") {
            text.push_str(&rest[..1]);
            rest = &rest[2..];
            continue;
        }
        let inner = rest
            .strip_prefix('{')
            .and_then(|r| Some(&r[..r.find('}')?]));
        let Some(inner) = inner else {
            return Err("template: unmatched brace (write `{{` or `}}` for a literal one)".into());
        };
        let index = match inner.parse::<usize>() {
            Ok(n) if inner.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("template: bad placeholder `{{{inner}}}`")),
        };
        if index >= arg_count {
            let msg = format!("placeholder {{{index}}} has no argument ({arg_count} given)");
            return Err(format!("template: {msg}"));
        }
        pieces.push(Piece::Text(std::mem::take(&mut text)));
        pieces.push(Piece::Arg(index));
        rest = &rest[inner.len() + 2..];
    }
    text.push_str(rest);
    pieces.push(Piece::Text(text));
    pieces.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, opts: HookOptions, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Hook::parse(name, &opts, args.len()).unwrap().run(&args)
    }

    #[test]
    fn sha256_hex_known_vector_and_separator() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hook("sha256_hex", HookOptions::default(), &["abc"]), abc);
        // Joined with the separator before hashing: "a" + "b" + "c" with "" is "abc".
        let opts = HookOptions {
            separator: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(hook("sha256_hex", opts, &["a", "b", "c"]), abc);
        let piped = hook("sha256_hex", HookOptions::default(), &["a", "b"]);
        assert_eq!(piped, hook("sha256_hex", HookOptions::default(), &["a|b"]));
    }

    #[test]
    fn format_template() {
        let opts = HookOptions {
            template: Some("{{{1}}}-{0}/{1}}}".into()),
            ..Default::default()
        };
        assert_eq!(hook("format", opts, &["x", "y"]), "{y}-x/y}");
        // `contains`: NFC, case and white space do not matter.
        let needle = HookOptions {
            template: Some("đã tồn tại".into()),
            ..HookOptions::default()
        };
        let decomposed = "Hồ sơ \u{0111}a\u{0303} to\u{0302}\u{0300}n  ta\u{0323}i";
        assert_eq!(hook("contains", needle.clone(), &[decomposed]), "true");
        assert_eq!(
            hook("contains", needle.clone(), &["HỒ SƠ ĐÃ TỒN TẠI"]),
            "true"
        );
        assert_eq!(
            hook("contains", needle, &["Mã thủ tục không hợp lệ"]),
            "false"
        );
        let bad = |t: &str| {
            let opts = HookOptions {
                template: Some(t.into()),
                ..Default::default()
            };
            Hook::parse("format", &opts, 1).unwrap_err()
        };
        assert!(bad("{1}").starts_with("template: placeholder {1} has no argument"));
        assert!(bad("{a}").starts_with("template: bad placeholder"));
        assert!(bad("{0").starts_with("template: unmatched brace"));
        assert!(bad("}").starts_with("template: unmatched brace"));
        assert!(bad("{}").starts_with("template: bad placeholder"));
        let err = Hook::parse("format", &HookOptions::default(), 1).unwrap_err();
        assert_eq!(err, "template: required by hook `format`");
    }

    #[test]
    fn base64_truncate_upper() {
        assert_eq!(
            hook("base64_encode", HookOptions::default(), &["Việt"]),
            "Vmnhu4d0"
        );
        let opts = |max: i64, suffix: Option<&str>| HookOptions {
            max_chars: Some(max),
            suffix: suffix.map(String::from),
            ..Default::default()
        };
        assert_eq!(hook("truncate", opts(5, None), &["Nguyễn Văn"]), "Ng...");
        assert_eq!(
            hook("truncate", opts(10, None), &["Nguyễn Văn"]),
            "Nguyễn Văn"
        );
        assert_eq!(
            hook("truncate", opts(7, Some("…")), &["Nguyễn Văn"]),
            "Nguyễn…"
        );
        assert_eq!(
            hook("upper", HookOptions::default(), &["đường ß"]),
            "ĐƯỜNG SS"
        );
    }

    #[test]
    fn parse_problems_name_the_key() {
        let none = HookOptions::default();
        assert!(Hook::parse("sha512", &none, 1)
            .unwrap_err()
            .starts_with("hook: unknown hook `sha512`"));
        assert!(Hook::parse("upper", &none, 2)
            .unwrap_err()
            .starts_with("args: "));
        assert!(Hook::parse("sha256_hex", &none, 0)
            .unwrap_err()
            .starts_with("args: "));
        assert!(Hook::parse("truncate", &none, 1)
            .unwrap_err()
            .starts_with("max_chars: required"));
        let small = HookOptions {
            max_chars: Some(2),
            ..Default::default()
        };
        assert!(Hook::parse("truncate", &small, 1)
            .unwrap_err()
            .starts_with("max_chars: must be"));
        let sep = HookOptions {
            separator: Some(",".into()),
            ..Default::default()
        };
        assert_eq!(
            Hook::parse("upper", &sep, 1).unwrap_err(),
            "separator: not an option of hook `upper`"
        );
    }
}
