# Two entry points for a fresh machine (see README):  make demo  |  make test
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast compile bench clean

install: $(STAMP)

# torch first and pinned: with it in place, nothing else may pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet "torch==2.13.0" "setuptools<81" wheel
	$(PY) -m pip install --quiet -e ".[local,test]"
	touch $(STAMP)

demo: $(STAMP)       ## whole pipeline, locally: KFP local runner + local S3 server + generated videos
	$(VENV)/bin/video-kd run-local

test: $(STAMP)       ## the full test suite (what CI runs)
	$(PY) -m pytest

test-fast: $(STAMP)  ## unit tests only, skips real training and pipeline runs
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)      ## the benchmarks (see benchmarks/README.md); results in benchmarks/results/
	. $(VENV)/bin/activate && bash benchmarks/run_all.sh

compile: $(STAMP)    ## recompile pipelines/kd_pipeline.yaml
	$(VENV)/bin/video-kd compile

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
