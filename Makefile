# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test deps lint unit demo bench

deps:
	@scripts/ensure-deps.sh

# Run the proxy on the embedded default config (127.0.0.1:3128 HTTP/CONNECT, 127.0.0.1:1080 SOCKS).
run: deps
	cargo run --release -- run

# The whole test suite: formatting, lints, unit, property and integration tests (one target/ build).
test: deps lint
	cargo test --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
