"""`vae-deploy web`: the exported decoder as a static web page (onnxruntime-web, WASM)."""

from __future__ import annotations

from pathlib import Path

import click

from vae_deploy.cli.options import friendly_errors, out_folder


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("site"), show_default=True,
              callback=out_folder,
              help="Folder to write: new, empty, a previous site (only its own files are replaced) or a "
                   "folder of a few plain files (kept).")
@click.option("--ort-dist", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="onnxruntime-web's dist folder (default: web/node_modules from `make web-deps`).")
@click.option("--max-latent-side", type=click.IntRange(min=1, max=256), default=32, show_default=True,
              help="Spatial latents: the largest height/width, in latent cells, the page decodes.")
@friendly_errors
def web(export_dir: Path, out: Path, ort_dist: Path | None, max_latent_side: int) -> None:
    """Write a static site that samples, explores and interpolates with the exported decoder in the browser.

    Serve it with any static server, e.g. `python -m http.server -d site` and open http://localhost:8000/.
    """
    from vae_deploy.serving.web import build_site

    result = build_site(export_dir, out, ort_dist=ort_dist, max_latent_side=max_latent_side)
    c = result.contract
    click.echo(f"decoder {c.file}: z [N, {', '.join(map(str, c.latent_shape))}] -> "
               f"x_hat [N, {', '.join(map(str, c.output_shape))}] (checksum and contract checked)")
    click.echo(f"onnxruntime-web from {result.ort_dist}")
    click.echo(f"wrote {result.out_dir}/ ({len(result.files)} files); serve it with: "
               f"python -m http.server -d {result.out_dir} and open http://localhost:8000/")
