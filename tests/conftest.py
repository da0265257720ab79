import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A folder with the tiny random-weight models, written by `gvcc.py make-tiny` as a user would."""
    import golden_cases
    return golden_cases.make_tiny_weights(str(tmp_path_factory.mktemp("weights")))
