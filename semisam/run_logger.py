"""What a run records: TensorBoard scalars and image grids, and ``metrics.csv``.

``metrics.csv`` is long-format (``iteration,tag,value``) so that any tag can be added without rewriting the
header; ``pandas.read_csv(...).pivot(index="iteration", columns="tag", values="value")`` gives the wide table.
On resume, rows and TensorBoard events past the resumed iteration are dropped, so the record has no duplicates.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from semisam.evaluation.figures import CLASS_COLOURS, class_colour

# Background black, then the PNG figures' class colours, so that TensorBoard and figures agree.
PALETTE = np.array([(0.0, 0.0, 0.0)] + [class_colour(k) for k in range(1, len(CLASS_COLOURS) + 1)], dtype=np.float32)


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """int (B, H, W) label maps -> float (B, 3, H, W) RGB in [0, 1]; classes beyond the palette wrap around."""
    palette = torch.from_numpy(PALETTE).to(labels.device)
    return palette[labels.long() % len(palette)].permute(0, 3, 1, 2)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) -> (B, 3, H, W) in [0, 1] for display: the first channel as grey unless C == 3
    (RGB), each image min-max scaled."""
    x = images[:, :3] if images.shape[1] == 3 else images[:, :1].expand(-1, 3, -1, -1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def grid_rows(rows: list[torch.Tensor], max_items: int = 4) -> torch.Tensor:
    """Stack rows of (B, 3, H, W) images (one row per kind: image, label, prediction, ...) into one grid:
    column = sample, row = kind."""
    rows = [r[:max_items].float().cpu() for r in rows]
    n = min(r.shape[0] for r in rows)
    tiles = torch.cat([r[:n] for r in rows])
    return make_grid(tiles, nrow=n, padding=2, pad_value=1.0)


def _complete_row(row: list[str]) -> bool:
    """``iteration,tag,value`` with an integer iteration and a number as value (a partial row fails this)."""
    if len(row) != 3 or not row[0].isdigit():
        return False
    try:
        float(row[2])
    except ValueError:
        return False
    return True


class RunLogger:
    """TensorBoard + metrics.csv for one run directory."""

    def __init__(self, run_dir: Path, start_iteration: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_iteration or None)
        self.csv_path = self.run_dir / "metrics.csv"
        self._truncate_csv(start_iteration)
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new:
            self._csv.writerow(["iteration", "tag", "value"])

    def _truncate_csv(self, start_iteration: int) -> None:
        """Drop rows logged after the checkpoint we resume from (they will be logged again), and a partial last
        row that a killed process left."""
        if not self.csv_path.exists():
            return
        with self.csv_path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if _complete_row(r) and int(r[0]) <= start_iteration]
        with self.csv_path.open("w", newline="") as f:
            csv.writer(f).writerows(kept)

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, iteration)
            self._csv.writerow([iteration, tag, f"{value:.6g}"])
        self._csv_file.flush()

    def image_grid(self, tag: str, iteration: int, rows: list[torch.Tensor]) -> None:
        self.writer.add_image(tag, grid_rows(rows), iteration)

    def close(self) -> None:
        self.writer.close()
        self._csv_file.close()


class NullRunLogger:
    """Records nothing: what the processes other than rank 0 hold under torchrun (rank 0 alone records)."""

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        """Drop ``values``."""

    def image_grid(self, tag: str, iteration: int, rows: list[torch.Tensor]) -> None:
        """Drop the grid."""

    def close(self) -> None:
        """Nothing to close."""
