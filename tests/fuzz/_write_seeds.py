"""Write the fuzzers' seed inputs into corpus/<target>/seed-*."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _targets  # noqa: E402

for target, inputs in _targets.seeds().items():
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    for name, data in inputs.items():
        with open(os.path.join(folder, "seed-" + name), "wb") as f:
            f.write(data)
