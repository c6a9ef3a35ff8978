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

.PHONY: help model browser test screenshots run openapi bench lint stress clean
.PHONY: validate-deploy measure-memory
.PHONY: bench-lime bench-perturb bench-ig test-slow schemathesis

help:
	@echo "make model    fetch and verify all-MiniLM-L6-v2 into $(MODEL_DIR) (scripts/fetch-model.sh)"
	@echo "make browser  install chromium and chromedriver for the UI end-to-end test (scripts/install-browser.sh)"
	@echo "make test     cargo test --all-targets, cargo test --doc (CARGO_TEST_FLAGS=...), then Schemathesis"
	@echo "make schemathesis  the OpenAPI contract fuzzed on a live release server (scripts/schemathesis.sh; ARGS=...)"
	@echo "make screenshots  PNGs of the playground's main views into docs/screenshots (default model)"
	@echo "make run      serve the default model (ARGS=... for extra serve arguments)"
	@echo "make openapi  write openapi/openapi.json"
	@echo "make bench    Python baseline forward benchmark (scripts/bench.sh)"
	@echo "make bench-lime  POST /explain/lime against Python lime, side by side (scripts/bench-lime.sh; ARGS=--quick)"
	@echo "make bench-perturb  POST /explain/shap against Python shap, and occlusion/counterfactual costs (scripts/bench-perturb.sh; ARGS=--quick)"
	@echo "make bench-ig    POST /explain/gradients (IG, 50 steps) against Captum, and evaluate's cost (scripts/bench-ig.sh; ARGS=--quick)"
	@echo "make test-slow   the slow LIME parity tests (release build, --ignored)"
	@echo "make lint     cargo fmt --check and cargo clippy -D warnings"
	@echo "make stress   load and soak: 2x capacity for 90 s, answers checked, RSS watched (scripts/stress.sh)"
	@echo "make clean    cargo clean and Python caches (keeps models/ and the user cache)"
	@echo "make validate-deploy  check docker/ offline: lint, schemas, nginx in front of two replicas (scripts/validate-deploy.sh)"
	@echo "make measure-memory   peak memory of one replica under load (scripts/measure-memory.sh)"

model:
	scripts/fetch-model.sh "$(MODEL_DIR)"

# The Schemathesis run (about 20 s) serves the debug binary the cargo tests already built.
test: model browser
	$(CARGO) test --all-targets $(CARGO_TEST_FLAGS)
	$(CARGO) test --doc $(CARGO_TEST_FLAGS)
	GLASSBOX_ST_PROFILE=debug scripts/schemathesis.sh

# Release server; e.g. ARGS="--max-examples 200" or GLASSBOX_ST_MAX_TIME=300 for a longer hunt.
schemathesis:
	scripts/schemathesis.sh $(ARGS)

# The UI end-to-end test (tests/ui_e2e.rs) drives a headless Chromium.
browser:
	scripts/install-browser.sh

# The same end-to-end test over the default model, saving a PNG of each main view.
screenshots: model browser
	GLASSBOX_UI_E2E_MODEL="$(MODEL_DIR)" GLASSBOX_SCREENSHOTS=docs/screenshots \
		$(CARGO) test --test ui_e2e $(CARGO_TEST_FLAGS)

run: model
	$(CARGO) run --release -- serve --model "$(MODEL_DIR)" $(ARGS)

# Written to a temporary file first, so a failed build never leaves a truncated spec behind.
openapi:
	mkdir -p openapi
	$(CARGO) run --release -- openapi > openapi/openapi.json.tmp
	mv openapi/openapi.json.tmp openapi/openapi.json

bench: model
	scripts/bench.sh

# About 6 minutes on an idle machine (Python lime alone takes ~110 s per repetition), so not
# part of `make bench`; ARGS=--quick for a 30-second check.
bench-lime: model
	scripts/bench-lime.sh $(ARGS)

# Kernel SHAP against Python shap at the same number of model evaluations, plus the cost of
# occlusion and the flip search at their defaults (a few minutes; ARGS=--quick for one sentence).
bench-perturb: model
	scripts/bench-perturb.sh $(ARGS)

# A few minutes: three sentences x 3 alternating repetitions, then evaluate's cost.
bench-ig: model
	scripts/bench-ig.sh $(ARGS)

# Statistical parity with Python lime at 5000 samples, three seeds (minutes, release build).
test-slow: model
	$(CARGO) test --release --test lime -- --ignored

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

# Deployment files in docker/ (docker/README.md). No container engine needed.
validate-deploy: model
	scripts/validate-deploy.sh

measure-memory: model
	scripts/measure-memory.sh
