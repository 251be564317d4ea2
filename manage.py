#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main():
    # `manage.py test` picks its database the way pytest does (DATABASE_URL,
    # else a testcontainers PostgreSQL, else SQLite): see tests/settings.py.
    default_settings = "tests.settings" if sys.argv[1:2] == ["test"] else "couponsite.settings"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", default_settings)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
