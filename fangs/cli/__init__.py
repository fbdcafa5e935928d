"""
C{fangs}: the operator's command line, a client of the orchestrator's /v1 API.

It never touches the database; everything goes over HTTP(S) with the same
wire types the runners use.  Plain blocking I/O (urllib) is the right tool for
a command that makes a handful of requests and exits.

The package: L{fangs.cli.parser} (global options and every command's
arguments), L{fangs.cli.http} (the client, exit codes, errors),
L{fangs.cli.context}, L{fangs.cli.render}, and one module per command group
(L{scans}, L{runs}, L{packages}, L{review}, L{notifiers}, L{admin}).
"""

from __future__ import annotations

import sys
from typing import List, Optional

from fangs.cli.context import Context
from fangs.cli.http import EXIT_OK, EXIT_USAGE, CLIError, Client, sslContext
from fangs.cli.parser import buildParser, resolveGlobals


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pki"]:
        from fangs import pki

        return pki.main(argv[1:])
    parser = buildParser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        sys.stderr.write("fangs: no command given (see fangs --help)\n")
        return EXIT_USAGE
    if getattr(args, "fn", None) is None:
        sys.stderr.write("fangs: %s needs a subcommand (see fangs %s --help)\n" % (args.command, args.command))
        return EXIT_USAGE
    resolveGlobals(args)
    try:
        client = Client(args.orchestrator, sslContext(args), args.token, tenant=args.tenant)
        code = args.fn(Context(args, client))
        sys.stdout.flush()
        return code
    except CLIError as e:
        sys.stdout.flush()
        sys.stderr.write("fangs: %s\n" % (e.message,))
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("fangs: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK


def run() -> None:
    sys.exit(main())
