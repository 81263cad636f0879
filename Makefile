# The two commands a newcomer needs:
#   make run   - create the environment if needed, start the gateway on dialplans/example.yaml
#   make test  - install what the tests need (apt packages included), run every test tier
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DIALPLAN ?= dialplans/example.yaml

.PHONY: run test venv deps unit lint bench clean

# the install compiles the SIP parser with mypyc (setup.py): redo it when its sources change
$(VENV)/.installed: pyproject.toml setup.py gateway/sip/uri.py gateway/sip/names.py gateway/sip/headers.py gateway/sip/model.py gateway/sip/message.py \
		gateway/sip/address.py gateway/sip/dialog.py gateway/sip/transaction.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c "import gateway.sip.message as m; print('gateway.sip.message:', m.__file__)"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/gateway run --dialplan $(DIALPLAN)

deps:
	bash scripts/install-test-deps.sh

test: deps venv
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist worksteal

unit: venv
	$(PY) -m pytest -q tests/unit

# types (mypy --strict, configured in pyproject.toml), lint and formatting of the code, its
# tests, its benchmarks and their shared harness (testkit/)
lint: venv
	$(VENV)/bin/ruff check gateway testkit tests bench
	$(VENV)/bin/ruff format --check gateway testkit tests bench
	$(VENV)/bin/mypy

bench: venv deps
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	rm -f gateway/sip/*.so gateway/sip/_native.json
