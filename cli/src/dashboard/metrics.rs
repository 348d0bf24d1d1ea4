//! `/metrics`: the fleet's worker demand (`a3s_fleet_worker_slots_needed`, what autoscalers
//! read) and its announced workers, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::http::{ApiResult, App};

pub(super) async fn metrics(State(app): State<Arc<App>>) -> ApiResult {
    let mut demand = app.admin.fleet_demand().await?;
    if let Some(t) = &app.options.tenant {
        demand.retain(|d| d.tenant == *t);
    }
    let workers = app.workers();
    let mut out = String::new();
    out.push_str(
        "# HELP a3s_fleet_worker_slots_needed Worker slots the fleet's sessions need now \
         (backlog plus tasks out at workers, External lanes), from the processes' announcements.\n\
         # TYPE a3s_fleet_worker_slots_needed gauge\n",
    );
    for d in &demand {
        let _ = writeln!(
            out,
            "a3s_fleet_worker_slots_needed{{tenant=\"{}\",lane=\"{}\",labels=\"{}\"}} {}",
            escape(&d.tenant),
            d.lane.as_str(),
            escape(&d.labels),
            d.slots
        );
    }
    let mut slots: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    for w in &workers {
        let p = &w.presence;
        let tenant = p.tenant.clone().unwrap_or_else(|| "*".to_owned());
        let state = serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let e = slots.entry((tenant, state)).or_default();
        e.0 += 1;
        e.1 += p.slots;
        e.2 += p.busy;
    }
    for (i, (name, help)) in [
        (
            "a3s_fleet_workers",
            "Workers announcing themselves, by tenant served (* for every tenant) and state.",
        ),
        (
            "a3s_fleet_worker_slots",
            "Their slots (tasks they can run at once).",
        ),
        (
            "a3s_fleet_worker_slots_busy",
            "Their slots running a task now.",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for ((tenant, state), figures) in &slots {
            let value = [figures.0, figures.1, figures.2][i];
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",state=\"{state}\"}} {value}",
                escape(tenant)
            );
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
