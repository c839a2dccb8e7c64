"""A standing server and site agents for the Flower-across-institutions test (the federation tests' fixture)."""

from tests.federation.conftest import federation  # noqa: F401 - the fixture
