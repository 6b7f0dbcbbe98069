"""atheris harness: the wire's handshake (see _targets.handshake_target).

    python tests/fuzz/fuzz_handshake.py [--impl compiled|python|both] [-max_total_time=60] [CORPUS_DIR]
"""
import _harness

if __name__ == "__main__":
    _harness.main("handshake")
