"""The C{wow} command's shape: grouped help, --json on read commands, exit codes."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import TestCase

from wow.cli.main import EXIT_UNREACHABLE, GROUPS, build_parser, main
from wow.cli.overlay import _describe_reply

READ_COMMANDS = [["status"], ["counters"], ["leases"], ["security"], ["peers"], ["netcheck"],
                 ["ping", "x"], ["dht", "get", "k"]]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


class HelpTests(TestCase):
    def test_every_command_is_listed_in_a_group(self) -> None:
        parser = build_parser()
        text = parser.format_help()
        commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
        for title, _ in GROUPS:
            self.assertIn(f"{title}:", text)
        for name in commands:
            self.assertRegex(text, rf"\n  {name} +\S")
        self.assertIn("3 the daemon could not be reached", text)

    def test_read_commands_take_json(self) -> None:
        for argv in READ_COMMANDS:
            args = build_parser().parse_args([*argv, "--json"])
            self.assertTrue(args.json, argv)


class ExitCodeTests(TestCase):
    def test_unreachable_daemon(self) -> None:
        sock = self.mktemp()
        for argv in READ_COMMANDS:
            code, out, err = run([*argv, "--socket", sock])
            self.assertEqual(code, EXIT_UNREACHABLE, argv)
            self.assertEqual(out, "")
            self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_no_command_is_a_usage_error(self) -> None:
        self.assertEqual(run([])[0], 2)


class PingFormatTests(TestCase):
    def test_paths(self) -> None:
        base = {"address": "wow:" + "a" * 40, "ip": "10.128.0.7", "rtt_ms": 1.234, "via": None}
        self.assertEqual(_describe_reply({**base, "path": "direct", "hops": 1}),
                         f"reply from wow:{'a' * 40} (10.128.0.7): direct link, 1 hop, "
                         "rtt 1.23 ms")
        relayed = _describe_reply({**base, "ip": None, "path": "relayed", "hops": 3,
                                   "via": "wow:" + "b" * 40})
        self.assertIn(f"relayed via wow:{'b' * 40}, 3 hops", relayed)
        self.assertNotIn("(", relayed)
