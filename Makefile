# funfleet: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
BIN       := $(VENV)/bin
CACHE     ?= $(HOME)/.cache/funfleet
PORT      ?= 8000
SUITE     ?= bookworm
SCENARIOS ?= default fleet gpu online edge
export PATH := $(abspath $(BIN)):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)

.PHONY: help setup system-packages lint collection test release deploy rollback traffic test-app test-unit test-molecule image demo demo-down serve-app bench clean

help:
	@echo "make demo       set everything up, deploy to a local fleet (lb, 2 app hosts, Prometheus), print real predictions"
	@echo "make test       lint + app tests + molecule scenarios (what CI runs)"
	@echo "make test-app   the inference service's tests only"
	@echo "make serve-app PORT=8000   the app under a real uWSGI on 127.0.0.1:PORT"
	@echo "make bench      throughput benchmark (prints a table)"
	@echo "make collection build the collection funfleet.fleet and run ansible-test sanity on it"
	@echo "make release FROM=files/models/digits/1 VERSION=2   cut a new release version (.cache/releases/)"
	@echo "make deploy MODEL=.cache/releases/digits/2          rolling deploy to the local fleet"
	@echo "make rollback                                       roll the local fleet back"
	@echo "make traffic DURATION=60 RATE=40                    client traffic through the local fleet (a canary needs it)"

$(VENV)/.installed: requirements.txt app/requirements.txt app/requirements-dev.txt app/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r app/requirements.txt -r app/requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e ./app
	touch $@

system-packages:
	@scripts/bootstrap/ensure-system-packages

setup: $(VENV)/.installed system-packages

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production

# The repository as the collection funfleet.fleet: build, install, ansible-test sanity.
collection: setup
	$(PY) scripts/collection-check

test-app: setup
	cd app && ../$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests

image: setup
	@mkdir -p .cache
	@tmp=$$(mktemp .cache/image.XXXXXX) && { scripts/bootstrap/build-testhost-image $(SUITE) > "$$tmp" || { rm -f "$$tmp"; exit 1; }; } && mv -f "$$tmp" .cache/image
	@echo "test-host image: $$(cat .cache/image)"

test-molecule: image
	for s in $(SCENARIOS); do \
	  MOLECULE_IMAGE=$${MOLECULE_IMAGE:-$$(cat .cache/image)} $(BIN)/molecule test -s $$s; \
	done

# Everything CI runs (.ci/test-stages). The log is kept in .cache/test.log; whether a stage
# fails or not, the output ends with the stage timings and one line of pytest totals over all stages.
test:
	@mkdir -p .cache
	@rc=0; SCENARIOS="$(SCENARIOS)" .ci/test-stages 2>&1 | tee .cache/test.log || rc=$$?; \
	  .ci/test-totals .cache/test.log || rc=1; exit $$rc

demo: image
	MOLECULE_IMAGE=$${MOLECULE_IMAGE:-$$(cat .cache/image)} scripts/demo

demo-down: setup
	$(BIN)/molecule destroy -s demo

# Roll releases over the local fleet (inventory/local, the hosts `make demo` starts).
release: setup
	$(PY) -m inference.release_tools cut $(FROM) $(VERSION)

deploy: setup
	$(BIN)/ansible-playbook playbooks/deploy.yml -e app_release_model_src=$(abspath $(MODEL))

rollback: setup
	$(BIN)/ansible-playbook playbooks/rollback.yml

# Bounded client traffic through the local fleet's balancer (a canary's windows need requests).
traffic: setup
	$(PY) scripts/traffic $(or $(DURATION),60) $(or $(RATE),40)

# The app alone under the uWSGI options every host runs (roles/uwsgi/files/base.ini), with
# uWSGI's keep-alive HTTP router in front of the workers instead of nginx.
serve-app: setup
	cd app && PROMETHEUS_MULTIPROC_DIR=$$(mktemp -d) exec ../$(BIN)/uwsgi --ini ../roles/uwsgi/files/base.ini \
	  --processes $$(nproc) --http 127.0.0.1:$(PORT) --http-keepalive --module wsgi:app

bench: setup
	@scripts/bootstrap/ensure-system-packages
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) .cache
