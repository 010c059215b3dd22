# Two commands on a fresh machine: `make demo` (set up + main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/repvit: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip uninstall -q -y repvit 2>/dev/null || true  # the distribution's name before it became repvit-pytorch
	$(BIN)/pip install -q -e '.[dev]'
# the edgetam extra: Meta's sam2 is an sdist whose isolated build would download a (CUDA) torch; build it
# against the torch installed above instead (about 10 s, no compiler needed without its CUDA kernel)
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation 'sam2==1.1.0'
	touch $@

# The demo page's live-tab test drives a real Chromium through Playwright, whose own browser download is
# not reachable from these machines: Debian's chromium package is installed instead (as root, as on CI;
# without root and without a chromium the browser test skips and says how to get one).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "make setup: no chromium and no root apt-get: the live tab's browser test will skip"; fi

setup: $(BIN)/repvit chromium

demo: setup
	$(BIN)/repvit info
	$(BIN)/repvit demo

# Two workers, one compute thread each (tests/conftest.py), whole files per worker (module fixtures are
# built once): on a 2-core machine this took the suite from about 27 to 18 minutes.
# A worker that dies (a rare native crash, silent, seen about once in five whole runs) fails its test and leaves the
# rest of its file unrun: those tests (.pytest-after-crash, written by tests/conftest.py) run again in one process,
# so only a crash that happens again, or a real failure, fails the suite. --max-worker-restart 0: replacing a
# worker near the end hangs xdist's file scheduler.
test: setup
	@rm -f .pytest-after-crash
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --max-worker-restart 0 --durations=25 tests || { \
		test -s .pytest-after-crash && \
		echo "== a test worker died (above): its $$(wc -l < .pytest-after-crash) unfinished tests, again, in one process" && \
		$(BIN)/python -m pytest -q -p no:xdist @.pytest-after-crash; }

.PHONY: setup demo test chromium
