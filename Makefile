# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test deps lint unit demo bench

deps:
	@scripts/ensure-deps.sh

# Run the proxy on the embedded default config (127.0.0.1:3128 HTTP/CONNECT, 127.0.0.1:1080 SOCKS).
run: deps
	cargo run --release -- run

# The whole test suite: formatting, lints, unit, property and integration tests (one target/ build,
# with the Pingora plugin feature; the example is built first as a runnable binary, because
# `--all-targets` builds examples only as test harnesses and tests/plugin.rs runs it), the API docs without warnings, then the deploy files
# (promtool, systemd-analyze, manifests) checked against the built binary.
test: deps lint
	cargo build --examples --features pingora-lb
	cargo test --all-targets --features pingora-lb
	cargo test --doc --features pingora-lb
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --features pingora-lb
	CAROUSEL_BIN=target/debug/carousel deploy/check.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --features pingora-lb -- -D warnings

# See the point of carousel: a cluster, a killed member, a blackholed one, no failed request.
demo: deps
	cargo run --release -- demo
