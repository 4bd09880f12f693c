"""``kinema4d`` command line: one subcommand per pipeline stage.

Each subcommand parses a frozen config dataclass with tyro (typed flags, ``--help`` lists them) and calls the
stage's entry function. Errors in user input are reported as one line (``kinema4d: error: ...``) with exit code 2.
"""

from __future__ import annotations

import sys


def _control(args):
    import tyro

    from kinema4d.control import ControlConfig, run_control

    cfg = tyro.cli(ControlConfig, args=args, prog="kinema4d control")
    out = run_control(cfg)
    print(f"wrote {out}/robot_pointmap.npz, robot_pointmap.mp4, control.json")


COMMANDS = {
    "control": (_control, "actions -> joints (FK / IK) -> robot pointmap sequence (+ mp4)"),
}


def usage() -> str:
    lines = ["usage: kinema4d COMMAND [FLAGS]", "", "commands:"]
    lines += [f"  {name:<10}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines + ["", "Run `kinema4d COMMAND --help` for the flags of a command."])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"kinema4d: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        COMMANDS[name][0](rest)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"kinema4d {name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
