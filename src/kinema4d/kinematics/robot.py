"""URDF robot model: forward kinematics, seeded inverse kinematics, loading a builtin or URDF robot with its
options (:func:`load_robot`), action -> joint mapping (paper Sec. 3.1).

Kinematics run on Pinocchio (``pin``). Mimic joints (e.g. the Panda's second finger) are resolved here rather
than in Pinocchio so that ``q`` always holds only the actuated joints, in ``robot.joint_names`` order.
Visual geometry is parsed from the URDF by hand (a few lines of XML) because Pinocchio places visuals relative to
joint frames, while the renderer wants them in URDF link frames.

Units: metres and radians (prismatic joints in metres). Poses are 4x4 ``T_world_link``.

Why ~700 lines in one file: :class:`Robot` is one concept whose parts share its parsed state (joint order, mimic
table, gripper mapping, link frames, visuals); the code outside the class is how a Robot is made
(:func:`load_robot`, which checks the user's options against the parsed URDF) and what it consumes (the action
layouts, :func:`actions_to_joints`), both reading that same state.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pinocchio as pin

from kinema4d.geometry import check_rigid, matrix_to_pose, pose_to_matrix, rotation_angle

ACTION_MODES = ("joint_pos", "joint_vel", "ee_pose")


@dataclass(frozen=True)
class FixedFrame:
    """An extra frame rigidly attached to URDF link ``parent`` at ``xyz`` metres and ``rpy`` (parent link frame),
    e.g. a grasp point (TCP) that the URDF does not name. Usable as ``ee_link``; it has no geometry."""

    name: str
    parent: str
    xyz: tuple[float, float, float]
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)  # fixed-axis roll, pitch, yaw (URDF convention), radians


@dataclass(frozen=True)
class BuiltinSpec:
    urdf: str  # relative to pybullet_data
    ee_link: str
    gripper_joint: str | None = None
    gripper_open: float = 0.0  # joint value of a fully open gripper (action 1)
    gripper_closed: float = 0.0  # joint value of a closed gripper (action 0)
    home: tuple[float, ...] = ()  # a comfortable configuration, actuated joints
    frames: tuple[FixedFrame, ...] = ()  # extra frames (a TCP the URDF lacks)
    # an .sdf ``urdf`` is converted (kinema4d.kinematics.sdf) with these joints fixed and these
    # (joint, driving joint, multiplier, offset) mimics
    sdf_fixed_joints: tuple[str, ...] = ()
    sdf_mimic: tuple[tuple[str, str, float, float], ...] = ()


BUILTIN_ROBOTS: dict[str, BuiltinSpec] = {
    "panda": BuiltinSpec("franka_panda/panda.urdf", "panda_grasptarget", "panda_finger_joint1", 0.04, 0.0,
                         (0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785, 0.04)),
    "kuka_iiwa": BuiltinSpec("kuka_iiwa/model.urdf", "lbr_iiwa_link_7", None, 0, 0,
                             (0.0, 0.5, 0.0, -1.2, 0.0, 1.0, 0.0)),
    # xArm6 with the xArm gripper: drive_joint 0 = open (8.9 cm between the finger pads) .. 0.85 = closed, the
    # five other gripper joints mimic it (a four-bar linkage opened up into a tree). The URDF names no grasp point:
    # xarm_grasptarget sits 16.5 cm from xarm_gripper_base_link along its z axis (the flange axis). Home: grasp
    # point 48 cm out, 41 cm up, pointing down.
    "xarm6": BuiltinSpec("xarm/xarm6_with_gripper.urdf", "xarm_grasptarget", "drive_joint", 0.0, 0.85,
                         (0.0, 0.066, -1.747, 0.0, 1.681, 0.0, 0.0),
                         (FixedFrame("xarm_grasptarget", "xarm_gripper_base_link", (0.0, 0.0, 0.165)),)),
    # The KUKA iiwa with pybullet_data's WSG50-style gripper (kuka_iiwa/kuka_with_gripper2.sdf, converted to URDF):
    # base_left_finger_joint -0.3 = open (11 cm between the tips) .. 0 = closed, base_right_finger_joint mirrors it;
    # the gripper roll joint and the finger tip joints are held at 0 (fixed), as pybullet's KUKA grasping env holds
    # the tips. kuka_grasptarget: between the fingertips, 1-2 cm above them, rotated so the fingers close along its
    # y axis (as the Panda's).
    "kuka_iiwa_wsg50": BuiltinSpec("kuka_iiwa/kuka_with_gripper2.sdf", "kuka_grasptarget", "base_left_finger_joint",
                                   -0.3, 0.0, (-0.174, 0.144, 0.201, -1.487, -0.029, 1.514, 1.597, -0.3),
                                   (FixedFrame("kuka_grasptarget", "lbr_iiwa_link_7", (0.0, 0.0215, 0.262),
                                               (0.0, 0.0, np.pi / 2)),),
                                   ("gripper_to_arm", "left_base_tip_joint", "right_base_tip_joint"),
                                   (("base_right_finger_joint", "base_left_finger_joint", -1.0, 0.0),)),
}


@dataclass
class Visual:
    """One URDF visual element: geometry in the link frame."""

    link: str
    T_link_visual: np.ndarray  # (4, 4)
    kind: str  # mesh | box | cylinder | sphere
    params: dict  # mesh: {"path", "scale"}; box: {"size"}; cylinder: {"radius", "length"}; sphere: {"radius"}
    rgba: np.ndarray | None  # (4,) URDF material colour in [0, 1], None if the URDF gives none


@dataclass
class IKResult:
    """Result of :meth:`Robot.ik`. ``q`` (T, dof); ``pos_err`` (T,) metres; ``rot_err`` (T,) radians."""

    q: np.ndarray
    pos_err: np.ndarray
    rot_err: np.ndarray
    converged: np.ndarray  # (T,) bool


@dataclass
class JointTrajectory:
    """Output of :func:`actions_to_joints`: ``q`` (T, dof) actuated joints; ``ik`` set for ee_pose actions."""

    q: np.ndarray
    mode: str
    ik: IKResult | None = None


def _origin(elem) -> np.ndarray:
    """URDF <origin xyz rpy> -> (4, 4). URDF rpy is fixed-axis roll, pitch, yaw: R = Rz(y) Ry(p) Rx(r)."""
    T = np.eye(4)
    if elem is None:
        return T
    xyz = [float(v) for v in elem.get("xyz", "0 0 0").split()]
    r, p, y = [float(v) for v in elem.get("rpy", "0 0 0").split()]
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    T[:3, :3] = np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])
    T[:3, 3] = xyz
    return T


def resolve_mesh_path(filename: str, urdf_dir: Path, package_dirs: list[Path]) -> Path | None:
    """Resolve ``package://pkg/rest``, ``file://``, absolute or URDF-relative mesh paths; None if not found."""
    if filename.startswith("package://"):
        rest = filename[len("package://"):]
        pkg, _, sub = rest.partition("/")
        for d in package_dirs:
            for cand in (d / pkg / sub, d / sub if d.name == pkg else None, d / rest):
                if cand is not None and cand.is_file():
                    return cand
        return None
    if filename.startswith("file://"):
        filename = filename[len("file://"):]
    p = Path(filename)
    p = p if p.is_absolute() else urdf_dir / p
    return p if p.is_file() else None


class Robot:
    """A fixed-base URDF robot.

    Attributes: ``dof``, ``joint_names`` (actuated, the order of every ``q``), ``link_names``,
    ``joint_limits`` (dof, 2) lower/upper, ``ee_link``, ``T_world_base`` (4, 4) where the URDF root sits in the
    world, ``gripper_joint`` (or None) and ``arm_joint_names`` (actuated joints without the gripper).
    """

    def __init__(self, urdf_path, package_dirs=None, ee_link: str | None = None, gripper_joint: str | None = None,
                 gripper_open: float = 0.0, gripper_closed: float = 0.0, T_world_base=None, home=None, name=None,
                 gripper_mimics: list[str] | tuple[str, ...] = (), frames: list[FixedFrame] | tuple = ()):
        self.urdf_path = Path(urdf_path)
        if not self.urdf_path.is_file():
            raise FileNotFoundError(f"URDF not found: {self.urdf_path}")
        self.name = name or self.urdf_path.stem
        urdf_dir = self.urdf_path.parent
        self.package_dirs = [Path(d) for d in (package_dirs or [])] + [urdf_dir]
        try:
            root = ET.parse(self.urdf_path).getroot()
        except ET.ParseError as e:
            raise ValueError(f"malformed URDF {self.urdf_path}: {e}") from None
        if root.tag != "robot":
            raise ValueError(f"malformed URDF {self.urdf_path}: root element is <{root.tag}>, expected <robot>")
        try:
            self.model = pin.buildModelFromUrdf(str(self.urdf_path))
        except Exception as e:  # Pinocchio raises a bare RuntimeError/ValueError
            raise ValueError(f"URDF {self.urdf_path} could not be loaded by Pinocchio: {e}") from None
        for fr in frames:
            self._add_fixed_frame(fr)
        self.data = self.model.createData()
        self._parse_joints(root, gripper_joint, list(gripper_mimics))
        self.visuals = self._parse_visuals(root, urdf_dir)
        self.link_names = [f.name for f in self.model.frames if f.type == pin.FrameType.BODY]
        self._link_fids = [self.model.getFrameId(n) for n in self.link_names]

        if ee_link is None:
            ee_link = self._default_ee_link()
        if ee_link not in self.link_names:
            raise ValueError(f"ee_link {ee_link!r} is not a link of {self.urdf_path.name}; links: {self.link_names}")
        self.ee_link = ee_link
        if gripper_joint is not None and gripper_joint not in self.joint_names:
            if gripper_joint in self.mimic_joints:
                raise ValueError(f"gripper joint {gripper_joint!r} mimics {self.mimic_joints[gripper_joint][0]!r} in "
                                 f"{self.urdf_path.name}; name the driving joint first. Actuated joints: "
                                 f"{self.joint_names}")
            raise ValueError(f"gripper joint {gripper_joint!r} is not an actuated joint of {self.urdf_path.name}; "
                             f"actuated joints: {self.joint_names}")
        self.gripper_joint = gripper_joint
        self.gripper_open, self.gripper_closed = float(gripper_open), float(gripper_closed)
        self.arm_joint_names = [j for j in self.joint_names if j != gripper_joint]
        self.T_world_base = np.eye(4) if T_world_base is None else check_rigid(T_world_base, "T_world_base").copy()
        self.home = self.clip_to_limits(np.zeros(self.dof) if home is None else np.asarray(home, dtype=np.float64))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_urdf(cls, path, package_dirs=None, **kwargs) -> Robot:
        """Load any URDF; ``package_dirs`` are searched for ``package://`` mesh paths (the URDF's folder always is)."""
        return cls(path, package_dirs=package_dirs, **kwargs)

    @classmethod
    def builtin(cls, name: str, T_world_base=None) -> Robot:
        """A robot shipped by ``pybullet_data``: one of ``BUILTIN_ROBOTS`` (panda, kuka_iiwa, kuka_iiwa_wsg50,
        xarm6)."""
        if name not in BUILTIN_ROBOTS:
            raise ValueError(f"unknown builtin robot {name!r}; choose one of {sorted(BUILTIN_ROBOTS)}")
        import pybullet_data

        spec = BUILTIN_ROBOTS[name]
        urdf = Path(pybullet_data.getDataPath()) / spec.urdf
        if urdf.suffix == ".sdf":
            from kinema4d.kinematics.sdf import sdf_to_urdf

            mimic = {j: (master, mult, off) for j, master, mult, off in spec.sdf_mimic}
            urdf = sdf_to_urdf(urdf, name, fixed_joints=spec.sdf_fixed_joints, mimic=mimic)
        return cls(urdf, package_dirs=[urdf.parent], ee_link=spec.ee_link, gripper_joint=spec.gripper_joint,
                   gripper_open=spec.gripper_open, gripper_closed=spec.gripper_closed, T_world_base=T_world_base,
                   home=spec.home or None, name=name, frames=spec.frames)

    def _add_fixed_frame(self, fr: FixedFrame) -> None:
        """Add ``fr`` to the Pinocchio model as a BODY frame (so it is a link name: FK, IK, ``ee_link``)."""
        names = [f.name for f in self.model.frames if f.type == pin.FrameType.BODY]
        if fr.parent not in names:
            raise ValueError(f"frame {fr.name!r}: parent link {fr.parent!r} is not a link of {self.urdf_path.name}; "
                             f"links: {names}")
        if fr.name in names:
            raise ValueError(f"frame {fr.name!r} already is a link of {self.urdf_path.name}")
        parent = self.model.frames[self.model.getFrameId(fr.parent)]
        T_parent_frame = _origin(ET.Element("origin", xyz=" ".join(map(str, fr.xyz)), rpy=" ".join(map(str, fr.rpy))))
        placement = parent.placement * pin.SE3(T_parent_frame[:3, :3], T_parent_frame[:3, 3])
        self.model.addFrame(pin.Frame(fr.name, parent.parentJoint, self.model.getFrameId(fr.parent), placement,
                                      pin.FrameType.BODY))

    def _parse_joints(self, root, gripper_joint: str | None, gripper_mimics: list[str]) -> None:
        model = self.model
        mimic = {}  # joint -> (master, multiplier, offset)
        for j in root.iter("joint"):
            m = j.find("mimic")
            if m is not None:
                mimic[j.get("name")] = (m.get("joint"), float(m.get("multiplier", 1)), float(m.get("offset", 0)))
        pin_joints = list(model.names)[1:]  # movable joints in Pinocchio's order (skip 'universe')
        for name in gripper_mimics:  # extra gripper joints follow gripper_joint 1:1 (e.g. a second finger)
            if name not in pin_joints:
                raise ValueError(f"gripper joint {name!r} is not a movable joint of {self.urdf_path.name}; "
                                 f"movable joints: {pin_joints}")
            if gripper_joint is None or name == gripper_joint:
                raise ValueError(f"gripper joint {name!r}: the first gripper joint drives the others; got "
                                 f"gripper_joint={gripper_joint!r}")
            if name not in mimic:
                mimic[name] = (gripper_joint, 1.0, 0.0)
            elif mimic[name][0] != gripper_joint:
                raise ValueError(f"gripper joint {name!r} mimics {mimic[name][0]!r} in {self.urdf_path.name}, "
                                 f"not the first gripper joint {gripper_joint!r}")
        self.mimic_joints = {n: m for n, m in mimic.items() if n in pin_joints}
        """{joint: (driving joint, multiplier, offset)}: the joints that follow another (URDF ``<mimic>`` or
        ``gripper_mimics``); they are not in ``q``."""
        self.joint_names = [n for n in pin_joints if n not in mimic]
        self.dof = len(self.joint_names)
        lim = []
        # Per Pinocchio joint: its q index, its representation (1 = angle/prismatic, 2 = cos/sin continuous),
        # its velocity index, and the actuated joint that drives it with multiplier and offset.
        self._pj = []
        for name in pin_joints:
            jid = model.getJointId(name)
            jm = model.joints[jid]
            master, mult, off = mimic.get(name, (name, 1.0, 0.0))
            if master not in self.joint_names:
                raise ValueError(f"joint {name!r} mimics {master!r}, which is not an actuated joint")
            self._pj.append((jm.idx_q, jm.nq, jm.idx_v, self.joint_names.index(master), mult, off))
            if name in self.joint_names:
                if jm.nq == 2:  # continuous joint: unbounded
                    lim.append((-np.inf, np.inf))
                else:
                    lim.append((model.lowerPositionLimit[jm.idx_q], model.upperPositionLimit[jm.idx_q]))
        self.joint_limits = np.array(lim, dtype=np.float64).reshape(self.dof, 2)
        # v_full = M @ qdot_actuated
        self._M = np.zeros((model.nv, self.dof))
        for _, _, iv, i, mult, _ in self._pj:
            self._M[iv, i] = mult

    def _parse_visuals(self, root, urdf_dir: Path) -> list[Visual]:
        materials = {}
        for m in root.findall("material"):
            c = m.find("color")
            if c is not None:
                materials[m.get("name")] = np.array([float(v) for v in c.get("rgba").split()])
        visuals = []
        for link in root.findall("link"):
            for vis in link.findall("visual"):
                geom = vis.find("geometry")
                if geom is None or len(geom) == 0:
                    raise ValueError(f"URDF {self.urdf_path}: link {link.get('name')!r} has a visual with no geometry")
                g = geom[0]
                if g.tag == "mesh":
                    fn = g.get("filename")
                    path = resolve_mesh_path(fn, urdf_dir, self.package_dirs)
                    if path is None:
                        raise FileNotFoundError(
                            f"URDF {self.urdf_path}: mesh {fn!r} of link {link.get('name')!r} not found "
                            f"(searched {[str(d) for d in self.package_dirs]})")
                    scale = [float(v) for v in g.get("scale", "1 1 1").split()]
                    params = {"path": path, "scale": np.array(scale if len(scale) == 3 else scale * 3)}
                elif g.tag == "box":
                    params = {"size": np.array([float(v) for v in g.get("size").split()])}
                elif g.tag == "cylinder":
                    params = {"radius": float(g.get("radius")), "length": float(g.get("length"))}
                elif g.tag == "sphere":
                    params = {"radius": float(g.get("radius"))}
                else:
                    raise ValueError(f"URDF {self.urdf_path}: unsupported visual geometry <{g.tag}>")
                rgba = None
                mat = vis.find("material")
                if mat is not None:
                    c = mat.find("color")
                    if c is not None:
                        rgba = np.array([float(v) for v in c.get("rgba").split()])
                    else:
                        rgba = materials.get(mat.get("name"))
                visuals.append(Visual(link.get("name"), _origin(vis.find("origin")), g.tag, params, rgba))
        return visuals

    def _default_ee_link(self) -> str:
        """Deepest link (most ancestors) in the tree; ties go to the last in URDF order."""
        depth = {}
        for fid, f in enumerate(self.model.frames):
            if f.type == pin.FrameType.BODY:
                depth[f.name] = len(self.model.supports[f.parentJoint]) * 1000 + fid
        return max(depth, key=depth.get)

    # ------------------------------------------------------------------ joint-space helpers
    def check_q(self, q, name: str = "q") -> np.ndarray:
        """Validate joint positions (T, dof) (or (dof,) -> (1, dof)); raise naming the frame and joint."""
        q = np.asarray(q, dtype=np.float64)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dof:
            raise ValueError(f"{name} must have shape (T, {self.dof}) for {self.name} (joints {self.joint_names}), "
                             f"got {q.shape}")
        bad = ~np.isfinite(q)
        if bad.any():
            t, j = np.argwhere(bad)[0]
            raise ValueError(f"{name} has a non-finite value at frame {t}, joint {self.joint_names[j]!r}")
        return q

    def clip_to_limits(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self.joint_limits[:, 0], self.joint_limits[:, 1])

    def random_q(self, n: int, rng: np.random.Generator | None = None, margin: float = 0.05) -> np.ndarray:
        """(n, dof) uniform samples inside the joint limits (continuous joints in [-pi, pi])."""
        rng = rng or np.random.default_rng()
        lo = np.maximum(self.joint_limits[:, 0], -np.pi)
        hi = np.minimum(self.joint_limits[:, 1], np.pi)
        span = hi - lo
        return rng.uniform(lo + margin * span, hi - margin * span, size=(n, self.dof))

    def full_q(self, q: np.ndarray) -> np.ndarray:
        """Actuated (dof,) -> Pinocchio configuration (nq,) with mimic joints filled in."""
        qf = np.zeros(self.model.nq)
        for iq, nq, _, i, mult, off in self._pj:
            a = mult * q[i] + off
            if nq == 1:
                qf[iq] = a
            else:
                qf[iq], qf[iq + 1] = np.cos(a), np.sin(a)
        return qf

    def gripper_to_joint(self, opening: np.ndarray) -> np.ndarray:
        """Gripper action in [0, 1] (0 closed, 1 open) -> gripper joint value."""
        return self.gripper_closed + np.clip(opening, 0.0, 1.0) * (self.gripper_open - self.gripper_closed)

    def joint_to_gripper(self, value: np.ndarray) -> np.ndarray:
        span = self.gripper_open - self.gripper_closed
        return np.clip((value - self.gripper_closed) / span, 0.0, 1.0)

    # ------------------------------------------------------------------ kinematics
    def fk(self, q, links: list[str] | None = None) -> dict[str, np.ndarray]:
        """Forward kinematics. ``q`` (T, dof) -> {link: (T, 4, 4) ``T_world_link``} (URDF link frames)."""
        q = self.check_q(q)
        names = self.link_names if links is None else links
        unknown = [n for n in names if n not in self.link_names]
        if unknown:
            raise ValueError(f"unknown links {unknown}; links of {self.name}: {self.link_names}")
        fids = [self.model.getFrameId(n) for n in names]
        out = np.empty((len(names), q.shape[0], 4, 4))
        for t in range(q.shape[0]):
            pin.framesForwardKinematics(self.model, self.data, self.full_q(q[t]))
            for k, fid in enumerate(fids):
                out[k, t] = self.data.oMf[fid].homogeneous
        out = self.T_world_base @ out
        return {n: out[k] for k, n in enumerate(names)}

    def ik(self, T_world_ee, q_init=None, link: str | None = None, max_iters: int = 300, pos_tol: float = 1e-5,
           rot_tol: float = 1e-4, damping: float = 1e-6, restarts: int = 8, seed: int = 0) -> IKResult:
        """Seeded inverse kinematics, frame by frame (paper Sec. 3.1: q_t = IK(T_t, q_{t-1})).

        ``T_world_ee`` (T, 4, 4) target poses of ``link`` (default ``ee_link``); ``q_init`` (dof,) seeds frame 0
        (default ``home``); every later frame is seeded by the previous solution, so a smooth path stays on one
        IK branch. Damped least squares on Pinocchio's frame Jacobian (position + orientation), clamped to joint
        limits. Frame 0 alone may retry from ``restarts`` random seeds if the given seed does not converge.
        Unreachable targets return the closest solution found, its residuals and a warning; never NaN.
        """
        T_world_ee = check_rigid(T_world_ee, "T_world_ee")
        if T_world_ee.ndim == 2:
            T_world_ee = T_world_ee[None]
        link = link or self.ee_link
        if link not in self.link_names:
            raise ValueError(f"unknown IK link {link!r}; links of {self.name}: {self.link_names}")
        fid = self.model.getFrameId(link)
        q = self.home.copy() if q_init is None else self.check_q(q_init, "q_init")[0]
        T_base_ee = np.linalg.inv(self.T_world_base) @ T_world_ee
        rng = np.random.default_rng(seed)
        n = T_world_ee.shape[0]
        qs, perr, rerr, conv = np.empty((n, self.dof)), np.empty(n), np.empty(n), np.zeros(n, bool)
        for t in range(n):
            target = pin.SE3(T_base_ee[t][:3, :3], T_base_ee[t][:3, 3])
            best = self._ik_one(target, fid, q, max_iters, pos_tol, rot_tol, damping)
            if t == 0:
                for _ in range(restarts):
                    if best[3]:
                        break
                    cand = self._ik_one(target, fid, self.random_q(1, rng)[0], max_iters, pos_tol, rot_tol, damping)
                    if cand[1] + 0.1 * cand[2] < best[1] + 0.1 * best[2]:
                        best = cand
            q = best[0]
            qs[t], perr[t], rerr[t], conv[t] = best
        if not conv.all():
            bad = np.flatnonzero(~conv)
            warnings.warn(f"IK did not reach {len(bad)}/{n} targets (first: frame {bad[0]}, pos err "
                          f"{perr[bad[0]] * 1000:.2f} mm, rot err {rerr[bad[0]]:.4f} rad); returning the closest "
                          "solutions", stacklevel=2)
        return IKResult(q=qs, pos_err=perr, rot_err=rerr, converged=conv)

    def _ik_one(self, target: pin.SE3, fid: int, q0: np.ndarray, max_iters, pos_tol, rot_tol, damping):
        model, data = self.model, self.data
        q = q0.copy()
        best = None
        for _ in range(max_iters + 1):
            qf = self.full_q(q)
            pin.forwardKinematics(model, data, qf)
            oMf = pin.updateFramePlacement(model, data, fid)
            pe = float(np.linalg.norm(target.translation - oMf.translation))
            re = float(rotation_angle(oMf.rotation, target.rotation))
            if best is None or pe + 0.1 * re < best[1] + 0.1 * best[2]:
                best = (q.copy(), pe, re, pe <= pos_tol and re <= rot_tol)
            if best[3]:
                break
            iMd = oMf.actInv(target)
            err = pin.log(iMd).vector  # 6-vector twist (local frame) from current to target
            J = pin.computeFrameJacobian(model, data, qf, fid, pin.LOCAL) @ self._M
            J = -pin.Jlog6(iMd.inverse()) @ J
            lam = damping + 1e-3 * float(err @ err)  # more damping far from the target (Levenberg-Marquardt)
            dq = -J.T @ np.linalg.solve(J @ J.T + lam * np.eye(6), err)
            if not np.all(np.isfinite(dq)):
                break
            q = self.clip_to_limits(q + dq)
        return best

    def integrate(self, qdot, dt: float, q0) -> np.ndarray:
        """Joint velocities ``qdot`` (T, dof) rad/s (m/s for prismatic), step ``dt`` s, start ``q0`` (dof,).

        Returns q (T, dof) with q_t = clip(q_{t-1} + dt * qdot_t), q_{-1} = q0 (explicit Euler).
        """
        qdot = self.check_q(qdot, "qdot")
        q = self.check_q(q0, "q0")[0]
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number of seconds, got {dt}")
        out = np.empty_like(qdot)
        clipped = False
        for t in range(qdot.shape[0]):
            nq = q + dt * qdot[t]
            q = self.clip_to_limits(nq)
            clipped |= bool(np.any(q != nq))
            out[t] = q
        if clipped:
            warnings.warn("integrate: joint velocities drove joints into their limits; clipped", stacklevel=2)
        return out

    # ------------------------------------------------------------------ geometry for rendering
    @cached_property
    def link_meshes(self) -> dict:
        """{link: trimesh.Trimesh} visual geometry in the link frame with per-vertex RGBA colours (uint8).

        Loaded on first use (Panda: ~100k faces, ~2 s) and cached. Links without visuals are absent.
        """
        import trimesh

        parts: dict[str, list] = {}
        cache: dict[Path, trimesh.Trimesh] = {}
        for v in self.visuals:
            if v.kind == "mesh":
                path = v.params["path"]
                if path not in cache:
                    try:
                        m = trimesh.load(path, force="mesh", process=False)
                    except Exception as e:
                        raise ValueError(f"mesh {path} (link {v.link!r}) could not be loaded: {e}") from None
                    if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
                        raise ValueError(f"mesh {path} (link {v.link!r}) holds no triangles")
                    cache[path] = m
                m = cache[path].copy()
                colors = _vertex_colors(m)
                m = trimesh.Trimesh(m.vertices * v.params["scale"], m.faces, process=False)
            elif v.kind == "box":
                m = trimesh.creation.box(extents=v.params["size"])
                colors = None
            elif v.kind == "cylinder":
                m = trimesh.creation.cylinder(radius=v.params["radius"], height=v.params["length"], sections=24)
                colors = None
            else:
                m = trimesh.creation.icosphere(subdivisions=2, radius=v.params["radius"])
                colors = None
            if v.rgba is not None and (colors is None or _is_uniform_white(colors)):
                colors = np.tile((np.asarray(v.rgba) * 255).round().astype(np.uint8), (len(m.vertices), 1))
            if colors is None:
                colors = np.full((len(m.vertices), 4), 200, np.uint8)
                colors[:, 3] = 255
            m.apply_transform(v.T_link_visual)
            m.visual.vertex_colors = colors
            parts.setdefault(v.link, []).append(m)
        return {link: (ms[0] if len(ms) == 1 else trimesh.util.concatenate(ms)) for link, ms in parts.items()}

    def __repr__(self) -> str:
        return f"Robot({self.name!r}, dof={self.dof}, ee_link={self.ee_link!r}, gripper={self.gripper_joint!r})"


def _vertex_colors(mesh) -> np.ndarray | None:
    """Per-vertex RGBA uint8 from a mesh's own material/texture, or None."""
    try:
        vis = mesh.visual
        if vis is None or vis.kind is None:
            return None
        c = np.asarray(vis.to_color().vertex_colors)
        return c.astype(np.uint8) if c.shape == (len(mesh.vertices), 4) else None
    except Exception:  # trimesh raises many types on odd materials; colours are cosmetic
        return None


def _is_uniform_white(colors: np.ndarray) -> bool:
    return bool(np.all(colors[:, :3] >= 250))


# ---------------------------------------------------------------------- loading
def base_pose_matrix(base_pose, name: str = "--base-pose") -> np.ndarray | None:
    """x y z qx qy qz qw (7 numbers, metres + a quaternion) -> T_world_base (4, 4); None -> None."""
    if base_pose is None:
        return None
    p = np.asarray(base_pose, dtype=np.float64).reshape(-1)
    if p.shape != (7,) or not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be 7 finite numbers x y z qx qy qz qw (metres, quaternion), got "
                         f"{np.asarray(base_pose).tolist()}")
    n = np.linalg.norm(p[3:])
    if abs(n - 1.0) > 1e-3:
        raise ValueError(f"{name}: the quaternion qx qy qz qw = {p[3:].tolist()} has norm {n:.4f}, not 1")
    return pose_to_matrix(p[:3], p[3:] / n)


def load_robot(spec: str, ee_link: str | None = None, gripper_joints: list[str] | tuple[str, ...] | None = None,
               gripper_open: float | None = None, gripper_closed: float | None = None, T_world_base=None,
               package_dirs=None, base_pose=None) -> Robot:
    """A builtin robot name (``BUILTIN_ROBOTS``) or a URDF path -> :class:`Robot` at ``T_world_base`` (4, 4), or at
    ``base_pose`` (x y z qx qy qz qw, see :func:`base_pose_matrix`; not both).

    For a URDF: ``ee_link`` names the end-effector link (actions and IK act on it; default: the deepest link);
    ``gripper_joints`` the gripper, the first one driving and the others following it 1:1 (URDF ``<mimic>`` joints
    of the first follow it anyway). The gripper opening maps linearly from ``gripper_closed`` (action 0) to
    ``gripper_open`` (action 1), joint values defaulting to the first gripper joint's lower / upper limit.
    Builtins fix all of these (``--ee-link`` etc. are refused). ``package_dirs`` are searched for ``package://``
    mesh paths (the URDF's folder always is). Bad names raise, listing what exists.
    """
    if base_pose is not None:
        if T_world_base is not None:
            raise ValueError("give the robot base either as base_pose (x y z qx qy qz qw) or as T_world_base, not both")
        T_world_base = base_pose_matrix(base_pose)
    package_dirs = [Path(d) for d in (package_dirs or ())]
    for d in package_dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"--package-dir {d}: no such directory")
    custom = {"ee_link": ee_link, "gripper_joints": gripper_joints, "gripper_open": gripper_open,
              "gripper_closed": gripper_closed, "package_dirs": package_dirs}
    if spec in BUILTIN_ROBOTS:
        given = [k for k, v in custom.items() if v]
        if given:
            raise ValueError(f"the builtin robot {spec!r} fixes {', '.join(given)}; pass a URDF path as --robot to "
                             "choose them")
        return Robot.builtin(spec, T_world_base=T_world_base)
    path = Path(spec)
    if path.suffix.lower() != ".urdf":
        if path.suffix.lower() == ".sdf":
            raise ValueError(f"--robot {spec!r} is an SDF file; kinema4d's kinematics read URDF only: convert it "
                             "with kinema4d.kinematics.sdf.sdf_to_urdf (one tree-shaped SDF 1.5+ model) and pass "
                             "the .urdf")
        raise ValueError(f"--robot {spec!r} is neither a builtin robot {sorted(BUILTIN_ROBOTS)} nor a .urdf file")
    if not path.is_file():
        raise FileNotFoundError(f"--robot: URDF file not found: {path}")
    joints = list(gripper_joints or [])
    robot = Robot.from_urdf(path, package_dirs=package_dirs, ee_link=ee_link,
                            gripper_joint=joints[0] if joints else None, gripper_mimics=joints[1:],
                            T_world_base=T_world_base)
    if joints:
        lo, hi = robot.joint_limits[robot.joint_names.index(joints[0])]
        robot.gripper_open = float(hi if gripper_open is None else gripper_open)
        robot.gripper_closed = float(lo if gripper_closed is None else gripper_closed)
        if not (np.isfinite(robot.gripper_open) and np.isfinite(robot.gripper_closed)) or \
                robot.gripper_open == robot.gripper_closed:
            raise ValueError(f"gripper joint {joints[0]!r}: give distinct finite --gripper-open / --gripper-closed "
                             f"joint values (limits [{lo}, {hi}])")
    elif gripper_open is not None or gripper_closed is not None:
        raise ValueError("--gripper-open / --gripper-closed need --gripper-joints")
    return robot


# ---------------------------------------------------------------------- actions
def action_dim(robot: Robot, mode: str) -> int:
    """Columns of an action array: joint modes (arm joints [+ gripper]); ee_pose (xyz + quat xyzw [+ gripper])."""
    g = 1 if robot.gripper_joint else 0
    if mode in ("joint_pos", "joint_vel"):
        return len(robot.arm_joint_names) + g
    if mode == "ee_pose":
        return 7 + g
    raise ValueError(f"unknown action mode {mode!r}; choose one of {ACTION_MODES}")


def actions_to_joints(robot: Robot, actions, mode: str, q0=None, dt: float = 0.1, ik_kwargs=None) -> JointTrajectory:
    """Map an action sequence (T, D) to joint positions (T, dof).

    Modes (the gripper column, when the robot has a gripper, is an opening in [0, 1]: 0 closed, 1 open):
    - ``joint_pos``: arm joint positions (rad / m), then gripper.
    - ``joint_vel``: arm joint velocities (rad/s), integrated from ``q0`` with step ``dt`` seconds, then gripper.
    - ``ee_pose``: end-effector (``robot.ee_link``) pose in the world frame as position xyz (m) and quaternion
      (x, y, z, w), then gripper; joints from seeded IK starting at ``q0`` (default ``robot.home``).
    """
    a = np.asarray(actions, dtype=np.float64)
    D = action_dim(robot, mode)
    if a.ndim != 2 or a.shape[1] != D or a.shape[0] < 1:
        raise ValueError(f"actions for mode {mode!r} on {robot.name} must have shape (T, {D}) "
                         f"({_action_columns(robot, mode)}), got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise ValueError(f"actions has a non-finite value at frame {t}, column {j} ({_action_columns(robot, mode)[j]})")
    q0 = robot.home.copy() if q0 is None else robot.check_q(q0, "q0")[0]
    arm_idx = [robot.joint_names.index(j) for j in robot.arm_joint_names]
    n_arm = len(arm_idx)
    ik = None
    if mode == "joint_pos":
        q = np.tile(q0, (a.shape[0], 1))
        q[:, arm_idx] = a[:, :n_arm]
        lo, hi = robot.joint_limits[arm_idx, 0], robot.joint_limits[arm_idx, 1]
        out = (a[:, :n_arm] < lo - 1e-6) | (a[:, :n_arm] > hi + 1e-6)
        if out.any():
            t, j = np.argwhere(out)[0]
            warnings.warn(f"joint_pos actions outside joint limits (first: frame {t}, joint "
                          f"{robot.arm_joint_names[j]!r}); clipped", stacklevel=2)
        q = robot.clip_to_limits(q)
    elif mode == "joint_vel":
        qdot = np.zeros((a.shape[0], robot.dof))
        qdot[:, arm_idx] = a[:, :n_arm]
        q = robot.integrate(qdot, dt, q0)
    else:
        quat = a[:, 3:7]
        norms = np.linalg.norm(quat, axis=1)
        if np.any(norms < 1e-6):
            raise ValueError(f"ee_pose actions: quaternion at frame {int(np.argmin(norms))} has zero norm")
        T = pose_to_matrix(a[:, :3], quat / norms[:, None])
        ik = robot.ik(T, q_init=q0, **(ik_kwargs or {}))
        q = ik.q
    if robot.gripper_joint:
        q[:, robot.joint_names.index(robot.gripper_joint)] = robot.gripper_to_joint(a[:, -1])
    return JointTrajectory(q=q, mode=mode, ik=ik)


def _action_columns(robot: Robot, mode: str) -> list[str]:
    g = ["gripper"] if robot.gripper_joint else []
    if mode == "ee_pose":
        return ["x", "y", "z", "qx", "qy", "qz", "qw"] + g
    return list(robot.arm_joint_names) + g


def joints_to_ee_actions(robot: Robot, q: np.ndarray) -> np.ndarray:
    """Inverse of the ee_pose mode: joints (T, dof) -> actions (T, 7 [+1]) via FK."""
    q = robot.check_q(q)
    pos, quat = matrix_to_pose(robot.fk(q, [robot.ee_link])[robot.ee_link])
    cols = [pos, quat]
    if robot.gripper_joint:
        cols.append(robot.joint_to_gripper(q[:, robot.joint_names.index(robot.gripper_joint)])[:, None])
    return np.concatenate(cols, axis=1)


