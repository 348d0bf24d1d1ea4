//! `a3s-code run "prompt" --config agent.hcl`: one prompt through the agent loop, with its tool
//! calls shown as they go.
//!
//! The answer goes to stdout as the model writes it; tool calls and the closing summary go to
//! stderr, so `a3s-code run ... > answer.md` keeps only the answer.

use std::io::Write;
use std::path::PathBuf;

use a3s_code_core::agent::{AgentEvent, StopReason, ToolCallRecord};
use a3s_code_core::queue::SessionLane;
use a3s_code_core::{Agent, SessionOptions};
use anyhow::Context;
use serde_json::Value;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// What to ask the agent.
    prompt: String,
    /// The agent configuration (default_model, providers, queue).
    #[arg(long, short, default_value = "agent.hcl")]
    config: PathBuf,
    /// The directory the tools work in.
    #[arg(long, short, default_value = ".")]
    workspace: PathBuf,
    /// Forbid the bash tool in this process.
    #[arg(long)]
    no_bash: bool,
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let agent = Agent::new(&args.config)
        .await
        .with_context(|| format!("loading {}", args.config.display()))?;
    let session = agent
        .session(
            &args.workspace,
            Some(SessionOptions::new().with_bash(!args.no_bash)),
        )
        .with_context(|| format!("opening a session on {}", args.workspace.display()))?;

    let mut stream = session.stream(args.prompt);
    let mut out = std::io::stdout();
    let mut mid_line = false;
    while let Some(event) = stream.recv().await {
        match event {
            AgentEvent::TextDelta { text } => {
                print!("{text}");
                let _ = out.flush();
                mid_line = !text.ends_with('\n');
            }
            AgentEvent::ToolCallStarted {
                name, args, lane, ..
            } => {
                end_line(&mut mid_line);
                eprintln!("  → {:<8} {name} {}", lane_name(lane), summary(&args));
            }
            AgentEvent::ToolCallFinished(record) => {
                end_line(&mut mid_line);
                eprintln!("  {}", finished(&record));
            }
            _ => {}
        }
    }
    end_line(&mut mid_line);
    let response = stream.finish().await?;
    eprintln!(
        "\n{} model call(s), {} tool call(s), tokens: {} in + {} out = {}{}",
        response.model_call_count,
        response.tool_calls.len(),
        response.usage.input_tokens,
        response.usage.output_tokens,
        response.usage.total_tokens(),
        match response.stop_reason {
            StopReason::MaxToolRounds => " (stopped: max_tool_rounds reached)",
            _ => "",
        }
    );
    Ok(())
}

fn end_line(mid_line: &mut bool) {
    if std::mem::take(mid_line) {
        println!();
    }
}

fn lane_name(lane: Option<SessionLane>) -> &'static str {
    lane.map_or("-", SessionLane::as_str)
}

/// `✓ query    read path=src/lib.rs` or `✗ ... : why`.
fn finished(record: &ToolCallRecord) -> String {
    let head = format!(
        "{} {:<8} {} {}",
        if record.result.success { "✓" } else { "✗" },
        lane_name(record.lane),
        record.name,
        summary(&record.args)
    );
    match &record.result.error {
        Some(error) if !record.result.success => format!("{head}: {}", cut(error, 160)),
        _ => head,
    }
}

/// The arguments on one line: `key=value` pairs, long values cut.
fn summary(args: &Value) -> String {
    let text = match args {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={}", cut(&s.replace('\n', "⏎"), 60)),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::String(raw) => format!("(invalid arguments) {raw}"),
        other => other.to_string(),
    };
    cut(&text, 160)
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use a3s_code_core::ExternalTaskResult;
    use serde_json::json;

    #[test]
    fn summaries_fit_on_a_line() {
        assert_eq!(
            summary(&json!({"path": "a.rs", "limit": 5})),
            "path=a.rs limit=5"
        );
        assert_eq!(summary(&json!({"content": "a\nb"})), "content=a⏎b");
        assert!(
            summary(&json!({"content": "x".repeat(500)}))
                .chars()
                .count()
                < 80
        );
        let record = ToolCallRecord {
            id: "c".into(),
            name: "bash".into(),
            args: json!("{bad"),
            lane: None,
            task_id: None,
            result: ExternalTaskResult::err("not valid JSON"),
        };
        assert_eq!(
            finished(&record),
            "✗ -        bash (invalid arguments) {bad: not valid JSON"
        );
    }
}
