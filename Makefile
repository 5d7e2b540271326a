# Both targets create .venv with the pinned dependencies when needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo_out

.PHONY: demo test bench bench-official clean

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

# The side-by-side benchmark against the official Segmenter code (a checkout at OFFICIAL, imported
# from there at run time); torch, timm, einops for it come from requirements-bench.txt.
OFFICIAL ?= ../official
bench-official:
	@test -f "$(OFFICIAL)/segm/model/factory.py" || { echo "error: OFFICIAL=$(OFFICIAL): no official Segmenter checkout there (git clone https://github.com/rstrudel/segmenter, then make bench OFFICIAL=PATH)" >&2; exit 2; }

bench: bench-official $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) bench/bench_vs_pytorch.py --official "$(OFFICIAL)" --rows predict,forward,train,predict_onnxruntime,predict_openvino_f32,predict_openvino_bf16

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf $(DEMO)
