# Two commands on a fresh clone: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA := data/synthetic
RUN := runs/demo

.PHONY: demo test lint install browser clean gpu-wheels

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(DATA)/.complete: | $(STAMP)
	$(PY) -m vision_attn.cli make-synthetic --out $(DATA) --train 20000 --val 1000 --seed 0
	touch $@

demo: $(STAMP) $(DATA)/.complete
	rm -rf $(RUN)
	$(PY) train.py fit --config configs/demo.yaml
	$(PY) -m vision_attn.cli export $(RUN)/checkpoints/last.ckpt $(RUN)/model
	$(PY) -m vision_attn.cli evaluate --model $(RUN)/model --data-root $(DATA) --split val \
		--baseline-split train --num-beams 3 --answer-beams 1 --out $(RUN)
	@echo "--- captions of assets/ (attention pictures in $(RUN)/attention/) ---"
	$(PY) -m vision_attn.cli caption --model $(RUN)/model --num-beams 3 --attention-dir $(RUN)/attention assets/
	@echo "--- a question about assets/scene_1.jpg ---"
	$(PY) -m vision_attn.cli vqa --model $(RUN)/model --image assets/scene_1.jpg --attention-dir $(RUN)/attention \
		--question "$$(cat assets/scene_1.question.txt)"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# tests/test_web.py drives Debian's chromium (Playwright with executable_path, no downloaded browser): install
# it when missing and we can (root with apt-get); without it the browser tests are skipped, saying why.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; }; } || \
		echo "chromium is not installed (needs root and apt-get): the browser tests will be skipped"

test: lint browser
	$(PY) -m pytest -q

# The wheels benchmarks/gpu_suite.sh needs on a bare GPU machine (about 1 MB, in the git-ignored .whl/, carried
# there with the working tree; benchmarks/README.md says how to run the suite)
gpu-wheels: $(STAMP)
	$(PY) -m benchmarks.gpu_wheels --out .whl

clean:
	rm -rf $(RUN) $(DATA) .pytest_cache .ruff_cache
