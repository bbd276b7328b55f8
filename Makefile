# `make demo` and `make test` each create .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export GRADMIX_DATA_ROOT ?= $(abspath ../shared/data)

.PHONY: demo test test-fast bench bench-avalanche venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradmix-tune ablations/quickstart.yaml --overwrite

test: $(STAMP)
	$(PY) -m pytest -q --durations=10

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

bench: $(STAMP)
	$(PY) benchmarks/split_mnist_er.py
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/gradmix_overhead.py
	$(PY) benchmarks/mnist_accuracy.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/many_classes.py
	$(PY) benchmarks/sweep_throughput.py
	$(PY) benchmarks/many_trials.py
	$(PY) benchmarks/decision_stability.py
	$(PY) benchmarks/approximation_agreement.py

# Avalanche 0.6's Replay on the same protocol, in its own virtualenv (README "Benchmarks")
bench-avalanche: $(STAMP)
	test -x .venv-avalanche/bin/python || python3 -m venv .venv-avalanche
	.venv-avalanche/bin/pip install -q torch==2.14.1 torchvision==0.29.1 avalanche-lib==0.6.0
	.venv-avalanche/bin/python benchmarks/avalanche_replay.py --repeats 3 --ours

clean:
	rm -rf ray_results mlflow.db mlartifacts .pytest_cache
	git clean -fdXq reports  # generated reports only: the published studies are tracked
