# The two quick-start commands: `make serve` and `make test`. Both set everything up first (idempotent).
PY39 := .stack/py39/bin/python
# bert-squad-serve runs on the front door's venv (a maintained Python); it starts Serving's side with $(PY39).
FRONT := .stack/front/bin/python
ARGS ?=

.PHONY: setup serve test test-container soak-restarts
setup:
	@bash scripts/setup.sh

serve: setup
	$(FRONT) -m bert_squad.server.serve $(ARGS)

test: setup
	@bash scripts/test.sh $(ARGS)

# The container image, built and run for real (docs/operations.md "Container and Kubernetes"): deploy/build-image.sh builds
# deploy/Dockerfile (a Docker daemon and the debian:12 base of its own when needed), then runs its tests.
test-container: setup
	@bash deploy/build-image.sh -- $(PY39) -m pytest tests/test_container.py $(ARGS)

# Opt-in soak (issue 23): 200 rounds of a blocking gRPC call sent as Serving's master is SIGKILLed, under a CPU hog.
soak-restarts: setup
	BERT_SQUAD_KILL_ROUNDS=$${BERT_SQUAD_KILL_ROUNDS:-200} $(PY39) -m pytest tests/test_supervisor.py -k soak -s $(ARGS)
