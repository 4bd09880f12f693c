"""``kinema4d`` command line: one subcommand per pipeline stage.

Each subcommand parses a frozen config dataclass with tyro (typed flags, ``--help`` lists them) and calls the
stage's entry function. Errors in user input are reported as one line (``kinema4d: error: ...``) with exit code 2;
``kinema4d --debug COMMAND ...`` (global flag, before the command) or the environment variable ``KINEMA4D_DEBUG=1``
re-raises them instead, with the full traceback.
"""

from __future__ import annotations

import os
import sys


def _control(args):
    import tyro

    from kinema4d.kinematics.control import ControlConfig, run_control

    cfg = tyro.cli(ControlConfig, args=args, prog="kinema4d control")
    out = run_control(cfg)
    print(f"wrote {out}/robot_pointmap.npz, robot_pointmap.mp4, control.json")


def _datagen(args):
    import json

    import tyro

    from kinema4d.data.datagen import DatagenConfig, datagen_main

    cfg = tyro.cli(DatagenConfig, args=args, prog="kinema4d datagen")
    print(json.dumps(datagen_main(cfg), indent=2))


def _dataset(args):
    import argparse
    import json

    from kinema4d.data.datagen import dataset_info, dataset_preview

    if args[:1] in (["import"], ["export"]):
        return _dataset_io(args)

    ap = argparse.ArgumentParser(prog="kinema4d dataset")
    sub = ap.add_subparsers(dest="action", required=True)
    info = sub.add_parser("info", help="counts, success ratio and size on disk")
    info.add_argument("path")
    prev = sub.add_parser("preview", help="mp4 of one episode: RGB | world pointmap | robot pointmap")
    prev.add_argument("path")
    prev.add_argument("--episode", type=int, default=0, help="episode position in the split (default 0)")
    prev.add_argument("--out", default=None, help="mp4 path (default DIR/preview_<episode>.mp4)")
    conv = sub.add_parser("convert", help="rewrite dataset OLD (a split dir or a root of splits) in the current "
                          "format as NEW; atomic (NEW appears when done) and resumable (run it again)")
    conv.add_argument("old", help="dataset dir (holding zarr.json) or a root of split dirs, any readable version")
    conv.add_argument("new", help="output dir; must not exist (written as .NEW.converting, renamed when done)")
    conv.add_argument("--skip-corrupt", action="store_true", help="leave corrupt episodes out (counted) instead of "
                      "stopping at the first")
    conv.add_argument("--no-progress", action="store_true")
    # listed for --help only: `import` / `export` are parsed by their tyro configs (_dataset_io)
    sub.add_parser("import", help="`import lerobot DIR --out OUT ...` (LeRobot v3.0) | `import plain SRC --out OUT` "
                   "(npz / HDF5: rgb, depth, q, K, T_cam_world); `import lerobot --help` for the flags")
    sub.add_parser("export", help="`export lerobot SRC... --out DIR`: kinema4d episodes and rollout.npz files as a "
                   "LeRobot v3.0 dataset; `export lerobot --help` for the flags")
    a = ap.parse_args(args)
    if a.action == "info":
        print(json.dumps(dataset_info(a.path), indent=2))
    elif a.action == "convert":
        from kinema4d.data.convert import convert_dataset

        print(json.dumps(convert_dataset(a.old, a.new, skip_corrupt=a.skip_corrupt, progress=not a.no_progress),
                         indent=2))
    else:
        out = a.out or f"{a.path.rstrip('/')}/preview_{a.episode:06d}.mp4"
        print(f"wrote {dataset_preview(a.path, a.episode, out)}")


IMPORT_FORMATS = ("lerobot", "plain")


def _dataset_io(args):
    """`dataset import lerobot|plain ...` and `dataset export lerobot ...` (tyro configs)."""
    import json

    import tyro

    action, fmt, rest = args[0], (args[1:2] or [""])[0], args[2:]
    if action == "import" and fmt == "lerobot":
        from kinema4d.data.lerobot import ImportLeRobotConfig, import_lerobot

        cfg = tyro.cli(ImportLeRobotConfig, args=rest, prog="kinema4d dataset import lerobot")
        print(json.dumps(import_lerobot(cfg), indent=2))
    elif action == "import" and fmt == "plain":
        from kinema4d.data.recordings import ImportPlainConfig, import_plain

        cfg = tyro.cli(ImportPlainConfig, args=rest, prog="kinema4d dataset import plain")
        print(json.dumps(import_plain(cfg), indent=2))
    elif action == "export" and fmt == "lerobot":
        from kinema4d.data.lerobot_export import ExportLeRobotConfig, export_lerobot

        cfg = tyro.cli(ExportLeRobotConfig, args=rest, prog="kinema4d dataset export lerobot")
        print(json.dumps(export_lerobot(cfg), indent=2))
    else:
        formats = IMPORT_FORMATS if action == "import" else ("lerobot",)
        raise ValueError(f"usage: kinema4d dataset {action} {{{'|'.join(formats)}}} ... (--help for the flags); "
                         f"got format {fmt!r}")


def _view(args):
    import tyro

    from kinema4d.interactive.viewer import ViewConfig, view_main

    cfg = tyro.cli(ViewConfig, args=args, prog="kinema4d view")
    for kind, path in view_main(cfg).items():
        print(f"wrote {kind}: {path}")


def _simulate(args):
    import tyro

    from kinema4d.simulator import SimulateConfig, simulate_main

    cfg = tyro.cli(SimulateConfig, args=args, prog="kinema4d simulate")
    for kind, path in simulate_main(cfg).items():
        print(f"wrote {kind}: {path}")


def _train(args):
    import json

    import tyro

    from kinema4d.model.train import train_main
    from kinema4d.model.train_config import PRESETS

    cfg = tyro.extras.overridable_config_cli(PRESETS, args=args, prog="kinema4d train",
                                             description="Train the kinema4d world model (presets: "
                                             f"{', '.join(PRESETS)}; any field can be overridden)")
    s = train_main(cfg)
    keep = ("step", "num_params", "num_trainable", "world_size", "skipped_corrupt")
    print(json.dumps({**{k: s[k] for k in keep if k in s}, "last_loss": s["losses"][-1] if s["losses"] else None,
                      "out_dir": cfg.out_dir}, indent=2))


def _eval(args):
    import tyro

    from kinema4d.eval.evaluate import EvalConfig, evaluate
    from kinema4d.eval.report import compare

    if args[:1] == ["compare"]:
        if len(args) != 3:
            raise ValueError("usage: kinema4d eval compare REPORT_DIR_A REPORT_DIR_B")
        print(compare(args[1], args[2]))
        return
    if args[:1] == ["policy"]:
        from kinema4d.eval.policy import PolicyEvalConfig, policy_eval

        pcfg = tyro.cli(PolicyEvalConfig, args=args[1:], prog="kinema4d eval policy")
        policy_eval(pcfg)
        files = "policy_ranking.md, policy_ranking.json, policy_ranking.png" if pcfg.ranking else \
            "policy.md, policy.html, policy.json, success_rates.png"
        print(f"wrote {pcfg.out}/{files}")
        return
    cfg = tyro.cli(EvalConfig, args=args, prog="kinema4d eval")
    report = evaluate(cfg)
    if cfg.skip_corrupt:
        print(f"skipped {report['skipped_corrupt']} corrupt episodes of {cfg.data}/{cfg.split} (--skip-corrupt)")
    print(f"wrote {cfg.out}/report.md, report.html, report.json, per_frame.png, videos/")


COMMANDS = {
    "control": (_control, "actions -> joints (FK / IK) -> robot pointmap sequence (+ mp4)"),
    "datagen": (_datagen, "generate synthetic 4D episodes (pybullet) into a zarr dataset"),
    "dataset": (_dataset, "`dataset info DIR` | `dataset preview DIR --episode I` | `dataset convert OLD NEW` | "
                "`dataset import lerobot|plain SRC --out DIR` | `dataset export lerobot SRC... --out DIR`"),
    "train": (_train, "train the world model: `train PRESET [--field value ...]` (tiny | default | ...)"),
    "simulate": (_simulate, "image + actions -> 4D rollout (rgb.mp4, pointmap.mp4, rollout.npz); `simulate --demo`"),
    "eval": (_eval, "score a checkpoint vs baselines on a split -> report.md/html; `eval compare A B`; "
             "`eval policy` (Tab. 3 success rates; `--ranking`: policy ranking)"),
    "view": (_view, "rerun recording (+ mp4 / gif / PLY) of a rollout.npz or control output: `view PATH`"),
}


def usage() -> str:
    lines = ["usage: kinema4d [--debug] COMMAND [FLAGS]", "", "commands:"]
    lines += [f"  {name:<10}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines + ["", "options:",
                              "  --debug     show the full traceback of an error instead of one line "
                              "(also: KINEMA4D_DEBUG=1)",
                              "", "Run `kinema4d COMMAND --help` for the flags of a command."])


def _debug_env() -> bool:
    return os.environ.get("KINEMA4D_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_env()
    while argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"kinema4d: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        COMMANDS[name][0](rest)
    except Exception as e:  # user-facing errors become one line; anything else is a bug: keep the traceback
        if debug or not (isinstance(e, (ValueError, FileNotFoundError, KeyError))
                         or type(e).__module__.startswith("kinema4d")):
            raise
        print(f"kinema4d {name}: error: {e} (kinema4d --debug {name} ... shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
