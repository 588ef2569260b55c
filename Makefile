# One-command set-up: every target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAMFUSION := $(VENV)/bin/samfusion
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: install demo test lint bench-segment demo-model clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import SAMFusionLib, segment_anything, torch, SimpleITK, slicer"
	touch $(STAMP)

install: $(STAMP)

# Until the pipeline lands: segment a generated CT phantom slice with the embedded demo model.
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(SAMFUSION) phantom $(DEMO_OUT)
	$(SAMFUSION) segment $(DEMO_OUT)/ct_slice.png $$(cat $(DEMO_OUT)/point_args_kidney.txt) --out $(DEMO_OUT)/kidney_from_point.png
	$(SAMFUSION) segment $(DEMO_OUT)/ct_slice.png $$(cat $(DEMO_OUT)/box_args_kidney.txt) --out $(DEMO_OUT)/kidney_from_box.png
	$(SAMFUSION) segment $(DEMO_OUT)/ct_slice.png $$(cat $(DEMO_OUT)/point_args_stone.txt) --out $(DEMO_OUT)/stone_from_point.png
	@echo "kidney (point) vs ground truth:"; $(SAMFUSION) compare $(DEMO_OUT)/kidney_from_point.png $(DEMO_OUT)/kidney_gt.png
	@echo "kidney (box)   vs ground truth:"; $(SAMFUSION) compare $(DEMO_OUT)/kidney_from_box.png $(DEMO_OUT)/kidney_gt.png
	@echo "stone (point)  vs ground truth:"; $(SAMFUSION) compare $(DEMO_OUT)/stone_from_point.png $(DEMO_OUT)/stone_gt.png
	$(SAMFUSION) overlay $(DEMO_OUT)/ct_slice.png $(DEMO_OUT)/kidney_from_point.png $(DEMO_OUT)/kidney_gt.png --out $(DEMO_OUT)/kidney_point_overlay.png
	$(SAMFUSION) overlay $(DEMO_OUT)/ct_slice.png $(DEMO_OUT)/kidney_from_box.png $(DEMO_OUT)/kidney_gt.png --out $(DEMO_OUT)/kidney_box_overlay.png
	$(SAMFUSION) overlay $(DEMO_OUT)/ct_slice.png $(DEMO_OUT)/stone_from_point.png $(DEMO_OUT)/stone_gt.png --out $(DEMO_OUT)/stone_point_overlay.png
	@echo "outputs in $(DEMO_OUT)/ (overlays: red = SAM, green = ground truth)"

test: $(STAMP)
	$(PY) -m pytest -q Testing

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-segment: $(STAMP)
	$(SAMFUSION) bench segment --json
	$(SAMFUSION) bench segment --json --random-arch vit_b --batch-size 1

# Trains the embedded demo model (about 40 minutes on a 2-core CPU) and pins its SHA256 in the model table.
demo-model: $(STAMP)
	$(SAMFUSION) train --preset demo --out build/demo-model --export Resources/models/samfusion_demo.pth
	$(PY) -m SAMFusionLib.pin_model samfusion-demo

clean:
	rm -rf $(VENV) $(DEMO_OUT) build .pytest_cache
