"""The documentation: its examples run against the served app, the site built strictly, its links checked.

They are pytest tests (parametrised by page), run by `make test`. Django's
runner leaves this package out (see `load_tests`), as it does the browser tests.
"""


def load_tests(loader, standard_tests, pattern):
    # unittest discovery calls this instead of searching the package.
    return standard_tests
