# The two commands the README promises; both set up what is missing first (tests/env/up.sh).
.PHONY: demo test env unit schema

demo:
	tests/env/demo.sh

test:
	tests/env/up.sh
	BUILDER_REQUIRE_DOCKER=1 .venv/bin/python -m pytest -q

# Pieces, for development.
env:
	tests/env/up.sh

unit:
	.venv/bin/python -m pytest -q -m "not docker" -n auto

schema:
	.venv/bin/python -m builder schema --write
