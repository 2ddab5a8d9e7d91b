# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo demo-system-packages lint typecheck bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[dev,dist,demo]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Everything but the tests marked slow (end-to-end runs over 10 s); `make test` still runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

demo: $(STAMP) demo-system-packages
	$(BIN)/sharpscope demo --out demo_run --report reports/demo

# Optional: real recorded bona fide speech and a TTS attack for the demo corpus.  Installed with apt when
# running as root with apt available; skipped (with a message) otherwise -- the demo works without them.
# The checks look for exactly what sharpscope/data/demo_corpus.py reads: WAV voice prompts over 8000 bytes
# under /usr/share/asterisk/sounds/en (the G.722/GSM/ulaw prompt packages do not count) and an espeak-ng or
# espeak executable.
ASTERISK_WAVS = find -L /usr/share/asterisk/sounds/en -name '*.wav' -size +8000c 2>/dev/null | head -n 1 | grep -q .
HAVE_TTS = { command -v espeak-ng || command -v espeak; } >/dev/null 2>&1
demo-system-packages:
	@if $(ASTERISK_WAVS) && $(HAVE_TTS); then \
	  echo "demo: espeak-ng and asterisk WAV voice prompts present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  timeout 300 sh -c 'apt-get install -y -qq espeak-ng asterisk-core-sounds-en-wav >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq espeak-ng asterisk-core-sounds-en-wav >/dev/null 2>&1)' \
	  || true; \
	  if $(ASTERISK_WAVS); then echo "demo: asterisk WAV voice prompts present"; \
	  else echo "demo: no asterisk WAV voice prompts (asterisk-core-sounds-en-wav); bona fide speech is synthesised"; fi; \
	  if $(HAVE_TTS); then echo "demo: espeak-ng present"; \
	  else echo "demo: no espeak-ng; the TTS attack D05 is left out"; fi; \
	else \
	  if $(ASTERISK_WAVS); then echo "demo: asterisk WAV voice prompts present"; \
	  else echo "demo: no asterisk WAV voice prompts and not root; bona fide speech is synthesised"; fi; \
	  if $(HAVE_TTS); then echo "demo: espeak-ng present"; \
	  else echo "demo: no espeak-ng and not root; the TTS attack D05 is left out"; fi; \
	fi

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_run
