//! From runs to the report: each run's record, the row check, the median and range over rounds,
//! the ratios to orderflow and the targets.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::harness::PhaseSummary;
use crate::reference::Pgbench;
use crate::system::Workload;

/// The events a system's tables hold after a run against those its operations said they stored.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct RowCheck {
    /// Seeded before the run plus what every operation (warm-up included) said it stored.
    pub(crate) expected: u64,
    /// `count(*)` of the system's event table(s) after the run.
    pub(crate) stored: i64,
    pub(crate) ok: bool,
}

impl RowCheck {
    pub(crate) fn new(expected: u64, stored: i64) -> Self {
        RowCheck {
            expected,
            stored,
            ok: u64::try_from(stored).is_ok_and(|s| s == expected),
        }
    }
}

/// A catch-up run as reported.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CatchUpFigures {
    pub(crate) seeded: u64,
    /// How the events were seeded.
    pub(crate) seeded_by: &'static str,
    pub(crate) seed_seconds: f64,
    pub(crate) read: u64,
    pub(crate) read_seconds: f64,
    pub(crate) events_per_sec: f64,
    /// How they were read.
    pub(crate) read_by: &'static str,
}

/// One run: one workload, one system, one writer count, one round.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) round: usize,
    pub(crate) workload: Workload,
    pub(crate) system: String,
    pub(crate) writers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) measured: Option<PhaseSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) warm_up_ops: Option<u64>,
    /// Events one successful operation stores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) events_per_op: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) row_check: Option<RowCheck>,
    /// Average stored size of the run's event payloads (bytes, as the system stores them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) avg_payload_bytes: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) catch_up: Option<CatchUpFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pgbench: Option<Pgbench>,
    /// Why the run has no figure (it failed, or its rows did not match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

impl Run {
    pub(crate) fn new(round: usize, workload: Workload, system: &str, writers: usize) -> Self {
        Run {
            round,
            workload,
            system: system.to_owned(),
            writers,
            measured: None,
            warm_up_ops: None,
            events_per_op: None,
            row_check: None,
            avg_payload_bytes: None,
            catch_up: None,
            pgbench: None,
            failed: None,
            note: None,
        }
    }

    /// The run's headline figure (operations, events or transactions per second), if it counts:
    /// not a failed run, not one whose rows did not match.
    pub(crate) fn figure(&self) -> Option<f64> {
        if self.failed.is_some() || self.row_check.is_some_and(|c| !c.ok) {
            return None;
        }
        if let Some(c) = &self.catch_up {
            return Some(c.events_per_sec);
        }
        if let Some(p) = &self.pgbench {
            return Some(p.transactions_per_sec);
        }
        self.measured.as_ref().map(|m| m.ops_per_sec)
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The smallest and largest of `values`.
pub(crate) fn range(values: &[f64]) -> Option<[f64; 2]> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some([min, max])
}

/// `ours / theirs`, when both are there and theirs is not zero.
pub(crate) fn ratio(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// One (workload, writers, system) over its rounds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) workload: Workload,
    pub(crate) writers: usize,
    pub(crate) system: String,
    /// What the figure counts: `ops_per_sec` (operations as the workload defines them),
    /// `events_per_sec` (catch-up) or `transactions_per_sec` (pgbench).
    pub(crate) unit: &'static str,
    pub(crate) rounds: usize,
    /// Rounds whose figure counts (not failed, rows matched).
    pub(crate) rounds_counted: usize,
    pub(crate) median: Option<f64>,
    pub(crate) range: Option<[f64; 2]>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) p50_ms_range: Option<[f64; 2]>,
    pub(crate) p99_ms_range: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) conflicts_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retries_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failed_per_sec: Option<f64>,
    /// For lifecycle: commands per second (three per operation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) commands_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) events_per_op: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) avg_payload_bytes: Option<f64>,
}

pub(crate) fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut groups: BTreeMap<(Workload, usize, String), Vec<&Run>> = BTreeMap::new();
    for run in runs {
        groups
            .entry((run.workload, run.writers, run.system.clone()))
            .or_default()
            .push(run);
    }
    groups
        .into_iter()
        .map(|((workload, writers, system), runs)| {
            let counted: Vec<&Run> = runs.iter().copied().filter(|r| r.figure().is_some()).collect();
            let figures: Vec<f64> = counted.iter().filter_map(|r| r.figure()).collect();
            let of = |f: &dyn Fn(&PhaseSummary) -> Option<f64>| -> Vec<f64> {
                counted.iter().filter_map(|r| r.measured.as_ref().and_then(f)).collect()
            };
            let p50 = of(&|m| m.p50_ms);
            let p99 = of(&|m| m.p99_ms);
            let contention = workload == Workload::Contention;
            let unit = if workload == Workload::CatchUp {
                "events_per_sec"
            } else if system == "pgbench" {
                "transactions_per_sec"
            } else {
                "ops_per_sec"
            };
            let med = median(&figures);
            Summary {
                workload,
                writers,
                unit,
                rounds: runs.len(),
                rounds_counted: counted.len(),
                median: med,
                range: range(&figures),
                p50_ms: median(&p50),
                p99_ms: median(&p99),
                p50_ms_range: range(&p50),
                p99_ms_range: range(&p99),
                conflicts_per_sec: if contention || !of(&|m| Some(m.conflicts_per_sec)).iter().all(|c| *c == 0.0) {
                    median(&of(&|m| Some(m.conflicts_per_sec)))
                } else {
                    None
                },
                retries_per_sec: if contention || !of(&|m| Some(m.retries_per_sec)).iter().all(|c| *c == 0.0) {
                    median(&of(&|m| Some(m.retries_per_sec)))
                } else {
                    None
                },
                failed_per_sec: median(&of(&|m| Some(m.failed as f64 / m.seconds.max(f64::MIN_POSITIVE))))
                    .filter(|f| *f > 0.0),
                commands_per_sec: (workload == Workload::Lifecycle)
                    .then(|| med.map(|m| 3.0 * m))
                    .flatten(),
                events_per_op: runs.iter().find_map(|r| r.events_per_op),
                avg_payload_bytes: median(&counted.iter().filter_map(|r| r.avg_payload_bytes).collect::<Vec<_>>()),
                system,
            }
        })
        .collect()
}

/// orderflow over one peer, on one workload at one writer count.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ratio {
    pub(crate) workload: Workload,
    pub(crate) writers: usize,
    pub(crate) peer: String,
    /// orderflow's median / the peer's median.
    pub(crate) orderflow_over_peer: Option<f64>,
    /// The same over the rounds' extremes: orderflow's worst over the peer's best, and
    /// orderflow's best over the peer's worst.
    pub(crate) range: Option<[f64; 2]>,
}

pub(crate) fn ratios(summaries: &[Summary], peers: &[&str]) -> Vec<Ratio> {
    let find = |w: Workload, n: usize, s: &str| {
        summaries
            .iter()
            .find(|x| x.workload == w && x.writers == n && x.system == s)
    };
    let mut out = Vec::new();
    for ours in summaries.iter().filter(|s| s.system == "orderflow") {
        for peer in peers {
            let Some(theirs) = find(ours.workload, ours.writers, peer) else {
                continue;
            };
            let range = match (ours.range, theirs.range) {
                (Some([a_min, a_max]), Some([b_min, b_max])) if b_min > 0.0 && b_max > 0.0 => {
                    Some([a_min / b_max, a_max / b_min])
                }
                _ => None,
            };
            out.push(Ratio {
                workload: ours.workload,
                writers: ours.writers,
                peer: (*peer).to_owned(),
                orderflow_over_peer: ratio(ours.median, theirs.median),
                range,
            });
        }
    }
    out
}

/// A target of the issue, checked (for the report: nothing fails on it).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    pub(crate) target: String,
    pub(crate) wanted: f64,
    pub(crate) measured: Option<f64>,
    /// The figure it was compared against.
    pub(crate) against: Option<String>,
    pub(crate) met: Option<bool>,
}

impl Target {
    pub(crate) fn new(target: String, wanted: f64, measured: Option<f64>, against: Option<String>) -> Self {
        Target {
            target,
            wanted,
            met: measured.map(|m| m >= wanted),
            measured,
            against,
        }
    }
}

/// orderflow's median over the best peer's median on `workload` at `writers`.
pub(crate) fn over_best_peer(
    summaries: &[Summary],
    workload: Workload,
    writers: usize,
    peers: &[&str],
) -> (Option<f64>, Option<String>) {
    let median_of = |s: &str| {
        summaries
            .iter()
            .find(|x| x.workload == workload && x.writers == writers && x.system == s)
            .and_then(|x| x.median)
    };
    let best = peers
        .iter()
        .filter_map(|p| median_of(p).map(|m| (*p, m)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match best {
        Some((peer, m)) => (ratio(median_of("orderflow"), Some(m)), Some(peer.to_owned())),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
        assert_eq!(range(&[5.0, 1.0, 3.0]), Some([1.0, 5.0]));
        assert_eq!(range(&[]), None);
    }

    #[test]
    fn ratio_needs_both_and_a_positive_divisor() {
        assert_eq!(ratio(Some(10.0), Some(2.0)), Some(5.0));
        assert_eq!(ratio(Some(10.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn the_row_check_matches_exactly() {
        assert!(RowCheck::new(10, 10).ok);
        assert!(!RowCheck::new(10, 9).ok);
        assert!(!RowCheck::new(10, 11).ok);
        assert!(!RowCheck::new(0, -1).ok);
    }

    fn run(system: &str, round: usize, ops_per_sec: f64, stored_ok: bool) -> Run {
        let mut r = Run::new(round, Workload::Place, system, 64);
        r.measured = Some(PhaseSummary {
            seconds: 10.0,
            ops: (ops_per_sec * 10.0) as u64,
            failed: 0,
            ops_per_sec,
            p50_ms: Some(1.0),
            p99_ms: Some(2.0),
            max_ms: Some(3.0),
            conflicts: 0,
            retries: 0,
            conflicts_per_sec: 0.0,
            retries_per_sec: 0.0,
            events: 0,
            errors: vec![],
        });
        r.row_check = Some(RowCheck::new(1, if stored_ok { 1 } else { 0 }));
        r
    }

    #[test]
    fn a_run_whose_rows_do_not_match_is_not_credited() {
        let runs = vec![
            run("orderflow", 1, 900.0, true),
            run("orderflow", 2, 1000.0, true),
            run("orderflow", 3, 99_999.0, false),
            run("esrs", 1, 100.0, true),
            run("esrs", 2, 300.0, true),
            run("esrs", 3, 200.0, true),
        ];
        let summaries = summarize(&runs);
        let ours = summaries.iter().find(|s| s.system == "orderflow").unwrap();
        assert_eq!(ours.rounds, 3);
        assert_eq!(ours.rounds_counted, 2);
        assert_eq!(ours.median, Some(950.0));
        assert_eq!(ours.range, Some([900.0, 1000.0]));
        let r = ratios(&summaries, &["esrs"]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].orderflow_over_peer, Some(950.0 / 200.0));
        assert_eq!(r[0].range, Some([3.0, 10.0]));
        let (best, peer) = over_best_peer(&summaries, Workload::Place, 64, &["esrs", "cqrs-es"]);
        assert_eq!(best, Some(4.75));
        assert_eq!(peer.as_deref(), Some("esrs"));
    }

    #[test]
    fn targets_say_whether_they_are_met() {
        assert_eq!(Target::new("x".into(), 3.0, Some(3.5), None).met, Some(true));
        assert_eq!(Target::new("x".into(), 3.0, Some(2.5), None).met, Some(false));
        assert_eq!(Target::new("x".into(), 3.0, None, None).met, None);
    }
}
