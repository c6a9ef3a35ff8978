# glassbox — common tasks. `make help` lists them.
#
# Variables (override on the command line, e.g. `make test CARGO_TEST_FLAGS=--release`):
#   CARGO             cargo binary (default: cargo)
#   CARGO_TEST_FLAGS  extra flags for both `cargo test` runs (may include `-- <test args>`)
#   MODEL_DIR         where the default model lives (default: models/all-MiniLM-L6-v2)
#   ARGS              extra arguments for `glassbox serve` in `make run`

CARGO ?= cargo
CARGO_TEST_FLAGS ?=
MODEL_DIR ?= models/all-MiniLM-L6-v2
ARGS ?=

.PHONY: help model test run openapi bench lint stress clean

help:
	@echo "make model    fetch and verify all-MiniLM-L6-v2 into $(MODEL_DIR) (scripts/fetch-model.sh)"
	@echo "make test     cargo test --all-targets, then cargo test --doc (CARGO_TEST_FLAGS=...)"
	@echo "make run      serve the default model (ARGS=... for extra serve arguments)"
	@echo "make openapi  write openapi/openapi.json"
	@echo "make bench    Python baseline forward benchmark (scripts/bench.sh)"
	@echo "make lint     cargo fmt --check and cargo clippy -D warnings"
	@echo "make stress   scripts/stress.sh, if present"
	@echo "make clean    cargo clean and Python caches (keeps models/ and the user cache)"

model:
	scripts/fetch-model.sh "$(MODEL_DIR)"

test: model
	$(CARGO) test --all-targets $(CARGO_TEST_FLAGS)
	$(CARGO) test --doc $(CARGO_TEST_FLAGS)

run: model
	$(CARGO) run --release -- serve --model "$(MODEL_DIR)" $(ARGS)

# Written to a temporary file first, so a failed build never leaves a truncated spec behind.
openapi:
	mkdir -p openapi
	$(CARGO) run --release -- openapi > openapi/openapi.json.tmp
	mv openapi/openapi.json.tmp openapi/openapi.json

bench: model
	scripts/bench.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

stress:
	@if [ -x scripts/stress.sh ]; then \
		scripts/stress.sh; \
	elif [ -f scripts/stress.sh ]; then \
		bash scripts/stress.sh; \
	else \
		echo "scripts/stress.sh not present; nothing to run"; \
	fi

clean:
	$(CARGO) clean
	rm -f openapi/openapi.json.tmp bench/results/*.tmp
	find bench tests -type d -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
