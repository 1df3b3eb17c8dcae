# Natter: development and CI entry points. `make help` lists them.
#
# Every recipe runs in one bash process with -eu -o pipefail (.ONESHELL), so a
# failing command fails the target, and make exits non-zero.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --no-print-directory

VENV    := .venv
VENV_PY := $(VENV)/bin/python
# Touched after a successful install: `make install` does nothing until one of the
# requirement files (or the SDK's pyproject.toml) is newer than it, or the venv's
# interpreter has gone away.
STAMP   := $(VENV)/.natter-installed
INSTALL_INPUTS := requirements.txt requirements-dev.txt $(wildcard client/pyproject.toml)
NODE_STAMP := node_modules/.natter-installed

# make run
HOST ?= 127.0.0.1
PORT ?= 8000
# make test: the servers the suite runs against unless DATABASE_URL / REDIS_URL are
# already set in the environment (set them empty to run the suite embedded).
# pytest-django creates and drops the test database `test_natter` itself.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/natter
TEST_REDIS_URL    ?= redis://127.0.0.1:6379/1
PYTEST_ARGS ?=

# Prints the interpreter the venv is built with: $PYTHON if set, else the first
# Python >= 3.12 among python3.13 and python3.12 on PATH, pyenv's 3.12.* and 3.13.*
# (newest patch release first), and python3. Fails, saying what to install, if none.
# (A pyenv shim counts only if it actually runs: a shim for a version pyenv has not
# selected exits 127.)
define PICK_PYTHON
natter_py_ok() {
  "$$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}
natter_py_real() {
  "$$1" -c 'import sys; print(sys.executable)'
}
natter_pick_python() {
  local c root tried=""
  if [ -n "$${PYTHON:-}" ]; then
    if natter_py_ok "$$PYTHON"; then natter_py_real "$$PYTHON"; return 0; fi
    echo "error: PYTHON=$$PYTHON is not a working Python 3.12 or newer" \
         "($$("$$PYTHON" -V 2>&1 | head -n1 || true))." >&2
    echo "       Natter needs Python >= 3.12 (Django 6.1); unset PYTHON or point it at one." >&2
    return 1
  fi
  for c in python3.13 python3.12; do
    if ! command -v "$$c" >/dev/null 2>&1; then tried+="  $$c: not on PATH"$$'\n'; continue; fi
    if natter_py_ok "$$c"; then natter_py_real "$$c"; return 0; fi
    tried+="  $$c: $$(command -v "$$c") does not run here, or is older than 3.12"$$'\n'
  done
  root=$$(pyenv root 2>/dev/null) || root=$${PYENV_ROOT:-$$HOME/.pyenv}
  for c in $$(ls -d "$$root"/versions/3.12.* 2>/dev/null | sort -rV) \
           $$(ls -d "$$root"/versions/3.13.* 2>/dev/null | sort -rV); do
    if natter_py_ok "$$c/bin/python"; then natter_py_real "$$c/bin/python"; return 0; fi
    tried+="  $$c/bin/python: does not run here, or is older than 3.12"$$'\n'
  done
  [ -n "$$(ls -d "$$root"/versions/3.1[23].* 2>/dev/null)" ] \
    || tried+="  pyenv: no 3.12.* or 3.13.* under $$root/versions"$$'\n'
  if command -v python3 >/dev/null 2>&1; then
    if natter_py_ok python3; then natter_py_real python3; return 0; fi
    tried+="  python3: $$(python3 -V 2>&1 | head -n1 || true), too old"$$'\n'
  fi
  {
    echo "error: no Python 3.12 or newer found. Natter needs it: Django 6.1 does not run"
    echo "       on 3.11, where pip would silently install Django 5.2 instead."
    echo "Looked at:"
    printf '%s' "$$tried"
    echo "Install one of:"
    echo "  pyenv install 3.12                       (or 3.13), then run make again"
    echo "  apt-get install -y python3.13 python3.13-venv   (Debian 13 / Ubuntu 24.10+)"
    echo "or point PYTHON at one: make install PYTHON=/path/to/python3.12"
  } >&2
  return 1
}
endef

.PHONY: help install run run-cluster bench test test-faults lint format services clean distclean which-python

help:
	@printf '%s\n' \
	  "Natter: make targets" \
	  "  make run        install, migrate, then serve web UI + API + WebSocket on" \
	  "                  http://$(HOST):$(PORT) (embedded SQLite etc. unless DATABASE_URL /" \
	  "                  REDIS_URL are set; with REDIS_URL also a Celery worker and beat;" \
	  "                  Ctrl-C stops them all)" \
	  "  make test       install, check (or start) Postgres and Redis, run the whole suite" \
	  "  make test-faults  the fault suite (tests/faults): kills and restarts daphne, Celery," \
	  "                  its own private Postgres and Redis; prints lost/duplicated per fault" \
	  "  make run-cluster  nginx on :$(PORT) in front of one daphne per CPU, two Celery" \
	  "                  workers and beat, on Postgres and Redis (docs/scaling.md)" \
	  "  make bench      run every benchmark on a server it starts; update docs/benchmarks.md" \
	  "  make install    create .venv (Python >= 3.12), pip install -r requirements-dev.txt" \
	  "  make lint       ruff check + ruff format --check" \
	  "  make format     ruff check --fix + ruff format" \
	  "  make services   check that Postgres and Redis answer; start them if stopped" \
	  "  make clean      remove caches and build leftovers (keeps .venv and var/)" \
	  "  make distclean  clean, then remove .venv" \
	  "  make which-python  print the interpreter .venv would be created with" \
	  "Variables: HOST=$(HOST) PORT=$(PORT) PYTHON=<interpreter> PYTEST_ARGS=<pytest args>" \
	  "  TEST_DATABASE_URL=$(TEST_DATABASE_URL)" \
	  "  TEST_REDIS_URL=$(TEST_REDIS_URL)" \
	  "  (make test uses DATABASE_URL / REDIS_URL instead when they are set)"

install: $(STAMP) $(NODE_STAMP)
	@:

# The browser's JavaScript dependencies (libsodium-wrappers), exactly as
# package-lock.json pins them; served as static files, no bundler.
$(NODE_STAMP): package.json package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then
	  echo "error: npm (Node.js >= 20) is needed for the web UI's libraries;" \
	       "on Debian/Ubuntu: apt-get install nodejs npm" >&2
	  exit 1
	fi
	echo "install: npm ci"
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Exists while the venv's interpreter does: a venv whose interpreter was removed
# (a dangling symlink) counts as missing and forces the install below.
$(VENV_PY):
	@:

$(STAMP): $(INSTALL_INPUTS) $(VENV_PY)
	@$(PICK_PYTHON)
	if [ -e $(VENV) ] && ! natter_py_ok $(VENV_PY); then
	  echo "install: $(VENV) has no working Python >= 3.12; recreating it" >&2
	  rm -rf $(VENV)
	fi
	if [ ! -e $(VENV) ]; then
	  py=$$(natter_pick_python)
	  echo "install: creating $(VENV) with $$py ($$("$$py" -V 2>&1))"
	  if ! "$$py" -m venv $(VENV); then
	    rm -rf $(VENV)
	    echo "error: '$$py -m venv' failed; on Debian/Ubuntu install the matching" \
	         "python3.X-venv package." >&2
	    exit 1
	  fi
	  $(VENV_PY) -m pip install --quiet --no-input --upgrade pip
	fi
	echo "install: pip install -r requirements-dev.txt"
	$(VENV_PY) -m pip install --quiet --no-input -r requirements-dev.txt
	$(VENV_PY) -m pip check
	touch $(STAMP)

which-python:
	@$(PICK_PYTHON)
	py=$$(natter_pick_python)
	echo "$$py ($$("$$py" -V 2>&1))"

run: install
	@HOST='$(HOST)' PORT='$(PORT)' exec bash scripts/run.sh

run-cluster: install
	@HOST='$(HOST)' PORT='$(PORT)' exec bash scripts/run_cluster.sh

bench: install
	@exec $(VENV_PY) -m bench.all

services:
	@bash scripts/services.sh ensure

test: install
	@export DATABASE_URL="$${DATABASE_URL-$(TEST_DATABASE_URL)}"
	export REDIS_URL="$${REDIS_URL-$(TEST_REDIS_URL)}"
	bash scripts/services.sh ensure
	bash scripts/browser.sh ensure
	status=0
	$(VENV_PY) -m pytest --junitxml=var/reports/test.xml $(PYTEST_ARGS) || status=$$?
	if [ $$status -eq 5 ]; then
	  echo "make test: pytest collected no tests (exit 5); that counts as a failure" >&2
	fi
	echo "== node --test tests/js/ (the browser's crypto, on the shared vectors)"
	node --test tests/js/ || status=1
	exit $$status

# The fault suite (tests/faults; docs/operations.md, "Faults"). It needs no running
# services: it starts a Postgres cluster (initdb in a temporary directory) and a
# redis-server of its own on free ports, never the shared ones, because it stops,
# kills and restarts them. The plain `make test` never collects tests/faults.
test-faults: install
	@if ! command -v redis-server >/dev/null 2>&1; then
	  echo "error: the fault suite needs redis-server (Debian: apt-get install redis-server)" >&2
	  exit 1
	fi
	if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null 2>&1; then
	  echo "error: the fault suite needs Postgres's initdb and postgres (Debian: apt-get install postgresql)" >&2
	  exit 1
	fi
	status=0
	# The test process itself touches no database: only the servers it starts do.
	DATABASE_URL= REDIS_URL= $(VENV_PY) -m pytest -p no:cacheprovider \
	  --junitxml=var/reports/faults.xml tests/faults $(PYTEST_ARGS) || status=$$?
	if [ $$status -eq 5 ]; then
	  echo "make test-faults: pytest collected no tests (exit 5); that counts as a failure" >&2
	fi
	exit $$status

lint: install
	@status=0
	$(VENV)/bin/ruff check . || status=1
	$(VENV)/bin/ruff format --check . || status=1
	exit $$status

format: install
	@$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	@find . \( -path ./.venv -o -path ./.git -o -path ./node_modules \) -prune -o \
	  \( -name __pycache__ -o -name '*.egg-info' -o -name .pytest_cache -o -name .ruff_cache \) \
	  -type d -prune -exec rm -rf {} +
	rm -rf staticfiles build dist client/build client/dist
	rm -f var/celerybeat-schedule var/celerybeat-schedule.*

distclean: clean
	@rm -rf $(VENV) node_modules
