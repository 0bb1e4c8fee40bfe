# The two set-up commands: `make demo` (curate a small real corpus end to end) and `make test`.
# Each installs what it needs first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
DEMO := build/demo

.PHONY: setup demo test test-slow test-all bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m pipelines.demo $(DEMO)

test: setup
	.venv/bin/pytest -q

test-slow: setup
	.venv/bin/pytest -q -m slow

test-all: setup
	.venv/bin/pytest -q -m "not gpu"

bench: setup
	$(PY) bench/curate.py

clean:
	rm -rf build
