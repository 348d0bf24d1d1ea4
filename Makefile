.PHONY: help demo test test-rust bench fuzz lint
help: ## Show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'
demo: ## Run the in-process demo on this repository
	cargo run --release -p a3s-code-cli -- demo .
test: ## Run the whole test suite (what CI runs)
	./scripts/test.sh
test-rust: ## Rust tests only
	cargo test --workspace
bench: ## Run the in-process benchmarks (results go in docs/PERFORMANCE.md)
	cargo bench -p a3s-code-core --bench external_roundtrip
	cargo bench -p a3s-code-core --bench queued_memory
fuzz: ## Run every fuzz target for 60 s (nightly + cargo-fuzz; see fuzz/README.md)
	./scripts/fuzz.sh 60
lint: ## Formatting and clippy
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
