"""The atheris entry point shared by fuzz_decoder.py and fuzz_handshake.py.

    python tests/fuzz/fuzz_decoder.py [--impl compiled|python|both] [libFuzzer options] [CORPUS_DIR ...]

``--impl`` (or ``FASTMGR_FUZZ_IMPL``) chooses the implementation; the
default, ``both``, runs the two and fails when they disagree (the pure-Python
twin is instrumented for coverage, so it also steers the compiled one).
Without a corpus directory, the target's seeds in ``corpus/<target>/`` are
used.  Crashing inputs are written by libFuzzer (``-artifact_prefix=``);
keep them in ``corpus/<target>/`` as regression cases.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))  # an in-place build


def main(target_name):
    import atheris

    argv = list(sys.argv)
    impl = os.environ.get("FASTMGR_FUZZ_IMPL", "both")
    for i, arg in enumerate(argv):
        if arg == "--impl" and i + 1 < len(argv):
            impl = argv[i + 1]
            del argv[i:i + 2]
            break
        if arg.startswith("--impl="):
            impl = arg.split("=", 1)[1]
            del argv[i]
            break
    with atheris.instrument_imports():
        import fastmgr._wire_py  # noqa: F401  (instrumented for coverage)
        import _targets
    mods = _targets.implementations(impl)
    if target_name == "handshake":
        _targets.fix_nonces()
    target = _targets.TARGETS[target_name]
    if not any(not a.startswith("-") for a in argv[1:]):
        # new inputs go to the first folder: a scratch one, not the seeds'
        import tempfile
        scratch = tempfile.mkdtemp(prefix="fastmgr-fuzz-%s-" % target_name)
        argv += [scratch, os.path.join(HERE, "corpus", target_name)]
    if not any(a.startswith("-max_len=") for a in argv):
        argv.append("-max_len=4096")
    print("fuzzing %s on %s" % (target_name, ", ".join(m.IMPLEMENTATION for m in mods)),
          file=sys.stderr)

    def one_input(data):
        target(data, mods)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()
