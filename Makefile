# `make demo` and `make test` are the whole set-up on a fresh machine: they create .venv
# (once), install pinned versions that resolve offline here, then run the demo or the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmdistill demo-data demo data/demo
	$(BIN)/mmdistill run recipes/demo.yaml --set data.root=data/demo --set output_dir=runs --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) data/demo runs
