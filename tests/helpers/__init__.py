"""Code the test modules share, importable as ``helpers``.

pytest puts the tests directory on ``sys.path`` (its ``conftest.py`` is
there), so ``from helpers import hub`` works in the test modules, in the
child processes they start (spawn copies ``sys.path``; subprocesses get it
through ``PYTHONPATH`` or their working directory) and in ``tools/soak.py``.
Test modules import from here, never from one another.

One module per concern, named after the test module that uses it most:
``extras``, ``hub``, ``programs``, ``reliability``, ``remote``,
``stdlib_wire`` (and ``stdlib_peer``, a program run by plain CPythons).
"""
