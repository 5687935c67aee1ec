"""
The local control API: newline-delimited JSON over a root-only UNIX socket.

A request is one JSON object C{{"command": NAME, "args": {...}}} on one line;
the answer is one line C{{"ok": true, "result": ...}} or
C{{"ok": false, "error": "one sentence"}}.  Services register the commands
they answer on the daemon's L{ControlServer}; the C{wow} CLI uses
L{wow.control.client.call}.
"""
