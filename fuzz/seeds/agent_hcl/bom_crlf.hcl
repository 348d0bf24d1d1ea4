queue {
  enable_dlq = true
}
