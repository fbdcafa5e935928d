# FANGS developer entry points.  `make demo` and `make test` do all set-up on a
# fresh Debian 12 machine; `make setup` is idempotent and cheap when done.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
TRIAL := $(PY) -m twisted.trial
SANDBOX_IMAGE := fangs-sandbox/node:20

.PHONY: setup system venv image test unit integration e2e demo bench clean

setup: system venv image

system:
	bash scripts/setup-system.sh

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	# Expose Debian's BCC (and only it) to the venv: all of dist-packages would
	# shadow the venv's pyOpenSSL.
	mkdir -p $(VENV)/debian-bcc
	ln -sfn /usr/lib/python3/dist-packages/bcc $(VENV)/debian-bcc/bcc
	echo $(VENV)/debian-bcc > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fangs-debian-bcc.pth"
	$(PY) -c 'import bcc' || { echo 'setup: BCC is not importable from the venv'; exit 1; }
	$(PY) -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $@

image:
	$(PY) -m fangs.runner.image --ensure $(SANDBOX_IMAGE)

# Unit tests: every test module outside tests/integration/ (no root, Docker,
# kernel, PostgreSQL or Chromium needed).  Integration tests: tests/integration/.
# `make test` runs both.
UNIT_TESTS = $$(find tests -name 'test_*.py' -not -path 'tests/integration/*' | sort | sed 's|\.py$$||; s|/|.|g')

test: setup
	$(PY) -m fangs.runner.image --fixtures $${FANGS_FIXTURES_IMAGE:-fangs-sandbox/fixtures:test}
	$(TRIAL) -j2 tests

unit: venv
	$(TRIAL) -j2 $(UNIT_TESTS)

integration e2e: setup
	$(PY) -m fangs.runner.image --fixtures $${FANGS_FIXTURES_IMAGE:-fangs-sandbox/fixtures:test}
	$(TRIAL) -j2 tests.integration

demo:
	FANGS_SETUP_FOR=demo bash scripts/setup-system.sh
	$(MAKE) venv image
	bash scripts/demo.sh

bench: setup
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q 'matplotlib >= 3.7'
	$(PY) -m benchmarks

clean:
	rm -rf _trial_temp build
