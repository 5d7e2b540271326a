# Both targets create .venv with the pinned dependencies when needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo_out

.PHONY: demo test bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) cli.py make-sample --out $(DEMO)/cityscapes
	$(PY) cli.py build-mindrecord --root $(DEMO)/cityscapes --out $(DEMO)/mindrecord

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf $(DEMO)
