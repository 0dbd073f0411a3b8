//! Position-based mobility: who is within radio range of whom, found through a uniform grid so
//! that a step costs O(devices) rather than O(devices²).

use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// Every pair (i, j), i < j, whose distance is at most `range`, sorted.
///
/// Cells are at least `range` wide (so neighbours are in the 3x3 block around a device's cell)
/// and at most about 4 per device (so sparse, wide areas cost no more memory than dense ones).
pub fn pairs_in_range(pos: &[[f64; 2]], area: [f64; 2], range: f64) -> Vec<(u32, u32)> {
    let n = pos.len();
    let mut out = Vec::new();
    if n < 2 || range.is_nan() || range <= 0.0 {
        return out;
    }
    let (w, h) = (
        area[0].max(f64::MIN_POSITIVE),
        area[1].max(f64::MIN_POSITIVE),
    );
    let cell = range.max((w * h / (4.0 * n as f64)).sqrt());
    let cols = ((w / cell).ceil() as usize).max(1);
    let rows = ((h / cell).ceil() as usize).max(1);
    let cell_of = |p: &[f64; 2]| -> (usize, usize) {
        let cx = ((p[0] / cell).floor().max(0.0) as usize).min(cols - 1);
        let cy = ((p[1] / cell).floor().max(0.0) as usize).min(rows - 1);
        (cx, cy)
    };
    // Counting sort of devices by cell.
    let mut start = vec![0u32; cols * rows + 1];
    for p in pos {
        let (cx, cy) = cell_of(p);
        start[cy * cols + cx + 1] += 1;
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    let mut fill = start.clone();
    let mut order = vec![0u32; n];
    for (i, p) in pos.iter().enumerate() {
        let (cx, cy) = cell_of(p);
        let c = cy * cols + cx;
        order[fill[c] as usize] = i as u32;
        fill[c] += 1;
    }
    let r2 = range * range;
    for (i, p) in pos.iter().enumerate() {
        let (cx, cy) = cell_of(p);
        for ny in cy.saturating_sub(1)..=(cy + 1).min(rows - 1) {
            for nx in cx.saturating_sub(1)..=(cx + 1).min(cols - 1) {
                let c = ny * cols + nx;
                for &j in &order[start[c] as usize..start[c + 1] as usize] {
                    if (j as usize) <= i {
                        continue;
                    }
                    let q = &pos[j as usize];
                    let (dx, dy) = (p[0] - q[0], p[1] - q[1]);
                    if dx * dx + dy * dy <= r2 {
                        out.push((i as u32, j));
                    }
                }
            }
        }
    }
    out.sort_unstable();
    out
}

/// `n` positions on a near-square grid filling `area`, row by row, each at its cell's centre.
pub fn grid_positions(n: u32, area: [f64; 2]) -> Vec<[f64; 2]> {
    let n = n as usize;
    if n == 0 {
        return Vec::new();
    }
    let cols = ((n as f64 * area[0] / area[1]).sqrt().ceil() as usize).clamp(1, n);
    let rows = n.div_ceil(cols);
    let (dx, dy) = (area[0] / cols as f64, area[1] / rows as f64);
    (0..n)
        .map(|i| {
            let (c, r) = (i % cols, i / cols);
            [(c as f64 + 0.5) * dx, (r as f64 + 0.5) * dy]
        })
        .collect()
}

/// One device walking the random waypoint model.
#[derive(Clone, Debug)]
struct Walker {
    target: [f64; 2],
    /// Metres per second on the current leg.
    speed: f64,
    /// Paused (at a waypoint) until this time.
    pause_until_ms: u64,
}

/// Random waypoint: walk at a uniform speed to a uniform point, pause, repeat. Devices start at
/// uniform positions, walking (no warm-up: the classic model's speed decay applies).
pub struct RandomWaypoint {
    pub pos: Vec<[f64; 2]>,
    walkers: Vec<Walker>,
    area: [f64; 2],
    speed: [f64; 2],
    pause_ms: [u64; 2],
}

impl RandomWaypoint {
    pub fn new(
        n: u32,
        area: [f64; 2],
        speed: [f64; 2],
        pause_ms: [u64; 2],
        rng: &mut ChaCha20Rng,
    ) -> Self {
        let mut pos = Vec::with_capacity(n as usize);
        let mut walkers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            pos.push(uniform_point(area, rng));
            walkers.push(Walker {
                target: uniform_point(area, rng),
                speed: uniform(speed, rng),
                pause_until_ms: 0,
            });
        }
        RandomWaypoint {
            pos,
            walkers,
            area,
            speed,
            pause_ms,
        }
    }

    /// Advances every device by `dt_ms` ending at `now_ms`.
    pub fn step(&mut self, now_ms: u64, dt_ms: u64, rng: &mut ChaCha20Rng) {
        let start = now_ms.saturating_sub(dt_ms);
        for (p, w) in self.pos.iter_mut().zip(self.walkers.iter_mut()) {
            if w.pause_until_ms >= now_ms {
                continue;
            }
            // Walk only the part of the step after the pause ended.
            let walk_ms = now_ms - w.pause_until_ms.max(start);
            let mut budget = w.speed * walk_ms as f64 / 1000.0;
            let (dx, dy) = (w.target[0] - p[0], w.target[1] - p[1]);
            let dist = (dx * dx + dy * dy).sqrt();
            if dist <= budget {
                *p = w.target;
                budget -= dist;
                let arrived = now_ms - (budget / w.speed * 1000.0) as u64;
                let pause = if self.pause_ms[1] > self.pause_ms[0] {
                    rng.gen_range(self.pause_ms[0]..=self.pause_ms[1])
                } else {
                    self.pause_ms[0]
                };
                w.pause_until_ms = arrived + pause;
                w.target = uniform_point(self.area, rng);
                w.speed = uniform(self.speed, rng);
            } else {
                p[0] += dx / dist * budget;
                p[1] += dy / dist * budget;
            }
        }
    }
}

fn uniform(range: [f64; 2], rng: &mut ChaCha20Rng) -> f64 {
    if range[1] > range[0] {
        rng.gen_range(range[0]..range[1])
    } else {
        range[0]
    }
}

fn uniform_point(area: [f64; 2], rng: &mut ChaCha20Rng) -> [f64; 2] {
    [rng.gen_range(0.0..area[0]), rng.gen_range(0.0..area[1])]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn brute(pos: &[[f64; 2]], range: f64) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        for i in 0..pos.len() {
            for j in i + 1..pos.len() {
                let (dx, dy) = (pos[i][0] - pos[j][0], pos[i][1] - pos[j][1]);
                if dx * dx + dy * dy <= range * range {
                    v.push((i as u32, j as u32));
                }
            }
        }
        v
    }

    #[test]
    fn the_grid_finds_exactly_the_pairs_in_range() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for (n, area, range) in [
            (300, [500.0, 200.0], 30.0),
            (50, [10.0, 10.0], 100.0),
            (200, [10_000.0, 10_000.0], 5.0),
            (100, [100.0, 100.0], 0.0),
        ] {
            let pos: Vec<[f64; 2]> = (0..n).map(|_| uniform_point(area, &mut rng)).collect();
            assert_eq!(pairs_in_range(&pos, area, range), brute(&pos, range));
        }
    }

    #[test]
    fn a_static_grid_fills_its_area() {
        let p = grid_positions(50, [10.0, 10.0]);
        assert_eq!(p.len(), 50);
        assert!(p
            .iter()
            .all(|q| q[0] > 0.0 && q[0] < 10.0 && q[1] > 0.0 && q[1] < 10.0));
    }

    #[test]
    fn walkers_stay_in_the_area_and_move_at_most_their_speed() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut m = RandomWaypoint::new(100, [50.0, 80.0], [1.0, 2.0], [0, 5_000], &mut rng);
        for t in 1..=600u64 {
            let before = m.pos.clone();
            m.step(t * 1000, 1000, &mut rng);
            for (a, b) in before.iter().zip(&m.pos) {
                let d = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
                assert!(d <= 2.0 + 1e-9, "moved {d} m in 1 s");
                assert!(b[0] >= 0.0 && b[0] <= 50.0 && b[1] >= 0.0 && b[1] <= 80.0);
            }
        }
    }
}
