# Switchboard task runner: `make help` lists the targets.
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS ?= never

.PHONY: help install up lint typecheck test e2e bench helm-lint

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## Install every package and tool (uv sync)
	uv sync --locked

up: ## Run the whole stack on this machine
	uv run switchboard up

lint: ## Ruff lint and format check
	uv run ruff check .
	uv run ruff format --check .

typecheck: ## Strict mypy over every package's src/
	uv run mypy

test: ## The whole suite with coverage (what CI runs)
	uv run pytest --cov

e2e: ## Only the end-to-end tests
	uv run pytest tests/e2e -q

bench: ## Benchmarks against LiteLLM; writes docs/benchmarks.md (needs apt-get install nginx-light wrk)
	uv run --group bench python -m bench.run

helm-lint: ## Lint, render and validate the Helm chart offline (Helm's Go SDK, Kubernetes schemas)
	uv run pytest tests/helm -q

.PHONY: load soak audit

load: ## 1,000 streams for 60 s on `switchboard up`; ledger checked by request id (needs nginx)
	uv run python -m bench.load

soak: ## As load, 10 min at 200 streams; RSS and fds of every service sampled (needs nginx)
	uv run python -m bench.load --soak 10m

audit: ## Vulnerability audit of uv.lock against OSV; fails when OSV cannot be asked
	SWITCHBOARD_AUDIT=required uv run pytest tests/test_supply_chain.py -q -rs
