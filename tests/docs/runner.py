"""Running the documentation's examples: against the service as `make run` starts it, on a fresh database.

`make run` runs the Procfile's processes under honcho: the web server
(`python -m couponsite.serve`: granian) and the hold expiry worker; so does
`MakeRunService`. Commands talk to http://127.0.0.1:8000, where `make run`
serves; here that address is rewritten to the server's free port, and the
page's commands run in order, in one bash, as a person's shell would after
`make run`.

For whoever writes a page, the same from the command line (prints what
each command printed, then stops at the first difference):

    .venv/bin/python -m tests.docs.runner docs/client-guide.md [--database sqlite|postgresql]
"""

import argparse
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.docs.examples import Bindings, ExampleError, read_blocks, shown_path
from tests.docs.examples import differences as output_differences
from tests.faults.service import Service
from tests.helpers import ROOT, manage

# Where the examples say the service is: `make run`'s address.
DOCUMENTED_ADDRESS = re.compile(r"(?:127\.0\.0\.1|localhost):8000\b")
COMMAND_TIMEOUT_SECONDS = 120
# The examples' server: one worker, so that a rate limit counted in local memory is exact.
SERVER_SETTINGS = {"WEB_CONCURRENCY": "1"}
VENV_BIN = Path(sys.executable).parent


class MakeRunService(Service):
    """Every process of the Procfile under honcho, with the venv's commands first on PATH, as `make run` starts
    them (but for its `migrate`: the examples' databases are migrated already). The same environment reaches
    every process, and they start and stop together."""

    def __init__(self, database_url, **environment):
        super().__init__(database_url, **environment)
        self.environment["PATH"] = f"{VENV_BIN}{os.pathsep}{self.environment.get('PATH', os.defpath)}"

    def command(self):
        # `--env /dev/null`: honcho would read a .env file of the checkout; every setting here is the test's.
        return [sys.executable, "-m", "honcho", "start", "--no-colour", "--env", os.devnull]


class Shell:
    """One bash for a page's commands, so that a variable set by one command is there for the next."""

    def __init__(self, cwd, environment):
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.decode(errors="replace"))
        self.lines.put(None)

    def run(self, command):
        """(exit status, what the command printed on stdout and stderr)."""
        marker = f"__example_done_{secrets.token_hex(8)}__"
        # The newline before the marker ends a last line printed without one (curl's JSON bodies).
        self.process.stdin.write(f"{command}\nprintf '\\n{marker} %d\\n' $?\n".encode())
        self.process.stdin.flush()
        printed = []
        while True:
            try:
                line = self.lines.get(timeout=COMMAND_TIMEOUT_SECONDS)
            except queue.Empty:
                raise ExampleError(f"no end after {COMMAND_TIMEOUT_SECONDS} s; printed:\n{''.join(printed)}") from None
            if line is None:
                raise ExampleError(f"the shell exited; printed:\n{''.join(printed)}")
            if line.startswith(marker):
                return int(line.split()[1]), "".join(printed).removesuffix("\n")
            printed.append(line)

    def close(self):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def shell_environment(home, database_url):
    """What a person's shell has after `make run`: the venv's tools first, and the service's database."""
    # As in a terminal, where curl shows no progress meter: here its output is a pipe.
    (home / ".curlrc").write_text("silent\nshow-error\n")
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def working_directory(directory):
    """A directory that looks like the repository's root to the examples (`manage.py`, `.venv/bin/python`, the
    client generator's configuration) but keeps whatever file they write out of the repository."""
    for name in ("manage.py", "openapi-python-client.yaml"):
        (directory / name).symlink_to(ROOT / name)
    in_a_venv = sys.prefix != sys.base_prefix
    (directory / ".venv").symlink_to(sys.prefix if in_a_venv else Path(sys.executable).parent.parent)
    return directory


@dataclass
class PageRun:
    """What running a page did."""

    blocks_run: int = 0
    commands_run: int = 0
    not_run: list = field(default_factory=list)  # [(where, why)]


def run_page(page, database_url, scratch, show=None):
    """Run the page's console blocks in order against a MakeRunService on `database_url`; raise ExampleError at the
    first difference. `show`, when given, is called with (command, what it printed, the differences) for
    each command, and the run goes on past differences (for whoever writes the page)."""
    result = PageRun()
    home = scratch / "home"
    home.mkdir()
    shell = Shell(working_directory(scratch), shell_environment(home, database_url))
    bindings = Bindings()
    server, server_settings = None, {}
    try:
        for block in read_blocks(page):
            if block.not_run_reason:
                result.not_run.append((block.where, block.not_run_reason))
                continue
            if server is None or block.server_settings is not None:
                if server is not None:
                    server.__exit__(None, None, None)
                if block.server_settings is not None:
                    server_settings = block.server_settings
                server = MakeRunService(database_url, **SERVER_SETTINGS, **server_settings).__enter__()
            for command in block.commands:
                _run_command(page, command, shell, server, bindings, show)
                result.commands_run += 1
            result.blocks_run += 1
    finally:
        shell.close()
        if server is not None:
            server.__exit__(None, None, None)
    return result


def _run_command(page, command, shell, server, bindings, show):
    where = f"{shown_path(page)}:{command.line}"
    sent = DOCUMENTED_ADDRESS.sub(f"127.0.0.1:{server.port}", bindings.command_to_send(command.text))
    status, printed = shell.run(sent)
    printed = printed.replace(f"127.0.0.1:{server.port}", "127.0.0.1:8000")
    found = output_differences(command.output, printed, bindings)
    if status != 0:
        found.insert(0, f"exited with status {status}")
    if show is not None:
        show(command, printed, found)
    elif found:
        log = server.output().strip()
        raise ExampleError(
            f"{where}: `{command.text}` does not print what the page shows:\n  "
            + "\n  ".join(found)
            + f"\n--- shown:\n{command.output.rstrip()}\n--- printed:\n{printed.rstrip()}\n"
            + (f"--- server log (end):\n{log[-3000:]}\n" if log else "")
        )


# Fresh databases ----------------------------------------------------------------------------------


class PostgresDatabases:
    """A fresh PostgreSQL database per page, each a copy of one migrated template: CREATE DATABASE ...
    TEMPLATE takes a fraction of a second where `migrate` takes seconds.

    On the server of `server_url`; named after its database and the pytest-xdist worker, so that runs of
    other worktrees and workers do not collide, and dropped first in case a killed run left them.
    """

    backend = "postgresql"

    def __init__(self, server_url):
        parts = urlsplit(server_url)
        prefix = f"test_{parts.path.lstrip('/')}_docs_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
        self.server_url = server_url
        self.template, self.page = f"{prefix}_template", f"{prefix}_page"
        self.url_of = lambda name: urlunsplit(parts._replace(path=f"/{name}"))

    def _execute(self, *statements):
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def __enter__(self):
        self._execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)', f'CREATE DATABASE "{self.template}"')
        _migrate(self.url_of(self.template))
        return self

    @contextmanager
    def fresh(self):
        self._execute(
            f'DROP DATABASE IF EXISTS "{self.page}" WITH (FORCE)',
            f'CREATE DATABASE "{self.page}" TEMPLATE "{self.template}"',
        )
        try:
            yield self.url_of(self.page)
        finally:
            self._execute(f'DROP DATABASE IF EXISTS "{self.page}" WITH (FORCE)')

    def __exit__(self, *exc_info):
        self._execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')


class SqliteDatabases:
    """A fresh SQLite file per page, each a copy of one migrated template file in `directory`."""

    backend = "sqlite"

    def __init__(self, directory):
        self.directory = Path(directory)
        self.template = self.directory / "template.sqlite3"

    def __enter__(self):
        _migrate(f"sqlite:///{self.template}")
        return self

    @contextmanager
    def fresh(self):
        page = Path(tempfile.mkdtemp(dir=self.directory)) / "db.sqlite3"
        shutil.copyfile(self.template, page)  # `migrate` has exited: no write-ahead log is left to copy
        try:
            yield f"sqlite:///{page}"
        finally:
            shutil.rmtree(page.parent)

    def __exit__(self, *exc_info):
        self.template.unlink(missing_ok=True)


def _migrate(database_url):
    result = manage("migrate", "--noinput", DATABASE_URL=database_url)
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed for the examples' database:\n{result.stderr}")


def main():
    parser = argparse.ArgumentParser(description="Run a page's console examples and show what they print.")
    parser.add_argument("page", type=Path)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    arguments = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")
    import django

    django.setup()  # the cursor's decoder, which recognises cursors, is the service's own

    failures = []

    def show(command, printed, found):
        print(f"$ {command.text}\n{printed}")
        if found:
            failures.append(command.line)
            print("".join(f"  !!! {difference}\n" for difference in found))

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if arguments.database == "postgresql":
            databases = PostgresDatabases(os.environ["DATABASE_URL"])
        else:
            databases = SqliteDatabases(scratch)
        with databases, databases.fresh() as url:
            (scratch / "page").mkdir()
            result = run_page(arguments.page.resolve(), url, scratch / "page", show=show)
    print(f"\n{result.blocks_run} block(s), {result.commands_run} command(s) run; not run: {result.not_run}")
    if failures:
        sys.exit(f"differences at lines {failures}")


if __name__ == "__main__":
    main()
