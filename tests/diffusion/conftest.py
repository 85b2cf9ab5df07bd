"""Everything here runs tiny models or elementwise maths: one thread (see `one_thread`)."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield
