# The two first commands: `make lab` (the podman lab pair) and `make test` (every test).
# Everything the project needs is installed from here; nothing by hand.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that this platform carries; an open range would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
APT_PACKAGES := redis-server espeak-ng chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: help deps system-deps venv test test-unit test-integration serve bench-resume clean

help:
	@echo "make test          install what tests need, run every test"
	@echo "make serve         run the app at http://127.0.0.1:8000 with a local redis (state in .run/)"
	@echo "make bench-resume  failover-resume benchmark of two local nodes (prints numbers)"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: service/pyproject.toml requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e 'service[vibevoice]' -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

deps: system-deps venv

test: deps
	$(PY) -m pytest $(PYTEST_ARGS) tests

test-unit: deps
	$(PY) -m pytest $(PYTEST_ARGS) tests/unit

serve: deps
	scripts/serve-local.sh

bench-resume: deps
	$(PY) bench/resume_failover.py

clean:
	rm -rf $(VENV) .run .pytest_cache
