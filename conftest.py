from django.conf import settings


def pytest_report_header(config):
    return settings.TEST_DATABASE_NOTICE
