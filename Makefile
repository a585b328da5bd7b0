# Two commands for a new user: `make run` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= localhost
PORT ?= 8501

.PHONY: install run test lint migrate

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# PyPI's torch for Linux is the CUDA build, with gigabytes of nvidia packages: a machine with no
# NVIDIA driver takes torch and torchvision first, from PyTorch's CPU index as well (its
# "2.13.0+cpu" ranks above PyPI's "2.13.0"; where that index is out of reach, pip goes on with
# the others). TORCH_INDEX= (empty) turns this off.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --quiet --retries 1 --no-deps \
		-c constraints.txt --extra-index-url $(TORCH_INDEX) torch torchvision)
	$(BIN)/python -m pip install --quiet --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/defects db upgrade

run: migrate
	$(BIN)/defects models install-demo
	$(BIN)/streamlit run dashboard/app.py --server.address $(HOST) --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
