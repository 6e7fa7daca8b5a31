//! The search space of `train search`: one range per `train fit` option,
//! sampled at random (in log space for scale parameters, as the lecture
//! teaches), and narrowed between stages, coarse to fine.
//!
//! A parameter is written `NAME=KIND:ARGS`, NAME being a `train fit` option
//! that takes a value:
//!
//! | KIND | example | draws |
//! |---|---|---|
//! | `log:LOW:HIGH` | `lr=log:1e-5:1e-1` | `10^uniform(log10 LOW, log10 HIGH)` |
//! | `uniform:LOW:HIGH` | `dropout=uniform:0:0.5` | `uniform(LOW, HIGH)` |
//! | `int:LOW:HIGH` | `batch-size=int:32:256` | an integer in `[LOW, HIGH]`, uniformly |
//! | `int-log:LOW:HIGH` | `hidden=int-log:50:1000` | an integer in `[LOW, HIGH]`, uniform in log space |
//! | `choice:A,B,C` | `activation=choice:relu,elu,tanh` | one of the values |
//!
//! Every draw is a function of (seed, trial number, parameter) alone, so a
//! resumed search draws the same candidates.

use std::fmt;
use std::str::FromStr;

use cifar_data::mix_seed;
use serde::{Deserialize, Serialize};

/// The `train fit` options a search may vary.
pub const SEARCHABLE: [&str; 14] = [
    "lr",
    "weight-decay",
    "dropout",
    "momentum",
    "batch-size",
    "hidden",
    "channels",
    "activation",
    "init",
    "optimizer",
    "warmup",
    "preprocess",
    "lr-schedule",
    "batch-norm",
];

/// How one parameter is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Range {
    /// Log-uniform on `[low, high]`.
    Log {
        /// Lower bound (positive).
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Uniform on `[low, high]`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// An integer in `[low, high]`, uniform (or uniform in log space with `log`).
    Int {
        /// Lower bound.
        low: i64,
        /// Upper bound.
        high: i64,
        /// Uniform in log space.
        log: bool,
    },
    /// One of the values, each as likely.
    Choice {
        /// The values, as `train fit` spells them.
        values: Vec<String>,
    },
}

/// One searched parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// The `train fit` option, without the dashes (`lr`, `weight-decay`).
    pub name: String,
    /// How it is drawn.
    #[serde(flatten)]
    pub range: Range,
}

/// A drawn value, spelled as the `train fit` option takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An integer (first: serde tries the variants in order).
    Int(i64),
    /// A real number.
    Float(f64),
    /// A choice.
    Text(String),
}

impl Value {
    /// The value for people: 4 significant digits.
    pub fn short(&self) -> String {
        match self {
            Value::Float(v) => format!("{v:.3e}"),
            other => other.to_string(),
        }
    }

    /// The value as a number, for plots and narrowing (`None` for a choice).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            Value::Text(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Float(v) => write!(f, "{v:e}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Text(v) => f.write_str(v),
        }
    }
}

fn number<T: FromStr>(text: &str, spec: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("--space '{spec}': '{text}' is not a number"))
}

impl FromStr for Param {
    type Err = String;

    /// Parses `NAME=KIND:ARGS`; every error quotes the text at fault.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, rest) = spec.split_once('=').ok_or_else(|| {
            format!("--space '{spec}': expected NAME=KIND:ARGS, such as lr=log:1e-5:1e-1")
        })?;
        let name = name.trim().trim_start_matches("--");
        if !SEARCHABLE.contains(&name) {
            return Err(format!(
                "--space '{spec}': unknown parameter '{name}'; searchable: {}",
                SEARCHABLE.join(", ")
            ));
        }
        let (kind, args) = rest.split_once(':').ok_or_else(|| {
            format!("--space '{spec}': expected KIND:ARGS after '=', such as log:1e-5:1e-1")
        })?;
        fn bounds<'a>(args: &'a str, spec: &str, kind: &str) -> Result<(&'a str, &'a str), String> {
            args.split_once(':')
                .filter(|(_, hi)| !hi.contains(':'))
                .ok_or_else(|| format!("--space '{spec}': expected {kind}:LOW:HIGH"))
        }
        let range = match kind {
            "log" | "uniform" => {
                let (lo, hi) = bounds(args, spec, kind)?;
                let (low, high): (f64, f64) = (number(lo, spec)?, number(hi, spec)?);
                if !(low.is_finite() && high.is_finite()) {
                    return Err(format!("--space '{spec}': the bounds must be finite"));
                }
                if low >= high {
                    return Err(format!(
                        "--space '{spec}': the range is empty or inverted ({low} to {high}): write LOW:HIGH with LOW < HIGH"
                    ));
                }
                if kind == "log" {
                    if low <= 0.0 {
                        return Err(format!(
                            "--space '{spec}': log ranges need positive bounds, got {low}; use uniform for ranges through 0"
                        ));
                    }
                    Range::Log { low, high }
                } else {
                    Range::Uniform { low, high }
                }
            }
            "int" | "int-log" => {
                let (lo, hi) = bounds(args, spec, kind)?;
                let (low, high): (i64, i64) = (number(lo, spec)?, number(hi, spec)?);
                if low > high {
                    return Err(format!(
                        "--space '{spec}': the range is inverted ({low} to {high}): write LOW:HIGH with LOW <= HIGH"
                    ));
                }
                let log = kind == "int-log";
                if log && low <= 0 {
                    return Err(format!(
                        "--space '{spec}': int-log ranges need positive bounds, got {low}"
                    ));
                }
                Range::Int { low, high, log }
            }
            "choice" => {
                let values: Vec<String> = args
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .collect();
                if values.is_empty() {
                    return Err(format!("--space '{spec}': choice needs at least one value"));
                }
                Range::Choice { values }
            }
            _ => {
                return Err(format!(
                    "--space '{spec}': unknown kind '{kind}'; expected log, uniform, int, int-log or choice"
                ));
            }
        };
        Ok(Param {
            name: name.to_string(),
            range,
        })
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.range {
            Range::Log { low, high } => {
                write!(f, "{}=log:{}:{}", self.name, sig4(*low), sig4(*high))
            }
            Range::Uniform { low, high } => {
                write!(f, "{}=uniform:{}:{}", self.name, sig4(*low), sig4(*high))
            }
            Range::Int { low, high, log } => {
                let kind = if *log { "int-log" } else { "int" };
                write!(f, "{}={kind}:{low}:{high}", self.name)
            }
            Range::Choice { values } => write!(f, "{}=choice:{}", self.name, values.join(",")),
        }
    }
}

/// `v` rounded to 4 significant digits, in the shortest of `1e-5` or `1.449e-1`.
fn sig4(v: f64) -> String {
    let rounded: f64 = format!("{v:.3e}").parse().unwrap_or(v);
    if rounded != 0.0 && (rounded.abs() < 0.1 || rounded.abs() >= 1e4) {
        format!("{rounded:e}")
    } else {
        format!("{rounded}")
    }
}

impl Param {
    /// The value at `u`, a uniform number in `[0, 1)`.
    pub fn at(&self, u: f64) -> Value {
        match &self.range {
            Range::Log { low, high } => {
                Value::Float(10f64.powf(low.log10() + u * (high.log10() - low.log10())))
            }
            Range::Uniform { low, high } => Value::Float(low + u * (high - low)),
            Range::Int { low, high, log } => {
                let v = if *log {
                    let (a, b) = ((*low as f64 - 0.5).max(0.5).ln(), (*high as f64 + 0.5).ln());
                    (a + u * (b - a)).exp().round() as i64
                } else {
                    low + (u * (high - low + 1) as f64).floor() as i64
                };
                Value::Int(v.clamp(*low, *high))
            }
            Range::Choice { values } => {
                let i = ((u * values.len() as f64) as usize).min(values.len() - 1);
                Value::Text(values[i].clone())
            }
        }
    }

    /// Whether a log scale suits this parameter's axis.
    pub fn is_log(&self) -> bool {
        matches!(self.range, Range::Log { .. } | Range::Int { log: true, .. })
    }
}

/// Checks that no parameter is given twice.
pub fn validate(space: &[Param]) -> Result<(), String> {
    for (i, p) in space.iter().enumerate() {
        if space[..i].iter().any(|q| q.name == p.name) {
            return Err(format!("--space: '{}' is given twice", p.name));
        }
    }
    if space.is_empty() {
        return Err("train search needs at least one --space NAME=KIND:ARGS".into());
    }
    Ok(())
}

/// A uniform number in `[0, 1)` from (seed, trial, parameter index) alone.
pub fn uniform(seed: u64, trial: u64, param: usize) -> f64 {
    let bits = mix_seed(mix_seed(seed, trial), param as u64 + 1);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The values of trial `trial`: one per parameter, from (seed, trial) alone.
pub fn draw(space: &[Param], seed: u64, trial: u64) -> Vec<(String, Value)> {
    space
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), p.at(uniform(seed, trial, i))))
        .collect()
}

/// The space for the next stage: each range narrowed to the span of the
/// best `top` fraction of `scored` trials (values and score, higher is
/// better), widened by `margin` of that span on each side (in log space for
/// log ranges), clipped to the original range; choices keep the values that
/// appear among the best. With no scored trial the space is unchanged.
pub fn narrow(
    space: &[Param],
    scored: &[(Vec<(String, Value)>, f64)],
    top: f64,
    margin: f64,
) -> Vec<Param> {
    let mut ranked: Vec<&(Vec<(String, Value)>, f64)> =
        scored.iter().filter(|(_, s)| s.is_finite()).collect();
    if ranked.is_empty() {
        return space.to_vec();
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let keep = ((ranked.len() as f64 * top).ceil() as usize).clamp(1, ranked.len());
    let best = &ranked[..keep];
    space
        .iter()
        .map(|p| {
            let values: Vec<&Value> = best
                .iter()
                .filter_map(|(vals, _)| vals.iter().find(|(n, _)| *n == p.name).map(|(_, v)| v))
                .collect();
            let numbers: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
            let range = match &p.range {
                Range::Choice { values: all } => {
                    let kept: Vec<String> = all
                        .iter()
                        .filter(|c| {
                            values
                                .iter()
                                .any(|v| matches!(v, Value::Text(t) if t == *c))
                        })
                        .cloned()
                        .collect();
                    Range::Choice {
                        values: if kept.is_empty() { all.clone() } else { kept },
                    }
                }
                _ if numbers.is_empty() => p.range.clone(),
                Range::Log { low, high } => {
                    let (a, b) = widen(numbers.iter().map(|v| v.log10()), margin);
                    Range::Log {
                        low: 10f64.powf(a).max(*low),
                        high: 10f64.powf(b).min(*high),
                    }
                }
                Range::Uniform { low, high } => {
                    let (a, b) = widen(numbers.iter().copied(), margin);
                    Range::Uniform {
                        low: a.max(*low),
                        high: b.min(*high),
                    }
                }
                Range::Int { low, high, log } => {
                    let (a, b) = if *log {
                        let (a, b) = widen(numbers.iter().map(|v| v.ln()), margin);
                        (a.exp(), b.exp())
                    } else {
                        widen(numbers.iter().copied(), margin)
                    };
                    Range::Int {
                        low: (a.floor() as i64).max(*low),
                        high: (b.ceil() as i64).min(*high),
                        log: *log,
                    }
                }
            };
            Param {
                name: p.name.clone(),
                range,
            }
        })
        .collect()
}

/// `(min, max)` of `values`, each side moved out by `margin` of the span.
fn widen(values: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let pad = margin * (hi - lo);
    (lo - pad, hi + pad)
}

/// A warning for every numeric parameter whose best values (the best
/// `top` fraction of `scored`) all sit in the outer tenth of its range, at
/// the same end: the optimum may lie outside, so the range should widen.
pub fn edge_warnings(
    space: &[Param],
    scored: &[(Vec<(String, Value)>, f64)],
    top: f64,
) -> Vec<String> {
    let mut ranked: Vec<&(Vec<(String, Value)>, f64)> =
        scored.iter().filter(|(_, s)| s.is_finite()).collect();
    if ranked.is_empty() {
        return Vec::new();
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let keep = ((ranked.len() as f64 * top).ceil() as usize).clamp(1, ranked.len());
    let mut warnings = Vec::new();
    for p in space {
        let (lo, hi, log, plural) = match p.range {
            Range::Log { low, high } => (low.log10(), high.log10(), true, "values"),
            Range::Uniform { low, high } => (low, high, false, "values"),
            Range::Int { low, high, log } if high > low => {
                if log {
                    ((low as f64).ln(), (high as f64).ln(), true, "values")
                } else {
                    (low as f64, high as f64, false, "values")
                }
            }
            _ => continue,
        };
        let positions: Vec<f64> = ranked[..keep]
            .iter()
            .filter_map(|(vals, _)| vals.iter().find(|(n, _)| *n == p.name))
            .filter_map(|(_, v)| v.as_f64())
            .map(|v| {
                let x = if log {
                    if matches!(p.range, Range::Int { .. }) {
                        v.ln()
                    } else {
                        v.log10()
                    }
                } else {
                    v
                };
                (x - lo) / (hi - lo)
            })
            .collect();
        if positions.is_empty() {
            continue;
        }
        let range = p.to_string();
        let range = range.split_once('=').map_or(range.as_str(), |(_, r)| r);
        if positions.iter().all(|&x| x >= 0.9) {
            warnings.push(format!(
                "the best {plural} of {} are at the top of the range {range}: widen it upward",
                p.name
            ));
        } else if positions.iter().all(|&x| x <= 0.1) {
            warnings.push(format!(
                "the best {plural} of {} are at the bottom of the range {range}: widen it downward",
                p.name
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(spec: &str) -> Param {
        spec.parse().unwrap()
    }

    #[test]
    fn parses_every_kind_and_prints_it_back() {
        for spec in [
            "lr=log:1e-5:1e-1",
            "dropout=uniform:0:0.5",
            "batch-size=int:32:256",
            "hidden=int-log:50:1000",
            "activation=choice:relu,elu,tanh",
        ] {
            let p = param(spec);
            assert_eq!(param(&p.to_string()), p, "{spec}");
        }
        assert_eq!(
            param("lr=log:1e-5:1e-1").range,
            Range::Log {
                low: 1e-5,
                high: 1e-1
            }
        );
    }

    #[test]
    fn every_error_quotes_the_text_at_fault() {
        for (spec, expected) in [
            ("lr", "expected NAME=KIND:ARGS"),
            ("speed=log:1:2", "unknown parameter 'speed'"),
            ("lr=log", "expected KIND:ARGS"),
            ("lr=gauss:0:1", "unknown kind 'gauss'"),
            ("lr=log:1e-1:1e-5", "empty or inverted"),
            ("lr=log:0.1:0.1", "empty or inverted"),
            ("lr=log:0:1", "log ranges need positive bounds"),
            ("lr=log:-1:1", "log ranges need positive bounds"),
            ("lr=log:abc:1", "'abc' is not a number"),
            ("lr=log:1e-5", "expected log:LOW:HIGH"),
            ("lr=log:1:2:3", "expected log:LOW:HIGH"),
            ("batch-size=int:256:32", "inverted"),
            ("batch-size=int:1.5:32", "'1.5' is not a number"),
            (
                "hidden=int-log:0:100",
                "int-log ranges need positive bounds",
            ),
            ("activation=choice:", "at least one value"),
            ("dropout=uniform:0:inf", "finite"),
        ] {
            let err = spec.parse::<Param>().unwrap_err();
            assert!(err.contains(expected), "{spec}: {err}");
            assert!(
                err.contains(&format!("'{spec}'")) || err.contains("unknown parameter"),
                "{spec}: {err}"
            );
        }
        let twice = [param("lr=log:1e-3:1"), param("lr=log:1e-4:1")];
        assert!(
            validate(&twice)
                .unwrap_err()
                .contains("'lr' is given twice")
        );
        assert!(validate(&[]).is_err());
    }

    #[test]
    fn log_uniform_samples_spread_evenly_over_decades() {
        // 1e-6 to 1e-1: five decades, each should hold a fifth of the draws.
        let p = param("lr=log:1e-6:1e-1");
        let n = 20_000;
        let mut decades = [0usize; 5];
        for trial in 0..n {
            let v = p.at(uniform(7, trial, 0)).as_f64().unwrap();
            assert!((1e-6..=1e-1).contains(&v));
            decades[((v.log10() + 6.0).floor() as usize).min(4)] += 1;
        }
        for (d, &count) in decades.iter().enumerate() {
            let share = count as f64 / n as f64;
            // Binomial standard error at n = 20,000 is 0.0028; allow 5 of them.
            assert!((share - 0.2).abs() < 0.014, "decade {d}: {share}");
        }
    }

    #[test]
    fn draws_depend_on_seed_and_trial_alone() {
        let space = vec![param("lr=log:1e-5:1e-1"), param("hidden=int:10:20")];
        assert_eq!(draw(&space, 3, 5), draw(&space, 3, 5));
        assert_ne!(draw(&space, 3, 5), draw(&space, 3, 6));
        assert_ne!(draw(&space, 3, 5), draw(&space, 4, 5));
        for trial in 0..200 {
            let v = draw(&space, 1, trial);
            let h = v[1].1.as_f64().unwrap();
            assert!((10.0..=20.0).contains(&h) && h.fract() == 0.0, "{h}");
        }
    }

    fn scored(values: &[(f64, f64, &str)]) -> Vec<(Vec<(String, Value)>, f64)> {
        values
            .iter()
            .map(|&(lr, score, act)| {
                (
                    vec![
                        ("lr".to_string(), Value::Float(lr)),
                        ("activation".to_string(), Value::Text(act.into())),
                    ],
                    score,
                )
            })
            .collect()
    }

    #[test]
    fn narrowing_by_hand() {
        let space = vec![
            param("lr=log:1e-6:1e0"),
            param("activation=choice:relu,tanh,elu"),
        ];
        // Eight trials; the top quarter is the best two: lr 1e-3 and 1e-2, both relu.
        let trials = scored(&[
            (1e-3, 0.50, "relu"),
            (1e-2, 0.48, "relu"),
            (1e-5, 0.20, "tanh"),
            (1e-1, 0.30, "elu"),
            (1e-6, 0.10, "tanh"),
            (1e-4, 0.40, "elu"),
            (3e-1, 0.15, "relu"),
            (1e-0, 0.10, "tanh"),
        ]);
        let next = narrow(&space, &trials, 0.25, 0.1);
        // In log10: span [-3, -2], widened by 0.1 of 1 on each side: [-3.1, -1.9].
        match next[0].range {
            Range::Log { low, high } => {
                assert!((low.log10() + 3.1).abs() < 1e-9, "{low}");
                assert!((high.log10() + 1.9).abs() < 1e-9, "{high}");
            }
            ref other => panic!("{other:?}"),
        }
        assert_eq!(
            next[1].range,
            Range::Choice {
                values: vec!["relu".into()]
            }
        );
        // Clipped to the original range: the best at the top edge cannot push past it.
        let edge = scored(&[(1e0, 0.9, "relu"), (3e-1, 0.8, "relu"), (1e-6, 0.1, "relu")]);
        match narrow(&space, &edge, 0.5, 0.5)[0].range {
            Range::Log { high, .. } => assert_eq!(high, 1e0),
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn edge_warning_names_the_parameter_and_the_end() {
        let space = vec![param("lr=log:1e-5:1e-2")];
        // The best learning rates are 8e-3 and 9e-3: within the top tenth of the
        // log range (above 10^-2.3 = 5.0e-3).
        let trials = scored(&[
            (9e-3, 0.5, "relu"),
            (8e-3, 0.49, "relu"),
            (1e-4, 0.2, "relu"),
            (1e-5, 0.1, "relu"),
        ]);
        let w = edge_warnings(&space, &trials, 0.5);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("best values of lr are at the top of the range log:1e-5:1e-2"),
            "{w:?}"
        );
        // Best values in the middle: no warning.
        let middle = scored(&[(3e-4, 0.5, "relu"), (1e-5, 0.1, "relu")]);
        assert!(edge_warnings(&space, &middle, 0.5).is_empty());
    }
}
