# Two commands on a fresh machine: `make run` (default smoke suite), `make test`.
# Both create or reuse .venv. torch is pinned to the CPU build 2.13.0 so no multi-GB
# CUDA build is pulled; lab machines bring their own CUDA torch (see README).
# `make test` also builds llama-cpp-python from source (~6 min on 2 cores, once), so the
# llama.cpp backend is tested for real; `make run` skips it (its smoke row is optional).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
CORE := $(VENV)/.core-$(HASH)
FULL := $(VENV)/.full-$(HASH)

$(CORE):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[onnx,nvidia,report,hf,serve,seal,test]'
	rm -f $(VENV)/.core-*
	touch $@

$(FULL): $(CORE)
	$(BIN)/python -m pip install -q -e '.[onnx,nvidia,report,hf,serve,llamacpp,mlperf,seal,fleet,test]'
	rm -f $(VENV)/.full-*
	touch $@

.PHONY: install run test fuzz
install: $(FULL)

run: $(CORE)
	$(BIN)/harness run

test: $(FULL)
	$(BIN)/python -m pytest

# Not part of `make test`: ~2,800 malformed inputs through the real CLI, one process each
# (about 15-20 min on 2 cores); the table goes to results/fuzz/summary.md (issue 14).
FUZZ_CASES ?= 2800
FUZZ_SEED ?= 0
fuzz: $(CORE)
	$(BIN)/python scripts/fuzz_inputs.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --out results/fuzz

# Not part of `make test`: mutation testing of the judging core (metrics, energy figures,
# verdicts, roofline, accuracy, cost, the ONNX fallback guard) with mutmut, per module against
# its fast unit tests; prints mutants / killed / survived / equivalent / score per module
# (issue 19; README "Mutation testing"). MUTATION_MODULES=roofline runs one module.
.PHONY: mutation
MUTATION_MODULES ?=
mutation: $(CORE)
	$(BIN)/python -m pip install -q -e '.[mutation]'
	nice -n 10 $(BIN)/python scripts/mutation.py $(MUTATION_MODULES) --out results/mutation/summary.md
