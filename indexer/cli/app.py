"""``mae-index``: the command group. One module per command group:
:mod:`.build` (build, info), :mod:`.mirror` (verify, sync, repair, drop-redis), :mod:`.data` (synth, fetch),
:mod:`.model` (init-model, pretrain), :mod:`.export` (export) and :mod:`.map` (map); shared option groups live
in :mod:`.options`."""

from __future__ import annotations

import click

from indexer.cli.build import build, info
from indexer.cli.data import fetch, synth
from indexer.cli.export import export
from indexer.cli.map import map_command
from indexer.cli.mirror import drop_redis, repair, sync, verify
from indexer.cli.model import init_model, pretrain


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mae-microscopy")
def main() -> None:
    """Index microscopy images (BBBC006 and alike) by Masked Autoencoder embeddings.

    \b
    Examples:
      mae-index build examples/bbbc006 --index runs/idx --model examples/models/mae-tiny-bbbc006
      mae-index info --index runs/idx
      mae-index map --index runs/idx
    """


for _command in (build, info, export, verify, sync, repair, drop_redis, synth, init_model, pretrain, fetch):
    main.add_command(_command)
main.add_command(map_command)


if __name__ == "__main__":  # pragma: no cover
    main()
