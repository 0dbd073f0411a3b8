//! Metrics and output files: `summary.json`, `messages.csv`, `delivery.svg`, `latency_cdf.svg`.
//! Everything here is a pure function of the run, so outputs are byte-identical per seed.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::error::SimError;
use crate::scenario::{Scenario, Strategy};
use crate::world::{Msg, Outcome};

/// Most points drawn per plotted series (larger runs are sampled evenly).
pub const MAX_PLOT_POINTS: usize = 1_000;

/// Latency of delivered messages, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyStats {
    pub mean: f64,
    /// Nearest-rank median.
    pub median: u64,
    /// Nearest-rank 95th percentile.
    pub p95: u64,
    pub max: u64,
}

/// `summary.json`; every field is defined in `simulations/README.md`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub scenario_hash: String,
    /// Whether envelopes were really sealed (always, for now).
    pub crypto: bool,
    pub routing: String,
    pub devices: u32,
    pub relays: u32,
    pub duration_ms: u64,
    /// Devices times simulated hours.
    pub node_hours: f64,
    pub created: u64,
    pub delivered: u64,
    pub delivery_probability: Option<f64>,
    pub latency_ms: Option<LatencyStats>,
    pub overhead_ratio: Option<f64>,
    pub mean_hop_count: Option<f64>,
    pub duplicates: u64,
    pub peak_relay_storage_bytes: u64,
    /// Most bytes one device's carry buffer held (flooding and spray-and-wait only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_carry_buffer_bytes: Option<u64>,
    /// Envelopes dropped from full carry buffers (flooding and spray-and-wait only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carry_dropped: Option<u64>,
    /// Envelopes carriers dropped after the workload's TTL (flooding and spray-and-wait only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carry_expired: Option<u64>,
    pub delivered_after_ttl: u64,
    pub dropped_buffer_full: u64,
    pub send_errors: u64,
    pub not_created_device_down: u64,
    pub acknowledged: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_lost: u64,
    pub requests_failed: u64,
    pub link_ups: u64,
    pub contacts_linked: u64,
    pub restarts: u64,
    pub peak_outbox_messages: u32,
    pub peak_engine_peers: u32,
    pub peak_outputs_per_commit: u32,
    pub engine_problems: u64,
    pub timer_spins: u64,
    pub events: u64,
    pub notes: Vec<String>,
}

impl Summary {
    /// Every numeric metric (all fields but `seed`, the hash, names and notes), in this
    /// struct's order, with latency's fields as `latency_ms.mean` and so on; None where the
    /// summary has null. `sim sweep` aggregates these.
    pub fn metrics(&self) -> Vec<(&'static str, Option<f64>)> {
        let l = self.latency_ms.as_ref();
        let u = |v: u64| Some(v as f64);
        vec![
            ("devices", u(self.devices.into())),
            ("relays", u(self.relays.into())),
            ("duration_ms", u(self.duration_ms)),
            ("node_hours", Some(self.node_hours)),
            ("created", u(self.created)),
            ("delivered", u(self.delivered)),
            ("delivery_probability", self.delivery_probability),
            ("latency_ms.mean", l.map(|l| l.mean)),
            ("latency_ms.median", l.map(|l| l.median as f64)),
            ("latency_ms.p95", l.map(|l| l.p95 as f64)),
            ("latency_ms.max", l.map(|l| l.max as f64)),
            ("overhead_ratio", self.overhead_ratio),
            ("mean_hop_count", self.mean_hop_count),
            ("duplicates", u(self.duplicates)),
            ("peak_relay_storage_bytes", u(self.peak_relay_storage_bytes)),
            (
                "peak_carry_buffer_bytes",
                self.peak_carry_buffer_bytes.and_then(u),
            ),
            ("carry_dropped", self.carry_dropped.and_then(u)),
            ("carry_expired", self.carry_expired.and_then(u)),
            ("delivered_after_ttl", u(self.delivered_after_ttl)),
            ("dropped_buffer_full", u(self.dropped_buffer_full)),
            ("send_errors", u(self.send_errors)),
            ("not_created_device_down", u(self.not_created_device_down)),
            ("acknowledged", u(self.acknowledged)),
            ("frames_sent", u(self.frames_sent)),
            ("bytes_sent", u(self.bytes_sent)),
            ("frames_lost", u(self.frames_lost)),
            ("requests_failed", u(self.requests_failed)),
            ("link_ups", u(self.link_ups)),
            ("contacts_linked", u(self.contacts_linked)),
            ("restarts", u(self.restarts)),
            ("peak_outbox_messages", u(self.peak_outbox_messages.into())),
            ("peak_engine_peers", u(self.peak_engine_peers.into())),
            (
                "peak_outputs_per_commit",
                u(self.peak_outputs_per_commit.into()),
            ),
            ("engine_problems", u(self.engine_problems)),
            ("timer_spins", u(self.timer_spins)),
            ("events", u(self.events)),
        ]
    }
}

/// A finished run: its summary and one row per message.
pub struct Report {
    pub summary: Summary,
    pub messages: Vec<MessageRow>,
    /// Invariant violations found at the end of the run (at most `MAX_VIOLATIONS_LISTED`).
    pub violations: Vec<String>,
    pub violation_count: usize,
}

/// One line of `messages.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRow {
    pub id: u64,
    pub from: u32,
    pub to: u32,
    pub created_ms: u64,
    pub delivered_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    pub hops: Option<u32>,
    pub size: u32,
}

/// The nearest-rank `p`-quantile of sorted values.
pub fn nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn in_ttl(m: &Msg, ttl: Option<u64>) -> Option<u64> {
    let d = m.delivered_ms?;
    let lat = d - m.created_ms;
    match ttl {
        Some(t) if lat > t => None,
        _ => Some(lat),
    }
}

pub fn build(sc: &Scenario, seed: u64, out: Outcome) -> Report {
    let ttl = sc.workload.ttl.map(|t| t.ms());
    let c = &out.counters;
    let created = out.msgs.len() as u64;
    let mut lat: Vec<u64> = out.msgs.iter().filter_map(|m| in_ttl(m, ttl)).collect();
    lat.sort_unstable();
    let delivered = lat.len() as u64;
    let late = out
        .msgs
        .iter()
        .filter(|m| m.delivered_ms.is_some() && in_ttl(m, ttl).is_none())
        .count() as u64;
    let latency_ms = (!lat.is_empty()).then(|| LatencyStats {
        mean: lat.iter().map(|&l| l as f64).sum::<f64>() / lat.len() as f64,
        median: nearest_rank(&lat, 0.5).unwrap_or(0),
        p95: nearest_rank(&lat, 0.95).unwrap_or(0),
        max: lat.last().copied().unwrap_or(0),
    });
    let mut notes = Vec::new();
    let strategy = sc.routing.strategy;
    if sc.nodes.relays > 0 && strategy != Strategy::Relays {
        notes.push(format!(
            "{} relays declared; routing.strategy is {:?}, so they took no part in the run",
            sc.nodes.relays,
            strategy.name()
        ));
    }
    let carries = strategy.carries();
    let hops: Vec<u32> = out
        .msgs
        .iter()
        .filter(|m| in_ttl(m, ttl).is_some())
        .filter_map(|m| m.hops)
        .collect();
    if sc.workload.group_share > 0.0 {
        notes.push(format!(
            "workload.group_share {} ignored: groups are not simulated yet, every message is 1:1",
            sc.workload.group_share
        ));
    }
    let summary = Summary {
        seed,
        scenario_hash: sc.hash(),
        crypto: true,
        routing: sc.routing.strategy.name().to_string(),
        devices: sc.nodes.devices,
        relays: sc.nodes.relays,
        duration_ms: sc.duration.ms(),
        node_hours: sc.nodes.devices as f64 * sc.duration.ms() as f64 / 3_600_000.0,
        created,
        delivered,
        delivery_probability: (created > 0).then(|| delivered as f64 / created as f64),
        latency_ms,
        overhead_ratio: (delivered > 0).then(|| c.frames_sent as f64 / delivered as f64),
        mean_hop_count: (!hops.is_empty())
            .then(|| hops.iter().map(|&h| h as f64).sum::<f64>() / hops.len() as f64),
        duplicates: c.duplicates,
        peak_relay_storage_bytes: c.peak_relay_storage,
        peak_carry_buffer_bytes: carries.then_some(c.peak_carry_buffer),
        carry_dropped: carries.then_some(c.carry_dropped),
        carry_expired: carries.then_some(c.carry_expired),
        delivered_after_ttl: late,
        dropped_buffer_full: c.dropped_buffer_full,
        send_errors: c.send_errors,
        not_created_device_down: c.skipped_device_down,
        acknowledged: out.msgs.iter().filter(|m| m.acked_ms.is_some()).count() as u64,
        frames_sent: c.frames_sent,
        bytes_sent: c.bytes_sent,
        frames_lost: c.frames_lost,
        requests_failed: c.requests_failed,
        link_ups: c.link_ups,
        contacts_linked: c.contacts_linked,
        restarts: c.restarts,
        peak_outbox_messages: c.peak_outstanding,
        peak_engine_peers: c.peak_engine_peers,
        peak_outputs_per_commit: c.peak_outputs_per_commit,
        engine_problems: c.engine_problems,
        timer_spins: c.timer_spins,
        events: c.events,
        notes,
    };
    let messages = out
        .msgs
        .iter()
        .enumerate()
        .map(|(k, m)| MessageRow {
            id: k as u64,
            from: m.from,
            to: m.to,
            created_ms: m.created_ms,
            delivered_ms: m.delivered_ms,
            latency_ms: m.delivered_ms.map(|d| d - m.created_ms),
            hops: m.delivered_ms.and(m.hops),
            size: m.size,
        })
        .collect();
    Report {
        summary,
        messages,
        violations: out.violations,
        violation_count: out.violation_count,
    }
}

impl Report {
    /// Writes every output file into `dir` (created if missing).
    pub fn write(&self, dir: &Path, sc: &Scenario) -> Result<(), SimError> {
        let io = SimError::io;
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut json = serde_json::to_string_pretty(&self.summary).unwrap_or_default();
        json.push('\n');
        let p = dir.join("summary.json");
        std::fs::write(&p, json).map_err(io("write", &p))?;
        let p = dir.join("messages.csv");
        std::fs::write(&p, self.csv()).map_err(io("write", &p))?;
        let p = dir.join("delivery.svg");
        std::fs::write(&p, self.delivery_svg(sc)?).map_err(io("write", &p))?;
        let p = dir.join("latency_cdf.svg");
        std::fs::write(&p, self.latency_svg()?).map_err(io("write", &p))?;
        Ok(())
    }

    /// `messages.csv`: a header, then one line per message in creation order.
    pub fn csv(&self) -> String {
        let mut s = String::from("id,from,to,created_ms,delivered_ms,latency_ms,hops,size\n");
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        for m in &self.messages {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{}",
                m.id,
                m.from,
                m.to,
                m.created_ms,
                opt(m.delivered_ms),
                opt(m.latency_ms),
                opt(m.hops.map(u64::from)),
                m.size
            );
        }
        s
    }

    /// Cumulative messages created and delivered over virtual time.
    fn delivery_svg(&self, sc: &Scenario) -> Result<String, SimError> {
        let end = sc.duration.ms();
        let (unit, div) = time_unit(end);
        let mut created: Vec<u64> = self.messages.iter().map(|m| m.created_ms).collect();
        let mut delivered: Vec<u64> = self
            .messages
            .iter()
            .filter(|m| m.hops.is_some())
            .filter_map(|m| {
                let lat = m.latency_ms?;
                match sc.workload.ttl {
                    Some(t) if lat > t.ms() => None,
                    _ => m.delivered_ms,
                }
            })
            .collect();
        created.sort_unstable();
        delivered.sort_unstable();
        let steps = MAX_PLOT_POINTS as u64;
        let series = |times: &[u64]| -> Vec<(f64, f64)> {
            (0..=steps)
                .map(|k| {
                    let t = end * k / steps;
                    let count = times.partition_point(|&x| x <= t);
                    (t as f64 / div, count as f64)
                })
                .collect()
        };
        let (c, d) = (series(&created), series(&delivered));
        let ymax = (created.len() as f64).max(1.0) * 1.05;
        let xmax = end as f64 / div;
        let mut svg = String::new();
        draw(
            &mut svg,
            "delivery over time",
            &format!("virtual time ({unit})"),
            "messages",
            (xmax, ymax),
            &[("created", &c, BLUE), ("delivered", &d, RED)],
        )
        .map_err(|message| SimError::Plot {
            what: "delivery.svg",
            message,
        })?;
        Ok(svg)
    }

    /// The share of created messages delivered within each latency.
    fn latency_svg(&self) -> Result<String, SimError> {
        let created = self.messages.len().max(1) as f64;
        let mut lat: Vec<u64> = self
            .messages
            .iter()
            .filter_map(|m| m.latency_ms.filter(|_| m.hops.is_some()))
            .collect();
        lat.sort_unstable();
        let max = lat.last().copied().unwrap_or(1).max(1);
        let (unit, div) = if max < 2_000 {
            ("ms", 1.0)
        } else {
            time_unit(max)
        };
        let n = lat.len();
        // A step function: flat until the next sampled latency, then up to its share.
        let mut pts = vec![(0.0, 0.0)];
        let step = n.div_ceil(MAX_PLOT_POINTS / 2).max(1);
        let mut k = 0;
        while k < n {
            let idx = (k + step - 1).min(n - 1);
            let x = lat[idx] as f64 / div;
            let below = pts.last().map_or(0.0, |p| p.1);
            pts.push((x, below));
            pts.push((x, (idx + 1) as f64 / created));
            k += step;
        }
        let xmax = max as f64 / div * 1.05;
        pts.push((xmax, pts.last().map_or(0.0, |p| p.1)));
        let mut svg = String::new();
        draw(
            &mut svg,
            "latency CDF (share of created messages)",
            &format!("latency ({unit})"),
            "delivered share",
            (xmax, 1.0),
            &[("delivered within", &pts, RED)],
        )
        .map_err(|message| SimError::Plot {
            what: "latency_cdf.svg",
            message,
        })?;
        Ok(svg)
    }
}

fn time_unit(ms: u64) -> (&'static str, f64) {
    if ms >= 2 * 3_600_000 {
        ("h", 3_600_000.0)
    } else if ms >= 2 * 60_000 {
        ("min", 60_000.0)
    } else {
        ("s", 1_000.0)
    }
}

type Series<'s> = (&'s str, &'s [(f64, f64)], RGBColor);

fn draw(
    out: &mut String,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    (xmax, ymax): (f64, f64),
    series: &[Series<'_>],
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::with_string(out, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..xmax.max(f64::MIN_POSITIVE), 0f64..ymax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|x| e(&x))?;
    for &(label, pts, color) in series {
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{nearest_rank, LatencyStats, Summary};

    #[test]
    fn metrics_lists_every_numeric_field_of_the_summary() {
        let s = Summary {
            seed: 1,
            scenario_hash: "h".into(),
            crypto: true,
            routing: "direct".into(),
            devices: 2,
            relays: 3,
            duration_ms: 4,
            node_hours: 5.5,
            created: 6,
            delivered: 7,
            delivery_probability: Some(0.8),
            latency_ms: Some(LatencyStats {
                mean: 9.5,
                median: 10,
                p95: 11,
                max: 12,
            }),
            overhead_ratio: Some(13.5),
            mean_hop_count: Some(1.0),
            duplicates: 14,
            peak_relay_storage_bytes: 15,
            peak_carry_buffer_bytes: Some(34),
            carry_dropped: Some(35),
            carry_expired: Some(36),
            delivered_after_ttl: 16,
            dropped_buffer_full: 17,
            send_errors: 18,
            not_created_device_down: 19,
            acknowledged: 20,
            frames_sent: 21,
            bytes_sent: 22,
            frames_lost: 23,
            requests_failed: 24,
            link_ups: 25,
            contacts_linked: 26,
            restarts: 27,
            peak_outbox_messages: 28,
            peak_engine_peers: 32,
            peak_outputs_per_commit: 33,
            engine_problems: 29,
            timer_spins: 30,
            events: 31,
            notes: vec![],
        };
        let mut numeric = Vec::new();
        let json = serde_json::to_value(&s).unwrap();
        for (k, v) in json.as_object().unwrap() {
            if let Some(o) = v.as_object() {
                for (k2, v2) in o {
                    numeric.push((format!("{k}.{k2}"), v2.as_f64().unwrap()));
                }
            } else if let Some(x) = v.as_f64() {
                if k != "seed" {
                    numeric.push((k.clone(), x));
                }
            }
        }
        let listed: Vec<(String, f64)> = s
            .metrics()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.unwrap()))
            .collect();
        numeric.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sorted = listed.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            sorted, numeric,
            "a new numeric summary field must be added to metrics()"
        );
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(10));
        assert_eq!(nearest_rank(&v, 0.95), Some(19));
        assert_eq!(nearest_rank(&v, 1.0), Some(20));
        assert_eq!(nearest_rank(&[7], 0.95), Some(7));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
