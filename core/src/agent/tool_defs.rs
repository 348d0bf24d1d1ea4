//! The built-in tools as the model sees them: a name, a description and a JSON Schema of the
//! argument keys `crate::tools` reads.

use serde_json::{Value, json};

use super::llm::ToolDefinition;

fn tool(name: &str, description: &str, properties: Value, required: &[&str]) -> ToolDefinition {
    ToolDefinition {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters: json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        }),
    }
}

/// The definitions of the seven built-in tools, in [`BUILTIN_TOOLS`](crate::tools::BUILTIN_TOOLS)
/// order, as advertised to the model by `send` and `stream`.
///
/// # Examples
///
/// ```
/// use a3s_code_core::agent::builtin_tool_definitions;
/// let defs = builtin_tool_definitions();
/// let read = defs.iter().find(|d| d.name == "read").unwrap();
/// assert_eq!(read.parameters["required"], serde_json::json!(["path"]));
/// ```
pub fn builtin_tool_definitions() -> Vec<ToolDefinition> {
    let path = |what: &str| json!({"type": "string", "description": what});
    vec![
        tool(
            "read",
            "Read a UTF-8 text file of the workspace. Returns {content, total_lines, start_line, end_line, truncated}.",
            json!({
                "path": path("File path, relative to the workspace root."),
                "offset": {"type": "integer", "minimum": 1, "description": "1-based number of the first line to return (default 1)."},
                "limit": {"type": "integer", "minimum": 1, "description": "Most lines to return (default 2000)."},
            }),
            &["path"],
        ),
        tool(
            "write",
            "Create or replace a file with the given content (parent directories are created). Returns {bytes_written}.",
            json!({
                "path": path("File path, relative to the workspace root."),
                "content": {"type": "string", "description": "The whole new content of the file."},
            }),
            &["path", "content"],
        ),
        tool(
            "edit",
            "Replace old_string with new_string in a file. old_string must occur exactly once unless replace_all is true. Returns {replacements}.",
            json!({
                "path": path("File path, relative to the workspace root."),
                "old_string": {"type": "string", "description": "The exact text to replace (non-empty)."},
                "new_string": {"type": "string", "description": "The replacement text."},
                "replace_all": {"type": "boolean", "description": "Replace every occurrence (default false)."},
            }),
            &["path", "old_string", "new_string"],
        ),
        tool(
            "grep",
            "Search files for a regular expression (Rust regex syntax), line by line; .gitignore is honoured. Returns {matches: [{path, line, text}], truncated}.",
            json!({
                "pattern": {"type": "string", "description": "The regular expression."},
                "path": path("File or directory to search (default: the workspace root)."),
                "glob": {"type": "string", "description": "Only search files matching this glob, e.g. \"*.rs\"."},
                "case_insensitive": {"type": "boolean", "description": "Ignore case (default false)."},
                "max_results": {"type": "integer", "minimum": 1, "description": "Most matching lines to return (default 200)."},
            }),
            &["pattern"],
        ),
        tool(
            "glob",
            "List files matching a glob pattern (\"**/*.rs\", \"src/*.py\"), sorted; .gitignore is honoured. Returns {paths, truncated}.",
            json!({
                "pattern": {"type": "string", "description": "The glob pattern."},
                "path": path("Directory to search in (default: the workspace root)."),
            }),
            &["pattern"],
        ),
        tool(
            "ls",
            "List a directory. Returns {entries: [{name, kind, size}]}.",
            json!({"path": path("Directory, relative to the workspace root (default: the root).")}),
            &[],
        ),
        tool(
            "bash",
            "Run a shell command (sh -c) in the workspace root. Returns {stdout, stderr, exit_code, timed_out, truncated}.",
            json!({
                "command": {"type": "string", "description": "The command line."},
                "timeout_ms": {"type": "integer", "minimum": 1, "description": "Kill the command after this many milliseconds."},
            }),
            &["command"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{BUILTIN_TOOLS, ToolContext, Workspace, run_tool};

    #[test]
    fn one_definition_per_builtin_tool() {
        let names: Vec<String> = builtin_tool_definitions()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, BUILTIN_TOOLS);
    }

    /// Every advertised key is one the tool reads: a wrong type for it is refused by name.
    #[tokio::test]
    async fn advertised_keys_are_the_tools_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x\n").unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        for def in builtin_tool_definitions() {
            let props = def.parameters["properties"].as_object().unwrap();
            for (key, schema) in props {
                // A valid base object, then one key of the wrong type.
                let mut args = json!({
                    "path": "f", "content": "y", "old_string": "x", "new_string": "z",
                    "pattern": "x", "command": "true",
                });
                let wrong = match schema["type"].as_str() {
                    Some("string") => json!(12),
                    _ => json!("wrong"),
                };
                args[key] = wrong;
                let err = run_tool(&def.name, &args, &ws, &ToolContext::new())
                    .await
                    .unwrap_err();
                assert!(
                    err.to_string().contains(&format!("`{key}`")),
                    "{}: {key}: {err}",
                    def.name
                );
            }
        }
    }
}
