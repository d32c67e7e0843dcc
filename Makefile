# Quick start: `make demo` (end-to-end on the default builtin model) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_MODEL ?= builtin:ref-latte
DEMO_DIR ?= demo
DEMO_PROMPT ?= watch the red round dot as it is heading left

.PHONY: venv demo test clean

# The CPU wheel of torch is pinned first so pip never resolves the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# The demo: the trained builtin:ref-latte and the plan that keeps its quality (every temporal block
# computed on every 4th denoising step, its residual reused in between), dense and pruned side by side.
demo: venv
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(VENV)/bin/f3compile calibrate $(DEMO_MODEL) --prompts examples/shapes-calibration.txt --steps 20 --guidance-scale 5 --no-heatmaps -o $(DEMO_DIR)/calib
	$(VENV)/bin/f3compile plan $(DEMO_DIR)/calib --ratio 1 --granularity block --reuse 4 -o $(DEMO_DIR)/plan.json
	$(VENV)/bin/f3compile inspect $(DEMO_DIR)/plan.json --model $(DEMO_MODEL)
	$(VENV)/bin/f3compile export $(DEMO_MODEL) -o $(DEMO_DIR)/export-dense
	$(VENV)/bin/f3compile export $(DEMO_MODEL) --plan $(DEMO_DIR)/plan.json -o $(DEMO_DIR)/export
	$(VENV)/bin/f3compile generate $(DEMO_DIR)/export-dense --prompt "$(DEMO_PROMPT)" --steps 20 --guidance-scale 5 --backend onnxruntime -o $(DEMO_DIR)/dense.gif
	$(VENV)/bin/f3compile generate $(DEMO_DIR)/export --prompt "$(DEMO_PROMPT)" --steps 20 --guidance-scale 5 --backend onnxruntime -o $(DEMO_DIR)/pruned.gif
	$(VENV)/bin/f3compile eval $(DEMO_MODEL) --plan $(DEMO_DIR)/plan.json --samples 2 -o $(DEMO_DIR)/eval

test: venv
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=15 tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) build
