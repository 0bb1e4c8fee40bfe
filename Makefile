# The two set-up commands: `make demo` (curate a small real corpus end to end) and `make test`.
# Each installs what it needs first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
DEMO := build/demo

.PHONY: setup demo demo-train test test-slow test-all bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m pipelines.demo $(DEMO)

# Training demo: spoken-language ID from TTS audio, pretrain → SFT → DPO on Ray Train (CPU, ~6 min).
demo-train: setup
	$(PY) -m pipelines.demo_train build/demo-train

test: setup
	.venv/bin/pytest -q

test-slow: setup
	.venv/bin/pytest -q -m slow

test-all: setup
	.venv/bin/pytest -q -m "not gpu"

bench: setup
	$(PY) bench/curate.py
	$(PY) bench/train.py
	$(PY) bench/labels.py

clean:
	rm -rf build
