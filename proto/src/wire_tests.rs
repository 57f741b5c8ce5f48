use super::*;
use crate::data::NodeReport;

fn report() -> NodeReport {
    NodeReport {
        node: NodeId(2),
        incarnation: 7,
        node_epoch: 1,
        used_bytes: 10,
        capacity_bytes: 100,
        replicas: vec![],
    }
}

#[test]
fn a_health_heartbeat_round_trips_on_the_wire() {
    for risk in [
        RiskState::Unknown,
        RiskState::NoModel {
            reason: "schema".into(),
        },
        RiskState::Pending {
            reason: "warming".into(),
        },
        RiskState::Scored(RiskReport {
            score: 0.7,
            model: "node".into(),
            at_ms: 5,
            reasons: vec![("node:lat".into(), 1.5)],
        }),
    ] {
        let health = NodeHealth {
            source: "simulated".into(),
            risk,
            summary: HealthSummary {
                temp_c: Some(40.0),
                faults: vec!["fail-slow".into()],
                ..Default::default()
            },
        };
        health.validate().unwrap();
        let req = Request::HealthHeartbeat {
            report: report(),
            health: health.clone(),
        };
        let bytes = postcard::to_stdvec(&req).unwrap();
        assert_eq!(postcard::from_bytes::<Request>(&bytes).unwrap(), req);
    }
}

#[test]
fn out_of_bounds_health_is_refused() {
    let mut h = NodeHealth {
        risk: RiskState::Scored(RiskReport {
            score: 1.5,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(h.validate(), Err(HealthError::BadScore(1.5)));
    h.risk = RiskState::Scored(RiskReport {
        score: f64::NAN,
        ..Default::default()
    });
    assert!(h.validate().is_err());
    h.risk = RiskState::Scored(RiskReport {
        score: 0.5,
        reasons: vec![("x".into(), 0.0); MAX_RISK_REASONS + 1],
        ..Default::default()
    });
    assert_eq!(h.validate(), Err(HealthError::TooMany("risk.reasons")));
    h.risk = RiskState::NoModel {
        reason: "x".repeat(crate::model::limits::MAX_STRING + 1),
    };
    assert_eq!(h.validate(), Err(HealthError::TooLong("risk.reason")));
}
