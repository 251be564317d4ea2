"""A TCP proxy between the service and PostgreSQL that can lose the answer to a COMMIT.

Armed, it forwards the next COMMIT to the server, waits for the server's
answer — which the server sends only once the transaction is durable — and
then drops that answer and closes both connections: the commit happened,
but the service cannot know it. It reads just enough of the wire protocol
(v3) to find message boundaries: untyped startup messages first (an SSL or
GSSAPI encryption request may come before the StartupMessage), then typed
messages; psycopg sends COMMIT as a simple Query ('Q') message.
"""

import socket
import threading

ENCRYPTION_REQUESTS = {80877103, 80877104}  # SSLRequest, GSSENCRequest


def hang_up(*sockets):
    """Close sockets so that a thread blocked on one of them wakes up (close alone does not)."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected, or already shut
        sock.close()


class CommitAnswerThief:
    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answers_lost = 0
        self._armed = threading.Event()
        self._lock = threading.Lock()
        self._sockets = []

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        with self._lock:
            hang_up(self.listener, *self._sockets)

    def lose_next_commit_answer(self):
        self._armed.set()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, server]
            link = {"swallow": False}
            threading.Thread(target=self._client_to_server, args=(client, server, link), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(server, client, link), daemon=True).start()

    def _client_to_server(self, client, server, link):
        buffer = b""
        startup = True
        try:
            while data := client.recv(65536):
                buffer += data
                while (frame := self._next_frame(buffer, startup)) is not None:
                    buffer = buffer[len(frame) :]
                    if startup:
                        startup = int.from_bytes(frame[4:8], "big") in ENCRYPTION_REQUESTS
                    elif self._is_commit(frame) and self._armed.is_set():
                        self._armed.clear()
                        link["swallow"] = True  # before the server can possibly answer
                    server.sendall(frame)
        except OSError:
            pass
        finally:
            hang_up(server)

    def _server_to_client(self, server, client, link):
        try:
            while data := server.recv(65536):
                if link["swallow"]:
                    # The COMMIT's answer: the transaction is committed. Lose it.
                    with self._lock:
                        self.answers_lost += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            hang_up(client, server)

    @staticmethod
    def _next_frame(buffer, startup):
        """The first complete message in `buffer`, or None."""
        header = 4 if startup else 5
        if len(buffer) < header:
            return None
        length = int.from_bytes(buffer[header - 4 : header], "big") + header - 4
        return buffer[:length] if len(buffer) >= length else None

    @staticmethod
    def _is_commit(frame):
        return frame[:1] == b"Q" and frame[5:].lstrip().upper().startswith(b"COMMIT")
