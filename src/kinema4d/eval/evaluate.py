"""``kinema4d eval``: score a checkpoint against baselines on a dataset split, write report.md / report.html.

Protocol (every method sees exactly what the model sees at inference, per episode of the split):

- inputs: the episode's first RGB frame I0, the kinematic robot pointmap sequence and its mask (the dataset's
  ``robot_pointmap`` / ``robot_mask``, rendered by ``kinema4d.render``), at the checkpoint's training size and
  frame count (``TorchEpisodes(size, frames)``: uniform temporal subsampling of the recorded episode); models with
  ``world_anchor`` also get the frame-0 world pointmap (``kinema4d.data.model_inputs``), action-embedding models
  the recorded ee-pose actions;
- ``kinema4d`` (``--checkpoint``) and every ``--baselines NAME=CKPT`` model: ``model.sample`` with ``steps`` Euler
  steps, seed = ``seed + episode position``;
- ``static``: I0 and the frame-0 world pointmap repeated over time (a baseline that knows frame 0's geometry).

Metrics (definitions in :mod:`kinema4d.eval.metrics`): PSNR / SSIM on uint8 frames; Chamfer L1 / L2 (metres) and
F-Score@0.01 m between predicted and GT world pointmaps, both converted to metres with the normalization the
model was fed (the GT sequence's min-max, or the anchor stats), plus their "(temp)" consecutive-frame versions;
robot adherence (mm) after converting the generated pointmap to metres as the Simulator does (anchor stats, or a
fit on the robot pixels alone: ``denormalize_world_pointmap``). Frame 0 is excluded from the per-sequence means
(it is the given image for every method). Predicted pixels count as valid where any normalized channel exceeds
0.02 (the training target is 0 on empty pixels).
"""

from __future__ import annotations

import dataclasses
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinema4d.eval import metrics as M
from kinema4d.geometry import save_atomic_text
from kinema4d.viz import video_to_uint8

COLUMNS = (("psnr", "PSNR ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"), ("chamfer_l1", "CD-L1 ↓", "{:.4f}"),
           ("chamfer_l2", "CD-L2 ↓", "{:.5f}"), ("fscore", "F@0.01 ↑", "{:.3f}"),
           ("chamfer_l1_temp", "CD-L1 (temp) ↓", "{:.4f}"), ("fscore_temp", "F (temp) ↑", "{:.3f}"),
           ("adherence_mm", "adherence mm ↓", "{:.1f}"))


@dataclass(frozen=True)
class EvalConfig:
    """``kinema4d eval``: score ``checkpoint`` (None = the bundled default) on ``data/<split>``."""

    checkpoint: Path | None = None
    baselines: tuple[str, ...] = ()  # more models as NAME=CHECKPOINT (e.g. binary_mask=runs/baseline_binary_mask)
    data: Path = Path("data/synth")
    split: str = "test"
    out: Path = Path("out/eval")
    episodes: int | None = None  # first N episodes of the split (None = all)
    steps: int = 20  # sampling steps
    cfg_scale: float = 1.0
    seed: int = 0
    videos: int = 4  # GT | prediction mp4s for the first N episodes
    progress: bool = True


def _to_metres(pm01: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) normalized + (2, 3) [min; max] -> metres (0 stays 0 only where the GT is empty: caller masks)."""
    return pm01 * (stats[1] - stats[0]) + stats[0]


def score_episode(pred_rgb: np.ndarray, pred_w01: np.ndarray, item: dict, world_m: np.ndarray | None = None) -> dict:
    """Metrics of one prediction. pred_rgb (T,H,W,3) uint8, pred_w01 (T,H,W,3) GT-normalized, ``item`` a
    TorchEpisodes item, ``world_m`` the prediction in metres for adherence (None: skip)."""
    gt_rgb = video_to_uint8(item["rgb"])
    gt01 = item["world_pointmap"].permute(0, 2, 3, 1).numpy()
    gt_valid = item["world_valid"].numpy() > 0.5
    stats = item["world_stats"].numpy().astype(np.float64)
    pred_valid = pred_w01.max(-1) > 0.02
    geo = M.geometric_metrics(_to_metres(pred_w01[1:], stats), _to_metres(gt01[1:], stats), pred_valid[1:],
                              gt_valid[1:])
    out = {"psnr": float(np.mean(M.psnr_per_frame(pred_rgb[1:], gt_rgb[1:]))),
           "ssim": M.ssim(pred_rgb[1:], gt_rgb[1:]) if min(gt_rgb.shape[1:3]) >= 11 else float("nan"),
           "psnr_per_frame": M.psnr_per_frame(pred_rgb, gt_rgb).tolist(),
           "chamfer_l1_per_frame": [float("nan"), *geo["chamfer_l1_per_frame"].tolist()]}
    for k in ("chamfer_l1", "chamfer_l2", "fscore", "chamfer_l1_temp", "fscore_temp"):
        out[k] = float(geo[k])
    out["adherence_mm"] = float("nan")
    if world_m is not None:
        rstats = item["robot_stats"].numpy().astype(np.float64)
        robot_m = _to_metres(item["robot_pointmap"].permute(0, 2, 3, 1).numpy(), rstats)
        mask = item["robot_mask"].numpy() > 0.5
        out["adherence_mm"] = M.robot_adherence(world_m[1:], np.where(mask[1:, ..., None], robot_m[1:], 0),
                                                mask[1:])["mean_mm"]
    return out


def score_rgb_only(pred_rgb: np.ndarray, item: dict) -> dict:
    """Metrics of an RGB-only prediction (output='rgb_only' ablation): PSNR / SSIM, geometry NaN."""
    gt_rgb = video_to_uint8(item["rgb"])
    out = {k: float("nan") for k, _, _ in COLUMNS}
    out.update(psnr=float(np.mean(M.psnr_per_frame(pred_rgb[1:], gt_rgb[1:]))),
               ssim=M.ssim(pred_rgb[1:], gt_rgb[1:]) if min(gt_rgb.shape[1:3]) >= 11 else float("nan"),
               psnr_per_frame=M.psnr_per_frame(pred_rgb, gt_rgb).tolist(),
               chamfer_l1_per_frame=[float("nan")] * len(gt_rgb))
    return out


def load_methods(checkpoint, baselines: tuple[str, ...] = ()) -> tuple[dict, tuple[int, int], int]:
    """``checkpoint`` (None = bundled default) as "kinema4d" plus NAME=CHECKPOINT ``baselines`` -> ({name:
    (ResolvedCheckpoint, model, codec)}, (H, W), frames); every model must share the training size and frames."""
    from kinema4d.model import load_model
    from kinema4d.simulator import DEFAULT_CHECKPOINT, resolve_checkpoint

    models = {"kinema4d": checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT}
    for spec in baselines:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or name in (*models, "static"):
            raise ValueError(f"--baselines entries are NAME=CHECKPOINT with a new name, got {spec!r}")
        models[name] = Path(path)
    loaded, size, frames = {}, None, None
    for name, path in models.items():
        ck = resolve_checkpoint(path)
        tcfg = ck.train_config or {}
        sz, fr = tuple(tcfg.get("size", (32, 48))), int(tcfg.get("frames", 9))
        if size is not None and (sz, fr) != (size, frames):
            raise ValueError(f"{name} ({ck.dir}) was trained on {fr} frames of {sz}, kinema4d on {frames} of {size}: "
                             "methods must share the data they are scored on")
        size, frames = sz, fr
        loaded[name] = (ck, *load_model(ck.dir, weights=ck.weights))
    return loaded, size, frames


def predict(model, codec, raw: dict, steps: int, cfg_scale: float, seed: int):
    """One rollout of ``model`` on the TorchEpisodes item ``raw`` with exactly the inputs it was trained on.

    Returns (item as the model saw it, rgb uint8 (T,H,W,3), normalized world pointmap (T,3,H,W) tensor or None,
    world pointmap in camera metres (T,H,W,3) or None)."""
    import torch

    from kinema4d.data import model_inputs
    from kinema4d.model import denormalize_world_pointmap, sample
    from kinema4d.simulator import EMPTY_LEVEL

    item = model_inputs(model.cfg, raw)
    with torch.no_grad():
        rgb, w01 = sample(model, codec, item["rgb"][0], item["robot_pointmap"], item["robot_mask"], steps=steps,
                          cfg_scale=cfg_scale, seed=seed,
                          action=item["action"] if model.cfg.condition == "action_embedding" else None,
                          world0=item["world0"])
    world_m = None
    if w01 is not None and model.cfg.world_anchor:  # the normalization is known: exact metres, 0 where 'empty'
        pred01 = w01.permute(0, 2, 3, 1).numpy()
        world_m = _to_metres(pred01, item["world_stats"].numpy())
        world_m[pred01.max(-1) <= EMPTY_LEVEL] = 0.0
    elif w01 is not None:
        world_m = denormalize_world_pointmap(w01, item["robot_pointmap"], item["robot_mask"],
                                             item["robot_stats"])[0].permute(0, 2, 3, 1).numpy()
    return item, video_to_uint8(rgb), w01, world_m


def evaluate(cfg: EvalConfig) -> dict:
    """Run the protocol of the module docstring; write ``report.json``, ``report.md``, ``report.html``, plots and
    videos into ``cfg.out``. Returns the report dict."""
    from tqdm import tqdm

    from kinema4d.data import TorchEpisodes
    from kinema4d.viz import hstack_videos, pointmap_to_rgb, write_video

    loaded, size, frames = load_methods(cfg.checkpoint, cfg.baselines)
    ds = TorchEpisodes(cfg.data, split=cfg.split, size=size, frames=frames)
    n = len(ds) if cfg.episodes is None else min(cfg.episodes, len(ds))
    if n == 0:
        raise ValueError(f"split {cfg.split!r} of {cfg.data} has no episodes")
    out = Path(cfg.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {m: [] for m in (*loaded, "static")}
    for i in tqdm(range(n), desc=f"eval {cfg.split}", unit="ep", disable=not cfg.progress):
        raw = ds[i]
        preds = []
        for name, (_, model, codec) in loaded.items():
            item, pred_rgb, w01, world_m = predict(model, codec, raw, cfg.steps, cfg.cfg_scale, cfg.seed + i)
            if w01 is None:  # output="rgb_only": no geometry to score
                rows[name].append(score_rgb_only(pred_rgb, item))
                continue
            pred01 = w01.permute(0, 2, 3, 1).numpy()
            rows[name].append(score_episode(pred_rgb, pred01, item, world_m))
            preds.append((pred_rgb, pointmap_to_rgb(pred01, None, 0, 1)))
        T = raw["rgb"].shape[0]
        s_rgb = np.repeat(video_to_uint8(raw["rgb"][:1]), T, 0)
        s01 = np.repeat(raw["world_pointmap"][:1].permute(0, 2, 3, 1).numpy(), T, 0)
        stats = raw["world_stats"].numpy().astype(np.float64)
        rows["static"].append(score_episode(s_rgb, s01, raw, _to_metres(s01, stats)))
        if i < cfg.videos and preds:
            gt01 = raw["world_pointmap"].permute(0, 2, 3, 1).numpy()
            vid = hstack_videos(video_to_uint8(raw["rgb"]), *[p[0] for p in preds], pointmap_to_rgb(gt01, None, 0, 1),
                                *[p[1] for p in preds])
            vid = np.repeat(np.repeat(vid, 4, 1), 4, 2)  # tiny training sizes: upscale for viewing
            write_video(out / "videos" / f"episode_{i:04d}_gt_pred.mp4", vid, fps=4)
    summary = {m: {k: float(np.nanmean([r[k] for r in rs])) for k, _, _ in COLUMNS} for m, rs in rows.items()}
    report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
              "checkpoint": str(loaded["kinema4d"][0].dir / loaded["kinema4d"][0].weights),
              "checkpoints": {m: str(v[0].dir / v[0].weights) for m, v in loaded.items()},
              "size": list(size), "frames": frames, "episodes": n,
              "summary": summary,
              "per_frame": {m: {"psnr": np.nanmean([r["psnr_per_frame"] for r in rs], 0).tolist(),
                                "chamfer_l1": np.nanmean([r["chamfer_l1_per_frame"][1:] for r in rs], 0).tolist()}
                            for m, rs in rows.items()}}
    _write_plots(report, out)
    save_atomic_text(out / "report.json", json.dumps(report, indent=2))
    save_atomic_text(out / "report.md", render_markdown(report))
    save_atomic_text(out / "report.html", render_html(report))
    return report


def _write_plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for m, pf in report["per_frame"].items():
        ax[0].plot(range(len(pf["psnr"]))[1:], pf["psnr"][1:], marker="o", label=m)
        ax[1].plot(range(1, len(pf["chamfer_l1"]) + 1), pf["chamfer_l1"], marker="o", label=m)
    ax[0].set(xlabel="frame", ylabel="PSNR (dB)", title="per-frame PSNR")
    ax[1].set(xlabel="frame", ylabel="Chamfer L1 (normalized)", title="per-frame Chamfer L1")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(out / "per_frame.png", dpi=110)
    plt.close(fig)


def _table(summary: dict) -> list[list[str]]:
    rows = [["method", *[h for _, h, _ in COLUMNS]]]
    for m, s in summary.items():
        rows.append([m, *[f.format(s[k]) for k, _, f in COLUMNS]])
    return rows


def render_markdown(report: dict) -> str:
    t = _table(report["summary"])
    lines = [f"# kinema4d eval: split {report['config']['split']!r}, {report['episodes']} episodes", "",
             f"checkpoint `{report['checkpoint']}`, {report['frames']} frames of {report['size'][0]}x"
             f"{report['size'][1]}, {report['config']['steps']} sampling steps; frame 0 (the given image) excluded.",
             "", "| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])]
    lines += ["| " + " | ".join(r) + " |" for r in t[1:]]
    lines += ["", "![per-frame PSNR and Chamfer](per_frame.png)", "",
              f"Videos (GT RGB | {' | '.join(report['checkpoints'])} RGB | GT pointmap | "
              f"{' | '.join(report['checkpoints'])} pointmap): `videos/`.", ""]
    return "\n".join(lines)


def render_html(report: dict) -> str:
    t = _table(report["summary"])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in t[1:])
    vids = sorted((Path(report["config"]["out"]) / "videos").glob("*.mp4"))
    vhtml = "".join(f'<video src="videos/{v.name}" controls loop width="480"></video>' for v in vids)
    return (f"<!doctype html><meta charset=utf-8><title>kinema4d eval</title><h1>kinema4d eval: "
            f"{html.escape(report['config']['split'])}, {report['episodes']} episodes</h1>"
            f"<table border=1 cellpadding=4><tr>{head}</tr>{body}</table><img src=per_frame.png><h2>GT | prediction"
            f"</h2>{vhtml}")


def compare(report_a: str | Path, report_b: str | Path) -> str:
    """Markdown table of two reports' summaries side by side (B - A per metric)."""
    ra, rb = (json.loads((Path(p) / "report.json").read_text()) for p in (report_a, report_b))
    lines = ["| method | metric | A | B | B - A |", "|---|---|---|---|---|"]
    for m in ra["summary"]:
        if m not in rb["summary"]:
            continue
        for k, h, f in COLUMNS:
            a, b = ra["summary"][m][k], rb["summary"][m][k]
            lines.append(f"| {m} | {h} | {f.format(a)} | {f.format(b)} | {f.format(b - a)} |")
    return "\n".join(lines)


__all__ = ["EvalConfig", "evaluate", "load_methods", "predict", "score_episode", "score_rgb_only", "render_markdown",
           "render_html", "compare"]
