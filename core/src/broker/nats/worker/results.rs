//! Results ready to publish, grouped into as few messages as fit: one message per run of
//! results of the same session, never larger than the server allows (`docs/protocol.md` §3.2).

use crate::broker::wire;

/// Where a task's result and output go: its tenant, the hub hosting its session, the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) tenant: String,
    pub(super) hub: String,
    pub(super) session: String,
}

/// A result ready to publish.
pub(super) struct Encoded<C> {
    /// Its place among the caller's results.
    pub(super) index: usize,
    pub(super) task_id: String,
    pub(super) attempt: u32,
    pub(super) target: Target,
    /// What is needed to settle its task afterwards.
    pub(super) claim: C,
    pub(super) bytes: Vec<u8>,
    /// Why the real result was replaced by a failure (too large), reported to the caller.
    pub(super) refused: Option<crate::Error>,
}

/// Groups results into messages: consecutive results of one session share a message while it
/// stays within `limit` bytes.
pub(super) fn group<C>(ready: Vec<Encoded<C>>, limit: usize) -> Vec<Vec<Encoded<C>>> {
    let mut groups: Vec<Vec<Encoded<C>>> = Vec::new();
    let mut size = 0;
    for e in ready {
        let fits = groups.last().is_some_and(|g| {
            g[0].target == e.target
                && size + e.bytes.len() + 1 + wire::ResultBatch::OVERHEAD + e.target.session.len()
                    <= limit
        });
        if !fits {
            groups.push(Vec::new());
            size = 0;
        }
        size += e.bytes.len() + 1;
        groups.last_mut().expect("pushed").push(e);
    }
    groups
}

/// A group's message: its bytes and message id. One result goes alone (id `task:attempt`);
/// several go as a batch whose id is the same whenever the same results (task ids and attempts,
/// in order) are published again, so a batch retried after a lost acknowledgement is stored
/// once.
pub(super) fn message<C>(group: &[Encoded<C>]) -> (Vec<u8>, String) {
    match group {
        [one] => (
            one.bytes.clone(),
            format!("{}:{}", one.task_id, one.attempt),
        ),
        many => {
            let parts: Vec<&[u8]> = many.iter().map(|e| e.bytes.as_slice()).collect();
            (
                wire::ResultBatch::encode_parts(&many[0].target.session, &parts),
                batch_message_id(many),
            )
        }
    }
}

fn batch_message_id<C>(batch: &[Encoded<C>]) -> String {
    let bytes = || {
        batch.iter().flat_map(|e| {
            e.task_id
                .bytes()
                .chain(e.attempt.to_le_bytes())
                .chain([0xff])
        })
    };
    let a = wire::fnv1a(wire::FNV_OFFSET, bytes());
    let b = wire::fnv1a(0x6c62_272e_07bb_0142, bytes());
    format!("batch:{}:{a:016x}{b:016x}", batch.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(index: usize, session: &str, size: usize) -> Encoded<()> {
        Encoded {
            index,
            task_id: format!("t-{index}"),
            attempt: 1,
            target: Target {
                tenant: "acme".into(),
                hub: "h1".into(),
                session: session.into(),
            },
            claim: (),
            bytes: vec![b'x'; size],
            refused: None,
        }
    }

    #[test]
    fn results_of_one_session_share_a_message_within_the_limit() {
        let ready = vec![
            encoded(0, "s1", 100),
            encoded(1, "s1", 100),
            encoded(2, "s2", 100),
            encoded(3, "s1", 100),
            encoded(4, "s1", 900),
        ];
        let groups = group(ready, 1_000);
        let shape: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.iter().map(|e| e.index).collect())
            .collect();
        assert_eq!(shape, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
        let (bytes, id) = message(&groups[0]);
        assert!(id.starts_with("batch:2:"), "{id}");
        assert!(bytes.starts_with(br#"{"v":2,"kind":"batch","session_id":"s1""#));
        let (single, id) = message(&groups[1]);
        assert_eq!(id, "t-2:1");
        assert_eq!(single.len(), 100);
    }

    #[test]
    fn batch_ids_depend_on_tasks_and_attempts_only() {
        let a = vec![encoded(0, "s1", 10), encoded(1, "s1", 10)];
        let b = vec![encoded(0, "s1", 20), encoded(1, "s1", 30)];
        assert_eq!(message(&a).1, message(&b).1);
        let mut c = vec![encoded(0, "s1", 10), encoded(1, "s1", 10)];
        c[1].attempt = 2;
        assert_ne!(message(&a).1, message(&c).1);
    }
}
