# The two commands a new user needs: `make train` (the quickstart run) and `make test`.
.PHONY: setup train test protos bench lint

setup:
	scripts/setup.sh

train: setup
	.venv/bin/rspo train --config configs/quickstart.yaml --run-dir runs/quickstart --fresh

test:
	scripts/test.sh

protos: setup
	.venv/bin/python scripts/gen_protos.py

bench: setup
	for b in bench/bench_*.py; do .venv/bin/python $$b || exit 1; done
