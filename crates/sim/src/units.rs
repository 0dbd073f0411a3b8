//! Quantities with units in scenario files: durations ("250ms", "30s", "5m", "2h", "1d") and
//! bandwidths ("9600bps", "500kbps", "10Mbps", "1Gbps"). Parsing never panics; a bad value is a
//! serde error, so the scenario loader reports it with its key path.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration a scenario may name anywhere (about 10 years), so sums never overflow.
pub const MAX_DURATION_MS: u64 = 10 * 366 * 24 * 3_600_000;

/// A span of virtual time in milliseconds. Written in scenarios as a number with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub fn ms(self) -> u64 {
        self.0
    }

    pub fn secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

/// Parses "1.5h", "30s", "250ms", "2d", "5m" (or "5min").
pub fn parse_duration(s: &str) -> Result<Millis, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_ms: f64 = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => {
            return Err(format!(
            "expected a duration such as \"250ms\", \"30s\", \"5m\", \"2h\" or \"1d\", found {s:?}"
        ))
        }
    };
    let value: f64 = num.parse().map_err(|_| {
        format!(
            "expected a duration such as \"250ms\", \"30s\", \"5m\", \"2h\" or \"1d\", found {s:?}"
        )
    })?;
    let ms = (value * unit_ms).round();
    if !ms.is_finite() || ms < 0.0 || ms > MAX_DURATION_MS as f64 {
        return Err(format!(
            "duration {s:?} is out of range (at most {} days)",
            MAX_DURATION_MS / 86_400_000
        ));
    }
    Ok(Millis(ms as u64))
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration string such as \"250ms\", \"30s\", \"5m\", \"2h\" or \"1d\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                parse_duration(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A link bandwidth in bits per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

/// The fastest link a scenario may describe (1 Tbit/s), so transmission times stay integers.
pub const MAX_BANDWIDTH_BPS: u64 = 1_000_000_000_000;

/// Parses "9600bps", "500kbps", "10Mbps", "1.5Gbps".
pub fn parse_bandwidth(s: &str) -> Result<Bandwidth, String> {
    let t = s.trim();
    let bad = || {
        format!("expected a bandwidth such as \"500kbps\", \"10Mbps\" or \"1Gbps\", found {s:?}")
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim() {
        "bps" => 1.0,
        "kbps" => 1e3,
        "Mbps" => 1e6,
        "Gbps" => 1e9,
        _ => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bps = (value * mult).round();
    if !bps.is_finite() || bps < 1.0 || bps > MAX_BANDWIDTH_BPS as f64 {
        return Err(format!(
            "bandwidth {s:?} is out of range (1bps to {}Gbps)",
            MAX_BANDWIDTH_BPS / 1_000_000_000
        ));
    }
    Ok(Bandwidth(bps as u64))
}

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bandwidth;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a bandwidth string such as \"500kbps\", \"10Mbps\" or \"1Gbps\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bandwidth, E> {
                parse_bandwidth(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("250ms"), Ok(Millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Millis(30_000)));
        assert_eq!(parse_duration("1.5h"), Ok(Millis(5_400_000)));
        assert_eq!(parse_duration("5min"), Ok(Millis(300_000)));
        assert_eq!(parse_duration("2d"), Ok(Millis(172_800_000)));
        for bad in [
            "",
            "s",
            "10",
            "10 parsecs",
            "-1s",
            "1e400s",
            "..s",
            "99999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bandwidths_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_bandwidth("10Mbps"), Ok(Bandwidth(10_000_000)));
        assert_eq!(parse_bandwidth("500kbps"), Ok(Bandwidth(500_000)));
        assert_eq!(parse_bandwidth("9600bps"), Ok(Bandwidth(9_600)));
        for bad in ["", "10", "0bps", "10MBps", "fast", "5000Gbps"] {
            assert!(parse_bandwidth(bad).is_err(), "{bad}");
        }
    }
}
