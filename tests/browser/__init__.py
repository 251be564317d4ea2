"""Browser tests: Playwright driving Chromium against pytest-django's live server.

They are pytest tests (pytest-playwright's fixtures), run by `make test`.
Django's runner, which runs only unittest-style classes, skips this package
altogether (see `load_tests`) instead of importing its pytest-only modules.
"""


def load_tests(loader, standard_tests, pattern):
    # unittest discovery calls this instead of searching the package.
    return standard_tests
