"""SDF (1.5 / 1.6, one model, tree-shaped) -> URDF, so that an SDF robot runs through kinema4d's URDF kinematics.

Conventions (SDF 1.5+): a link's ``<pose>`` is ``T_model_link``; a joint's frame is its child link's frame (a
non-identity joint ``<pose>`` is refused); the joint axis is expressed in the joint frame. So the URDF joint origin is
``T_parent_child = inv(T_model_parent) @ T_model_child`` and the axis is copied. Visual, collision and inertial
poses are relative to their link in both formats. Mesh URIs become absolute paths (a leading ``/`` is taken as
relative to the SDF's folder, as pybullet does). Used for pybullet_data's ``kuka_iiwa/kuka_with_gripper2.sdf``.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from kinema4d.geometry import publish_dir


def _pose(elem) -> np.ndarray:
    """SDF ``<pose>x y z roll pitch yaw</pose>`` (fixed-axis rpy, as URDF) -> (4, 4); identity when absent."""
    T = np.eye(4)
    if elem is None or not (elem.text or "").strip():
        return T
    v = [float(x) for x in elem.text.split()]
    if len(v) != 6:
        raise ValueError(f"SDF <pose> needs 6 numbers, got {elem.text!r}")
    T[:3, :3] = Rotation.from_euler("xyz", v[3:]).as_matrix()
    T[:3, 3] = v[:3]
    return T


def _origin(parent, T: np.ndarray) -> None:
    rpy = Rotation.from_matrix(T[:3, :3]).as_euler("xyz")
    ET.SubElement(parent, "origin", xyz=" ".join(f"{v:.9g}" for v in T[:3, 3]),
                  rpy=" ".join(f"{v:.9g}" for v in rpy))


def _geometry(parent, geom, sdf_dir: Path, where: str) -> None:
    out = ET.SubElement(parent, "geometry")
    g = geom[0] if len(geom) else None
    if g is None:
        raise ValueError(f"SDF {where}: empty <geometry>")
    if g.tag == "mesh":
        uri = g.findtext("uri", "").strip()
        if uri.startswith("model://") or uri.startswith("package://"):
            raise ValueError(f"SDF {where}: mesh URI {uri!r} is not supported (use a path)")
        uri = uri.removeprefix("file://")
        path = Path(uri)
        if not path.is_file():
            path = sdf_dir / uri.lstrip("/")
        if not path.is_file():
            raise FileNotFoundError(f"SDF {where}: mesh {uri!r} not found (looked in {sdf_dir})")
        scale = g.findtext("scale", "1 1 1").split()
        ET.SubElement(out, "mesh", filename=str(path.resolve()), scale=" ".join(scale))
    elif g.tag == "box":
        ET.SubElement(out, "box", size=" ".join(g.findtext("size", "").split()))
    elif g.tag == "cylinder":
        ET.SubElement(out, "cylinder", radius=g.findtext("radius").strip(), length=g.findtext("length").strip())
    elif g.tag == "sphere":
        ET.SubElement(out, "sphere", radius=g.findtext("radius").strip())
    else:
        raise ValueError(f"SDF {where}: unsupported geometry <{g.tag}>")


def sdf_to_urdf_tree(sdf_path, fixed_joints=(), mimic: dict | None = None) -> ET.Element:
    """The URDF ``<robot>`` element of the (first) model in ``sdf_path``.

    ``fixed_joints``: joint names turned into fixed joints at their zero position (e.g. a wrist roll or finger tips
    that the scene holds still); ``mimic``: {joint: (driving joint, multiplier, offset)} written as URDF ``<mimic>``.
    """
    sdf_path = Path(sdf_path)
    sdf_dir = sdf_path.parent
    model = ET.parse(sdf_path).getroot().find(".//model")
    if model is None:
        raise ValueError(f"{sdf_path}: no <model> in the SDF")
    robot = ET.Element("robot", name=model.get("name", sdf_path.stem))
    T_model_link = {}
    for link in model.findall("link"):
        name = link.get("name")
        T_model_link[name] = _pose(link.find("pose"))
        out = ET.SubElement(robot, "link", name=name)
        inertial = link.find("inertial")
        if inertial is not None:
            i_out = ET.SubElement(out, "inertial")
            _origin(i_out, _pose(inertial.find("pose")))
            ET.SubElement(i_out, "mass", value=inertial.findtext("mass", "0").strip())
            inertia = inertial.find("inertia")
            ET.SubElement(i_out, "inertia", **{k: (inertia.findtext(k, "0").strip() if inertia is not None else "0")
                                               for k in ("ixx", "ixy", "ixz", "iyy", "iyz", "izz")})
        for tag in ("visual", "collision"):
            for el in link.findall(tag):
                v_out = ET.SubElement(out, tag)
                _origin(v_out, _pose(el.find("pose")))
                _geometry(v_out, el.find("geometry"), sdf_dir, f"link {name!r} {tag}")
                diffuse = el.findtext("material/diffuse")
                if tag == "visual" and diffuse:
                    mat = ET.SubElement(v_out, "material", name=f"{name}_material")
                    ET.SubElement(mat, "color", rgba=" ".join(diffuse.split()))
    mimic = mimic or {}
    joints = {j.get("name") for j in model.findall("joint")}
    unknown = [j for j in [*fixed_joints, *mimic] if j not in joints]
    if unknown:
        raise ValueError(f"{sdf_path.name}: no joints {unknown}; joints: {sorted(joints)}")
    for joint in model.findall("joint"):
        name, kind = joint.get("name"), joint.get("type")
        if not np.allclose(_pose(joint.find("pose")), np.eye(4)):
            raise ValueError(f"{sdf_path.name}: joint {name!r} has a <pose>; only joints at their child's frame are "
                             "supported")
        parent, child = joint.findtext("parent").strip(), joint.findtext("child").strip()
        if name in fixed_joints:
            kind = "fixed"
        if kind not in ("revolute", "prismatic", "continuous", "fixed"):
            raise ValueError(f"{sdf_path.name}: joint {name!r} of type {kind!r} is not supported")
        out = ET.SubElement(robot, "joint", name=name, type=kind)
        ET.SubElement(out, "parent", link=parent)
        ET.SubElement(out, "child", link=child)
        _origin(out, np.linalg.inv(T_model_link[parent]) @ T_model_link[child])
        if kind == "fixed":
            continue
        ET.SubElement(out, "axis", xyz=" ".join(joint.findtext("axis/xyz", "0 0 1").split()))
        lim = joint.find("axis/limit")
        if kind != "continuous":
            velocity = float(lim.findtext("velocity", "0")) if lim is not None else 0.0
            ET.SubElement(out, "limit", lower=lim.findtext("lower").strip(), upper=lim.findtext("upper").strip(),
                          effort=(lim.findtext("effort") or "100").strip(), velocity=f"{velocity or 10.0:g}")
        if name in mimic:
            master, mult, off = mimic[name]
            ET.SubElement(out, "mimic", joint=master, multiplier=f"{mult:g}", offset=f"{off:g}")
    return robot


def sdf_to_urdf(sdf_path, name: str, fixed_joints=(), mimic: dict | None = None, cache_dir=None) -> Path:
    """Convert ``sdf_path`` (see :func:`sdf_to_urdf_tree`) into a cached URDF file; returns its path.

    Cached under ``cache_dir`` (default ``~/.cache/kinema4d/urdf``) by a hash of the SDF and the options.
    """
    sdf_path = Path(sdf_path)
    key = hashlib.sha1(sdf_path.read_bytes() + repr((sorted(fixed_joints), sorted((mimic or {}).items()))).encode())
    root_dir = Path(cache_dir or Path.home() / ".cache" / "kinema4d" / "urdf")
    out = root_dir / f"{name}_sdf_{key.hexdigest()[:12]}"
    if (out / f"{name}.urdf").is_file():
        return out / f"{name}.urdf"
    tree = sdf_to_urdf_tree(sdf_path, fixed_joints, mimic)
    root_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root_dir, prefix=".tmp-"))
    try:
        ET.ElementTree(tree).write(tmp / f"{name}.urdf")
        publish_dir(tmp, out)  # another process finished first: use its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / f"{name}.urdf"
