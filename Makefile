# The two commands the README starts with: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
export PYTHON VENV

.PHONY: deps demo test bench clean

deps:
	@./.ci/install-deps

demo: deps
	$(VENV)/bin/python -m authproxy demo

test: deps
	$(VENV)/bin/python -m pytest -q

bench: export WITH_BENCH = 1
bench: deps
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/bench_bearer.py
	$(VENV)/bin/python bench/bench_edge.py
	$(VENV)/bin/python bench/bench_guessing.py

clean:
	rm -rf $(VENV) .demo .pytest_cache build *.egg-info
