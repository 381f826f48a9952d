#!/usr/bin/env python3
"""Renders a 3DGS PLY with gsplat (a third-party CUDA rasteriser) from the orbit `trellis2
render` uses, and compares the views with trellis2's contact sheet of the same file.

    trellis2 render NAME.splat.ply -o ours.png --views 8 --size 512 --background white
    python3 tests/tools/gsplat_check.py NAME.splat.ply ours.png [--out DIR] [--min-psnr 35]

Needs a CUDA GPU, PyTorch, numpy, Pillow and gsplat (classic rasterisation: the 0.3 px²
dilation, 3σ footprint, alpha clamp 0.99, cut-offs 1/255 and 1e-4, as trellis2's renderer;
docs/OUTPUTS.md). Prints the PSNR of every view and exits 1 when the mean is below --min-psnr.

The orbit (src/render/camera.rs): views k = 0..N-1 at azimuth k·360°/N about +Y from +Z,
elevation 20°, looking at the centre of the splat centres' bounding box, 40° vertical field of
view, at the distance where the box's bounding sphere fills 92 % of the height; +Y up; pixel
centres at i + 0.5; OpenCV camera axes (x right, y down, z forward), as 3DGS and gsplat use.
"""

import argparse
import math
import sys

import numpy as np
import torch
from PIL import Image

from gsplat import rasterization

FOV_Y_DEG = 40.0
FILL = 0.92
COLUMNS = 4


def read_splat_ply(path):
    """The float32 vertex properties of a binary little-endian PLY, by name."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[1].startswith("format binary_little_endian"), header[1]
    count, names = 0, []
    in_vertex = False
    for line in header:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            count, in_vertex = int(parts[2]), True
        elif parts[:1] == ["element"]:
            in_vertex = False
        elif parts[:1] == ["property"] and in_vertex:
            assert parts[1] in ("float", "float32"), line
            names.append(parts[2])
    rows = np.frombuffer(data, dtype="<f4", count=count * len(names), offset=end)
    rows = rows.reshape(count, len(names))
    return {n: rows[:, i] for i, n in enumerate(names)}


def sh_coefficients(p):
    """[N, K, 3] SH coefficients, INRIA's f_rest being channel-major."""
    dc = np.stack([p["f_dc_0"], p["f_dc_1"], p["f_dc_2"]], axis=1)[:, None, :]
    rest_names = sorted((n for n in p if n.startswith("f_rest_")), key=lambda n: int(n[7:]))
    if not rest_names:
        return dc, 0
    rest = np.stack([p[n] for n in rest_names], axis=1)
    k = rest.shape[1] // 3
    rest = rest.reshape(-1, 3, k).transpose(0, 2, 1)
    degree = int(round(math.sqrt(k + 1))) - 1
    return np.concatenate([dc, rest], axis=1), degree


def orbit_camera(lo, hi, k, views, size, elevation_deg):
    """(world-to-camera 4×4, intrinsics 3×3) of orbit view k, as trellis2's Camera::orbit."""
    centre = 0.5 * (lo + hi)
    radius = max(0.5 * np.linalg.norm(hi - lo), 1e-6)
    half_fov = math.radians(0.5 * FOV_Y_DEG)
    distance = radius / (FILL * math.sin(half_fov))
    az, el = math.radians(360.0 * k / views), math.radians(elevation_deg)
    direction = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    eye = centre + distance * direction
    forward = centre - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])
    view = np.eye(4)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    focal = 0.5 * size / math.tan(half_fov)
    intrinsics = np.array([[focal, 0, 0.5 * size], [0, focal, 0.5 * size], [0, 0, 1.0]])
    return view, intrinsics


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ply")
    ap.add_argument("sheet", help="trellis2 render's contact sheet of the same file (white)")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--elevation", type=float, default=20.0)
    ap.add_argument("--out", help="folder for gsplat's views as PNG")
    ap.add_argument("--min-psnr", type=float, default=35.0)
    args = ap.parse_args()

    p = read_splat_ply(args.ply)
    means = np.stack([p["x"], p["y"], p["z"]], axis=1).astype(np.float64)
    lo, hi = means.min(axis=0), means.max(axis=0)
    quats = np.stack([p[f"rot_{i}"] for i in range(4)], axis=1)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    scales = np.exp(np.stack([p[f"scale_{i}"] for i in range(3)], axis=1))
    opacities = 1.0 / (1.0 + np.exp(-p["opacity"]))
    sh, degree = sh_coefficients(p)

    dev = torch.device("cuda")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)
    cams = [orbit_camera(lo, hi, k, args.views, args.size, args.elevation) for k in range(args.views)]
    colors, alphas, _ = rasterization(
        t(means), t(quats), t(scales), t(opacities), t(sh),
        t(np.stack([c[0] for c in cams])), t(np.stack([c[1] for c in cams])),
        args.size, args.size,
        sh_degree=degree, near_plane=1e-3, far_plane=1e10, eps2d=0.3,
        rasterize_mode="classic", packed=False,
    )
    # Premultiplied colour over white, rounded to 8 bits as trellis2 writes its sheets.
    white = colors + (1.0 - alphas)
    views = (white.clamp(0, 1) * 255.0 + 0.5).floor().to(torch.uint8).cpu().numpy()

    sheet = np.asarray(Image.open(args.sheet).convert("RGB"))
    scores = []
    for k in range(args.views):
        r, c = divmod(k, COLUMNS)
        ours = sheet[r * args.size:(r + 1) * args.size, c * args.size:(c + 1) * args.size]
        scores.append(psnr(views[k], ours))
        print(f"view {k}: gsplat vs trellis2 PSNR {scores[-1]:.2f} dB")
        if args.out:
            Image.fromarray(views[k]).save(f"{args.out}/gsplat_view{k}.png")
    mean = sum(scores) / len(scores)
    print(f"mean PSNR {mean:.2f} dB over {len(scores)} views, {len(means)} splats, SH degree {degree}")
    return 0 if mean >= args.min_psnr else 1


if __name__ == "__main__":
    sys.exit(main())
