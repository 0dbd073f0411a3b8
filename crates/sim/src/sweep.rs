//! Sweeps: one scenario run once per seed of a range and per combination of parameter values
//! (`--set key=v1,v2`), every numeric metric of `summary.json` aggregated per combination as
//! mean, sample standard deviation and a 95% confidence interval for the mean.
//!
//! The interval is Student's t with n − 1 degrees of freedom:
//! `mean ± t(0.975, n − 1) · s / √n`, where `s` is the sample standard deviation (divisor
//! n − 1). It assumes the n runs are independent samples of the metric (different seeds give
//! independent random streams) and is exact for normally distributed metrics; for others it is
//! the usual approximation, good when n is not tiny. With one run there is no interval.
//!
//! Every run is as deterministic as `run`, runs happen one after another in a fixed order, and
//! nothing from the wall clock reaches `sweep.json` or `sweep.csv`: a sweep replays byte for byte.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::error::SimError;
use crate::report::Summary;
use crate::scenario::Scenario;

/// Most runs one sweep may ask for (seeds × combinations).
pub const MAX_SWEEP_RUNS: u64 = 100_000;

/// An inclusive range of seeds, `A..B` on the command line (`1..20` is 20 seeds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seeds {
    pub first: u64,
    pub last: u64,
}

impl Seeds {
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> {
        self.first..=self.last
    }
}

fn bad_seeds(arg: &str, message: impl Into<String>) -> SimError {
    SimError::Argument {
        option: "--seeds",
        value: arg.to_string(),
        message: message.into(),
    }
}

/// Parses `A..B` (inclusive, A ≤ B) or a single seed `N`.
pub fn parse_seeds(arg: &str) -> Result<Seeds, SimError> {
    let num = |s: &str| {
        let s = s.trim();
        s.parse::<u64>().map_err(|_| {
            bad_seeds(
                arg,
                format!(
                    "`{s}` is not a seed (a whole number from 0 to {})",
                    u64::MAX
                ),
            )
        })
    };
    let (first, last) = match arg.split_once("..") {
        Some((a, b)) => {
            let b = b.strip_prefix('=').unwrap_or(b);
            (num(a)?, num(b)?)
        }
        None => {
            let n = num(arg)?;
            (n, n)
        }
    };
    if first > last {
        return Err(bad_seeds(
            arg,
            format!("the range is empty: it starts at {first}, after its end {last} (write A..B with A <= B; both ends are included)"),
        ));
    }
    let seeds = Seeds { first, last };
    if seeds.last - seeds.first >= MAX_SWEEP_RUNS {
        return Err(bad_seeds(
            arg,
            format!("at most {MAX_SWEEP_RUNS} seeds per sweep"),
        ));
    }
    Ok(seeds)
}

/// One `--set key=v1,v2,...`: a scenario key path and the values it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Set {
    pub key: String,
    pub values: Vec<toml::Value>,
    /// The values as written, for labels and tables.
    pub labels: Vec<String>,
}

fn bad_set(arg: &str, message: impl Into<String>) -> SimError {
    SimError::Argument {
        option: "--set",
        value: arg.to_string(),
        message: message.into(),
    }
}

/// Parses `key=value` or `key=v1,v2,...`. A value is read as TOML (`10`, `0.5`, `true`,
/// `[10.0, 10.0]`, `{ kind = "fixed", bytes = 50 }`, `"2h"`), and as a string when it is not
/// TOML (`2h`, `10Mbps`). Commas inside brackets, braces and quotes do not split values.
pub fn parse_set(arg: &str) -> Result<Set, SimError> {
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(bad_set(
            arg,
            "expected key=value, such as workload.rate_per_hour=5 or link.loss=0,0.1,0.2",
        ));
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
        return Err(bad_set(
            arg,
            format!("`{key}` is not a key path such as workload.rate_per_hour"),
        ));
    }
    let labels = split_top_level(raw);
    if labels.iter().any(|l| l.is_empty()) {
        return Err(bad_set(arg, format!("`{key}` has an empty value")));
    }
    let values = labels.iter().map(|l| toml_value(l)).collect();
    Ok(Set {
        key: key.to_string(),
        values,
        labels,
    })
}

fn split_top_level(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quote, mut cur) = (0i32, None::<char>, String::new());
    for c in raw.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur.trim().to_string());
    out
}

fn toml_value(s: &str) -> toml::Value {
    format!("v = {s}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_string()))
}

/// Every combination of the sets' values, the first set varying slowest: a list of
/// (key, value, label) per combination. No sets give one empty combination.
pub fn combinations(sets: &[Set]) -> Vec<Vec<(String, toml::Value, String)>> {
    let mut combos = vec![Vec::new()];
    for set in sets {
        let mut next = Vec::with_capacity(combos.len() * set.values.len());
        for c in &combos {
            for (v, l) in set.values.iter().zip(&set.labels) {
                let mut c2: Vec<(String, toml::Value, String)> = c.clone();
                c2.push((set.key.clone(), v.clone(), l.clone()));
                next.push(c2);
            }
        }
        combos = next;
    }
    combos
}

/// Mean, spread and 95% confidence interval of one metric over the runs that have it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stat {
    /// Runs that have this metric (a latency is missing from a run that delivered nothing).
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (divisor n − 1); null with one run.
    pub sd: Option<f64>,
    /// `mean ± t(0.975, n − 1) · sd / √n`; null with one run.
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
}

/// The 0.975 quantile of Student's t distribution with `df` degrees of freedom (so ±t holds
/// 95%). Exact table values (to 9 decimals) for 1 to 30, the Cornish–Fisher expansion in 1/df
/// above (error below 1e-6 there). `df` 0 gives infinity.
pub fn t_975(df: u64) -> f64 {
    const TABLE: [f64; 30] = [
        12.706204736,
        4.302652730,
        3.182446305,
        2.776445105,
        2.570581836,
        2.446911851,
        2.364624252,
        2.306004135,
        2.262157163,
        2.228138852,
        2.200985160,
        2.178812830,
        2.160368656,
        2.144786688,
        2.131449546,
        2.119905299,
        2.109815578,
        2.100922040,
        2.093024054,
        2.085963447,
        2.079613845,
        2.073873068,
        2.068657610,
        2.063898562,
        2.059538553,
        2.055529439,
        2.051830516,
        2.048407142,
        2.045229642,
        2.042272456,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df as usize - 1],
        _ => {
            let z: f64 = 1.959_963_984_540_054;
            let v = df as f64;
            let g1 = (z.powi(3) + z) / 4.0;
            let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
            let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
            let g4 = (79.0 * z.powi(9) + 776.0 * z.powi(7) + 1482.0 * z.powi(5)
                - 1920.0 * z.powi(3)
                - 945.0 * z)
                / 92160.0;
            z + g1 / v + g2 / v.powi(2) + g3 / v.powi(3) + g4 / v.powi(4)
        }
    }
}

/// The statistics of a sample (None if it is empty).
pub fn stat(values: &[f64]) -> Option<Stat> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    // Shifted by the first value: exact for identical values (zero spread, not rounding
    // noise) and steadier for large nearly equal ones.
    let k = values[0];
    let mean = k + values.iter().map(|v| v - k).sum::<f64>() / n as f64;
    if n == 1 {
        return Some(Stat {
            n,
            mean,
            sd: None,
            ci95_low: None,
            ci95_high: None,
        });
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let sd = var.sqrt();
    let half = t_975(n as u64 - 1) * sd / (n as f64).sqrt();
    Some(Stat {
        n,
        mean,
        sd: Some(sd),
        ci95_low: Some(mean - half),
        ci95_high: Some(mean + half),
    })
}

/// Every metric's statistics over `runs`, in `summary.json`'s order. A metric no run has is
/// left out.
pub fn aggregate(runs: &[Summary]) -> Vec<(&'static str, Stat)> {
    let per_run: Vec<Vec<(&'static str, Option<f64>)>> = runs.iter().map(|s| s.metrics()).collect();
    let Some(first) = per_run.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .filter_map(|(k, (name, _))| {
            let values: Vec<f64> = per_run.iter().filter_map(|m| m[k].1).collect();
            stat(&values).map(|s| (*name, s))
        })
        .collect()
}

/// A list of pairs written as a JSON object in its own order.
#[derive(Clone, Debug, PartialEq)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V: Serialize> Serialize for Ordered<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A run of the sweep that failed (an invariant, an overloaded queue, a device setup).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailedRun {
    pub seed: u64,
    pub error: String,
}

/// One combination of parameter values and its aggregated metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Combination {
    /// The `--set` values of this combination, as written.
    pub parameters: Ordered<String>,
    /// Where its runs' outputs are, relative to the sweep's directory.
    pub dir: String,
    pub scenario_hash: String,
    /// Runs that finished and are aggregated.
    pub runs: usize,
    pub failed: Vec<FailedRun>,
    pub metrics: Ordered<Stat>,
}

/// `sweep.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepReport {
    pub scenario: String,
    pub seeds: [u64; 2],
    pub parameters: Vec<String>,
    pub confidence: &'static str,
    pub combinations: Vec<Combination>,
}

impl SweepReport {
    /// Seeds of failed runs, with their combination's parameters.
    pub fn failures(&self) -> Vec<(String, &FailedRun)> {
        self.combinations
            .iter()
            .flat_map(|c| {
                let label = label_of(&c.parameters);
                c.failed.iter().map(move |f| (label.clone(), f))
            })
            .collect()
    }

    /// `sweep.csv`: one line per combination and metric.
    pub fn csv(&self) -> String {
        let mut s = String::new();
        for p in &self.parameters {
            s.push_str(&csv_field(p));
            s.push(',');
        }
        s.push_str("metric,n,mean,sd,ci95_low,ci95_high\n");
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for c in &self.combinations {
            for (name, st) in &c.metrics.0 {
                for (_, v) in &c.parameters.0 {
                    s.push_str(&csv_field(v));
                    s.push(',');
                }
                let _ = writeln!(
                    s,
                    "{name},{},{},{},{},{}",
                    st.n,
                    st.mean,
                    opt(st.sd),
                    opt(st.ci95_low),
                    opt(st.ci95_high)
                );
            }
        }
        s
    }
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

fn label_of(params: &Ordered<String>) -> String {
    if params.0.is_empty() {
        return "base".into();
    }
    params
        .0
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A directory name for a combination: its `key=value`s joined by `+`, every character other
/// than letters, digits, `.`, `-`, `_` and `=` replaced by `_`, prefixed by its index.
fn dir_of(index: usize, params: &[(String, toml::Value, String)]) -> String {
    if params.is_empty() {
        return "base".into();
    }
    let raw = params
        .iter()
        .map(|(k, _, l)| format!("{k}={l}"))
        .collect::<Vec<_>>()
        .join("+");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-=+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    format!("{index:03}-{clean}")
}

/// Where a sweep is: run `index` (from 0) of `total`, `fraction` of its virtual time done.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub index: u64,
    pub total: u64,
    pub seed: u64,
    pub fraction: f64,
}

/// Runs the scenario at `path` once per seed and combination of `sets`, writes each run's
/// outputs into `out/<combination>/seed-<seed>/` and `sweep.json`, `sweep.csv` into `out`.
///
/// Every combination's scenario is loaded and checked before the first run, so a bad value
/// fails at once. A run that fails (an invariant names its seed) is listed in the report and
/// left out of the statistics; the sweep goes on. Failing to write files stops it.
pub fn sweep(
    path: &Path,
    seeds: Seeds,
    sets: &[Set],
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<SweepReport, SimError> {
    let combos = combinations(sets);
    let total = seeds.count().saturating_mul(combos.len() as u64);
    if total > MAX_SWEEP_RUNS {
        return Err(SimError::Argument {
            option: "--set",
            value: sets
                .iter()
                .map(|s| s.key.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            message: format!(
                "{} combinations × {} seeds = {total} runs; at most {MAX_SWEEP_RUNS}",
                combos.len(),
                seeds.count()
            ),
        });
    }
    let scenarios: Vec<Scenario> = combos
        .iter()
        .map(|c| {
            let kv: Vec<(String, toml::Value)> =
                c.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
            Scenario::from_toml_file_with(path, &kv)
        })
        .collect::<Result<_, _>>()?;
    let mut report = SweepReport {
        scenario: path.display().to_string(),
        seeds: [seeds.first, seeds.last],
        parameters: sets.iter().map(|s| s.key.clone()).collect(),
        confidence: "95% for the mean, Student's t with n-1 degrees of freedom",
        combinations: Vec::with_capacity(combos.len()),
    };
    let mut index = 0u64;
    for (k, (combo, sc)) in combos.iter().zip(&scenarios).enumerate() {
        let dir = dir_of(k, combo);
        let mut summaries = Vec::new();
        let mut failed = Vec::new();
        for seed in seeds.iter() {
            let run_dir: PathBuf = out.join(&dir).join(format!("seed-{seed}"));
            let mut p = |fraction| {
                progress(Progress {
                    index,
                    total,
                    seed,
                    fraction,
                })
            };
            match crate::run(sc, seed, &run_dir, &mut p) {
                Ok(s) => summaries.push(s),
                Err(e @ (SimError::Io { .. } | SimError::Plot { .. })) => return Err(e),
                Err(e) => failed.push(FailedRun {
                    seed,
                    error: e.to_string(),
                }),
            }
            index += 1;
        }
        let metrics = aggregate(&summaries)
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        report.combinations.push(Combination {
            parameters: Ordered(
                combo
                    .iter()
                    .map(|(k, _, l)| (k.clone(), l.clone()))
                    .collect(),
            ),
            dir,
            scenario_hash: sc.hash(),
            runs: summaries.len(),
            failed,
            metrics: Ordered(metrics),
        });
    }
    write_reports(&report, out)?;
    Ok(report)
}

fn write_reports(report: &SweepReport, out: &Path) -> Result<(), SimError> {
    let io = SimError::io;
    std::fs::create_dir_all(out).map_err(io("create", out))?;
    let mut json = serde_json::to_string_pretty(report).unwrap_or_default();
    json.push('\n');
    let p = out.join("sweep.json");
    std::fs::write(&p, json).map_err(io("write", &p))?;
    let p = out.join("sweep.csv");
    std::fs::write(&p, report.csv()).map_err(io("write", &p))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn the_interval_of_a_known_sample() {
        // 1..=5: mean 3, s = √2.5, t(0.975, 4) = 2.776445 → 3 ± 1.963243.
        let s = stat(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(s.n, 5);
        assert!(close(s.mean, 3.0, 1e-12));
        assert!(close(s.sd.unwrap(), 2.5f64.sqrt(), 1e-12));
        assert!(close(s.ci95_low.unwrap(), 1.036757, 1e-6), "{s:?}");
        assert!(close(s.ci95_high.unwrap(), 4.963243, 1e-6), "{s:?}");
        // Two values: t(0.975, 1) = 12.7062; 10 and 20 give 15 ± 12.7062 · 7.0711 / √2.
        let s = stat(&[10.0, 20.0]).unwrap();
        assert!(close(s.ci95_high.unwrap() - 15.0, 63.531024, 1e-5), "{s:?}");
    }

    #[test]
    fn identical_runs_give_an_interval_of_zero_width_and_one_run_none() {
        let s = stat(&[0.8; 7]).unwrap();
        assert_eq!(s.sd, Some(0.0));
        assert_eq!(s.ci95_low, Some(0.8));
        assert_eq!(s.ci95_high, Some(0.8));
        let one = stat(&[4.0]).unwrap();
        assert_eq!(
            (one.n, one.mean, one.sd, one.ci95_low),
            (1, 4.0, None, None)
        );
        assert!(stat(&[]).is_none());
    }

    #[test]
    fn t_quantiles_match_published_values() {
        assert!(close(t_975(1), 12.7062, 1e-4));
        assert!(close(t_975(19), 2.0930, 1e-4));
        // Beyond the table: the expansion agrees with published values and joins the table.
        assert!(close(t_975(30), 2.042272, 1e-6));
        assert!(close(t_975(31), 2.039513, 1e-5));
        assert!(close(t_975(40), 2.021075, 1e-5));
        assert!(close(t_975(60), 2.000298, 1e-5));
        assert!(close(t_975(120), 1.979930, 1e-5));
        assert!(close(t_975(1_000_000), 1.959966, 1e-5));
        for df in 1..200 {
            assert!(t_975(df + 1) < t_975(df), "decreasing at {df}");
        }
    }

    #[test]
    fn seed_ranges_are_inclusive_and_bad_ones_are_named() {
        assert_eq!(parse_seeds("1..20").unwrap().count(), 20);
        assert_eq!(parse_seeds("7").unwrap(), Seeds { first: 7, last: 7 });
        assert_eq!(parse_seeds("3..=4").unwrap().count(), 2);
        let e = parse_seeds("5..2").unwrap_err().to_string();
        assert!(
            e.contains("--seeds") && e.contains("5..2") && e.contains("empty"),
            "{e}"
        );
        let e = parse_seeds("x..3").unwrap_err().to_string();
        assert!(
            e.contains("--seeds") && e.contains("`x` is not a seed"),
            "{e}"
        );
        let e = parse_seeds("1..").unwrap_err().to_string();
        assert!(e.contains("is not a seed"), "{e}");
        assert!(parse_seeds("-1..3").is_err());
    }

    #[test]
    fn sets_split_on_top_level_commas_and_read_toml_or_strings() {
        let s = parse_set("link.loss=0,0.1, 0.2").unwrap();
        assert_eq!(s.key, "link.loss");
        assert_eq!(s.labels, ["0", "0.1", "0.2"]);
        assert_eq!(s.values[1], toml::Value::Float(0.1));
        let s = parse_set("mobility.area=[10.0,10.0],[20.0, 20.0]").unwrap();
        assert_eq!(s.values.len(), 2);
        assert!(s.values[0].is_array());
        let s = parse_set("duration=2h,1d").unwrap();
        assert_eq!(s.values[0], toml::Value::String("2h".into()));
        let s = parse_set("workload.size={ kind = \"fixed\", bytes = 50 }").unwrap();
        assert!(s.values[0].is_table());
        for bad in ["workload.rate", "=5", "a..b=1", "link.loss=0,,1"] {
            let e = parse_set(bad).unwrap_err().to_string();
            assert!(e.contains("--set"), "{bad}: {e}");
        }
    }

    #[test]
    fn combinations_are_the_cartesian_product_first_set_slowest() {
        let a = parse_set("a=1,2").unwrap();
        let b = parse_set("b=x,y,z").unwrap();
        let c = combinations(&[a, b]);
        assert_eq!(c.len(), 6);
        let labels: Vec<String> = c
            .iter()
            .map(|c| c.iter().map(|(_, _, l)| l.as_str()).collect::<String>())
            .collect();
        assert_eq!(labels, ["1x", "1y", "1z", "2x", "2y", "2z"]);
        assert_eq!(combinations(&[]).len(), 1);
    }
}
