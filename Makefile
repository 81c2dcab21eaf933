# The two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synthfm-installed
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/synthfm demo --out runs/demo

test: install
	SYNTHFM_PROGRESS=0 $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache
