# `make demo`: install, generate synthetic data, train on the CPU, evaluate, report.
# `make test`: install, lint (ruff check + format check) and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_out
STAMP := $(VENV)/.camodet-installed
# Where pip takes torch and torchvision from: PyPI's default wheels bring ~3 GB of CUDA libraries;
# a CPU-only machine (CI) can skip them with TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# pytest-xdist processes for `make test`: two of one torch thread each (tests/conftest.py) took 484 s on the
# 2-core machine beside one training run; one process of two threads took 1777 s beside two (CI: 1218 s in
# all). Two threads on the tiny test models mostly spin.
TEST_WORKERS ?= 2

.PHONY: install demo test test-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m camodet synth $(DEMO)/SYNTH-COD10K --train 300 --test 60 --min-size 128 --max-size 256 --seed 0
	$(PY) -m camodet model summary --backbone edgenext_xx_small --num-experts 4 --img-size 128
	$(PY) -m camodet train --config configs/demo.yaml --dataset-path $(DEMO)/SYNTH-COD10K --checkpoint-dir $(DEMO)/run --overwrite
	$(PY) -m camodet evaluate $(DEMO)/run/best_model.pth --dataset-path $(DEMO)/SYNTH-COD10K --out $(DEMO)/eval
	$(PY) -m camodet inspect $(DEMO)/run/best_model.pth
	$(PY) -m camodet report $(DEMO)/run
	$(PY) -m camodet predict $(DEMO)/run/best_model.pth $(DEMO)/SYNTH-COD10K/Test/Image --out $(DEMO)/predict

# The web demo's browser test drives the system's Chromium (Debian's package; Playwright never
# downloads a browser): installed here as root with apt, otherwise one line says how.
# The sweep's PostgreSQL test starts a throwaway server from Debian's postgresql package
# (initdb, pg_ctl): installed the same way, else that test is skipped with one line.
# $(call system_package,CHECK,PACKAGE,WHAT): install Debian's PACKAGE as root with apt unless CHECK
# finds it, else one line says which test is skipped and how to get it.
define system_package
@{ $(1); } >/dev/null 2>&1 || { \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
    echo "installing $(2) for $(3) (apt-get install $(2))"; \
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null \
      || echo "could not install $(2): $(3) will be skipped"; \
  else \
    echo "no $(2): $(3) will be skipped (sudo apt-get install $(2), then make test)"; \
  fi; }
endef

test-deps:
	$(call system_package,command -v chromium,chromium,tests/serving/test_app.py's browser test)
	$(call system_package,ls /usr/lib/postgresql/*/bin/initdb || command -v initdb,postgresql,tests/tune/test_sweep.py's PostgreSQL test)

test: $(STAMP) test-deps
	$(PY) -m ruff check camodet tests benchmarks tools
	$(PY) -m ruff format --check camodet tests benchmarks tools
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

clean:
	rm -rf $(DEMO) .pytest_cache
