"""sd_notify over a real AF_UNIX datagram socket, abstract names included."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fusion_runner.daemon.systemd import Notifier


def test_messages_reach_a_socket_in_the_abstract_namespace() -> None:
    name = f"fusion-runner-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})

        notifier.ready()
        notifier.status("1 running, 0 pending")
        notifier.status("1 running, 0 pending")  # unchanged: not sent again
        notifier.stopping()

        received = [listener.recv(256).decode() for _ in range(3)]
    assert received == ["READY=1", "STATUS=1 running, 0 pending", "STOPPING=1"]


def test_a_path_socket_and_the_watchdog_interval(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})

        notifier.watchdog()

        assert listener.recv(256) == b"WATCHDOG=1"
    assert notifier.watchdog_interval == 15.0


def test_nothing_is_sent_or_scheduled_outside_systemd() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})

    notifier.ready()  # no socket: silently nothing

    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # the pings are for another process
