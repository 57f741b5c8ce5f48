//! `report.html`: a self-contained page (HTML + inline SVG, no scripts, no external assets) that
//! shows a run as a timeline, so a reader can see what each client did while each fault was on.
//!
//! One horizontal lane per process; each operation is a bar from invocation to completion,
//! coloured by outcome (ok green, fail grey, indeterminate orange running to the end of the
//! run). Fault intervals are shaded bands across all lanes. Operations on keys the checker found
//! non-linearizable are outlined in red, and those it could not order are filled red. Hovering a
//! bar shows its details (SVG `<title>`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use crate::checker::CheckReport;
use crate::history::{Event, EventKind};
use crate::results::{FaultRecord, RunResults};
use run::{run_details_html, summary_html};

mod run;

/// What the report shows.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    /// Page title (e.g. the run directory or the history file).
    pub title: &'a str,
    /// The history, in order.
    pub events: &'a [Event],
    /// Faults, with times in ms from the start of the run (the history's first event).
    pub faults: &'a [FaultRecord],
    /// The checker's result, if the history was checked.
    pub check: Option<&'a CheckReport>,
    /// Nanoseconds per unit of `Event::time`: `Some(1)` for `history.jsonl`. `None` when times
    /// are only positions (a Jepsen log): the axis then counts events and fault bands, which have
    /// real times, are listed but not drawn.
    pub time_unit_ns: Option<u64>,
    /// A cluster run's results: adds a summary table, leader changes on the timeline, the
    /// clients' progress and the convergence check.
    pub results: Option<&'a RunResults>,
}

/// Most operation bars drawn; a 30-minute soak has hundreds of thousands.
const MAX_BARS: usize = 60_000;
const WIDTH: f64 = 1200.0;
const LEFT: f64 = 90.0;
const LANE: f64 = 16.0;
const TOP: f64 = 30.0;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One bar in the timeline.
struct Bar<'a> {
    process: u64,
    start: u64,
    end: Option<u64>,
    kind: EventKind,
    invoke: &'a Event,
    completion: Option<&'a Event>,
    index: usize,
}

fn bars(events: &[Event]) -> Vec<Bar<'_>> {
    let mut open: HashMap<u64, (usize, &Event)> = HashMap::new();
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.kind == EventKind::Invoke {
            if let Some((idx, inv)) = open.insert(e.process, (i, e)) {
                // Malformed (double invoke): show the first as never completed.
                out.push(Bar {
                    process: inv.process,
                    start: inv.time,
                    end: None,
                    kind: EventKind::Info,
                    invoke: inv,
                    completion: None,
                    index: idx,
                });
            }
        } else if let Some((idx, inv)) = open.remove(&e.process) {
            let end = (e.kind != EventKind::Info).then_some(e.time);
            out.push(Bar {
                process: e.process,
                start: inv.time,
                end,
                kind: e.kind,
                invoke: inv,
                completion: Some(e),
                index: idx,
            });
        }
    }
    for (_, (idx, inv)) in open {
        out.push(Bar {
            process: inv.process,
            start: inv.time,
            end: None,
            kind: EventKind::Info,
            invoke: inv,
            completion: None,
            index: idx,
        });
    }
    out.sort_by_key(|b| b.index);
    out
}

/// Renders the page.
pub fn render_html(input: &ReportInput<'_>) -> String {
    let unit = input.time_unit_ns.unwrap_or(1).max(1);
    let drawn_faults: &[FaultRecord] = if input.time_unit_ns.is_some() {
        input.faults
    } else {
        &[]
    };
    let bars = bars(input.events);
    let processes: BTreeSet<u64> = input.events.iter().map(|e| e.process).collect();
    let lane_of: HashMap<u64, usize> = processes.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    let t0 = input.events.first().map_or(0, |e| e.time);
    let fault_end_units = drawn_faults
        .iter()
        .filter_map(|f| f.end_ms.or(Some(f.start_ms)))
        .map(|ms| t0.saturating_add(ms.saturating_mul(1_000_000) / unit))
        .max()
        .unwrap_or(t0);
    let t1 = input
        .events
        .iter()
        .map(|e| e.time)
        .max()
        .unwrap_or(t0)
        .max(fault_end_units)
        .max(t0.saturating_add(1));
    let span = ((t1 - t0) as f64).max(1.0);
    let x = |t: u64| LEFT + (t.saturating_sub(t0) as f64 / span) * (WIDTH - LEFT - 10.0);
    let height = TOP + LANE * processes.len().max(1) as f64 + 30.0;

    let failing: HashSet<&str> = input
        .check
        .map(|c| c.anomalies().map(|a| a.key.as_str()).collect())
        .unwrap_or_default();
    let culprits: HashSet<usize> = input
        .check
        .map(|c| {
            c.anomalies()
                .flat_map(|a| a.unorderable.iter().map(|o| o.index))
                .collect()
        })
        .unwrap_or_default();

    // A long run has more operations than a page can draw; beyond MAX_BARS keep every
    // operation on a failing key and every non-ok one, and thin the rest evenly.
    let total_bars = bars.len();
    let bars: Vec<Bar<'_>> = if total_bars <= MAX_BARS {
        bars
    } else {
        let keep = |b: &Bar<'_>| failing.contains(b.invoke.key.as_str()) || b.kind != EventKind::Ok;
        let must = bars.iter().filter(|b| keep(b)).count();
        let room = MAX_BARS.saturating_sub(must).max(1) as u128;
        let rest = (total_bars - must).max(1) as u128;
        let mut n: u128 = 0;
        bars.into_iter()
            .filter(|b| {
                if keep(b) {
                    return true;
                }
                // Keep the n-th of `rest` when floor(n * room / rest) steps up: `room` evenly
                // spaced picks.
                n += 1;
                n * room / rest != (n - 1) * room / rest
            })
            .collect()
    };
    let thinned_note = if bars.len() < total_bars {
        format!(
            " The timeline shows {} of {total_bars} operations: all on failing keys, all that did not complete ok, and an even sample of the rest.",
            bars.len()
        )
    } else {
        String::new()
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="10">"#
    );
    // Fault bands first, so bars draw over them. A fault inside another's band (a kill while
    // a disk loss's member is lost) gets its label on the upper row, so the labels stay apart.
    let to_units = |ms: u64| t0.saturating_add(ms.saturating_mul(1_000_000) / unit);
    for (i, f) in drawn_faults.iter().enumerate() {
        let start = to_units(f.start_ms);
        let end = f.end_ms.map_or(t1, to_units);
        let (x0, x1) = (x(start), x(end).max(x(start) + 1.0));
        let nested = drawn_faults[..i]
            .iter()
            .any(|g| g.start_ms <= f.start_ms && g.end_ms.is_none_or(|e| e > f.start_ms));
        let label_y = if nested { TOP - 16.0 } else { TOP - 4.0 };
        let fill = if f.injected { "#5b8def" } else { "#bbbbbb" };
        let label = if f.injected {
            f.description.clone()
        } else {
            format!("{} (not injected)", f.description)
        };
        let _ = writeln!(
            svg,
            r##"<rect class="fault" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{fill}" fill-opacity="0.18"><title>{}</title></rect><text x="{x0:.1}" y="{:.1}" fill="#34568b">{}</text>"##,
            x1 - x0,
            height - TOP - 30.0,
            esc(&format!(
                "{label} [{} ms, {}]",
                f.start_ms,
                f.end_ms
                    .map_or("never healed".into(), |e| format!("{e} ms"))
            )),
            label_y,
            esc(&label)
        );
        // Each step of the fault (a disk loss's wipe, restart, re-add...) as a tick on its band.
        for step in &f.steps {
            let sx = x(to_units(step.at_ms));
            let _ = writeln!(
                svg,
                r##"<line class="step" x1="{sx:.1}" x2="{sx:.1}" y1="{TOP}" y2="{:.1}" stroke="#34568b" stroke-width="2"><title>{}</title></line>"##,
                TOP + 8.0,
                esc(&format!("{} ms: {}", step.at_ms, step.what))
            );
        }
    }
    for (&p, &lane) in &lane_of {
        let y = TOP + lane as f64 * LANE;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{WIDTH}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="4" y="{:.1}">process {p}</text>"##,
            y + LANE / 2.0,
            y + LANE / 2.0,
            y + LANE * 0.7
        );
    }
    for b in &bars {
        let Some(&lane) = lane_of.get(&b.process) else {
            continue;
        };
        let y = TOP + lane as f64 * LANE + 2.0;
        let x0 = x(b.start);
        let x1 = x(b.end.unwrap_or(t1)).max(x0 + 2.0);
        let bad_key = failing.contains(b.invoke.key.as_str());
        let culprit = bad_key && culprits.contains(&b.index);
        let fill = match (culprit, b.kind) {
            (true, _) => "#d62728",
            (_, EventKind::Ok) => "#2ca02c",
            (_, EventKind::Fail) => "#9e9e9e",
            _ => "#ff9f1c",
        };
        let stroke = if bad_key {
            r##" stroke="#d62728" stroke-width="1.5""##
        } else {
            ""
        };
        let class = if bad_key { "op bad" } else { "op" };
        let result = b.completion.map_or("(no completion)".to_string(), |c| {
            format!("{:?} {}", c.kind, c.value)
        });
        let version = b
            .completion
            .and_then(|c| c.version)
            .or(b.invoke.version)
            .map_or(String::new(), |v| format!(" v{v}"));
        let title = format!(
            "#{} p{} key {}: {} {} -> {}{} [{} .. {}]",
            b.index,
            b.process,
            b.invoke.key,
            b.invoke.f,
            b.invoke.value,
            result,
            version,
            b.start,
            b.end.map_or("inf".into(), |e| e.to_string())
        );
        let opacity = if b.end.is_none() { "0.45" } else { "0.9" };
        let _ = writeln!(
            svg,
            r#"<rect class="{class}" x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}" fill-opacity="{opacity}"{stroke}><title>{}</title></rect>"#,
            x1 - x0,
            LANE - 4.0,
            esc(&title)
        );
    }
    if let (Some(r), Some(_)) = (input.results, input.time_unit_ns) {
        for c in &r.leader_changes {
            let at = t0.saturating_add(c.at_ms.saturating_mul(1_000_000) / unit);
            let lx = x(at);
            let who = c
                .leader
                .map_or("none".to_string(), |l| format!("n{}", l + 1));
            let _ = writeln!(
                svg,
                r##"<line class="leader" x1="{lx:.1}" x2="{lx:.1}" y1="{:.1}" y2="{:.1}" stroke="#7b3fa0" stroke-dasharray="3,3"><title>{}</title></line><text x="{lx:.1}" y="{:.1}" fill="#7b3fa0" font-size="9">L {}</text>"##,
                TOP,
                height - 30.0,
                esc(&format!("leader {who} observed at {} ms", c.at_ms)),
                height - 22.0,
                esc(&who)
            );
        }
    }
    let axis_y = height - 14.0;
    let unit_label = match input.time_unit_ns {
        None => "(event #)",
        Some(1) => "ns",
        Some(_) => "time units",
    };
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{axis_y}" fill="#555">{t0} {unit_label}</text><text x="{:.1}" y="{axis_y}" text-anchor="end" fill="#555">{t1} {unit_label}</text></svg>"##,
        WIDTH - 10.0
    );

    let mut html = String::new();
    let verdict = input
        .check
        .map_or("not checked".to_string(), |c| c.verdict.to_string());
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font-family:sans-serif;margin:20px}} .bad{{color:#d62728}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:left}}</style></head><body>\n<h1>{t}</h1>\n<p>Verdict: <strong class=\"{cls}\">{v}</strong>. {n} events, {np} processes, {nf} faults. Green ok, grey fail, orange indeterminate (to the end), red outline: key not linearizable, red fill: operations that cannot be ordered. Shaded bands: faults (grey: not injected). Dashed purple lines: leader changes observed.{thinned}</p>\n",
        t = esc(input.title),
        cls = if input.check.is_some_and(|c| c.anomalies().next().is_some()) { "bad" } else { "" },
        v = esc(&verdict),
        n = input.events.len(),
        np = processes.len(),
        nf = input.faults.len(),
        thinned = esc(&thinned_note),
    );
    if let Some(r) = input.results {
        html.push_str(&summary_html(r));
    }
    html.push_str(&svg);
    if let Some(r) = input.results {
        html.push_str(&run_details_html(r));
    }
    if let Some(c) = input.check {
        for a in c.anomalies() {
            let _ = write!(
                html,
                "<h2 class=\"bad\">Key {}: not linearizable</h2><p>{}</p><p>Longest linearizable prefix ({} operations), ending in state <code>{}</code>; operations that cannot be ordered next:</p><table><tr><th>#</th><th>process</th><th>call</th><th>return</th><th>operation</th></tr>",
                esc(&a.key),
                esc(&a.reason),
                a.prefix.len(),
                esc(&a.state_after_prefix)
            );
            for o in &a.unorderable {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    o.index,
                    o.process,
                    o.call,
                    o.ret.map_or("inf".into(), |r| r.to_string()),
                    esc(&o.op)
                );
            }
            html.push_str("</table>\n");
        }
        let unknown: Vec<&str> = c
            .keys
            .iter()
            .filter(|k| k.verdict == crate::checker::Verdict::Unknown)
            .map(|k| k.key.as_str())
            .collect();
        if !unknown.is_empty() {
            let _ = write!(
                html,
                "<p>Unknown (budget exhausted) on keys: {}</p>",
                esc(&unknown.join(", "))
            );
        }
    }
    if !input.faults.is_empty() {
        html.push_str("<h2>Faults</h2><table><tr><th>kind</th><th>what</th><th>start ms</th><th>end ms</th><th>injected</th><th>first write ok after heal, ms</th><th>note</th><th>steps</th></tr>");
        for f in input.faults {
            let steps: Vec<String> = f
                .steps
                .iter()
                .map(|s| format!("{} ms: {}", s.at_ms, esc(&s.what)))
                .collect();
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.kind),
                esc(&f.description),
                f.start_ms,
                f.end_ms.map_or("-".into(), |e| e.to_string()),
                f.injected,
                f.recovered_after_ms.map_or("-".into(), |m| m.to_string()),
                esc(f.note.as_deref().unwrap_or("")),
                steps.join("<br>")
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check_events, CheckOptions};
    use crate::history::{Fun, Payload, Value};
    use crate::model::Register;

    fn ev(kind: EventKind, process: u64, time: u64, f: Fun, value: Payload) -> Event {
        Event {
            kind,
            process,
            time,
            f,
            key: "k<1>".into(),
            value,
            version: None,
        }
    }

    #[test]
    fn report_marks_lanes_faults_and_culprits() {
        let one = |v| Payload::One(Value::Int(v));
        let events = vec![
            ev(EventKind::Invoke, 1, 0, Fun::Write, one(1)),
            ev(EventKind::Ok, 1, 1_000_000, Fun::Write, one(1)),
            ev(EventKind::Invoke, 1, 2_000_000, Fun::Write, one(2)),
            ev(EventKind::Ok, 1, 3_000_000, Fun::Write, one(2)),
            ev(EventKind::Invoke, 2, 4_000_000, Fun::Read, Payload::NIL),
            ev(EventKind::Ok, 2, 5_000_000, Fun::Read, one(1)),
            ev(EventKind::Invoke, 3, 5_000_000, Fun::Write, one(3)),
        ];
        let check = check_events(&Register, &events, &CheckOptions::default()).unwrap();
        let faults = [FaultRecord {
            kind: "partition".into(),
            description: "isolate 127.0.0.2 & <b>".into(),
            start_ms: 1,
            end_ms: Some(3),
            injected: true,
            note: None,
            recovered_after_ms: None,
            steps: Vec::new(),
        }];
        let html = render_html(&ReportInput {
            title: "t<x>",
            events: &events,
            faults: &faults,
            check: Some(&check),
            time_unit_ns: Some(1),
            results: None,
        });
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches(">process ").count(), 3, "one lane per process");
        assert_eq!(
            html.matches("<rect class=\"op").count(),
            4,
            "one bar per operation"
        );
        assert_eq!(html.matches("class=\"fault\"").count(), 1);
        assert!(
            html.contains("fill=\"#d62728\""),
            "the stale read is not highlighted"
        );
        assert!(html.contains("Key k&lt;1&gt;: not linearizable"));
        assert!(
            !html.contains("<b>") && html.contains("&lt;b&gt;"),
            "text is not escaped"
        );
        assert!(
            !html.contains("<script"),
            "must be self-contained and static"
        );
    }

    #[test]
    fn a_fault_inside_a_disk_loss_gets_its_own_label_row_and_steps_are_ticks() {
        use crate::results::FaultStep;
        let one = |v| Payload::One(Value::Int(v));
        let events = vec![
            ev(EventKind::Invoke, 1, 0, Fun::Write, one(1)),
            ev(EventKind::Ok, 1, 20_000_000, Fun::Write, one(1)),
        ];
        let fault = |kind: &str, what: &str, start_ms, end_ms, steps: Vec<FaultStep>| FaultRecord {
            kind: kind.into(),
            description: what.into(),
            start_ms,
            end_ms: Some(end_ms),
            injected: true,
            note: None,
            recovered_after_ms: None,
            steps,
        };
        let step = |at_ms, what: &str| FaultStep {
            at_ms,
            what: what.into(),
        };
        let faults = [
            fault(
                "disk-loss",
                "disk loss on n2",
                1,
                15,
                vec![step(1, "kill -9 n2"), step(14, "promoted n2 to voter")],
            ),
            fault("kill", "kill -9 n3", 4, 8, Vec::new()),
            fault("kill", "kill -9 n1", 16, 18, Vec::new()),
        ];
        let html = render_html(&ReportInput {
            title: "t",
            events: &events,
            faults: &faults,
            check: None,
            time_unit_ns: Some(1),
            results: None,
        });
        assert_eq!(html.matches("class=\"step\"").count(), 2);
        assert!(html.contains("14 ms: promoted n2 to voter"));
        let label_y = |label: &str| {
            let end = html.find(&format!(">{label}</text>")).expect(label);
            let start = html[..end].rfind(" y=\"").expect("y") + 4;
            html[start..end]
                .split('"')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(label_y("disk loss on n2"), format!("{:.1}", TOP - 4.0));
        assert_eq!(
            label_y("kill -9 n3"),
            format!("{:.1}", TOP - 16.0),
            "nested"
        );
        assert_eq!(
            label_y("kill -9 n1"),
            format!("{:.1}", TOP - 4.0),
            "after it"
        );
    }

    #[test]
    fn long_histories_are_thinned_but_keep_what_matters() {
        let one = |v| Payload::One(Value::Int(v));
        let mut events = Vec::new();
        for i in 0..70_000u64 {
            events.push(ev(
                EventKind::Invoke,
                i % 4,
                2 * i,
                Fun::Write,
                one(i as i64),
            ));
            let kind = if i == 12_345 {
                EventKind::Info
            } else {
                EventKind::Ok
            };
            events.push(ev(kind, i % 4, 2 * i + 1, Fun::Write, one(i as i64)));
        }
        let html = render_html(&ReportInput {
            title: "long",
            events: &events,
            faults: &[],
            check: None,
            time_unit_ns: Some(1),
            results: None,
        });
        let drawn = html.matches("<rect class=\"op").count();
        assert!((59_000..=MAX_BARS + 1).contains(&drawn), "{drawn} bars");
        assert!(html.contains("of 70000 operations"));
        assert!(
            html.contains("#24690 p1 "),
            "the indeterminate operation was thinned away"
        );
    }
}
