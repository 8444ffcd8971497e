# make demo | make test | make bench
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The pretrained backbone's checkpoint (trainer/backbone.py verifies and unpacks it).
MUSICNN  := $(VENV)/share/genretagger/musicnn
BACKBONE := $(MUSICNN)/MSD_musicnn/.meta
BACKBONE_ONNX := $(MUSICNN)/backbone.onnx

.PHONY: demo test check bench lint clean backbone debian-tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[trainer,postgresql,dev]'
	touch $(STAMP)

# Fetched once at install time, never at run time: musicnn pins numpy<1.17, so only its
# wheel is downloaded (no dependencies) and checked against the sha256 in trainer/backbone.py.
$(BACKBONE): | $(STAMP)
	mkdir -p $(MUSICNN)
	$(BIN)/pip download --quiet --no-deps musicnn==0.1.0 -d $(MUSICNN)
	$(BIN)/python -m trainer.backbone unpack $(MUSICNN)

# The ONNX conversion (needs TensorFlow, the [trainer] extra), once: heads, bundles and
# the cold start then need onnxruntime only. Converted again when the conversion or its
# exact front-end rewrite changes.
$(BACKBONE_ONNX): $(BACKBONE) trainer/backbone.py trainer/rewrite.py
	$(BIN)/python -m trainer.backbone convert $(BACKBONE_ONNX)

backbone: $(BACKBONE_ONNX)

# npm's axe-core for the accessibility browser test (tests/e2e/test_browser_access.py), once
# into the virtualenv, never at run time. Debian's npm only when there is no npm at all
# (a Node.js from elsewhere brings its own, and Debian's npm would conflict with it).
AXE_CORE := $(VENV)/share/genretagger/node_modules/axe-core/axe.min.js
$(AXE_CORE): | $(STAMP)
	@if command -v npm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq npm; \
	else echo "install npm for the accessibility test: sudo apt-get install npm"; exit 1; fi
	npm install --silent --no-save --no-package-lock --no-audit --no-fund \
	    --prefix $(VENV)/share/genretagger axe-core@4.14.1

# The Debian packages the tests use, installed with one apt-get update when missing:
# Chromium drives the browser tests (Playwright never downloads a browser of its own);
# the independent tag readers and writers are what the write-back tests compare against;
# the tests start a throwaway PostgreSQL server of their own (tests/pgcluster.py);
# promtool (prometheus) tests the shipped alert rules; nginx and Caddy run the README's
# reverse-proxy snippets (openssl makes nginx's test certificate).
DEBIAN_TOOLS := chromium exiftool kid3-cli mediainfo ffmpeg ffprobe lame flac metaflac \
                oggenc opusenc
DEBIAN_TOOLS += promtool /usr/sbin/nginx caddy openssl
DEBIAN_PACKAGES := chromium libimage-exiftool-perl kid3-cli mediainfo ffmpeg lame flac \
                   vorbis-tools opus-tools postgresql
DEBIAN_PACKAGES += prometheus nginx-light caddy openssl
debian-tools:
	@if [ "$$(command -v $(DEBIAN_TOOLS) | wc -l)" = "$(words $(DEBIAN_TOOLS))" ] \
	    && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(DEBIAN_PACKAGES); \
	else echo "install the tools the tests use: sudo apt-get install $(DEBIAN_PACKAGES)"; exit 1; fi

demo: $(STAMP) $(BACKBONE_ONNX)
	$(BIN)/python -m daemon.cli.demo run

# Every core: whole modules to a worker, so a module's fixtures are made once.
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile

test: $(STAMP) $(BACKBONE_ONNX) debian-tools $(AXE_CORE)
	$(BIN)/ruff check daemon trainer migrations tests bench
	$(PYTEST)

# The edit-test loop: lint and every test that needs no trainer, daemon or browser.
check: $(STAMP) $(BACKBONE_ONNX) debian-tools
	$(BIN)/ruff check daemon trainer migrations tests bench
	$(PYTEST) -m "not slow"

bench: $(STAMP) $(BACKBONE_ONNX)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check daemon trainer migrations tests bench

clean:
	rm -rf $(VENV) build *.egg-info demo-station
