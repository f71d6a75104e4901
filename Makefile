# The two quick-start commands: `make serve` and `make test`. Both set everything up first (idempotent).
PY39 := .stack/py39/bin/python
ARGS ?=

.PHONY: setup serve test test-container
setup:
	@bash scripts/setup.sh

serve: setup
	$(PY39) -m bert_squad.server.serve $(ARGS)

test: setup
	@bash scripts/test.sh $(ARGS)

# The container image, built and run for real (README "Container and Kubernetes"): deploy/build-image.sh builds
# deploy/Dockerfile (a Docker daemon and the debian:12 base of its own when needed), then runs its tests.
test-container: setup
	@bash deploy/build-image.sh -- $(PY39) -m pytest tests/test_container.py $(ARGS)
