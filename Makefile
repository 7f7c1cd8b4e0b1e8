# make demo   - set everything up and serve the demo shop on http://127.0.0.1:$(PORT)
# make test   - set everything up and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN = $(BIN)/python demo_shop/services.py run --
PORT ?= 8000
CATALOG ?=
export PIP_CACHE_DIR ?= $(CURDIR)/.cache/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test lint bench bench-quick quality feedback-report clean

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

# Full benchmarks (about 45 minutes; the 1M-row index build is most of it): docs/BENCHMARKS.md.
bench: install
	$(RUN) $(BIN)/python manage.py migrate -v 0
	$(RUN) $(BIN)/python manage.py bench_embedding
	$(RUN) $(BIN)/python manage.py bench_query_embedding
	$(RUN) $(BIN)/python manage.py bench_pipeline
	$(RUN) $(BIN)/python manage.py bench_api
	$(RUN) $(BIN)/python manage.py bench_events
	$(RUN) $(BIN)/python manage.py bench_feedback
	$(RUN) $(BIN)/python manage.py bench_ranking
	$(RUN) $(BIN)/python manage.py bench_blend
	$(RUN) $(BIN)/python manage.py bench_widget
	$(RUN) $(BIN)/python manage.py bench_vectors

# Every benchmark, small and short (under 5 minutes), into $(QUICK_OUT) so that it never
# replaces the full numbers in docs/.
QUICK_OUT ?= .cache/bench-quick/BENCHMARKS.md
bench-quick: install
	mkdir -p $(dir $(QUICK_OUT))
	$(RUN) $(BIN)/python manage.py migrate -v 0
	BENCHMARKS_MD=$(abspath $(QUICK_OUT)) $(RUN) sh -c '\
	  $(BIN)/python manage.py bench_embedding --seconds 2 --batch-sizes 1 16 --baseline-calls 1 && \
	  $(BIN)/python manage.py bench_query_embedding --rounds 1 && \
	  $(BIN)/python manage.py bench_pipeline --uploads 5 && \
	  $(BIN)/python manage.py bench_api --catalog-size 10000 --seconds 3 --products 200 \
	    --concurrency 1 8 --search-concurrency 2 && \
	  $(BIN)/python manage.py bench_events --seconds 3 --concurrency 8 --kills 2 && \
	  $(BIN)/python manage.py bench_feedback --events 200000 --requests 5 && \
	  $(BIN)/python manage.py bench_ranking --events 200000 --catalog-size 10000 \
	    --sources 100 --lists 100 --seconds 2 --concurrency 4 --workers 2 && \
	  $(BIN)/python manage.py bench_blend --sizes 10000 --queries 50 --warmup 10 && \
	  $(BIN)/python manage.py bench_widget --loads 5 && \
	  $(BIN)/python manage.py bench_vectors --sizes 10000 --queries 50 --fresh'
	@echo "Wrote $(QUICK_OUT)"

quality: install  # ONLY=grocery, ONLY=luma or ONLY=modes measures one table and keeps the others
	$(RUN) $(BIN)/python manage.py quality_report $(if $(ONLY),--only $(ONLY))

# Simulated shoppers on the Magento Luma catalog, through the real API and roll-up:
# docs/FEEDBACK.md and docs/feedback_ctr.png (about 20 minutes). QUICK=1: 300 visits, written
# under .cache/feedback-quick; LUMA=path when the dataset is not in ../shared/datasets.
feedback-report: install
	$(RUN) $(BIN)/python manage.py feedback_simulation --return-rate 0.5 $(if $(QUICK),--quick) \
	  $(if $(LUMA),--dataset "$(abspath $(LUMA))")

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .cache/services .pytest_cache
