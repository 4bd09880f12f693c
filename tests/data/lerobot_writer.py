"""Write and read LeRobot v3.0 datasets with a real LeRobot implementation (``lerobot-dataset``'s
``LeRobotDataset``), for ``tests/data/test_lerobot.py``.

Runs in its own process with ``PYTHONPATH`` = the writer environment (``scripts/setup.sh`` installs
``lerobot-dataset`` there with ``pip install --target .venv/lerobot-writer``): that package pins huggingface-hub
< 0.36, which kinema4d's diffusers excludes, so it cannot be imported next to kinema4d.

    python lerobot_writer.py write IN.npz OUT_DIR   # IN.npz: fps, H, W, names, episodes, rgb_<i>, depth_<i>, ...
    python lerobot_writer.py read DIR OUT.npz       # everything LeRobotDataset returns, as arrays

PyPI's torchvision (which lerobot-dataset imports) ships compiled ops built for PyPI's CUDA torch; kinema4d's CPU
torch cannot load them, and torchvision's Python module then fails registering a fake kernel for ``torchvision::nms``.
Declaring that op's schema first (no kernel) lets the Python module import; no torchvision op is used here. LeRobot's
own code runs unmodified.
"""

import sys

import numpy as np
import torch

_lib = torch.library.Library("torchvision", "DEF")
_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")

from ledataset.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402


def write(src: str, out: str) -> None:
    z = np.load(src, allow_pickle=False)
    H, W = int(z["H"]), int(z["W"])
    names = [str(n) for n in z["names"]]
    feats = {
        "observation.images.front": {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]},
        "observation.depth": {"dtype": "float32", "shape": (H, W), "names": ["height", "width"]},
        "observation.state": {"dtype": "float32", "shape": (len(names),), "names": names},
        "action": {"dtype": "float32", "shape": (len(names),), "names": names},
    }
    ds = LeRobotDataset.create("kinema4d/test", fps=int(z["fps"]), features=feats, root=out, robot_type="panda",
                               vcodec=str(z["vcodec"]))
    for i in range(int(z["episodes"])):
        rgb, depth, q = z[f"rgb_{i}"], z[f"depth_{i}"], z[f"q_{i}"]
        for t in range(len(rgb)):
            ds.add_frame({"observation.images.front": rgb[t], "observation.depth": depth[t].astype(np.float32),
                          "observation.state": q[t].astype(np.float32), "action": q[t].astype(np.float32),
                          "task": str(z["task"])})
        ds.save_episode()
    ds.finalize()
    print(f"wrote {ds.meta.total_episodes} episodes, {ds.meta.total_frames} frames to {out}")


def read(root: str, out: str) -> None:
    ds = LeRobotDataset("kinema4d/export", root=root, video_backend="pyav")
    keys = [k for k in ds.features if k not in ds.meta.video_keys]
    cols = {k: np.stack([np.asarray(ds.hf_dataset[i][k]) for i in range(len(ds))]) for k in keys}
    arrays = {f"col_{k}": v for k, v in cols.items()}
    arrays["tasks"] = np.array([str(t) for t in ds.meta.tasks.index])
    arrays["fps"] = np.array(ds.fps)
    arrays["num_episodes"] = np.array(ds.num_episodes)
    arrays["video_keys"] = np.array(list(ds.meta.video_keys))
    for e in range(ds.num_episodes):
        for k in ds.meta.video_keys:
            arrays[f"video_path_{e}_{k}"] = np.array(str(ds.root / ds.meta.get_video_file_path(e, k)))
    try:  # one whole item through LeRobot's own decoding path, where a video decoder is available
        item = ds[len(ds) - 1]
        for k in ds.meta.video_keys:
            arrays[f"item_last_{k}"] = item[k].numpy()
    except Exception as e:  # noqa: BLE001 (report, the test decides)
        arrays["item_error"] = np.array(f"{type(e).__name__}: {e}")
    np.savez(out, **arrays)
    print(f"read {ds.num_episodes} episodes, {len(ds)} frames from {root}")


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](*sys.argv[2:])
