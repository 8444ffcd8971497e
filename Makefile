# make demo | make test | make bench
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[trainer,dev]'
	touch $(STAMP)

# Debian's Chromium drives the browser tests; Playwright never downloads a browser of its own.
/usr/bin/chromium:
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests"; exit 1; fi

demo: $(STAMP)
	$(BIN)/python -m daemon.demo run

test: $(STAMP) /usr/bin/chromium
	$(BIN)/ruff check daemon trainer migrations tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check daemon trainer migrations tests bench

clean:
	rm -rf $(VENV) build *.egg-info demo-station
