# The two quick-start commands: `make serve` and `make test`. Both set everything up first (idempotent).
PY39 := .stack/py39/bin/python
ARGS ?=

.PHONY: setup serve test
setup:
	@bash scripts/setup.sh

serve: setup
	$(PY39) -m bert_squad.server.serve $(ARGS)

test: setup
	@bash scripts/test.sh $(ARGS)
