# make demo   - set everything up and serve the demo shop on http://127.0.0.1:$(PORT)
# make test   - set everything up and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
CATALOG ?=
export PIP_CACHE_DIR ?= $(CURDIR)/.cache/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test lint bench quality clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python demo_shop/services.py demo --port $(PORT) $(if $(CATALOG),--catalog "$(abspath $(CATALOG))")

test: install
	$(BIN)/ruff check .
	$(BIN)/python demo_shop/services.py run -- $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python demo_shop/services.py run -- $(BIN)/python manage.py migrate -v 0
	$(BIN)/python demo_shop/services.py run -- $(BIN)/python manage.py bench_embedding
	$(BIN)/python demo_shop/services.py run -- $(BIN)/python manage.py bench_query_embedding
	$(BIN)/python demo_shop/services.py run -- $(BIN)/python manage.py bench_pipeline
	$(BIN)/python demo_shop/services.py run -- $(BIN)/python manage.py bench_api

quality: install
	$(BIN)/python demo_shop/services.py run -- $(BIN)/python manage.py quality_report

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .cache/services .pytest_cache
