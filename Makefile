# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo demo-system-packages lint bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[dev,dist,demo]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP) demo-system-packages
	$(BIN)/sharpscope demo --out demo_run --report reports/demo

# Optional: real recorded bona fide speech and a TTS attack for the demo corpus.  Installed with apt when
# running as root with apt available; skipped (with a message) otherwise -- the demo works without them.
demo-system-packages:
	@if command -v espeak-ng >/dev/null 2>&1 && [ -d /usr/share/asterisk/sounds/en ]; then \
	  echo "demo: espeak-ng and asterisk voice prompts present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  timeout 300 sh -c 'apt-get install -y -qq espeak-ng asterisk-core-sounds-en-wav >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq espeak-ng asterisk-core-sounds-en-wav >/dev/null 2>&1)' \
	  || echo "demo: could not install espeak-ng / asterisk-core-sounds-en-wav; using synthesised speech only"; \
	else echo "demo: not root; skipping optional system packages (espeak-ng, asterisk-core-sounds-en-wav)"; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_run
