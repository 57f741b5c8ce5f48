//! The order in which the executor walks a schedule, and the rules a schedule must keep about
//! lost members (see [`super::schedule`]).

use std::time::Duration;

use super::schedule::{Fault, ScheduledFault};

/// Injecting or healing one scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Switch the fault on.
    Inject,
    /// Switch it off (for a disk loss: the re-add).
    Heal,
}

/// One step of the executor's walk through a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineEvent {
    /// When, from the start of the run.
    pub at: Duration,
    /// Index of the fault in the schedule.
    pub fault: usize,
    /// What to do to it.
    pub action: Action,
}

/// The schedule as the executor walks it: every injection and heal in time order. At equal
/// times heals come first (a fault ends before the next begins), and among heals the fault
/// injected last is healed first, so a fault inside a disk loss's span is over before the
/// member is re-added.
pub fn timeline(schedule: &[ScheduledFault]) -> Vec<TimelineEvent> {
    let mut events: Vec<TimelineEvent> = schedule
        .iter()
        .enumerate()
        .flat_map(|(fault, f)| {
            [
                TimelineEvent {
                    at: f.start,
                    fault,
                    action: Action::Inject,
                },
                TimelineEvent {
                    at: f.end,
                    fault,
                    action: Action::Heal,
                },
            ]
        })
        .collect();
    events.sort_by(|a, b| {
        let rank = |e: &TimelineEvent| match e.action {
            Action::Heal => (0, usize::MAX - e.fault),
            Action::Inject => (1, e.fault),
        };
        a.at.cmp(&b.at).then_with(|| rank(a).cmp(&rank(b)))
    });
    events
}

/// Every way `schedule` breaks the rules of the module documentation, in words (empty when it
/// keeps them): two lost members at once, a disk loss never re-added, a fault overlapping a
/// fault other than a disk loss's span or sticking out of it, a membership-changing fault
/// while a member is lost, a heal before its injection, anything past `duration`.
pub fn lost_member_violations(schedule: &[ScheduledFault], duration: Duration) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, f) in schedule.iter().enumerate() {
        if f.end <= f.start || f.end > duration {
            bad.push(format!(
                "fault {i} ({}) runs {:?}..{:?}",
                f.fault.describe(),
                f.start,
                f.end
            ));
        }
    }
    let mut lost: Option<usize> = None;
    let mut active: Vec<usize> = Vec::new();
    for e in timeline(schedule) {
        let f = &schedule[e.fault];
        match e.action {
            Action::Inject => {
                if let Some(l) = lost {
                    if !f.fault.kind().may_run_while_a_member_is_lost() {
                        bad.push(format!(
                            "fault {} ({}) starts while fault {l} ({}) has a member lost",
                            e.fault,
                            f.fault.describe(),
                            schedule[l].fault.describe()
                        ));
                    }
                }
                let inside_loss = active.iter().all(|&a| {
                    matches!(schedule[a].fault, Fault::DiskLoss { .. }) && f.end <= schedule[a].end
                });
                if !inside_loss || active.len() > 1 {
                    bad.push(format!(
                        "fault {} ({}) overlaps faults {active:?} other than a disk loss's span",
                        e.fault,
                        f.fault.describe()
                    ));
                }
                if f.fault.loses_member().is_some() {
                    lost = Some(e.fault);
                }
                active.push(e.fault);
            }
            Action::Heal => {
                if !active.contains(&e.fault) {
                    bad.push(format!("fault {} healed before it was injected", e.fault));
                }
                active.retain(|&a| a != e.fault);
                if lost == Some(e.fault) {
                    lost = None;
                }
            }
        }
    }
    if let Some(l) = lost {
        bad.push(format!(
            "fault {l} ({}) is never re-added",
            schedule[l].fault.describe()
        ));
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_catches_each_broken_rule() {
        let d = Duration::from_secs;
        let f = |start, end, fault| ScheduledFault {
            start: d(start),
            end: d(end),
            fault,
        };
        let two_lost = [
            f(1, 10, Fault::DiskLoss { node: 0 }),
            f(2, 4, Fault::DiskLoss { node: 1 }),
        ];
        let member_while_lost = [
            f(1, 10, Fault::DiskLoss { node: 0 }),
            f(2, 4, Fault::Member { node: 1 }),
        ];
        let sticks_out = [
            f(1, 10, Fault::DiskLoss { node: 0 }),
            f(8, 12, Fault::Kill { node: 1 }),
        ];
        let plain_overlap = [
            f(1, 10, Fault::Kill { node: 0 }),
            f(2, 4, Fault::Pause { node: 1 }),
        ];
        let never_readded = [f(1, 100, Fault::DiskLoss { node: 0 })];
        for bad in [
            &two_lost[..],
            &member_while_lost,
            &sticks_out,
            &plain_overlap,
            &never_readded,
        ] {
            assert!(!lost_member_violations(bad, d(60)).is_empty(), "{bad:?}");
        }
        let good = [
            f(1, 10, Fault::DiskLoss { node: 0 }),
            f(4, 6, Fault::Kill { node: 1 }),
            f(7, 10, Fault::Pause { node: 0 }),
            f(10, 12, Fault::Member { node: 2 }),
        ];
        assert_eq!(lost_member_violations(&good, d(60)), Vec::<String>::new());
    }

    #[test]
    fn timeline_heals_the_inner_fault_before_the_re_add() {
        let d = Duration::from_secs;
        let s = [
            ScheduledFault {
                start: d(1),
                end: d(9),
                fault: Fault::DiskLoss { node: 0 },
            },
            ScheduledFault {
                start: d(5),
                end: d(9),
                fault: Fault::Kill { node: 1 },
            },
            ScheduledFault {
                start: d(9),
                end: d(12),
                fault: Fault::Pause { node: 2 },
            },
        ];
        let order: Vec<(usize, Action)> =
            timeline(&s).iter().map(|e| (e.fault, e.action)).collect();
        assert_eq!(
            order,
            [
                (0, Action::Inject),
                (1, Action::Inject),
                (1, Action::Heal),
                (0, Action::Heal),
                (2, Action::Inject),
                (2, Action::Heal),
            ]
        );
    }
}
