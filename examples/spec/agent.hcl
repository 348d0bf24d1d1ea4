# The agent configuration the spec's samples load with Agent::new / Agent.create("agent.hcl").
# No model is needed to run them: they drive the queue directly.
default_model = "openai/gpt-4o"

providers {
  name    = "openai"
  api_key = env("OPENAI_API_KEY")

  models {
    id   = "gpt-4o"
    name = "GPT-4o"
  }
}

queue {
  enable_metrics = true
  enable_dlq     = true
}

max_tool_rounds = 20
