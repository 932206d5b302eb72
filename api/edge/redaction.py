"""What a caller without the admin key sees of the cluster: no SSH user names, no paths.

``/api/cluster/status`` and ``/health`` carry ssh targets (``alice@mac1``), node names made
from them, and reasons that quote paths (``/Users/alice/venv/bin/python: not found``,
``~alice/.ssh/authorized_keys``). The same rewrite is applied to every string, so names stay
consistent across nodes, actors and groups.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

USER = "<user>"
PATH = "<path>"

# ``user@`` before a host name or a bracketed address.
_USER_AT = re.compile(r"[^\s@'\"(),;=]+@(?=[A-Za-z0-9_\[])")
# An absolute path or ``~/…``, ``~user/…``: not when glued to a word (a Hugging Face repo id
# such as ``mlx-community/Qwen``), a URL (``http://host/path``) or a fraction (``1/2``).
_PATH = re.compile(r"(?<![\w.:/~@-])(?:~[A-Za-z0-9_.-]*/[^\s'\",;()]*|/[^\s'\",;()]+)")


def redact(value: Any, users: Iterable[str] = ()) -> Any:
    """``value`` (JSON-like) with user names and paths replaced in every string."""
    names = sorted({u for u in users if u}, key=len, reverse=True)
    word = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b") if names else None
    return _walk(value, word)


def ssh_users(status: dict) -> set[str]:
    """The user names the status's ssh targets spell out (``alice`` of ``alice@mac1``)."""
    users = set()
    nodes = status.get("nodes")
    for node in nodes if isinstance(nodes, list) else ():
        ssh = node.get("ssh") if isinstance(node, dict) else None
        if isinstance(ssh, str) and "@" in ssh:
            users.add(ssh.removeprefix("ssh://").rpartition("@")[0])
    return users


def _walk(value: Any, word: re.Pattern | None) -> Any:
    if isinstance(value, str):
        text = _PATH.sub(PATH, _USER_AT.sub(USER + "@", value))
        return word.sub(USER, text) if word else text
    if isinstance(value, dict):  # keys too: some maps are keyed by node name (memory.nodes)
        return {_walk(k, word): _walk(v, word) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, word) for v in value]
    return value
