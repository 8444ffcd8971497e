# make demo | make test | make bench
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint clean tag-tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[trainer,dev]'
	touch $(STAMP)

# Debian's Chromium drives the browser tests; Playwright never downloads a browser of its own.
/usr/bin/chromium:
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests"; exit 1; fi

# The independent tag readers and writers the write-back tests compare against (Debian's).
TAG_TOOLS := exiftool kid3-cli mediainfo ffmpeg ffprobe lame flac metaflac oggenc opusenc
TAG_PACKAGES := libimage-exiftool-perl kid3-cli mediainfo ffmpeg lame flac vorbis-tools opus-tools
tag-tools:
	@if command -v $(TAG_TOOLS) >/dev/null 2>&1 && [ "$$(command -v $(TAG_TOOLS) | wc -l)" = "$(words $(TAG_TOOLS))" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(TAG_PACKAGES); \
	else echo "install the tag tools the tests use: sudo apt-get install $(TAG_PACKAGES)"; exit 1; fi

demo: $(STAMP)
	$(BIN)/python -m daemon.demo run

test: $(STAMP) /usr/bin/chromium tag-tools
	$(BIN)/ruff check daemon trainer migrations tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check daemon trainer migrations tests bench

clean:
	rm -rf $(VENV) build *.egg-info demo-station
