"""atheris harness: the wire's decoder (see _targets.decoder_target).

    python tests/fuzz/fuzz_decoder.py [--impl compiled|python|both] [-max_total_time=60] [CORPUS_DIR]
"""
import _harness

if __name__ == "__main__":
    _harness.main("decoder")
