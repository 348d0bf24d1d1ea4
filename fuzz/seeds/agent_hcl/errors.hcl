queue {
  query_max_concurrency = 0
  lane_handlers {
    fast { mode = "remote" }
  }
  retry_policy { strategy = "linear" }
}
providers {
  name = "x"
  api_key = "${var.key}"
}
providers { name = "x" }
max_tool_rounds = -1
default_model = upper("a")
