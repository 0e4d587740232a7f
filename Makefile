VENV ?= .venv
PY = $(VENV)/bin/python
PIP = $(PY) -m pip
STAMP = $(VENV)/.stamp
DEMO_ARGS ?= policy=checkpoint ckpt=checkpoints/tiny_D_query num_sequences=8 workers=2 out_dir=runs/demo
PYTEST_ARGS ?=
# Mesa's EGL for MuJoCo's offscreen rendering (MUJOCO_GL=egl); PyOpenGL also needs libOpenGL.
EGL_PACKAGES = libegl1 libopengl0 libgl1-mesa-dri libegl-mesa0 libgles2

.PHONY: setup sysdeps demo test lint bench clean

setup: sysdeps $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install -e . --no-deps
	touch $@

sysdeps:
	@if dpkg -s $(EGL_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends $(EGL_PACKAGES); \
	else \
		echo "warning: cannot install $(EGL_PACKAGES) (needs root and apt-get); offscreen rendering may fail" >&2; \
	fi

demo: setup
	MUJOCO_GL=egl $(VENV)/bin/dream-policy eval $(DEMO_ARGS)

test: setup
	MUJOCO_GL=egl $(PY) -m pytest -q test $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	MUJOCO_GL=egl $(PY) bench/playtable_speed.py

clean:
	rm -rf runs outputs chains.json build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
