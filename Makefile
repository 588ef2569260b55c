# One-command set-up: every target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAMFUSION := $(VENV)/bin/samfusion
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

CHROMIUM := /usr/bin/chromium

.PHONY: install demo test serve lint bench-segment demo-model lite-model clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import SAMFusionLib, segment_anything, torch, SimpleITK, slicer, trame_slicer"
	# Byte-code up front, as a non-editable install has it: with PYTHONDONTWRITEBYTECODE set (as on
	# our build machines) every command would otherwise recompile the engine at start-up (0.1-0.3 s).
	$(PY) -m compileall -q SAMFusionLib
	touch $(STAMP)

# The browser the web app's tests drive: the Debian package, never a browser download.
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

install: $(STAMP)

# The whole pipeline on the embedded default case (CT phantom + X-ray made from it): segmentations,
# transform, fused volume, a Slicer scene, report.json and report.png in $(DEMO_OUT)/.
# Exit code 3 would mean the registration quality check failed (the outputs are still written).
demo: $(STAMP)
	$(SAMFUSION) run --out $(DEMO_OUT)
	@echo "open $(DEMO_OUT)/SAMFusion.mrml in 3D Slicer; see $(DEMO_OUT)/report.png and report.json"

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q Testing

# The web app on http://127.0.0.1:8080/ (SERVE_ARGS="--port 9000 --data DIR" to change).
serve: $(STAMP)
	$(SAMFUSION) serve $(SERVE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-segment: $(STAMP)
	$(SAMFUSION) bench segment --json
	$(SAMFUSION) bench segment --json --random-arch vit_b --batch-size 1

# Trains the embedded demo model (about 40 minutes on a 2-core CPU) and pins its SHA256 in the model table.
demo-model: $(STAMP)
	$(SAMFUSION) train --preset demo --out build/demo-model --export Resources/models/samfusion_demo.pth
	$(PY) -m SAMFusionLib.training.pin_model samfusion-demo

# Fine-tunes LiteMedSAM's prompt encoder and mask decoder (about 40 minutes on a 2-core CPU) and pins the result.
lite-model: $(STAMP)
	$(SAMFUSION) train --base lite_medsam --out build/lite-model --export Resources/models/samfusion_lite_heads.pth
	$(PY) -m SAMFusionLib.training.pin_model samfusion-lite

clean:
	rm -rf $(VENV) $(DEMO_OUT) build .pytest_cache
