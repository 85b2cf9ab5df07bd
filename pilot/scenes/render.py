"""Procedural plane renderer: exact ray casting of textured rectangles, vectorised over a batch.

Every pixel's ray is intersected with every plane of its scene at once (affine in the pixel),
the nearest hit wins, and the hit's plane coordinates drive the hatching and texture patterns of
`pilot.scenes.materials`. One call renders a batch of scenes on any device and returns all passes:
hatched line drawing, lit colour, fog, fogged image, metric z-depth, camera-space normals and the
plane id of each pixel. Cameras follow `pilot.scenes.camera` (OpenCV axes, z-up metric world).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.scenes import materials


@dataclass(frozen=True)
class Scene:
    """A batch of scenes made of double-sided rectangles, padded to the same plane count P.

    Attributes:
        center: (B, P, 3) rectangle centres, world metres.
        u: (B, P, 3) unit in-plane axis (texture u); `v` is the second, orthogonal one.
        v: (B, P, 3) unit in-plane axis (texture v).
        half: (B, P, 2) half extents along u and v in metres.
        material: (B, P, materials.N_FIELDS) material rows.
        valid: (B, P) bool, False for padding planes.
        light: (B, 3) unit direction towards the sun.
        ambient: (B,) ambient light level in [0, 1].
        fog_density: (B,) exponential fog density per metre of ray length.
        fog_rgb: (B, 3) fog (and sky) colour in [0, 1].
    """

    center: Tensor
    u: Tensor
    v: Tensor
    half: Tensor
    material: Tensor
    valid: Tensor
    light: Tensor
    ambient: Tensor
    fog_density: Tensor
    fog_rgb: Tensor

    def to(self, device: torch.device | str) -> Scene:
        """The same scenes on another device."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def normal(self) -> Tensor:
        """(B, P, 3) unit plane normals u x v."""
        return torch.linalg.cross(self.u, self.v)


def stack_scenes(scenes: list[Scene]) -> Scene:
    """Concatenate scenes along the batch, padding the plane axis with invalid planes."""
    p_max = max(s.center.shape[1] for s in scenes)
    out = {}
    for f in fields(Scene):
        parts = []
        for s in scenes:
            x = getattr(s, f.name)
            if f.name in ("center", "u", "v", "half", "material", "valid"):
                pad = [0, 0] * (x.dim() - 2) + [0, p_max - x.shape[1]]
                x = F.pad(x, pad) if x.dtype != torch.bool else F.pad(x.int(), pad).bool()
            parts.append(x)
        out[f.name] = torch.cat(parts)
    return Scene(**out)


@dataclass(frozen=True)
class RenderConfig:
    """Camera range limits and working-set size of the renderer."""

    near: float = 0.05  # metres; hits closer than this along z are ignored
    far: float = 1000.0  # metres; depth written where a ray hits nothing (sky)
    chunk_rays: int = 2**16  # rays shaded together (all scenes of the batch)


def to_camera(scene: Scene, c2w: Tensor) -> dict[str, Tensor]:
    """Plane centres and axes (B, P, 3) and the sun (B, 3) in each camera's frame (OpenCV axes)."""
    R, o = c2w[:, :3, :3], c2w[:, :3, 3]
    out = {k: getattr(scene, k) @ R for k in ("u", "v", "normal")}  # R^T a, row-wise
    out["center"] = (scene.center - o[:, None]) @ R
    out["light"] = (scene.light[:, None] @ R)[:, 0]  # (B, 3) sun direction
    return out


def _project(a: Tensor, K_inv: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """a . (K^-1 [x, y, 1]) for camera-space vectors a (B, P, 3) and pixels x, y (N,) -> (B, P, N).

    K is upper triangular, so the dot product is affine in (x, y): two fused multiply-adds.
    """
    ax, ay, az = a.unbind(-1)
    alpha = ax * K_inv[:, None, 0, 0]
    beta = ax * K_inv[:, None, 0, 1] + ay * K_inv[:, None, 1, 1]
    gamma = ax * K_inv[:, None, 0, 2] + ay * K_inv[:, None, 1, 2] + az
    return torch.addcmul(torch.addcmul(gamma[..., None], alpha[..., None], x), beta[..., None], y)


def intersect(
    cam: dict[str, Tensor], half: Tensor, K_inv: Tensor, x: Tensor, y: Tensor, near: float
) -> dict[str, Tensor]:
    """Nearest ray-rectangle hits of the rays through pixels (x, y) (N,) -> per-ray (B, N).

    Rays are d = K^-1 [x, y, 1] (z = 1), so the ray parameter `s` of a hit is its z-depth.

    Args:
        cam: camera-space planes from `to_camera`.
        half: (B, P, 2) half extents, negative for padding planes (never hit).
        K_inv: (B, 3, 3) inverse intrinsics.
        x, y: (N,) pixel coordinates.
        near: hits with s <= near are ignored.

    Returns:
        `s` (inf on a miss), `index` (plane id), `u`, `v` (hit coordinates in the plane,
        metres), `dn` (d . normal, its sign tells which side was hit), `du`, `dv` (d . u, d . v).
    """
    dn, du, dv = (_project(cam[k], K_inv, x, y) for k in ("normal", "u", "v"))  # (B, P, N)
    c = cam["center"]
    on, ou, ov = (-(c * cam[k]).sum(-1)[..., None] for k in ("normal", "u", "v"))  # (B, P, 1)
    s = -on / dn  # NaN only for rays lying in a plane
    pu = torch.addcmul(ou, s, du)
    pv = torch.addcmul(ov, s, dv)
    hit = s > near
    hit &= pu.abs() <= half[..., 0, None]
    hit &= pv.abs() <= half[..., 1, None]
    s, index = torch.where(hit, s, torch.inf).min(1)  # (B, N)
    pick = index[:, None]
    out = {"s": s, "index": index}
    for name, t in (("u", pu), ("v", pv), ("dn", dn), ("du", du), ("dv", dv)):
        out[name] = t.gather(1, pick).squeeze(1)
    return out


def render(
    scene: Scene,
    K: Tensor,
    c2w: Tensor,
    height: int,
    width: int,
    cfg: RenderConfig = RenderConfig(),
) -> dict[str, Tensor]:
    """Ray-cast a batch of plane scenes and shade every pass.

    Rays are processed in chunks of about `cfg.chunk_rays` (all scenes together) so the
    (B, P, rays) work tensors stay in cache; the result does not depend on the chunking.

    Args:
        scene: B scenes (see `Scene`).
        K: (B, 3, 3) intrinsics in pixels.
        c2w: (B, 4, 4) camera-to-world poses, OpenCV axes.
        height, width: image size in pixels.
        cfg: near / far limits and chunk size.

    Returns:
        dict of (B, C, H, W) float tensors in [0, 1] unless stated: `hatched` (1, ink 0 on paper
        1), `textured` (3, lit albedo without fog), `fog` (1, fog amount), `image` (3, textured
        seen through the fog), `depth` (1, z-depth in metres, `cfg.far` on sky), `normals` (3,
        camera-space unit normals facing the camera, 0 on sky), and `plane` (1, long, -1 on sky).
    """
    B = c2w.shape[0]
    if not all(isinstance(n, Integral) and n > 0 for n in (height, width)):
        raise ValueError(f"render: image size {width}x{height} (WxH) must be positive integers")
    if K.shape != (B, 3, 3) or c2w.shape != (B, 4, 4) or scene.center.shape[0] != B:
        raise ValueError(
            f"render: K {tuple(K.shape)}, c2w {tuple(c2w.shape)} and {scene.center.shape[0]} "
            f"scenes do not describe one batch"
        )
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=K.dtype, device=K.device),
        torch.arange(width, dtype=K.dtype, device=K.device),
        indexing="ij",
    )
    xs, ys = xs.flatten(), ys.flatten()  # (HW,) pixel centres
    K_inv, cam = torch.linalg.inv(K), to_camera(scene, c2w)
    half = torch.where(scene.valid[..., None], scene.half, -1.0)
    step = max(1, cfg.chunk_rays // B)
    out: dict[str, Tensor] = {}
    for i in range(0, xs.shape[0], step):
        part = shade_rays(scene, cam, half, K_inv, xs[i : i + step], ys[i : i + step], cfg)
        for k, t in part.items():  # (B, C, n) chunk into a channel-first buffer
            if k not in out:
                out[k] = torch.empty(B, t.shape[1], xs.shape[0], dtype=t.dtype, device=t.device)
            out[k][:, :, i : i + step] = t
    return {k: t.view(B, -1, height, width) for k, t in out.items()}


def uv_gradients(
    cam: dict[str, Tensor], hit: dict[str, Tensor], idx: Tensor, s: Tensor, K_inv: Tensor
) -> Tensor:
    """Screen-space derivatives (4, B, N) of the hits' plane coordinates: u_x, u_y, v_x, v_y.

    For rays d(x, y) = K^-1 [x, y, 1] and a plane with normal n, the hit s d moves per pixel by
    s (d' - (n . d') / (n . d) d) with d' = dd/dx or dd/dy; projecting on the plane axes gives
    metres of u and v per pixel, the exact footprint the shaders filter their lines with.
    """
    k00, k01, k11 = (K_inv[:, i, j, None] for i, j in ((0, 0), (0, 1), (1, 1)))  # (B, 1)
    ax = {k: cam[k][..., :2].gather(1, idx.expand(-1, -1, 2)) for k in ("normal", "u", "v")}
    n_x, n_y = ax["normal"].unbind(-1)  # (B, N) each
    ratio = s / hit["dn"]
    out = []
    for k, d_k in (("u", hit["du"]), ("v", hit["dv"])):
        a_x, a_y = ax[k].unbind(-1)
        out.append(s * a_x * k00 - ratio * n_x * k00 * d_k)  # d(k)/dx
        out.append(s * (a_x * k01 + a_y * k11) - ratio * (n_x * k01 + n_y * k11) * d_k)  # /dy
    return torch.stack(out).nan_to_num(0.0, 0.0, 0.0)


def shade_rays(
    scene: Scene,
    cam: dict[str, Tensor],
    half: Tensor,
    K_inv: Tensor,
    x: Tensor,
    y: Tensor,
    cfg: RenderConfig,
) -> dict[str, Tensor]:
    """All passes of `render` for the pixels (x, y) (N,), as (B, C, N) tensors."""
    B, N = K_inv.shape[0], x.shape[0]
    hit = intersect(cam, half, K_inv, x, y, cfg.near)
    sky = torch.isinf(hit["s"])  # (B, N)
    s = torch.where(sky, cfg.far, hit["s"])
    u, v = torch.where(sky, 0.0, hit["u"]), torch.where(sky, 0.0, hit["v"])
    idx = hit["index"][..., None]
    F_ = materials.N_FIELDS
    table = scene.material.permute(2, 0, 1)  # (F, B, P)
    m = table.gather(2, hit["index"][None].expand(F_, -1, -1)).view(F_, B * N)  # field-major
    n = cam["normal"].gather(1, idx.expand(-1, -1, 3))  # (B, N, 3) camera space
    grad = uv_gradients(cam, hit, idx, s, K_inv).view(4, B * N)
    n = n * -torch.sign(hit["dn"])[..., None]  # face the camera
    dx = K_inv[:, 0, 0, None] * x + K_inv[:, 0, 1, None] * y + K_inv[:, 0, 2, None]  # (B, N)
    dy = K_inv[:, 1, 1, None] * y + K_inv[:, 1, 2, None]
    ray_len = (dx * dx + dy * dy + 1).sqrt()  # metres of ray per metre of depth
    cos_view = (hit["dn"].abs() / ray_len).nan_to_num(1.0)

    u, v = u.flatten(), v.flatten()
    hatched = materials.hatch(u, v, m, grad)  # (B * N,)
    colour = materials.albedo(u, v, m, grad).view(3, B, N).permute(1, 2, 0)
    lambert = (n * cam["light"][:, None]).sum(-1).clamp_min(0)
    amb = scene.ambient[:, None]
    shade = amb + (1 - amb) * (0.7 * lambert + 0.3 * cos_view)  # sun plus a soft headlight
    textured = colour * shade[..., None]
    fog_rgb = scene.fog_rgb[:, None].expand(B, N, 3)
    textured = torch.where(sky[..., None], fog_rgb, textured)
    fog = torch.where(sky, 1.0, 1 - torch.exp(-scene.fog_density[:, None] * s * ray_len))
    return {
        "hatched": torch.where(sky, 1.0, hatched.view(B, N))[:, None],
        "textured": textured.transpose(1, 2),
        "fog": fog[:, None],
        "image": torch.lerp(textured, fog_rgb, fog[..., None]).transpose(1, 2),
        "depth": s[:, None],
        "normals": (n * ~sky[..., None]).transpose(1, 2),
        "plane": torch.where(sky, -1, hit["index"])[:, None],
    }
