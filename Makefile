# The two commands: `make demo` and `make test`. Every target bootstraps what is missing.
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: bootstrap test test-unit test-integration test-e2e test-kernel demo bench soak lint ansible-check fresh-check clean

bootstrap:
	@sh scripts/bootstrap.sh

# two workers: the lab tests (e2e, the kernel tier's VM) in one, the rest in the other
# (tests/conftest.py says why)
test: bootstrap
	$(PYTEST) tests -p no:cacheprovider --durations=30 -n 2 --dist loadscope --no-loadscope-reorder

test-unit: bootstrap
	$(PYTEST) tests/unit -m unit

test-integration: bootstrap
	$(PYTEST) tests/integration -m integration

test-e2e: bootstrap
	$(PYTEST) tests/e2e -m e2e

# the XFRM tests, in one VM boot with Debian's kernel (tests/kernel; skipped with the reason
# where no VM can run); `make test` runs them too
test-kernel: bootstrap
	$(PYTEST) tests/kernel -m kernel -p no:cacheprovider

demo: bootstrap
	.venv/bin/clusterctl lab demo

# every bench/ module; node_kernel boots the VM of test-kernel (minutes under TCG), or says in
# one line why it cannot
bench: bootstrap
	$(PY) -m bench

lint: bootstrap
	.venv/bin/ruff check keyd cluster sprayer tests bench soak
	.venv/bin/mypy

ansible-check: bootstrap
	$(PY) -m pytest tests/integration/test_ansible.py

# A fresh Debian 12 root (mmdebstrap, cached), the project cloned into it, bootstrap + demo
# there (TEST=1: and make test). Takes minutes; not part of make test.
fresh-check:
	@TEST=$(TEST) sh scripts/fresh-check.sh

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache

# Reliability figures into docs/reliability.md (bounded: < 30 minutes on 2 cores). Not part of
# make test. `make soak QUICK=1`: small counts, to check the machinery.
soak: bootstrap
	$(PY) -m soak $(if $(QUICK),--quick)
