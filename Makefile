# The two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synthfm-installed
export HF_HUB_OFFLINE := 1

.PHONY: install browser demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The report test renders HTML in headless Chromium (Debian's package); install it when it is absent.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing chromium for the report test"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(BIN)/synthfm run configs/demo.yaml
	@echo "report: $(CURDIR)/runs/demo/report.html"

test: install browser
	SYNTHFM_PROGRESS=0 $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache
