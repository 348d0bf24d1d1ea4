default_model = "anthropic/claude"
max_tool_rounds = 8

providers {
  name     = "anthropic"
  api_key  = env("ANTHROPIC_API_KEY")
  base_url = "https://user:pass@example.test/v1"
  headers  = { "x-team" = "a3s", retries = 2 }
  models {
    id          = "claude"
    name        = "Claude"
    temperature = 0.2
    tags        = ["fast", "cheap", null, true]
  }
  models {
    id = "haiku"
  }
}

providers {
  name = "local"
  models { id = "llama" }
}

queue {
  control_max_concurrency     = 1
  query_max_concurrency       = 8
  execute_max_concurrency     = 2
  generate_max_concurrency    = 1
  max_pending                 = 100
  enable_metrics              = true
  enable_dlq                  = true
  dlq_max_size                = 50
  enable_alerts               = false
  queue_depth_alert_threshold = 10
  latency_alert_threshold_ms  = 5000
  default_timeout_ms          = 60000

  lane_handlers {
    query   { mode = "external" }
    execute {
      mode       = "hybrid"
      timeout_ms = 120000
    }
    control { mode = "internal" }
  }

  retry_policy {
    strategy         = "fixed"
    max_retries      = 0
    initial_delay_ms = 0
    max_delay_ms     = 1
  }
}

distribution {
  nats_url         = "nats://a:b@127.0.0.1:4222,nats://token@h2:4222"
  subject_prefix   = "a3s-dev"
  credentials_file = "/etc/a3s.creds"
  tls              = { ca = "ca.pem" }
}

mcp "fs" {
  command = "mcp-fs"
  args    = ["--root", "."]
  secret_token = "hidden"
}
mcp "git" { command = "mcp-git" }
telemetry = { endpoint = "http://otel", api_key = "k" }
