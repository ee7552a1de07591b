# napari-unet developer tasks. Debian/Ubuntu, Python 3.11+.
#
#   make test    venv + system packages, then the whole test suite under a virtual X server
#   make demo    venv + system packages, then the demo (a window if $DISPLAY is set, else a screenshot)
#
# The venv is .venv in the repo; it is updated in place, never deleted by these targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.napari-unet-installed
# Harmless pip warnings about unused local index folders on some machines.
PIP_NOISE := is ignored: it is neither a file nor a directory
PYTEST_ARGS ?=
BENCH_ARGS ?=
DEMO_ARGS ?=
SCREENSHOTS ?= docs/images

# Xvfb for napari's OpenGL canvas (Qt's offscreen platform crashes in vispy), Mesa's software GL,
# and the X/xcb libraries that the PyQt6/PyQt5 wheels' xcb platform plugin loads but does not ship
# (read off /proc/PID/maps of a running viewer). Package names checked on Debian 12 and 13.
SYSDEPS := xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libfontconfig1 libxkbcommon-x11-0 \
	libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1
# 24-bit screen: xvfb-run's default (8-bit, 640x480) is not enough for OpenGL.
XVFB_RUN := xvfb-run -a -s "-screen 0 1600x1000x24"

.PHONY: help venv sysdeps test demo bench lint clean

help:
	@echo "make test    set up .venv and system packages, run the test suite under Xvfb"
	@echo "make demo    set up, then train a quick model on the sample nuclei and show it in napari"
	@echo "make venv    create/update .venv with pip install -c $(CONSTRAINTS) -e .[testing]"
	@echo "make sysdeps install Xvfb, Mesa and Qt's X libraries (apt, as root) if missing"
	@echo "make bench   run the CPU benchmarks (benchmarks/bench_*.py; BENCH_ARGS=--tiny for a quick pass)"
	@echo "make lint    ruff check"
	@echo "make clean   remove build outputs and caches (keeps .venv)"

venv: $(STAMP)

# Re-run only when the dependency declarations change; otherwise `make venv` is instant.
$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "python3 not found: install Python 3.11+"; exit 1; }
	@if [ ! -x $(VPY) ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	@echo "installing into $(VENV): pip install -c $(CONSTRAINTS) -e '.[testing]'"
	@set -o pipefail; \
	$(VPY) -m pip install --quiet --upgrade pip 2>&1 | { grep -v "$(PIP_NOISE)" || true; } && \
	$(VPY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[testing]' 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@touch $@

sysdeps:
	@if ! command -v dpkg >/dev/null 2>&1; then \
		echo "sysdeps: not a Debian/Ubuntu system; make sure xvfb-run, Mesa OpenGL and Qt's xcb libraries are installed"; \
		exit 0; \
	fi; \
	missing=""; \
	for p in $(SYSDEPS); do \
		dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "sysdeps: installing$$missing"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "sysdeps: missing system packages:$$missing"; \
		echo "install them with:"; \
		echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends$$missing"; \
		exit 1; \
	fi

test: venv sysdeps
	$(XVFB_RUN) $(VPY) -m pytest -q -ra $(PYTEST_ARGS)
	@echo "widget tests again with PyQt6 (napari 0.9 deprecates PyQt5):"
	QT_API=pyqt6 $(XVFB_RUN) $(VPY) -m pytest -q -ra -o qt_api=pyqt6 tests/widgets $(PYTEST_ARGS)

demo: venv sysdeps
	@if [ -n "$$DISPLAY" ]; then \
		$(VPY) resources/demo.py $(DEMO_ARGS); \
	else \
		echo "no \$$DISPLAY: running headless, screenshots -> $(SCREENSHOTS)"; \
		$(XVFB_RUN) $(VPY) resources/demo.py --headless --screenshots $(SCREENSHOTS) $(DEMO_ARGS); \
	fi

bench: venv sysdeps
	@shopt -s nullglob; files=(benchmarks/bench_*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks/bench_*.py yet"; exit 0; fi; \
	run=""; if [ -z "$$DISPLAY" ]; then run='$(XVFB_RUN)'; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; eval $$run $(VPY) "$$f" $(BENCH_ARGS) || exit 1; done

lint: venv
	$(VPY) -m ruff check .

clean:
	rm -rf build dist .pytest_cache .ruff_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
