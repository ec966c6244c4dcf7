# The two first commands: `make lab` (the podman lab pair) and `make test` (every test).
# Everything the project needs is installed from here; nothing by hand.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that this platform carries, at service/constraints.txt's pin (GPU hosts get the
# CUDA build of the same version); an open range would pull a multi-GB CUDA build.
TORCH ?= $(shell grep -m1 '^torch==' service/constraints.txt)
APT_PACKAGES := redis-server espeak-ng nginx-light chromium chromium-driver libnss3-tools podman runc debootstrap iptables openssh-client
PYTEST_ARGS ?=
WHEEL := dist/tts_service-0.1.0-py3-none-any.whl
SERVICE_SOURCES := $(shell find service -name '*.py' -o -name '*.html' -o -name '*.js' -o -name '*.css' -o -name pyproject.toml | grep -v egg-info)
# Ansible, Molecule and podman see the venv's tools and the lab's podman settings.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# The lab containers' host keys, pinned by lab/containers.yml (Ansible checks them: ansible.cfg).
export TTS_LAB_KNOWN_HOSTS := $(CURDIR)/.lab/known_hosts
# The lab's secrets are an Ansible Vault file (lab/secrets.sh); its password file is .lab/vault-pass,
# named for what uses the lab (not for pytest, whose playbooks need no vault and run before it exists).
lab lab-down molecule drill bench soak: export ANSIBLE_VAULT_PASSWORD_FILE := $(CURDIR)/.lab/vault-pass
# The lab's certificates, handed over as files (lab/certificates.yml writes them; provided PKI mode).
export TTS_LAB_PROVIDED := $(CURDIR)/.lab/provided

.PHONY: help deps system-deps venv wheel test pytest lint molecule serve lab lab-down image drill bench bench-resume bench-throughput soak clean gpu-wheels screenshots
# make drill MODE=kill; make bench RUNS=5 MODES=switchover,kill,host-lost,redis-down
MODE ?= switchover
RUNS ?= 5
MODES ?= switchover,kill,host-lost,redis-down

help:
	@echo "make wheel         the service wheel and the wheelhouse of its pinned dependencies, in dist/ (what a deploy installs)"
	@echo "make lab           podman lab pair on this machine (nas, ctl, tts-a, tts-b, VIP), deployed"
	@echo "make lab-down      remove the lab containers and network"
	@echo "make test          install what tests need, run every test (pytest, ansible-lint and ruff, molecule)"
	@echo "make screenshots   the page's screenshots in docs/img/ (docs/usage.md), from a local node in Chromium"
	@echo "make serve         run the app at http://127.0.0.1:8000 with a local redis (state in .run/)"
	@echo "make drill         one failover drill on the lab (MODE=switchover|kill|redis-down|host-lost), prints the report"
	@echo "make bench         RTO benchmark: RUNS drills of each mode on the lab (prints numbers)"
	@echo "make bench-resume  failover-resume benchmark of two local nodes (prints numbers)"
	@echo "make bench-throughput  the worker pool: throughput at 1, 2, 3 workers, queue waits (local processes; prints numbers)"
	@echo "make soak          chaos soak on the lab: RUNS rounds of a random fault (ONLY=cut,paused: those kinds; prints a table)"
	@echo "make gpu-wheels    the wheels a GPU machine needs besides torch, into .gpu-wheels/ (GPU_PYTHON=3.11)"

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

$(WHEEL): $(SERVICE_SOURCES) | venv
	rm -rf service/build dist/tts_service-*.whl
	$(PY) -m pip wheel -q --no-deps -w dist ./service

# What a deploy installs on the hosts, with no package index there: the service wheel and its
# dependencies at the versions service/constraints.txt pins, for Debian 12's CPython 3.11 on x86_64.
WHEELHOUSE := dist/wheelhouse/.complete
$(WHEELHOUSE): service/wheelhouse.txt service/constraints.txt Makefile | venv
	rm -rf dist/wheelhouse && mkdir -p dist/wheelhouse
	$(PY) -m pip download -q --only-binary=:all: --python-version 3.11.2 --implementation cp \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  -d dist/wheelhouse -r service/wheelhouse.txt -c service/constraints.txt
	cp service/constraints.txt dist/wheelhouse/constraints.txt
	touch $@

wheel: $(WHEEL) $(WHEELHOUSE)

.lab/ssh/id_ed25519:
	mkdir -p .lab/ssh && ssh-keygen -q -t ed25519 -N '' -C ttslab -f $@

.lab/secrets.yml: lab/secrets.sh | venv
	lab/secrets.sh $@

.lab/molecule-secrets.yml: lab/secrets.sh | venv
	lab/secrets.sh $@

image: system-deps
	lab/build-image.sh

lab: deps wheel .lab/ssh/id_ed25519 .lab/secrets.yml image
	ansible-playbook lab/containers.yml
	ansible-playbook lab/certificates.yml
	ansible-playbook playbooks/site.yml -e @.lab/secrets.yml
	@echo; $(PY) lab/inventory.py

lab-down: venv
	ansible-playbook lab/containers.yml -e lab_state=absent

test: deps pytest lint molecule

# Two processes: most of the suite's time is spent waiting on real timings (pacing, leases, TTLs),
# not on the CPU (docs/measurements.md, "Test durations"). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
pytest: deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS) tests

# Ansible (production profile, .ansible-lint) and Python (ruff.toml: pyflakes, pycodestyle, imports,
# bugbear, pyupgrade, and no noqa that hides nothing).
lint: deps
	ansible-lint
	$(VENV)/bin/ruff check service tests bench lab scripts molecule roles

# The verifier's results go to .lab/molecule-junit.xml; on a failure their summary is printed last.
molecule: deps wheel .lab/ssh/id_ed25519 .lab/molecule-secrets.yml image
	rm -f .lab/molecule-junit.xml .lab/molecule-ansible.log
	molecule test || { $(PY) scripts/test-summary.py .lab/molecule-junit.xml; exit 1; }

serve: deps
	scripts/serve-local.sh

# docs/img/*.png: the real page on one local node in headless Chromium (docs/usage.md shows them).
screenshots: deps
	$(PY) scripts/screenshots.py

# A drill exactly as ctl's timer runs it (as the receiver's user, its key, its copy of the project);
# host-lost drills ask this machine to kill the container (lab/host_requests.py serves that meanwhile).
drill:
	python3 lab/host_requests.py -- podman exec ctl /usr/local/bin/tts-drill-run $(MODE)

bench: deps
	$(PY) bench/failover_rto.py --runs $(RUNS) --modes $(MODES)

bench-resume: deps
	$(PY) bench/resume_failover.py

# The worker pool: audio seconds per wall second at 1, 2 and 3 workers for a burst of 20 jobs from 4
# sessions, queue waits, the time a killed worker's job takes to run again (processes on this machine).
bench-throughput: deps
	$(PY) bench/throughput.py

# Chaos soak on the lab: RUNS rounds of a random fault at a random moment (prints a table).
soak: deps
	$(PY) bench/soak.py --runs $(RUNS) $(if $(ONLY),--only '$(ONLY)')

clean:
	rm -rf $(VENV) .run .pytest_cache dist service/build

# What the VibeVoice engine needs on a GPU machine that has torch (CUDA) and nothing else, as wheels to
# carry there (no network on it): the service with its [vibevoice] extra and everything that pulls in,
# at the versions the tests ran (scripts/gpu_wheels.py), for GPU_PYTHON on x86_64. torch itself is the
# machine's: its CUDA build is the platform's, gigabytes, and never carried.
GPU_PYTHON ?= 3.11
gpu-wheels: venv $(WHEEL)
	rm -rf .gpu-wheels && mkdir -p .gpu-wheels && cp $(WHEEL) .gpu-wheels/
	$(PY) scripts/gpu_wheels.py > .gpu-wheels/requirements.txt
	$(PY) -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
	  --platform manylinux_2_28_x86_64 --python-version $(GPU_PYTHON) --implementation cp -d .gpu-wheels \
	  -r .gpu-wheels/requirements.txt
	@du -sh .gpu-wheels; echo "on the GPU machine: pip install --no-index --find-links .gpu-wheels -r .gpu-wheels/requirements.txt $(notdir $(WHEEL))"
