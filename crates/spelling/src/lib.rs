//! One spelling per setting.
//!
//! Every enum-valued setting of the project (an activation, an initializer,
//! a preprocessing method, an optimizer, a backend, ...) is written the same
//! way everywhere: on the command line, in `--config` files, in the
//! `config.json` of a run, in search spaces and in error messages. The text
//! is the type's `Display`, read back by its `FromStr`:
//!
//! - [`Names`]: the table of a simple enum's names (with accepted aliases),
//!   used by its `FromStr`, its `Display`, its `--help` text and its errors.
//! - [`serde_as_text!`]: `Serialize` as the `Display` text and `Deserialize`
//!   through `FromStr`, also accepting the form an older version wrote (for
//!   example serde's derived `"LeakyRelu"` or `{"Gaussian": {"std": 0.01}}`),
//!   so that old run folders keep loading and are written anew in the text form.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

#[doc(hidden)]
pub use serde;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};

/// The names of a simple enum's values: the first name of a value is how it
/// is written; later names of the same value are aliases accepted when read.
pub struct Names<T: 'static> {
    /// What the values are, for errors: "optimizer", "backend".
    pub what: &'static str,
    /// `(name, value)` pairs.
    pub table: &'static [(&'static str, T)],
}

impl<T: Copy + PartialEq> Names<T> {
    /// The value named `text`, or an error that quotes it and lists the names.
    pub fn parse(&self, text: &str) -> Result<T, String> {
        self.table
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                format!(
                    "unknown {} '{text}': expected {}",
                    self.what,
                    self.expected()
                )
            })
    }

    /// How `value` is written (its first name).
    pub fn name(&self, value: T) -> &'static str {
        self.table
            .iter()
            .find(|(_, v)| *v == value)
            .map(|(name, _)| *name)
            .expect("every value of a Names table has a name")
    }

    /// The names, as a sentence: "flex (or cpu), ndarray or wgpu (or gpu)".
    pub fn expected(&self) -> String {
        let mut items: Vec<String> = Vec::new();
        for (i, (name, value)) in self.table.iter().enumerate() {
            if self.table[..i].iter().any(|(_, v)| v == value) {
                continue;
            }
            let aliases: Vec<&str> = self.table[i + 1..]
                .iter()
                .filter(|(_, v)| v == value)
                .map(|(n, _)| *n)
                .collect();
            items.push(if aliases.is_empty() {
                name.to_string()
            } else {
                format!("{name} (or {})", aliases.join(", "))
            });
        }
        match items.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => items.join(""),
        }
    }
}

/// A form an older version wrote, turned into the current type.
pub trait Upgrade<T> {
    /// The value in the current type.
    fn upgrade(self) -> T;
}

/// No older form: for types that were always written as text.
#[derive(Debug, serde::Deserialize)]
pub enum NoOlderForm {}

impl<T> Upgrade<T> for NoOlderForm {
    fn upgrade(self) -> T {
        match self {}
    }
}

/// Writes `value` as its `Display` text.
pub fn serialize<T: fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Reads a `T` from its text (`FromStr`), or from the older form `L` (a
/// string or a map that `L` deserializes); a bad text gets `FromStr`'s error.
pub fn deserialize<'de, D, T, L>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
    L: DeserializeOwned + Upgrade<T>,
{
    deserializer.deserialize_any(TextVisitor::<T, L>(PhantomData))
}

struct TextVisitor<T, L>(PhantomData<(T, L)>);

impl<'de, T, L> Visitor<'de> for TextVisitor<T, L>
where
    T: FromStr,
    T::Err: fmt::Display,
    L: DeserializeOwned + Upgrade<T>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a setting written as on the command line, such as \"relu\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        match text.parse::<T>() {
            Ok(value) => Ok(value),
            Err(err) => L::deserialize(de::value::StrDeserializer::<E>::new(text))
                .map(Upgrade::upgrade)
                .map_err(|_| E::custom(err)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        L::deserialize(de::value::MapAccessDeserializer::new(map)).map(Upgrade::upgrade)
    }
}

/// Implements `Serialize` (the `Display` text) and `Deserialize` (`FromStr`,
/// or the older form given as `older = Type`, which implements
/// `Deserialize` and [`Upgrade`]) for a type.
#[macro_export]
macro_rules! serde_as_text {
    ($t:ty) => {
        $crate::serde_as_text!($t, older = $crate::NoOlderForm);
    };
    ($t:ty, older = $older:ty) => {
        impl $crate::serde::Serialize for $t {
            fn serialize<S: $crate::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::serialize(self, s)
            }
        }

        impl<'de> $crate::serde::Deserialize<'de> for $t {
            fn deserialize<D: $crate::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::deserialize::<D, $t, $older>(d)
            }
        }
    };
}

/// `Display` and `FromStr` from a type's `NAMES` table ([`Names`]), and
/// serde through them ([`serde_as_text!`], with an optional older form).
#[macro_export]
macro_rules! named_text {
    ($t:ty $(, older = $older:ty)?) => {
        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(Self::NAMES.name(*self))
            }
        }

        impl ::std::str::FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::NAMES.parse(s)
            }
        }

        $crate::serde_as_text!($t $(, older = $older)?);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Speed {
        Slow,
        Fast,
        Gear(u8),
    }

    const NAMES: Names<Speed> = Names {
        what: "speed",
        table: &[
            ("slow", Speed::Slow),
            ("fast", Speed::Fast),
            ("quick", Speed::Fast),
        ],
    };

    impl fmt::Display for Speed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Speed::Gear(n) => write!(f, "gear:{n}"),
                other => f.write_str(NAMES.name(*other)),
            }
        }
    }

    impl FromStr for Speed {
        type Err = String;

        fn from_str(s: &str) -> Result<Self, String> {
            match s.strip_prefix("gear:") {
                Some(n) => n
                    .parse()
                    .map(Speed::Gear)
                    .map_err(|_| format!("bad gear '{n}'")),
                None => NAMES.parse(s),
            }
        }
    }

    /// How serde's derive wrote it before.
    #[derive(serde::Deserialize)]
    enum OldSpeed {
        Slow,
        Fast,
        Gear { n: u8 },
    }

    impl Upgrade<Speed> for OldSpeed {
        fn upgrade(self) -> Speed {
            match self {
                OldSpeed::Slow => Speed::Slow,
                OldSpeed::Fast => Speed::Fast,
                OldSpeed::Gear { n } => Speed::Gear(n),
            }
        }
    }

    serde_as_text!(Speed, older = OldSpeed);

    #[test]
    fn names_parse_print_and_list_aliases() {
        assert_eq!(NAMES.parse("quick").unwrap(), Speed::Fast);
        assert_eq!(NAMES.name(Speed::Fast), "fast");
        assert_eq!(NAMES.expected(), "slow or fast (or quick)");
        assert_eq!(
            NAMES.parse("warp").unwrap_err(),
            "unknown speed 'warp': expected slow or fast (or quick)"
        );
    }

    #[test]
    fn values_are_written_as_text_and_read_in_either_form() {
        for speed in [Speed::Slow, Speed::Fast, Speed::Gear(3)] {
            let json = serde_json::to_string(&speed).unwrap();
            assert_eq!(json, format!("\"{speed}\""));
            assert_eq!(serde_json::from_str::<Speed>(&json).unwrap(), speed);
        }
        assert_eq!(
            serde_json::from_str::<Speed>("\"quick\"").unwrap(),
            Speed::Fast
        );
        // The older derived forms.
        assert_eq!(
            serde_json::from_str::<Speed>("\"Slow\"").unwrap(),
            Speed::Slow
        );
        assert_eq!(
            serde_json::from_str::<Speed>(r#"{"Gear": {"n": 4}}"#).unwrap(),
            Speed::Gear(4)
        );
        // A bad text gets FromStr's error, naming it.
        let err = serde_json::from_str::<Speed>("\"warp\"").unwrap_err();
        assert!(err.to_string().contains("unknown speed 'warp'"), "{err}");
        let err = serde_json::from_str::<Speed>("7").unwrap_err();
        assert!(err.to_string().contains("as on the command line"), "{err}");
    }
}
