# edgeproxy: `make run` and `make test` each set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXT_SRC := src/edgeproxy/_fastxml.pyx

.PHONY: run test bench lint build clean corpus fuzz man dist

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=68" wheel "Cython>=3.0,<4"

$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $(STAMP)

# Rebuild the compiled tokenizer in place whenever its source changed.
build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace

run: build
	$(VENV)/bin/edgeproxy serve

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

lint: build
	$(VENV)/bin/ruff check src tests bench tools

bench: build
	$(PY) bench/bench_tokenizer.py
	$(PY) bench/bench_policy.py
	$(PY) bench/bench_s2s.py
	$(PY) bench/bench_gateway.py

# Every atheris harness in fuzz/ for FUZZ_SECONDS each, one after the other (docs/fuzzing.md).
FUZZ_SECONDS ?= 600
fuzz: build
	$(PY) fuzz/run.py all --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

# dist/: the sdist, manylinux wheels (cp311, and cp312/cp313 where those interpreters exist) and
# dist/edgeproxy, a one-file executable needing no Python on the host (docs/install.md). The tools
# and the executable's dependencies come from the hash-pinned packaging/requirements-dist.txt,
# installed into a virtualenv of their own under build/. Rebuilt only when an input changed
# (DIST_ARGS=--force rebuilds anyway).
DIST_VENV := build/dist-venv
DIST_PY := $(DIST_VENV)/bin/python
DIST_LOCK := packaging/requirements-dist.txt

$(DIST_VENV)/.installed: $(DIST_LOCK)
	rm -rf $(DIST_VENV)
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_PY) -m pip install --quiet --require-hashes --no-deps -r $(DIST_LOCK)
	touch $@

dist: $(DIST_VENV)/.installed
	$(DIST_PY) packaging/build_dist.py $(DIST_ARGS)

clean:
	rm -rf build dist src/edgeproxy/_fastxml.c src/edgeproxy/_fastxml*.so

# The man page, generated from the parser (tests/test_manpage.py checks it is up to date).
man: build
	$(PY) tools/manpage.py --out docs/edgeproxy.1
