# Two entry points for a fresh machine (see README):  make demo  |  make test
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint format compile bench clean

install: $(STAMP)

# torch first and pinned: with it in place, nothing else may pull a CUDA build.
$(STAMP): pyproject.toml docker/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet "torch==2.13.0" "setuptools<81" wheel
	# the lock file: tests run against the versions the image installs
	$(PY) -m pip install --quiet -c docker/constraints.txt -e ".[local,test]"
	$(PY) -m pip install --quiet --no-deps "timm==1.0.31"  # tests only: timm's Swin vs ours; never its torchvision
	touch $(STAMP)

demo: $(STAMP)       ## whole pipeline, locally: KFP local runner + local S3 server + generated videos
	$(VENV)/bin/video-kd run-local

test: $(STAMP)       ## the full test suite (what CI runs)
	$(PY) -m pytest

lint: $(STAMP)       ## ruff: lint + format check (CI runs it before the tests)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)     ## ruff: fix what it can, format everything
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-fast: $(STAMP)  ## unit tests only, skips real training and pipeline runs
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)      ## the benchmarks (see benchmarks/README.md); results in benchmarks/results/
	. $(VENV)/bin/activate && bash benchmarks/run_all.sh

compile: $(STAMP)    ## recompile pipelines/kd_pipeline.yaml
	$(VENV)/bin/video-kd compile

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
