# The two front-door commands are `make demo` and `make test`; each installs what is missing.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON_PREFERENCE := only-system
PYTEST_ARGS ?=

.PHONY: deps sync lint test unit broker demo bench schemas definitions dashboard clean

deps:
	@scripts/ensure-deps.sh

sync: deps
	@$(UV) sync --frozen --quiet

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy schemas/src core/src services/*/src deploy/grafana/dashboard.py

# Every tier (unit, broker, image, vm) runs; none is skipped.
test: lint
	$(UV) run --frozen pytest $(PYTEST_ARGS)

unit: sync
	$(UV) run --frozen pytest -m unit $(PYTEST_ARGS)

broker: sync
	$(UV) run --frozen pytest -m broker $(PYTEST_ARGS)

demo: sync
	$(UV) run --frozen python examples/demo.py

bench: sync
	$(UV) run --frozen python bench/bus.py
	$(UV) run --frozen python bench/build.py
	$(UV) run --frozen python bench/assemble.py
	$(UV) run --frozen python bench/tester.py
	$(UV) run --frozen python bench/repo.py
	$(UV) run --frozen python bench/apply.py
	$(UV) run --frozen python bench/ledger.py
	$(UV) run --frozen python bench/fleet.py
	$(UV) run --frozen python bench/pipeline.py

# Regenerate committed artefacts derived from code (tests fail when they are stale).
schemas: sync
	$(UV) run --frozen python -m imgline.schemas.export schemas/json
definitions: sync
	$(UV) run --frozen imgline definitions -o deploy/rabbitmq/definitions.json
dashboard: sync
	$(UV) run --frozen python deploy/grafana/dashboard.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
