//! Coordinates as users type them, and distances and bearings between two points (for
//! `nearby`). Pure functions on a spherical Earth: good to a few tenths of a percent, which is
//! what "2.4 km north-east" needs.

use instaconnect_wire::proto::Location;

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeoError {
    #[error("not a location: {0:?} (expected LAT,LON in decimal degrees, e.g. 52.52,13.405)")]
    Syntax(String),
    #[error("latitude {0} is off the globe (it must be between -90 and 90)")]
    Latitude(String),
    #[error("longitude {0} is off the globe (it must be between -180 and 180)")]
    Longitude(String),
}

/// Reads `LAT,LON` in decimal degrees (spaces allowed around each number), e.g.
/// `52.52,13.405` or `-33.8568, 151.2153`, into a one-off [`Location`].
pub fn parse_lat_lon(s: &str) -> Result<Location, GeoError> {
    let syntax = || GeoError::Syntax(s.to_string());
    let (lat, lon) = s.split_once(',').ok_or_else(syntax)?;
    let (lat, lon) = (lat.trim(), lon.trim());
    let number = |t: &str| {
        t.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(syntax)
    };
    let (la, lo) = (number(lat)?, number(lon)?);
    if !(-90.0..=90.0).contains(&la) {
        return Err(GeoError::Latitude(lat.to_string()));
    }
    if !(-180.0..=180.0).contains(&lo) {
        return Err(GeoError::Longitude(lon.to_string()));
    }
    Ok(Location {
        lat_e7: (la * 1e7).round() as i32,
        lon_e7: (lo * 1e7).round() as i32,
        accuracy_m: None,
        live_until_ms: None,
    })
}

/// Latitude and longitude in degrees.
pub fn degrees(l: &Location) -> (f64, f64) {
    (l.lat_e7 as f64 / 1e7, l.lon_e7 as f64 / 1e7)
}

/// `52.52000, 13.40500`: five decimals, about a metre.
pub fn format_lat_lon(l: &Location) -> String {
    let (lat, lon) = degrees(l);
    format!("{lat:.5}, {lon:.5}")
}

/// Great-circle distance in metres (haversine).
pub fn distance_m(a: &Location, b: &Location) -> f64 {
    let (la1, lo1) = degrees(a);
    let (la2, lo2) = degrees(b);
    let (p1, p2) = (la1.to_radians(), la2.to_radians());
    let dp = (la2 - la1).to_radians();
    let dl = (lo2 - lo1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Initial bearing from `a` towards `b`, degrees clockwise from north in `[0, 360)`.
pub fn bearing_deg(a: &Location, b: &Location) -> f64 {
    let (la1, lo1) = degrees(a);
    let (la2, lo2) = degrees(b);
    let (p1, p2) = (la1.to_radians(), la2.to_radians());
    let dl = (lo2 - lo1).to_radians();
    let y = dl.sin() * p2.cos();
    let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * dl.cos();
    let d = y.atan2(x).to_degrees().rem_euclid(360.0);
    if d >= 360.0 {
        0.0
    } else {
        d
    }
}

/// The nearest of the 8 compass points: N, NE, E, SE, S, SW, W, NW.
pub fn compass_point(bearing: f64) -> &'static str {
    const POINTS: [&str; 8] = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"];
    let i = ((bearing.rem_euclid(360.0) + 22.5) / 45.0) as usize % 8;
    POINTS[i]
}

/// `850 m` below a kilometre, `12.3 km` below 100 km, else `878 km`.
pub fn format_distance(m: f64) -> String {
    if m < 1000.0 {
        format!("{} m", m.round() as u64)
    } else if m < 100_000.0 {
        format!("{:.1} km", m / 1000.0)
    } else {
        format!("{} km", (m / 1000.0).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, lon: f64) -> Location {
        parse_lat_lon(&format!("{lat},{lon}")).unwrap()
    }

    #[test]
    fn berlin_to_paris() {
        let berlin = at(52.5200, 13.4050);
        let paris = at(48.8566, 2.3522);
        // About 878 km as usually quoted; 877.5 km on the mean-radius sphere.
        let d = distance_m(&berlin, &paris);
        assert!((d - 877_500.0).abs() < 1_000.0, "{d}");
        // Paris lies west-south-west of Berlin.
        let b = bearing_deg(&berlin, &paris);
        assert!((b - 246.0).abs() < 1.0, "{b}");
        assert_eq!(compass_point(b), "SW");
        assert_eq!(format_distance(d), "877 km");
        // The way back starts north-east.
        let back = bearing_deg(&paris, &berlin);
        assert!((back - 57.7).abs() < 1.0, "{back}");
        assert_eq!(compass_point(back), "NE");
    }

    #[test]
    fn known_distances_and_bearings() {
        // One degree of latitude along a meridian: 111.2 km due north.
        let d = distance_m(&at(0.0, 0.0), &at(1.0, 0.0));
        assert!((d - 111_195.0).abs() < 5.0, "{d}");
        assert_eq!(bearing_deg(&at(0.0, 0.0), &at(1.0, 0.0)), 0.0);
        // Due east along the equator, due south, due west.
        assert!((bearing_deg(&at(0.0, 0.0), &at(0.0, 1.0)) - 90.0).abs() < 1e-9);
        assert!((bearing_deg(&at(1.0, 0.0), &at(0.0, 0.0)) - 180.0).abs() < 1e-9);
        assert!((bearing_deg(&at(0.0, 1.0), &at(0.0, 0.0)) - 270.0).abs() < 1e-9);
        // London to New York: about 5,570 km, setting out west-north-west.
        let (london, ny) = (at(51.5074, -0.1278), at(40.7128, -74.0060));
        let d = distance_m(&london, &ny);
        assert!((d - 5_570_000.0).abs() < 10_000.0, "{d}");
        let b = bearing_deg(&london, &ny);
        assert!((b - 288.3).abs() < 1.0, "{b}");
        // Antipodes: half the circumference, and nothing breaks.
        let d = distance_m(&at(0.0, 0.0), &at(0.0, 180.0));
        assert!((d - std::f64::consts::PI * EARTH_RADIUS_M).abs() < 1.0);
        // The same place.
        assert_eq!(distance_m(&london, &london), 0.0);
        assert_eq!(format_distance(0.0), "0 m");
        assert_eq!(format_distance(850.4), "850 m");
        assert_eq!(format_distance(12_345.0), "12.3 km");
    }

    #[test]
    fn compass_points_split_the_circle() {
        for (deg, p) in [
            (0.0, "N"),
            (22.4, "N"),
            (22.6, "NE"),
            (90.0, "E"),
            (135.0, "SE"),
            (180.0, "S"),
            (225.0, "SW"),
            (270.0, "W"),
            (315.0, "NW"),
            (337.6, "N"),
            (359.9, "N"),
        ] {
            assert_eq!(compass_point(deg), p, "{deg}");
        }
    }

    #[test]
    fn coordinates_are_read_and_checked() {
        let l = parse_lat_lon(" 52.52 , 13.405 ").unwrap();
        assert_eq!((l.lat_e7, l.lon_e7), (525_200_000, 134_050_000));
        assert_eq!(format_lat_lon(&l), "52.52000, 13.40500");
        let l = parse_lat_lon("-90,180").unwrap();
        assert!(l.is_valid());
        assert!(parse_lat_lon("-33.8568,151.2153").unwrap().is_valid());
        assert!(matches!(
            parse_lat_lon("90.0001,0"),
            Err(GeoError::Latitude(_))
        ));
        assert!(matches!(
            parse_lat_lon("0,-180.5"),
            Err(GeoError::Longitude(_))
        ));
        for bad in ["", "52.52", "52.52;13.4", "a,b", "NaN,1", "inf,1", "1,2,3"] {
            assert!(
                matches!(parse_lat_lon(bad), Err(GeoError::Syntax(_))),
                "{bad:?}"
            );
        }
    }
}
