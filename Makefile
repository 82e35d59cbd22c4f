# The README's two commands: `make demo` and `make test`. Both build .venv/ at the project root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench-quality bench-edge clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on disk; anything unpinned would pull a CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[train,pretrained,calibrate,adapter,view,opcua,mqtt,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/ssae edge demo --work demo-run

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

bench-quality: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/quality.py

bench-edge: $(STAMP)
	$(BIN)/ssae edge bench --example configs/edge/line.example.toml --example configs/edge/demo.toml --write BENCHMARKS.md --json bench-out/edge/edge-bench.json

clean:
	rm -rf $(VENV) demo-run
