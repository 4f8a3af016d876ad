# Two commands on a fresh machine:
#   make run    set up (virtualenv, pinned requirements, paddlespeech + paddle2onnx --no-deps, the Milvus
#               server's wheel) and start the app
#   make test   set up (plus test tools, Chromium, MariaDB running, a Milvus server) and run the tests
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TSTAMP  := $(VENV)/.test-installed
PADDLESPEECH := paddlespeech==1.5.0
# paddle2onnx pins onnx<=1.17 but works with requirements.txt's onnx (tests/test_compiled.py)
PADDLE2ONNX  := paddle2onnx==2.1.0
# a real Milvus standalone server for the tests (PyPI's milvus wheel carries one); a server, not a
# dependency of the product, so it lives in a virtualenv of its own
MILVUS_SERVER := milvus==2.3.5
MVENV   ?= .venv-milvus
MSTAMP  := $(MVENV)/.installed

.PHONY: run test venv test-deps milvus-server mariadb benchmark eval-table clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(PADDLESPEECH) $(PADDLE2ONNX)
	touch $@

venv: $(STAMP)

# the library's vectors go to a Milvus server the app runs from $(MVENV) (search_core/milvus_local.py;
# BENCHMARKS.md, "Search at scale"), unless MILVUS_URI names a store or the data folder already holds a
# Milvus Lite library (milvus.db), which stays where it is
run: $(STAMP) $(MSTAMP)
	GRADIO_ANALYTICS_ENABLED=False MILVUS_SERVER_BIN=$(abspath $(MVENV))/bin/milvus-server \
	  MILVUS_URI="$${MILVUS_URI:-$$(test -e "$${DATA_DIR:-data}/milvus.db" || echo local)}" $(BIN)/python app.py $(ARGS)

$(TSTAMP): $(STAMP) tests/requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check -r tests/requirements.txt
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	touch $@

test-deps: $(TSTAMP)

$(MSTAMP):
	test -x $(MVENV)/bin/python || $(PY) -m venv $(MVENV)
	$(MVENV)/bin/pip install -q --disable-pip-version-check $(MILVUS_SERVER)
	touch $@

milvus-server: $(MSTAMP)

mariadb:
	@mariadb-admin -h 127.0.0.1 -u root status >/dev/null 2>&1 || \
	  { start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; \
	    for i in $$(seq 30); do mariadb-admin -h 127.0.0.1 -u root status >/dev/null 2>&1 && break; sleep 1; done; }

# the tests start (and stop) their own Milvus server from $(MVENV) on a free port
test: $(TSTAMP) $(MSTAMP) mariadb
	GRPC_VERBOSITY=NONE MILVUS_SERVER_BIN=$(abspath $(MVENV))/bin/milvus-server $(BIN)/python -m pytest -q $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# every model x dataset retrieval eval on ../shared/data (about an hour), then README's table rewritten from the JSON
eval-table: $(STAMP)
	$(BIN)/python benchmarks/report.py eval --run

clean:
	rm -rf $(VENV) $(MVENV)
