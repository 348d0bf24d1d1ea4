//! Recent minutes of the viewed sessions' lanes, for the sparklines: sampled here every 2 s
//! while someone looks at a session, kept 10 minutes, for at most [`MAX_WATCHED`] sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use a3s_code_core::admin::SessionView;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::http::App;

/// Time between two samples.
pub(crate) const EVERY: Duration = Duration::from_secs(2);
/// Samples kept per session: 10 minutes.
const KEEP: usize = 300;
/// Sessions sampled at once; the least recently viewed is dropped first.
const MAX_WATCHED: usize = 32;
/// A session nobody viewed for this long is no longer sampled.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// One sample of one lane: pending, in flight, processed, failed, timed out.
type LaneSample = [u64; 5];

struct Track {
    viewed: Instant,
    samples: VecDeque<(u64, Vec<(String, LaneSample)>)>,
}

/// The sampled sessions.
#[derive(Default)]
pub(crate) struct History {
    tracks: Mutex<HashMap<String, Track>>,
}

impl History {
    /// Someone views `session_id` now: sample it (from the next tick on) for a while.
    pub(crate) fn watch(&self, session_id: &str) {
        let mut tracks = self.tracks.lock();
        let now = Instant::now();
        tracks
            .entry(session_id.to_owned())
            .or_insert_with(|| Track {
                viewed: now,
                samples: VecDeque::new(),
            })
            .viewed = now;
        while tracks.len() > MAX_WATCHED {
            let oldest = tracks
                .iter()
                .min_by_key(|(_, t)| t.viewed)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                tracks.remove(&id);
            }
        }
    }

    /// The sessions to sample now (those viewed lately; the others are forgotten).
    fn watched(&self) -> Vec<String> {
        let mut tracks = self.tracks.lock();
        tracks.retain(|_, t| t.viewed.elapsed() < FORGET_AFTER);
        tracks.keys().cloned().collect()
    }

    fn record(&self, view: &SessionView) {
        let lanes = view
            .lanes
            .iter()
            .map(|l| {
                let sample = [
                    l.pending as u64,
                    l.in_flight as u64,
                    l.processed,
                    l.failed,
                    l.timed_out,
                ];
                (l.lane.as_str().to_owned(), sample)
            })
            .collect();
        if let Some(track) = self.tracks.lock().get_mut(&view.session_id) {
            if track.samples.len() == KEEP {
                track.samples.pop_front();
            }
            track.samples.push_back((epoch_ms(), lanes));
        }
    }

    fn forget(&self, session_id: &str) {
        self.tracks.lock().remove(session_id);
    }

    /// A session's samples, one array per figure and lane (oldest first):
    /// `{"every_ms", "t": [...], "lanes": {"query": {"pending": [...], ...}}}`.
    pub(crate) fn series(&self, session_id: &str) -> Value {
        const FIGURES: [&str; 5] = ["pending", "in_flight", "processed", "failed", "timed_out"];
        let tracks = self.tracks.lock();
        let samples = tracks.get(session_id).map(|t| &t.samples);
        let t: Vec<u64> = samples.into_iter().flatten().map(|(t, _)| *t).collect();
        let mut lanes = Map::new();
        for (_, sample) in samples.into_iter().flatten() {
            for (lane, figures) in sample {
                let entry = lanes.entry(lane.clone()).or_insert_with(|| {
                    Value::Object(FIGURES.iter().map(|f| (f.to_string(), json!([]))).collect())
                });
                for (name, value) in FIGURES.iter().zip(figures) {
                    if let Some(Value::Array(a)) = entry.get_mut(*name) {
                        a.push(json!(value));
                    }
                }
            }
        }
        json!({ "every_ms": EVERY.as_millis() as u64, "t": t, "lanes": lanes })
    }
}

/// Samples the watched sessions every [`EVERY`], for as long as the dashboard runs.
pub(crate) async fn sample(app: Arc<App>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for id in app.history.watched() {
            match app.admin.session(&id).await {
                Ok(view) => app.history.record(&view),
                Err(e) if e.code() == "SessionNotFound" => app.history.forget(&id),
                Err(e) => tracing::debug!(session = %id, error = %e, "no sample"),
            }
        }
    }
}

pub(crate) fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
