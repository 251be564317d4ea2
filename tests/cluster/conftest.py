from tests.cluster.sale import FIGURES


def pytest_terminal_summary(terminalreporter):
    """The run's figures, last: claims answered and found after each failover, recovery times, app-host kills."""
    if FIGURES:
        terminalreporter.section("cluster figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
