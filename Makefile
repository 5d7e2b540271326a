# Both targets create .venv with the pinned dependencies when needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo_out

.PHONY: demo test bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-onnx.txt requirements-openvino.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) cli.py make-sample --out $(DEMO)/cityscapes --train 48 --val 8
	$(PY) cli.py build-mindrecord --root $(DEMO)/cityscapes --out $(DEMO)/mindrecord
	rm -rf $(DEMO)/run
	$(PY) cli.py train --config configs/seg_tiny_demo.yaml --data $(DEMO)/mindrecord --out $(DEMO)/run
	$(PY) cli.py eval --checkpoint "$$(ls $(DEMO)/run/checkpoints/step_*.ckpt | tail -n 1)" --data $(DEMO)/mindrecord --split val
	$(PY) -m evaluate.baseline --data $(DEMO)/mindrecord --split val

# torch (CPU build) for the side-by-side benchmark; not needed by demo or test.
bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) bench/bench_vs_pytorch.py

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf $(DEMO)
