#!/bin/sh
# Runs the editor command given as arguments, after making sure Python's user site exists in
# the workspace: Python only puts it on sys.path when it exists at start, so in a new
# workspace a package that `pip install --user` (or `%pip install`) puts there during the
# session would not be importable until the kernel restarts.
mkdir -p "$(python3 -c 'import site; print(site.getusersitepackages())')" 2>/dev/null || true
exec "$@"
