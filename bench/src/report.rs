//! What a benchmark run produces: rows of per-repetition figures, each peer row paired with the
//! subring row it is compared to, and the printed table.

use std::fmt::Write as _;

use serde::Serialize;

/// What a row's figures measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Latency per operation in nanoseconds (the median of one repetition); lower is better.
    Ns,
    /// Operations (or entries) per second; higher is better.
    OpsPerSec,
    /// Bytes per second; higher is better.
    BytesPerSec,
}

impl Unit {
    /// Whether a larger figure is better.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Unit::Ns)
    }

    /// A figure in this unit, for people.
    pub fn format(self, v: f64) -> String {
        if !v.is_finite() {
            return "-".into();
        }
        match self {
            Unit::Ns if v >= 10_000.0 => format!("{:.1} us", v / 1e3),
            Unit::Ns => format!("{v:.0} ns"),
            Unit::OpsPerSec if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
            Unit::OpsPerSec => format!("{:.0} K/s", v / 1e3),
            Unit::BytesPerSec => format!("{:.2} GB/s", v / 1e9),
        }
    }
}

/// One measured thing: subring in one configuration, or a peer.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The section it belongs to ("spsc ring", "ipc round trip", ...).
    pub section: String,
    /// What was measured ("subring spin", "pipe", ...).
    pub name: String,
    /// What the figures measure.
    pub unit: Unit,
    /// One figure per repetition (a median latency, or a rate). NaN where a repetition did
    /// not run this row.
    pub values: Vec<f64>,
    /// 99th-percentile latency per repetition (latency rows only).
    pub p99: Vec<f64>,
    /// System calls per operation on the measuring side, where known.
    pub syscalls_per_op: Option<f64>,
    /// For a peer row: the name of the subring row (same section) compared to it.
    pub vs: Option<String>,
    /// The target for the ratio subring/peer, if the project has one (e.g. "<= 1.5").
    pub goal: Option<String>,
    /// The latency distribution of the last repetition: `(quantile, ns)` points.
    pub cdf: Vec<(f64, f64)>,
}

/// A repetition's placement label (see [`crate::peers::probe`]).
#[derive(Clone, Debug, Serialize)]
pub struct RepLabel {
    /// The section.
    pub section: String,
    /// The repetition, from 0.
    pub rep: usize,
    /// Cache-line round trip before and after the repetition, in ns.
    pub probe_ns: (f64, f64),
    /// "near", "far" or "mixed".
    pub label: &'static str,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The machine it ran on.
    pub machine: String,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// Placement labels of every repetition.
    pub reps: Vec<RepLabel>,
    /// The rows, section by section.
    pub rows: Vec<Row>,
    /// Sections that could not run here, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Median of the finite values (the mean of the middle two for an even count; NaN if none).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

impl Row {
    /// The median figure over repetitions.
    pub fn median(&self) -> f64 {
        median(self.values.iter().copied())
    }
}

impl Report {
    /// The row `name` of `section`.
    pub fn row(&self, section: &str, name: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.section == section && r.name == name)
    }

    /// For a peer row: subring's figure divided by the peer's, per repetition (both measured
    /// in that repetition; NaN where either is missing).
    pub fn ratios(&self, peer: &Row) -> Vec<f64> {
        let Some(ours) = peer.vs.as_deref().and_then(|n| self.row(&peer.section, n)) else {
            return Vec::new();
        };
        peer.values
            .iter()
            .zip(&ours.values)
            .map(|(p, o)| o / p)
            .collect()
    }

    /// The table, as printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "machine: {}", self.machine);
        let mut sections: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !sections.contains(&r.section.as_str()) {
                sections.push(&r.section);
            }
        }
        for section in sections {
            let labels: Vec<&str> = self
                .reps
                .iter()
                .filter(|l| l.section == section)
                .map(|l| l.label)
                .collect();
            let _ = writeln!(out, "\n{section}  (repetitions: {})", labels.join(" "));
            let _ = writeln!(
                out,
                "  {:<28} {:>11} {:>11} {:>8}  {:<26} {:>7}  per repetition",
                "", "median", "p99", "sys/op", "vs", "ratio"
            );
            for r in self.rows.iter().filter(|r| r.section == section) {
                let p99 = median(r.p99.iter().copied());
                let sys = r.syscalls_per_op.map_or("-".into(), |s| format!("{s:.2}"));
                let ratios = self.ratios(r);
                let (vs, ratio, per_rep) = match &r.vs {
                    Some(v) if !ratios.is_empty() => (
                        format!("{v} / this"),
                        format!("{:.2}", median(ratios.iter().copied())),
                        ratios
                            .iter()
                            .map(|x| format!("{x:.2}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                            + &r.goal
                                .as_ref()
                                .map_or(String::new(), |g| format!("  [goal {g}]")),
                    ),
                    _ => (String::new(), String::new(), String::new()),
                };
                let _ = writeln!(
                    out,
                    "  {:<28} {:>11} {:>11} {:>8}  {:<26} {:>7}  {}",
                    r.name,
                    r.unit.format(r.median()),
                    r.unit.format(p99),
                    sys,
                    vs,
                    ratio,
                    per_rep
                );
            }
        }
        for (section, why) in &self.skipped {
            let _ = writeln!(out, "\n{section}: not run ({why})");
        }
        let _ = writeln!(
            out,
            "\nratio = subring / peer within each repetition: below 1 is better for latencies (ns), \
             above 1 for rates.\nrepetitions are labelled near/far/mixed by a cache-line ping-pong \
             probe run before and after each one."
        );
        out
    }
}

/// Collects one section's figures repetition by repetition, in the order rows first appear.
#[derive(Debug)]
pub struct Section {
    name: String,
    reps: usize,
    rows: Vec<Row>,
    labels: Vec<RepLabel>,
    syscalls: Vec<(String, Vec<f64>)>,
}

impl Section {
    /// A section of `reps` repetitions.
    pub fn new(name: &str, reps: usize) -> Self {
        Section {
            name: name.into(),
            reps,
            rows: Vec::new(),
            labels: Vec::new(),
            syscalls: Vec::new(),
        }
    }

    fn row_mut(&mut self, name: &str, unit: Unit) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.name == name) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            section: self.name.clone(),
            name: name.into(),
            unit,
            values: vec![f64::NAN; self.reps],
            p99: Vec::new(),
            syscalls_per_op: None,
            vs: None,
            goal: None,
            cdf: Vec::new(),
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// Records a rate (`unit` per second) of row `name` in repetition `rep`.
    pub fn rate(&mut self, rep: usize, name: &str, unit: Unit, value: f64) {
        self.row_mut(name, unit).values[rep] = value;
    }

    /// Records the latency samples of row `name` in repetition `rep`.
    pub fn latency(&mut self, rep: usize, name: &str, latency: &crate::peers::Latency) {
        let reps = self.reps;
        let row = self.row_mut(name, Unit::Ns);
        row.values[rep] = latency.p50();
        if row.p99.is_empty() {
            row.p99 = vec![f64::NAN; reps];
        }
        row.p99[rep] = latency.p99();
        row.cdf = latency.cdf(64);
    }

    /// Records system calls per operation of row `name` in one repetition (the row shows
    /// the median). NaN means not counted: the row shows "-".
    pub fn syscalls(&mut self, name: &str, per_op: f64) {
        if per_op.is_nan() {
            return;
        }
        match self.syscalls.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(per_op),
            None => self.syscalls.push((name.into(), vec![per_op])),
        }
    }

    /// Declares that peer row `peer` is compared with subring row `ours`, with an optional goal
    /// for the ratio ours/peer.
    pub fn compare(&mut self, peer: &str, ours: &str, goal: Option<&str>) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.name == peer) {
            r.vs = Some(ours.into());
            r.goal = goal.map(Into::into);
        }
    }

    /// Adds the latency row `name` whose figure in each repetition is the lower of rows `a`
    /// and `b` (the best a user could pick).
    pub fn best_of(&mut self, name: &str, a: &str, b: &str) {
        let pick = |n: &str| {
            self.rows
                .iter()
                .find(|r| r.name == n)
                .map(|r| r.values.clone())
        };
        let (Some(va), Some(vb)) = (pick(a), pick(b)) else {
            return;
        };
        let best: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| x.min(*y)).collect();
        self.row_mut(name, Unit::Ns).values = best;
    }

    /// Puts the rows named in `names` first, in that order.
    pub fn order(&mut self, names: &[&str]) {
        self.rows.sort_by_key(|r| {
            names
                .iter()
                .position(|n| *n == r.name)
                .unwrap_or(names.len())
        });
    }

    /// Labels repetition `rep` from the probe run before and after it.
    pub fn label(&mut self, rep: usize, before: f64, after: f64) {
        self.labels.push(RepLabel {
            section: self.name.clone(),
            rep,
            probe_ns: (before, after),
            label: crate::peers::label(before, after),
        });
    }

    /// Moves the section's rows and labels into `report`.
    pub fn finish(mut self, report: &mut Report) {
        for (name, v) in std::mem::take(&mut self.syscalls) {
            if let Some(r) = self.rows.iter_mut().find(|r| r.name == name) {
                r.syscalls_per_op = Some(median(v));
            }
        }
        report.rows.extend(self.rows);
        report.reps.extend(self.labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_missing() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median([f64::NAN, 5.0]), 5.0);
        assert!(median([f64::NAN]).is_nan());
    }

    #[test]
    fn ratios_pair_each_peer_with_subring_in_the_same_repetition() {
        let mut s = Section::new("s", 3);
        for (rep, (ours, peer)) in [(10.0, 20.0), (30.0, 15.0), (8.0, 8.0)].iter().enumerate() {
            s.rate(rep, "subring", Unit::OpsPerSec, *ours);
            s.rate(rep, "peer", Unit::OpsPerSec, *peer);
        }
        s.compare("peer", "subring", Some(">= 1"));
        s.best_of("best", "subring", "peer");
        let mut report = Report::default();
        s.finish(&mut report);
        let peer = report.row("s", "peer").expect("peer row");
        assert_eq!(report.ratios(peer), vec![0.5, 2.0, 1.0]);
        assert_eq!(
            report.row("s", "best").expect("best row").values,
            vec![10.0, 15.0, 8.0]
        );
        // Rows without a comparison have no ratios; the table names the goal.
        assert!(report
            .ratios(report.row("s", "subring").expect("row"))
            .is_empty());
        assert!(report.table().contains("[goal >= 1]"));
    }
}
