# The two commands: `make demo` (the local demo) and `make test` (the suite). Both install
# what is missing first: system packages (PostgreSQL), then the virtualenv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo dev test lint format bench system-deps install clean deploy-check

install: system-deps $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv
	@[ -x $(PY) ] || python3 -m uv venv -q --python python3 $(VENV)
	python3 -m uv pip install -q --python $(PY) -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(PY) -m backup_pipelines.devstack.demo

dev: install
	$(PY) -m backup_pipelines.devstack.stack dev

test: install
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/bench_full_dump.py
	$(PY) bench/bench_consistency.py
	$(PY) bench/bench_rpo_sensor.py
	$(PY) bench/bench_pitr.py
	$(PY) bench/bench_orchestration.py

# Opt-in: build the image and run deploy/docker-compose.yaml with podman + podman-compose, one
# backup through it, then tear it down (needs base images and network in build containers).
deploy-check: install
	bash scripts/deploy-check.sh

clean:
	rm -rf .demo .dagster_home .bench
