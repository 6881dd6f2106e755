# The two commands of the README: `make test` and `make demo`. Both build a local virtualenv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; an unpinned `torch` would pull several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

.PHONY: test demo docs lint install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[transformers,trl,dev]"
	touch $@

test: install
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) examples/demo.py

docs: install
	$(PY) -m mkdocs build --strict --site-dir site

lint: install
	$(PY) -m ruff check hyperlight tests examples benchmarks

clean:
	rm -rf $(VENV) build site *.egg-info
