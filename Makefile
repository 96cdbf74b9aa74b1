# Run as root on Debian 12: `make demo`, `make test`, `make bench`.
# `install` brings every Debian package and the venv; it reruns when this file
# or pyproject.toml changes.

APT_PACKAGES := opensm ibsim-utils infiniband-diags rdma-core python3-pyverbs \
                python3-venv python3-pip ca-certificates \
                prometheus systemd postgresql
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	# pyverbs comes from Debian (its PyPI sdist does not build): the venv sees
	# the system site-packages, everything else comes from PyPI.
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/pkeyd demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -ra

bench: install
	$(VENV)/bin/python -m bench.apply_latency
	$(VENV)/bin/python -m bench.verify_fabric
	$(VENV)/bin/python -m bench.render_large
	$(VENV)/bin/python -m bench.ufm_last_updated
	$(VENV)/bin/python -m bench.auth_overhead
	$(VENV)/bin/python -m bench.api_throughput

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
