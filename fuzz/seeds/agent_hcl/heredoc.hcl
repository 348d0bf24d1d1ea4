# comment
// another
/* block */
notes = <<-EOT
  multi
  line
EOT
nested = { a = [1, 2.5e3, -0, { b = "c" }], "quoted key" = false }
queue {
  max_pending = 18446744073709551615
  default_timeout_ms = 1.5
}
distribution = "not a block"
