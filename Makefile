# kap-forecast: the two commands of the README (serve, test), and helpers.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export FORECAST_MODELS ?= $(CURDIR)/models
# The demo's model-signing key (development): kept outside the registry, in instance/
# (git-ignored); `forecast train` signs with it and the service verifies with it.
export FORECAST_SIGNING_KEY_FILE ?= $(CURDIR)/instance/model-signing.key

.PHONY: install serve test lint docs demo-data demo-store model bench clean lock

# Dependencies come from requirements.lock (every version pinned, every file checked
# against its sha256); the project itself is then installed without resolving again.
$(BIN)/forecast: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e '.[dev,docs,dask]'
	touch $@

install: $(BIN)/forecast

# The demo cohort is committed; regenerate it only if someone deleted it.
data/demo/patients.csv: | install
	$(BIN)/forecast simulate --patients 300 --seed 20261133 --out data/demo

demo-data: data/demo/patients.csv

$(FORECAST_SIGNING_KEY_FILE): | install
	$(BIN)/forecast models keygen "$@"

# Train only when the registry holds no signed version (a folder with a MANIFEST.sig);
# models/README.md alone does not count. The service serves the promoted version, or
# the newest one while nothing was ever promoted (see docs/researcher-workflow.md).
model: demo-data $(FORECAST_SIGNING_KEY_FILE)
	@if ! ls "$(FORECAST_MODELS)"/*/MANIFEST.sig >/dev/null 2>&1; then \
		$(BIN)/forecast train data/demo --models "$(FORECAST_MODELS)"; fi

# The demo store: the demo cohort loaded through the API's idempotent ingestion
# (a rerun stores nothing new) and one clinician token kept in instance/.
demo-store: demo-data install
	$(BIN)/forecast load data/demo
	@mkdir -p instance
	@if ! $(BIN)/forecast tokens list | grep -q '^demo-clinician	'; then \
		(umask 077; $(BIN)/forecast tokens create --role clinician --name demo-clinician \
			> instance/demo-clinician.token); fi

# Plain HTTP on loopback for development: the session cookie is sent without Secure
# (FORECAST_PLAIN_HTTP=1). In production a TLS proxy sits in front (docs/security.md).
serve: model demo-store
	@echo "Clinician token (demo): $$(cat instance/demo-clinician.token)"
	@echo "Clinician page: http://$(HOST):$(PORT)/login  API: http://$(HOST):$(PORT)/api/v1/health"
	FORECAST_PLAIN_HTTP=1 $(BIN)/forecast serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check forecast service tests bench research

test: install
	$(BIN)/ruff check forecast service tests bench research
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The documentation site into site/ (docs/, mkdocs.yml); --strict fails on broken links.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Writes bench/results.json and docs/benchmarks-results.md (both git-ignored).
bench: install
	$(BIN)/python bench/run.py

# Regenerate requirements.lock from pyproject.toml (after changing a dependency), with
# pip-tools in its own environment under build/ (git-ignored).
lock:
	$(PY) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q pip-tools
	build/lock-venv/bin/pip-compile -q --generate-hashes --allow-unsafe --extra dev --extra docs --extra dask \
		--strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
