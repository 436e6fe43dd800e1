# Two commands on a fresh machine: `make run` (default smoke suite), `make test`.
# Both create or reuse .venv. torch is pinned to the CPU build 2.13.0 so no multi-GB
# CUDA build is pulled; lab machines bring their own CUDA torch (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[onnx,nvidia,report,hf,test]'
	rm -f $(VENV)/.installed-*
	touch $@

.PHONY: install run test
install: $(STAMP)

run: $(STAMP)
	$(BIN)/harness run

test: $(STAMP)
	$(BIN)/python -m pytest
