"""``mae-eval``: retrieval-robustness evaluation of an index (commands arrive with the eval issue)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mae-microscopy")
def main() -> None:
    """Measure how robust retrieval is to noise, blur, defocus and other perturbations."""


if __name__ == "__main__":  # pragma: no cover
    main()
