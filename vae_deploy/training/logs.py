"""Where per-epoch training metrics go: the console, a CSV file, TensorBoard.

Each sink gets the same rows (``epoch``, ``beta``, ``train_loss``, ``test_nelbo``,
``test_recon``, ``test_kl``, ``seconds``). The console shows a progress bar on a terminal and
one line per epoch otherwise, so a log file or CI output shows how training went; CSV is for
people without TensorBoard. TensorBoard is an optional extra, checked before training starts.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import IO, Any, Protocol

import click
import numpy as np
import torch

from vae_deploy.errors import TrainingError

COLUMNS = ("epoch", "beta", "train_loss", "test_nelbo", "test_recon", "test_kl", "seconds")
SCALARS = {  # TensorBoard tag -> row key
    "loss/train": "train_loss",
    "test/nelbo": "test_nelbo",
    "test/recon": "test_recon",
    "test/kl": "test_kl",
    "beta": "beta",
}
IMAGE_TAGS = ("samples", "reconstructions")


class Sink(Protocol):
    def start(self, history: list[dict[str, Any]]) -> None: ...
    def epoch(self, row: dict[str, Any], model: torch.nn.Module, *, final: bool) -> None: ...
    def close(self) -> None: ...


def format_row(row: dict[str, Any], total: int) -> str:
    return (
        f"epoch {row['epoch']}/{total}  train {row['train_loss']:.3f}  test -ELBO {row['test_nelbo']:.3f} "
        f"(recon {row['test_recon']:.3f} + KL {row['test_kl']:.3f})  {row['seconds']:.1f} s"
    )


class ConsoleLog:
    """A progress bar when ``stream`` is a terminal, else one line per epoch."""

    def __init__(self, total_epochs: int, stream: IO[str] | None = None, *, bar: bool | None = None) -> None:
        self.total = total_epochs
        self.stream = stream or sys.stderr
        self.use_bar = self.stream.isatty() if bar is None else bar
        self._bar: Any = None

    def start(self, history: list[dict[str, Any]]) -> None:
        if self.use_bar:
            self._bar = click.progressbar(
                length=self.total, label="training", file=self.stream, show_pos=True,
                item_show_func=lambda r: f"test -ELBO {r['test_nelbo']:.2f}" if r else "",
            )
            self._bar.__enter__()
            if history:
                self._bar.update(len(history), history[-1])

    def epoch(self, row: dict[str, Any], model: torch.nn.Module, *, final: bool) -> None:
        if self._bar is not None:
            self._bar.update(1, row)
        else:
            click.echo(format_row(row, self.total), file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class CsvLog:
    """The whole history (a resumed run's earlier epochs too), one row per epoch, flushed each epoch."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._writer: Any = None

    def start(self, history: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        self._writer.writeheader()
        for row in history:
            self._writer.writerow(row)
        self._file.flush()

    def epoch(self, row: dict[str, Any], model: torch.nn.Module, *, final: bool) -> None:
        assert self._writer is not None and self._file is not None
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def require_tensorboard() -> None:
    """Fail before training when ``--tensorboard`` cannot work."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise TrainingError(
            f"--tensorboard needs the tensorboard package ({e}): pip install 'vae-deploy[tensorboard]', "
            f"or use --log-csv FILE"
        ) from None


class TensorBoardLog:
    """Scalars every epoch; a sample grid and a reconstruction grid every ``image_every`` epochs and at the end."""

    def __init__(self, log_dir: Path, test_x: np.ndarray, *, image_every: int = 10, seed: int = 0) -> None:
        require_tensorboard()
        self.log_dir = Path(log_dir)
        self.image_every = max(1, image_every)
        self.test_x = np.asarray(test_x[:32])
        self.seed = seed
        self._writer: Any = None

    def start(self, history: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def epoch(self, row: dict[str, Any], model: torch.nn.Module, *, final: bool) -> None:
        w, step = self._writer, int(row["epoch"])
        for tag, key in SCALARS.items():
            w.add_scalar(tag, float(row[key]), step)
        if final or step % self.image_every == 0:
            for tag, grid in self._grids(model).items():
                w.add_image(tag, grid, step, dataformats="HWC")
        w.flush()

    @torch.no_grad()
    def _grids(self, model: Any) -> dict[str, np.ndarray]:
        """Samples from fixed latents and (original, reconstruction) row pairs; none for non-image data."""
        from vae_deploy.images import grid_image
        from vae_deploy.training.data import to_float

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        z = torch.randn((64, model.config.latent_dim), generator=torch.Generator().manual_seed(self.seed))
        samples = model.decode(z.to(device)).cpu().numpy()
        x = to_float(self.test_x)
        recon = model.decode(model.encode(torch.from_numpy(x).to(device))[0]).cpu().numpy()
        model.train(was_training)
        rows = []
        for i in range(0, len(x), 8):  # originals above their reconstructions, 8 per row
            rows += [x[i:i + 8], recon[i:i + 8]]
        pairs = np.concatenate(rows)
        try:
            return {"samples": grid_image(samples, cols=8), "reconstructions": grid_image(pairs, cols=8)}
        except ValueError:  # vectors that are not square images: scalars only
            return {}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
