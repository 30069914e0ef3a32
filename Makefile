# The two commands of the README: `make reproduce` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install reproduce test bench clean

install: $(STAMP)

# torch goes in first, through the constraints file, so that the pinned CPU wheel is taken. Each step says what
# it is doing (the whole install takes a minute or two; pip itself is kept quiet).
$(STAMP): pyproject.toml constraints.txt
	@echo "[install 1/4] creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "[install 2/4] updating pip"
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "[install 3/4] installing torch, the CPU wheel pinned in constraints.txt (the longest step)"
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	@echo "[install 4/4] installing softhard with its extras (numpy, scipy, matplotlib, transformers, dask, ...)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,test]"
	@touch $(STAMP)
	@echo "[install] done: $(VENV) is ready ('make reproduce', 'make test')"

reproduce: $(STAMP)
	$(BIN)/softhard reproduce --out results

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --out benchmarks/results.json

clean:
	rm -rf $(VENV) results
