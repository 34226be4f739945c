"""One tray app per user and preferences file: a second launch hands its request to the first and exits.

    instance = SingleInstance(instance_key(prefs_path))
    if not instance.claim("show"):      # another app runs: it got "show"
        sys.exit(0)
    instance.message_received.connect(on_request)   # "show", "settings", "statistics"

A lock file decides who is first (Qt's QLockFile notices a stale lock left by a crash); a local
socket (a Unix socket or a Windows named pipe, private to the user) carries the request.
"""

from __future__ import annotations

import getpass
import hashlib
from pathlib import Path
from typing import Final

from PySide6.QtCore import QDir, QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

__all__ = ["REQUESTS", "SingleInstance", "instance_key"]

REQUESTS: Final = ("show", "settings", "statistics")
CONNECT_TIMEOUT_MS = 2000


def instance_key(prefs_path: Path) -> str:
    """A name unique to this user and preferences file (tests and benchmarks use their own)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    digest = hashlib.sha256(f"{user}\0{prefs_path.resolve()}".encode()).hexdigest()[:16]
    return f"commonweights-app-{digest}"


class SingleInstance(QObject):
    message_received = Signal(str)

    def __init__(self, key: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.key = key
        self._lock = QLockFile(QDir.temp().filePath(f"{key}.lock"))
        self._lock.setStaleLockTime(0)  # stale only when its process is gone, never by age
        self._server: QLocalServer | None = None

    def claim(self, request: str = "show") -> bool:
        """True: this is the first instance, now listening. False: another one runs and got `request`."""
        if not self._lock.tryLock(0):
            if send_request(self.key, request):
                return False
            # A live lock whose owner does not answer: hung, or just starting. Let the user's
            # launch win rather than do nothing.
            self._lock.removeStaleLockFile()
            if not self._lock.tryLock(0):
                return False
        QLocalServer.removeServer(self.key)  # a socket file left behind by a crash
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.key):
            self._lock.unlock()
            raise OSError(f"cannot listen on {self.key}: {server.errorString()}")
        server.newConnection.connect(self._accept)
        self._server = server
        return True

    def release(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._lock.isLocked():
            self._lock.unlock()

    def _accept(self) -> None:
        server = self._server
        while server is not None and server.hasPendingConnections():
            socket = server.nextPendingConnection()
            socket.readyRead.connect(lambda s=socket: self._read(s))
            socket.disconnected.connect(socket.deleteLater)

    def _read(self, socket: QLocalSocket) -> None:
        while socket.canReadLine():
            line = bytes(socket.readLine().data()).decode("utf-8", "replace").strip()
            if line in REQUESTS:
                self.message_received.emit(line)


def send_request(key: str, request: str) -> bool:
    """Deliver `request` to the running instance; False when none answers."""
    socket = QLocalSocket()
    socket.connectToServer(key)
    if not socket.waitForConnected(CONNECT_TIMEOUT_MS):
        return False
    socket.write(f"{request}\n".encode())
    delivered = socket.waitForBytesWritten(CONNECT_TIMEOUT_MS)
    socket.disconnectFromServer()
    if socket.state() != QLocalSocket.LocalSocketState.UnconnectedState:
        socket.waitForDisconnected(CONNECT_TIMEOUT_MS)
    return delivered
