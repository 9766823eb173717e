# The two commands the README starts with: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
export PYTHON VENV

.PHONY: deps demo test lint bench fuzz oracle soak mutate clean

deps:
	@./.ci/install-deps

demo: deps
	$(VENV)/bin/python -m authproxy demo

test: lint
	$(VENV)/bin/python -m pytest -q

# Types (mypy --strict, tests and benchmarks too), style (ruff) and the layering of the package
# (import-linter).
lint: deps
	$(VENV)/bin/ruff check authproxy tests bench
	$(VENV)/bin/mypy authproxy tests bench
	$(VENV)/bin/lint-imports

bench: export WITH_BENCH = 1
bench: deps
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/bench_bearer.py
	$(VENV)/bin/python bench/bench_edge.py
	$(VENV)/bin/python bench/bench_guessing.py
	$(VENV)/bin/python bench/bench_footprint.py

# Every fuzz target coverage-guided for SECONDS each (tests/fuzz/run.py); TARGET=name for one.
SECONDS ?= 60
fuzz: export WITH_FUZZ = 1
fuzz: deps
	$(VENV)/bin/python -m tests.fuzz.run --seconds $(SECONDS) $(if $(TARGET),--target $(TARGET))

# The decision oracle through a real nginx: N generated requests, SEED to repeat a run.
N ?= 20000
oracle: deps
	$(VENV)/bin/python -m tests.oracle --requests $(N) $(if $(SEED),--seed $(SEED))

# The soak with chaos (bench/soak.py): mixed traffic through nginx for MINUTES while the JWKS
# server, the users file, signals, a worker kill and a restart happen on a schedule.
MINUTES ?= 10
soak: deps
	$(VENV)/bin/python bench/soak.py --minutes $(MINUTES)

# Mutation testing of the deciding modules (mutmut; setup.cfg [mutmut] names the modules and
# the tests). MUTANTS='authproxy.core.policy*' for one module; results are kept in mutants/
# and a rerun tests only what changed. Prints the score per module, and fails when a survivor
# is not in tests/mutation/equivalent.txt (the ones judged equivalent, each with its reason).
MUTATE_JOBS ?= 2
mutate: export WITH_MUTATION = 1
mutate: deps
	$(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(VENV)/bin/python -m tests.mutation.summary

clean:
	rm -rf $(VENV) .demo .fuzz .hypothesis .pytest_cache mutants build *.egg-info
