# `make demo`: install, generate synthetic data, train on the CPU, evaluate, report.
# `make test`: install, lint (ruff check + format check) and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_out
STAMP := $(VENV)/.camodet-installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
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

test: $(STAMP)
	$(PY) -m ruff check camodet tests benchmarks tools
	$(PY) -m ruff format --check camodet tests benchmarks tools
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
