//! Where each setting came from, so that an error names the flag, or the file, line
//! and key.
//!
//! The file is parsed once by toml's parser into a [`DeTable`], whose keys and values
//! carry their byte spans; the sections deserialize from it into structs whose fields are
//! [`Spanned`]. A setting's [`Origin`] keeps that span, and an error on it is placed at
//! the span's line. Deserialization errors (a wrong type, an unknown key) carry a span
//! too; the key holding it is found in the same table.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A bad setting, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file, when the setting came from one.
    pub file: Option<PathBuf>,
    /// The line in the file (1-based), when known.
    pub line: Option<usize>,
    /// The key (`broker.url`), or the flag when the setting came from one.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    /// A command-line flag, or the environment variable standing for it.
    Flag(&'static str),
    /// The configuration file: `key` (`broker.url`), its value at `span`.
    File {
        /// The dotted key.
        key: &'static str,
        /// The value's bytes in the file.
        span: Range<usize>,
    },
    /// Neither: the built-in default. Errors name `key`, or `flag` without a file.
    Default {
        /// The dotted key in the file.
        key: &'static str,
        /// The flag.
        flag: &'static str,
    },
}

/// A resolved value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Setting<T> {
    /// The value.
    pub(super) value: T,
    /// Where it came from.
    pub(super) origin: Origin,
}

impl<T> Setting<T> {
    /// The flag's value if given, else the file's, else `None`.
    pub(super) fn pick(
        flag: (&'static str, Option<T>),
        file: (&'static str, Option<Spanned<T>>),
    ) -> Option<Setting<T>> {
        match (flag, file) {
            ((name, Some(value)), _) => Some(Setting {
                value,
                origin: Origin::Flag(name),
            }),
            (_, (key, Some(spanned))) => Some(Setting::from_file(key, spanned)),
            _ => None,
        }
    }

    /// A value the file set at `key`.
    pub(super) fn from_file(key: &'static str, spanned: Spanned<T>) -> Setting<T> {
        let span = spanned.span();
        Setting {
            value: spanned.into_inner(),
            origin: Origin::File { key, span },
        }
    }

    /// As [`pick`](Setting::pick), with `default` when neither gives a value.
    pub(super) fn pick_or(
        flag: (&'static str, Option<T>),
        file: (&'static str, Option<Spanned<T>>),
        default: T,
    ) -> Setting<T> {
        let names = (flag.0, file.0);
        Setting::pick(flag, file).unwrap_or(Setting {
            value: default,
            origin: Origin::Default {
                key: names.1,
                flag: names.0,
            },
        })
    }

    /// The value, from a file-only setting (`key`) or its default.
    pub(super) fn file_or(key: &'static str, file: Option<Spanned<T>>, default: T) -> Setting<T> {
        match file {
            Some(spanned) => Setting::from_file(key, spanned),
            None => Setting {
                value: default,
                origin: Origin::Default { key, flag: key },
            },
        }
    }
}

/// The configuration file, if any: where errors point and relative paths start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    file: Option<(&'a Path, &'a str)>,
}

impl<'a> Source<'a> {
    /// The file at `path` holding `text`, or none.
    pub(super) fn new(file: Option<(&'a Path, &'a str)>) -> Source<'a> {
        Source { file }
    }

    /// Deserializes the whole file as `T` (the default without a file).
    ///
    /// # Errors
    ///
    /// The text is not TOML, or does not fit `T`: the error names the line and, where
    /// one holds it, the key.
    pub(super) fn parse<T: for<'de> Deserialize<'de> + Default>(&self) -> Result<T, ConfigError> {
        let Some((path, text)) = self.file else {
            return Ok(T::default());
        };
        let error = |e: toml::de::Error, table: Option<&DeTable<'_>>| {
            let (line, key) = match e.span() {
                Some(span) => (
                    Some(line_of(text, span.start)),
                    table.and_then(|t| key_at(t, span.start, "")),
                ),
                None => (None, None),
            };
            ConfigError {
                file: Some(path.to_path_buf()),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        };
        let table = DeTable::parse(text).map_err(|e| error(e, None))?;
        T::deserialize(toml::de::Deserializer::from(table.clone()))
            .map_err(|e| error(e, Some(table.get_ref())))
    }

    /// `path` as the file wrote it: relative paths start at the file's folder.
    pub(super) fn path(&self, path: PathBuf) -> PathBuf {
        let base = self.file.and_then(|(file, _)| file.parent());
        match base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        }
    }

    /// An error about a setting from `origin`.
    pub(super) fn error(&self, origin: &Origin, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        let (file, line, key) = match (origin, self.file) {
            (Origin::File { key, span }, Some((path, text))) => {
                (Some(path), Some(line_of(text, span.start)), *key)
            }
            (Origin::Default { key, .. }, Some((path, _))) => (Some(path), None, *key),
            (Origin::Flag(flag) | Origin::Default { flag, .. }, _) => (None, None, *flag),
            (Origin::File { key, .. }, None) => (None, None, *key),
        };
        ConfigError {
            file: file.map(Path::to_path_buf),
            line,
            key: Some(key.to_string()),
            message,
        }
    }

    /// An error about `setting`.
    pub(super) fn invalid<T>(
        &self,
        setting: &Setting<T>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(&setting.origin, message)
    }

    /// The line of a setting that came from the file.
    pub(super) fn line(&self, origin: &Origin) -> Option<usize> {
        match (origin, self.file) {
            (Origin::File { span, .. }, Some((_, text))) => Some(line_of(text, span.start)),
            _ => None,
        }
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key whose name or value holds byte `offset`, innermost first (a section
/// header's name counts as its key).
fn key_at(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let name = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(found) = key_at(inner, offset, &name) {
                return Some(found);
            }
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return Some(name);
        }
    }
    None
}
