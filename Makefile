# Two entry points for a fresh machine (see README):  make demo  |  make test
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint format compile bench clean image image-cuda

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

lint: $(STAMP)       ## ruff: lint + format check; mypy: types of video_kd/ (CI runs it before the tests)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)     ## ruff: fix what it can, format everything
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-fast: $(STAMP)  ## unit tests only, skips real training and pipeline runs
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)      ## the benchmarks (see benchmarks/README.md); results in benchmarks/results/
	. $(VENV)/bin/activate && bash benchmarks/run_all.sh

# The images (README, "Deploy on a cluster"). One Dockerfile; the CUDA image differs only in
# its base, which holds the CUDA build of the pinned torch.
IMAGE           ?= ghcr.io/kubeflow-video-kd/video-kd:0.1.0
CUDA_BASE_IMAGE := pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime

image:               ## the CPU image, with podman (base from Debian packages via mmdebstrap)
	IMAGE=$(IMAGE) PYTHON=$(shell test -x $(PY) && echo $(PY) || echo $(PYTHON)) bash docker/build_image.sh

image-cuda:          ## the CUDA image, with docker, where pytorch/pytorch can be pulled
	docker build --build-arg BASE_IMAGE=$(CUDA_BASE_IMAGE) --build-arg VIDEO_KD_GIT_COMMIT=$(shell git rev-parse HEAD) \
		-f docker/Dockerfile -t $(IMAGE)-cuda .

compile: $(STAMP)    ## recompile pipelines/kd_pipeline.yaml
	$(VENV)/bin/video-kd compile

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
